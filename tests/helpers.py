"""Small stand-ins shared by several test modules, imported as ``from helpers import …``.

pytest puts ``tests/`` on ``sys.path`` (rootdir-relative ``prepend`` import mode, the
default), so this module imports like a test module does. Fixtures stay in ``conftest.py``;
plain classes and functions live here, because a test module must not import ``conftest``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from scipy.stats import binom
from torch import nn

from smoothmix.core import clopper_pearson_lower
from smoothmix.data import TensorImageDataset
from smoothmix.methods import StepOutput
from smoothmix.models import wrap_model
from smoothmix.training import TrainConfig

__all__ = ["Linear2", "NoisyCE", "load_script", "tiny_config", "tiny_data", "tiny_model"]


class Linear2(nn.Module):
    """Binary linear classifier on 1x1x2 images: class 1 iff w.x + b > 0, ||w|| = 5."""

    def __init__(self, b: float) -> None:
        super().__init__()
        self.register_buffer("w", torch.tensor([3.0, -4.0]))
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


def exact_false_certification_rate(p_a: float, n0: int, n: int, alpha: float) -> float:
    """P(CERTIFY certifies a wrong class or a radius > the true one), computed exactly.

    Selection picks class 1 iff it wins the n0 votes (n0 odd: no ties). Given class 1, a
    certificate exceeds the true radius iff the bound exceeds p_a; given class 0 (probability
    1 - p_a), any certificate at all (bound >= 1/2) is false.
    """
    k = np.arange(n + 1)
    lower = np.array([clopper_pearson_lower(int(i), n, alpha) for i in k])
    select_right = binom.sf(n0 // 2, n0, p_a)
    over = binom.pmf(k, n, p_a)[lower > p_a].sum()
    wrong = binom.pmf(k, n, 1 - p_a)[lower >= 0.5].sum()
    return float(select_right * over + (1 - select_right) * wrong)


# Tiny stand-ins for the training loop's tests (test_training, test_training_hooks).


class NoisyCE:
    """A minimal method: CE on one Gaussian draw from the global RNG (so that resuming has
    to restore the RNG to reproduce the run)."""

    name = "noisy-ce"

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def __call__(self, model, x, y, epoch):
        logits = model(x + self.sigma * torch.randn_like(x))
        acc = (logits.argmax(1) == y).float().mean().detach()
        return StepOutput(nn.functional.cross_entropy(logits, y), {"acc": acc})


def tiny_data(n: int, seed: int) -> TensorImageDataset:
    """Two classes told apart by mean brightness: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels[:, None, None, None] == 1, 170, 80)
    images = (base + torch.randint(-60, 60, (n, 1, 6, 6), generator=g)).clamp(0, 255)
    return TensorImageDataset(images.to(torch.uint8), labels, 2, "tiny")


def tiny_model(seed: int = 0) -> nn.Module:
    """A small MLP for tiny_data, initialised from ``seed``."""
    torch.manual_seed(seed)
    return wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 2)))


def tiny_config(**kw) -> TrainConfig:
    """A few quick CPU epochs for the tiny stand-ins."""
    base = dict(epochs=3, batch_size=16, lr=0.05, lr_step=2, seed=7, device="cpu",
                progress=False, workers=0)
    base.update(kw)
    return TrainConfig(**base)


def load_script(path: Path) -> ModuleType:
    """A script of ``scripts/`` (no ``.py``) as a module named after it (``-`` as ``_``)."""
    loader = importlib.machinery.SourceFileLoader(path.name.replace("-", "_"), str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # a dataclass of the script looks its module up there
    loader.exec_module(module)
    return module
