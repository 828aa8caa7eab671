"""smoothmix: train and certify provably robust classifiers by randomized smoothing.

The names most users need are importable from here::

    import smoothmix

    smoothmix.train("runs/mnist", preset="mnist-smoothmix-0.50")
    model, _ = smoothmix.load_model("runs/mnist/checkpoint.pth.tar")
    model, card = smoothmix.load_pretrained("mnist-smoothmix-0.50")  # or a published model
    smoothmix.certify_dataset(model, smoothmix.load_dataset("mnist"), 0.5, "mnist.tsv")

Everything else lives in the obviously named submodules (``core``, ``certification``,
``analysis``, ``methods``, ``models``, ``checkpoint``, ``pretrained``, ``data``, ``training``,
``diagnostics``). The names are loaded on first use (PEP 562), so ``import smoothmix`` does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from smoothmix.errors import SmoothmixError

# The one place the version is declared: pyproject.toml reads it from here (a plain literal,
# read without importing the package).
__version__ = "0.6.0.dev0"
"""The smoothmix release, a PEP 440 version string; every result file records it."""

# name -> the module that defines it.
_LAZY: dict[str, str] = {
    "Smooth": "smoothmix.core",
    "certified_radius": "smoothmix.core",
    "clopper_pearson_lower": "smoothmix.core",
    "RunSpec": "smoothmix.run",
    "certify_dataset": "smoothmix.certification",
    "predict_dataset": "smoothmix.certification",
    "decide_dataset": "smoothmix.decisions",
    "attack_dataset": "smoothmix.empirical",
    "read_results": "smoothmix.analysis",
    "train": "smoothmix.training",
    "load_model": "smoothmix.checkpoint",
    "load_pretrained": "smoothmix.pretrained",
    "list_pretrained": "smoothmix.pretrained",
    "create_model": "smoothmix.models",
    "register_model": "smoothmix.models",
    "create_method": "smoothmix.methods",
    "register_method": "smoothmix.methods",
    "load_dataset": "smoothmix.data",
    "register_dataset": "smoothmix.data",
    "Denoised": "smoothmix.denoisers.compose",
    "load_denoiser": "smoothmix.denoisers.compose",
}

__all__ = [
    "Denoised",
    "RunSpec",
    "Smooth",
    "SmoothmixError",
    "__version__",
    "attack_dataset",
    "certified_radius",
    "certify_dataset",
    "clopper_pearson_lower",
    "create_method",
    "create_model",
    "decide_dataset",
    "list_pretrained",
    "load_dataset",
    "load_denoiser",
    "load_model",
    "load_pretrained",
    "predict_dataset",
    "read_results",
    "register_dataset",
    "register_method",
    "register_model",
    "train",
]

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ loads them
    from smoothmix.analysis import read_results
    from smoothmix.certification import certify_dataset, predict_dataset
    from smoothmix.checkpoint import load_model
    from smoothmix.core import Smooth, certified_radius, clopper_pearson_lower
    from smoothmix.data import load_dataset, register_dataset
    from smoothmix.decisions import decide_dataset
    from smoothmix.denoisers.compose import Denoised, load_denoiser
    from smoothmix.empirical import attack_dataset
    from smoothmix.methods import create_method, register_method
    from smoothmix.models import create_model, register_model
    from smoothmix.pretrained import list_pretrained, load_pretrained
    from smoothmix.run import RunSpec
    from smoothmix.training import train


def __getattr__(name: str) -> Any:
    """Load a top-level name from its module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'smoothmix' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
