"""What a named run trains, and where its weights start.

A training method says what it trains (:attr:`~smoothmix.methods.base.TrainingMethod.trains`):

* ``"classifier"`` — ``--arch`` names an architecture of :mod:`smoothmix.models`, built as
  ``Sequential(Normalize, net)`` (the dataset's normalisation);
* ``"denoiser"`` — ``--arch`` names a kind of :data:`smoothmix.denoisers.DENOISERS`, built
  without a normalisation layer, with ``channels`` filled in from the dataset (the
  checkpoint's ``arch_kwargs`` record it, so the denoiser is rebuilt from its checkpoint).

and whether it uses noise (:attr:`~smoothmix.methods.base.TrainingMethod.uses_noise`): a
method without noise (``plain``) takes no sigma.

``--init CHECKPOINT`` starts a fresh run from the weights of another run of the same
architecture (e.g. stability fine-tuning of an MSE-trained denoiser); the run records the
path and the file's SHA-256 (``init``, ``init_sha256`` in the checkpoint's ``config``). A
resumed run continues from its own checkpoint and keeps the recorded values.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from smoothmix.errors import SmoothmixError, first_line, require

__all__ = ["build_denoiser", "check_arch", "init_record", "load_init", "method_trains",
           "method_uses_noise"]


def _method_class(method: str | None) -> Any:
    from smoothmix.methods import METHODS

    return METHODS.get(method) if isinstance(method, str) else None


def method_trains(method: str | None) -> str:
    """``"classifier"`` or ``"denoiser"``: what the registered ``method`` trains."""
    return str(getattr(_method_class(method), "trains", "classifier"))


def method_uses_noise(method: str | None) -> bool:
    """Whether the registered ``method`` trains with Gaussian noise (takes a sigma)."""
    return bool(getattr(_method_class(method), "uses_noise", True))


def check_arch(method: str, arch: str | None) -> None:
    """One line when ``arch`` is of the wrong kind for ``method`` (a classifier architecture
    for a denoiser method, or the reverse), or a denoiser method has no ``--arch``."""
    from smoothmix.denoisers import DENOISERS
    from smoothmix.models import list_models

    if method_trains(method) == "denoiser":
        kinds = ", ".join(DENOISERS.names())
        require(arch is not None, f"method {method} trains a denoiser: pass --arch with a "
                f"denoiser kind ({kinds})")
        require(arch in DENOISERS or arch not in list_models(),
                f"--arch {arch} is a classifier architecture, but method {method} trains a "
                f"denoiser: pass a denoiser kind ({kinds})")
        DENOISERS.get(arch)  # an unknown kind: the registry's one line
    else:
        require(arch not in DENOISERS or arch in list_models(),
                f"--arch {arch} is a denoiser kind, but method {method} trains a classifier: "
                f"pass an architecture ({', '.join(list_models())}) or a denoiser method")


def build_denoiser(arch: str, arch_kwargs: Mapping[str, Any], train_set: Any
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The denoiser of kind ``arch`` for the images of ``train_set`` and its complete
    settings (``channels`` from the first image unless given)."""
    from smoothmix.denoisers import DENOISERS

    # Complete: the factory's defaults are written out, so that a checkpoint (and a result
    # file's denoiser record) still says what it is if a default changes later.
    factory = DENOISERS.get(arch)
    kwargs = {**_json_defaults(factory), **arch_kwargs}
    # Not given: the data's, even where the factory has a default (ddpm-unet's is 1, which
    # would build a grayscale model for RGB images).
    if "channels" not in arch_kwargs:
        x, _ = train_set[0]
        kwargs["channels"] = int(x.shape[0])
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise SmoothmixError(f"denoiser {arch!r}: bad settings {kwargs}: {first_line(exc)}") \
            from None
    return model, kwargs


def _json_defaults(factory: Any) -> dict[str, Any]:
    """The keyword defaults of ``factory`` that are plain JSON values."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    out = {}
    for p in params:
        if p.default is inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = list(p.default) if isinstance(p.default, tuple) else p.default
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[p.name] = value
    return out


def load_init(model: nn.Module, path: str | Path, arch: str | None) -> str:
    """Load the weights of the checkpoint ``path`` (a file or a run folder) into ``model``,
    which must be of the same architecture; returns the file's SHA-256."""
    from smoothmix.checkpoint import (
        checkpoint_file,
        file_sha256,
        read_checkpoint,
        strip_wrapper_prefixes,
    )

    source = checkpoint_file(path)
    ckpt = read_checkpoint(source)
    require(arch is None or ckpt.arch in (None, arch),
            f"--init {path} is a {ckpt.arch} checkpoint, but this run trains {arch}")
    try:
        model.load_state_dict(strip_wrapper_prefixes(ckpt.state_dict))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise SmoothmixError(f"--init {path} does not fit the model: {first_line(exc)} "
                             "(other architecture settings?)") from None
    return file_sha256(source)


def init_record(init: str | Path | None, saved: Mapping[str, Any] | None,
                outdir: Path) -> dict[str, Any]:
    """The ``init``/``init_sha256`` a resumed run keeps from its checkpoint (``saved``); a
    contradicting ``--init`` is refused. Empty for a run that did not start from one."""
    stored = {k: saved[k] for k in ("init", "init_sha256") if k in saved} if saved else {}
    require(init is None or str(init) == stored.get("init"),
            f"cannot resume {outdir} with --init {init}: the run there "
            + (f"started from {stored['init']}" if stored.get("init") else
               "started from fresh weights") + "; drop --init to continue it")
    return stored
