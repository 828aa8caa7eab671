"""The base classifier f∘D of denoised smoothing, and what the guarantee needs from D.

g(x) = argmax_c P(f(D(x + δ)) = c) is Cohen smoothing of the base classifier h = f∘D, so
CERTIFY, PREDICT, the decisions at radii, grid mode and the two-sided bound hold for it
unchanged, provided h is one fixed function of each noisy sample. That asks three things of
the denoiser D, each enforced here:

- D acts per sample: D on a batch equals D on each sample alone (no batch statistics, no
  mixing of rows), or the votes of one block would depend on each other and the binomial
  bound would not hold. Probed once per run (:func:`probe_denoiser`).
- D runs in eval mode, inside the module that votes: :class:`Denoised` holds D and keeps it
  in eval mode whatever ``train()`` it is given (dropout or train-mode batch norm would make
  it random or coupled).
- D is deterministic: two calls on the same batch agree. A denoiser that needs randomness
  must draw it as a fixed function of its input (e.g. a per-row generator seeded from the
  noisy row, whose noise came from the run's (seed, idx) stream), so that shards and resumes
  stay exact; one that draws from torch's global RNG is refused by the probe.

D's output must have its input's shape (checked on every forward: one comparison). A
denoiser is identified in result files by its record (:meth:`Denoised.record`): ``kind``,
``identity`` (a checkpoint's ``sha256``, a hub ``model_id`` with its ``revision``, or a saved
folder's ``folder_sha256``), ``settings`` and ``sigma``, the noise level it was built for;
:func:`denoiser_for_run` refuses a run at another σ unless the run allows it explicitly.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from smoothmix.denoisers.registry import DENOISERS
from smoothmix.errors import SmoothmixError, first_line, require

if TYPE_CHECKING:
    from smoothmix.run import RunSpec

__all__ = ["PROBE_ROWS", "Denoised", "IdentityDenoiser", "denoised_in", "denoiser_for_run",
           "describe_denoiser", "load_denoiser", "module_record", "probe_denoiser"]

#: Noisy rows the probe runs D on (as a batch, then one by one, then again as a batch).
PROBE_ROWS = 4
# How close "equal" is in the probe: the batch and the single-row forward may sum in another
# order (last bits), while a coupling or a random draw moves outputs by far more.
_RTOL, _ATOL = 1e-4, 1e-5
# The probe's own noise: a private generator, so that no run's noise stream is touched.
_PROBE_SEED = 20_200_928
_HUB = "hub:"
_PRETRAINED = "pretrained:"


class IdentityDenoiser(nn.Module):
    """D(z) = z: f∘D is then f itself (for tests, and to record "no denoiser" explicitly)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


DENOISERS.register("identity", IdentityDenoiser,
                   description="D(z) = z: the classifier alone (tests, baselines)")


class Denoised(nn.Module):
    """The base classifier f∘D: ``classifier(denoiser(z))`` for noisy images z in [0, 1].

    ``record``: what identifies D in result files (``kind``, ``identity``, ``settings``,
    ``sigma``; JSON values), as :func:`load_denoiser` returns it; without one,
    :func:`module_record` of ``denoiser`` (its class and a hash of its state). The dataset
    entry points record it as the run's ``denoiser`` setting, check its ``sigma`` against
    the run's, and probe D on the first example before any file is written
    (:func:`probe_denoiser`); used directly (e.g. in :class:`smoothmix.core.Smooth`) the
    probe runs on the first batch instead. D stays in eval mode: ``train()`` sets the
    classifier's mode only.
    """

    def __init__(self, classifier: nn.Module, denoiser: nn.Module,
                 record: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for name, value in (("classifier", classifier), ("denoiser", denoiser)):
            require(isinstance(value, nn.Module), f"Denoised({name}=...) must be a "
                    f"torch.nn.Module, got {type(value).__name__}")
        self.classifier = classifier
        self.denoiser = denoiser.eval()
        self.record = _checked_record(record if record is not None else module_record(denoiser))
        self.probed = False

    def train(self, mode: bool = True) -> Denoised:
        super().train(mode)
        self.denoiser.eval()  # D votes in eval mode only (see the module docstring)
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if any(m.training for m in self.denoiser.modules()):  # switched past train()
            self.denoiser.eval()
        if not self.probed:
            if len(z) >= PROBE_ROWS:
                self.probe(z[:PROBE_ROWS], noisy=True)
            else:  # too few rows to see a coupling: noisy copies around the first one
                self.probe(z[0])
        return self.classifier(_denoise(self.denoiser, z))

    def probe(self, x: torch.Tensor, sigma: float | None = None, *, noisy: bool = False
              ) -> None:
        """:func:`probe_denoiser` on D, once: ``x`` one image (noisy copies are drawn around
        it at ``sigma``) or, with ``noisy``, a batch of noisy rows already."""
        probe_denoiser(self.denoiser, x, sigma, noisy=noisy)
        self.probed = True

    def extra_repr(self) -> str:
        return f"record={describe_denoiser(self.record)}"


def _denoise(denoiser: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """D(z), with its shape checked: the classifier must see images of the input's shape."""
    out = denoiser(z)
    if not isinstance(out, torch.Tensor) or out.shape != z.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SmoothmixError(f"the denoiser returned {shape} for input {tuple(z.shape)}; a "
                             "denoiser must return images of its input's shape")
    return out


def probe_denoiser(denoiser: nn.Module, x: torch.Tensor, sigma: float | None = None, *,
                   noisy: bool = False) -> None:
    """Refuse, in one line, a denoiser the guarantee cannot hold for: output shape other
    than the input's, coupling across the batch (D on :data:`PROBE_ROWS` noisy rows differs
    from D on each row alone) or randomness (two calls on the same rows differ). The rows
    are ``x`` (C x H x W) plus Gaussian noise at ``sigma`` (0.5 when not given) from a
    private generator, or ``x`` itself when ``noisy``; D runs in eval mode, in fp32, without
    autocast."""
    rows = x if noisy else _probe_rows(x, 0.5 if sigma is None else sigma)
    was_training = denoiser.training
    denoiser.eval()
    try:
        with _plain_forward(rows.device):
            first = _denoise(denoiser, rows)
            again = _denoise(denoiser, rows)
            alone = torch.cat([_denoise(denoiser, rows[i:i + 1]) for i in range(len(rows))])
    finally:
        denoiser.train(was_training)
    gap = _gap(first, again)
    require(gap is None, f"the denoiser is not deterministic in eval mode (two calls on the "
            f"same images differ by up to {gap}); a denoiser that needs randomness must derive "
            "it from its input (see smoothmix.denoisers.compose), not draw from a global RNG")
    gap = _gap(first, alone)
    require(gap is None, f"the denoiser couples the images of a batch (its output on a batch "
            f"of {len(rows)} differs by up to {gap} from its output on each image alone); "
            "denoised smoothing needs a per-sample denoiser (no batch statistics, eval mode)")


def _probe_rows(x: torch.Tensor, sigma: float) -> torch.Tensor:
    require(x.dim() == 3, f"the denoiser probe takes one image C x H x W, got {tuple(x.shape)}")
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    noise = torch.randn((PROBE_ROWS, *x.shape), generator=generator)
    return (x.detach().float().cpu() + sigma * noise).to(x.device)


@contextlib.contextmanager
def _plain_forward(device: torch.device) -> Iterator[None]:
    """No gradients, no autocast and no TF32: the probe compares D's fp32 outputs (TF32
    convolutions on a GPU pick per-batch-size algorithms whose rounding, about 1e-3, would
    read as a coupling)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _gap(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """None when ``a`` and ``b`` agree within the probe's tolerance, else the largest gap."""
    a, b = a.float(), b.float()
    if torch.allclose(a, b, rtol=_RTOL, atol=_ATOL, equal_nan=True):
        return None
    return f"{float((a - b).abs().nan_to_num(math.inf).max()):.3g}"


def module_record(denoiser: nn.Module, *, sigma: float | None = None,
                  settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of a denoiser built in Python: its class as ``kind``, a SHA-256 of its
    state dict (names, dtypes, shapes and bytes) as ``identity``, and ``sigma`` (by default
    the module's own numeric ``sigma`` attribute, as a one-shot diffusion denoiser has;
    None: not built for one, so no run is refused for its σ). ``settings`` default to the
    module's ``record_settings()`` where it has one (what changes its output besides the
    weights, e.g. a diffusion denoiser's step t* and clipping)."""
    own = getattr(denoiser, "sigma", None)
    if sigma is None and isinstance(own, (int, float)) and not isinstance(own, bool):
        sigma = float(own)
    record_settings = getattr(denoiser, "record_settings", None)
    if settings is None and callable(record_settings):
        settings = record_settings()
    digest = hashlib.sha256()
    for name, tensor in denoiser.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    kind = type(denoiser).__qualname__
    return {"kind": kind, "identity": {"state_sha256": digest.hexdigest()},
            "settings": dict(settings or {}), "sigma": sigma}


def _record_sigma(sigma: object) -> float | None:
    """A denoiser record's sigma (the one rule for it): a finite number >= 0, or None."""
    if sigma is None:
        return None
    require(isinstance(sigma, (int, float)) and not isinstance(sigma, bool)
            and math.isfinite(sigma) and sigma >= 0,
            f"the denoiser record's sigma must be a number >= 0 or None, got {sigma!r}")
    assert isinstance(sigma, (int, float))
    return float(sigma)


def _checked_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` as JSON reads it back, with its four keys; one line otherwise."""
    require(isinstance(record, Mapping), f"a denoiser record must be a mapping, got "
            f"{type(record).__name__}")
    missing = [k for k in ("kind", "identity", "settings", "sigma") if k not in record]
    require(not missing, f"the denoiser record lacks {', '.join(missing)} (it needs kind, "
            "identity, settings and sigma)")
    _record_sigma(record["sigma"])
    from smoothmix.run import _json_record  # deferred: run.py's imports need not load here

    return _json_record(record, "the denoiser record")


def describe_denoiser(record: Mapping[str, Any] | None) -> str:
    """A short name for a denoiser record (analyze's column): kind, a short identity, σ."""
    if not record:
        return "none"
    identity = record.get("identity")
    ident = ""
    if isinstance(identity, Mapping):
        if "model_id" in identity:
            ident = f"{identity['model_id']}@{identity.get('revision') or '?'}"
        else:
            digest = next((str(v) for v in identity.values() if isinstance(v, str)), "")
            ident = digest[:12]
    sigma = record.get("sigma")
    built = f" sigma={sigma:g}" if isinstance(sigma, (int, float)) else ""  # ASCII: LaTeX
    return " ".join(p for p in (str(record.get("kind", "?")), ident) if p) + built


def denoised_in(model: nn.Module) -> Denoised | None:
    """The :class:`Denoised` that ``model`` is or wraps (torch.compile, DataParallel, a
    Sequential, ...), else None: a wrapper must not hide the denoiser from the run."""
    return next((m for m in model.modules() if isinstance(m, Denoised)), None)


def denoiser_for_run(model: nn.Module, spec: RunSpec) -> dict[str, Any] | None:
    """The denoiser record a dataset run records: the spec's, else the model's when it is
    or wraps a :class:`Denoised` (both given: they must agree). The one place where a
    denoiser built for another σ than the run's is refused, unless
    ``spec.allow_denoiser_sigma_mismatch``."""
    denoised = denoised_in(model)
    mine = denoised.record if denoised is not None else None
    if spec.denoiser is not None and denoised is None:
        # Allowed since 0.5 (a model that composes its own denoiser), but then nothing here
        # probes D or keeps it in eval mode: say so once.
        warnings.warn("RunSpec.denoiser describes a denoiser, but the model holds no "
                      "smoothmix Denoised: nothing checks that the denoiser acts per sample, "
                      "deterministically and in eval mode; wrap the model as "
                      "Denoised(classifier, denoiser, record)", UserWarning, stacklevel=3)
    record = dict(spec.denoiser) if spec.denoiser is not None else mine
    require(mine is None or record == mine,
            f"RunSpec.denoiser {spec.denoiser} is not the model's denoiser {mine}; leave "
            "RunSpec.denoiser unset to record the model's")
    if record is None:
        return None
    # A sigma that is not a number (e.g. the string "0.25") would skip the check below.
    built, sigma = _record_sigma(record.get("sigma")), spec.noise.sigma
    if built is not None and not math.isclose(built, sigma, rel_tol=1e-9):
        require(spec.allow_denoiser_sigma_mismatch,
                f"the denoiser ({describe_denoiser(record)}) was built for sigma={built:g}, not "
                f"the run's sigma={sigma:g}; allow it explicitly with "
                "--allow-denoiser-sigma-mismatch (RunSpec(allow_denoiser_sigma_mismatch=True))")
    return record


def load_denoiser(source: str | os.PathLike, *, sigma: float | None = None,
                  **settings: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A denoiser (in eval mode, on the CPU) and its record, from ``source``:

    - a smoothmix checkpoint file (or a training ``--outdir`` holding one) whose ``arch`` is
      a registered denoiser kind (:data:`smoothmix.denoisers.DENOISERS`), rebuilt from its
      ``arch_kwargs`` and ``state_dict``; identity: the file's SHA-256, sigma: its ``sigma``;
    - ``pretrained:NAME``, a pretrained denoiser of :mod:`smoothmix.pretrained`;
    - a folder saved by ``diffusers`` or ``hub:MODEL_ID``: handed to
      :func:`smoothmix.denoisers.diffusion.load` with ``sigma`` and ``settings`` (nothing is
      fetched unless a hub id is named).

    ``sigma``: the run's noise level, from which a diffusion denoiser picks its step; a
    checkpoint records the σ it was trained for, which the run compares with its own
    (:func:`denoiser_for_run`). ``settings`` apply to diffusion denoisers only (a
    checkpoint records its own).
    """
    from smoothmix.checkpoint import CHECKPOINT_NAME

    text = os.fspath(source)
    path = Path(text)
    if text.startswith(_HUB) or (path.is_dir() and not (path / CHECKPOINT_NAME).is_file()):
        return _load_diffusion(text, sigma, settings)
    if _checkpoint_kind_has_loader(text):  # e.g. a ddpm-unet: one network for every sigma
        return _load_diffusion(text, sigma, settings)
    require(not settings, f"settings {sorted(settings)} apply to diffusion denoisers; a "
            "checkpoint records its own")
    return _load_checkpoint(text)


def _checkpoint_kind_has_loader(source: str) -> bool:
    """Whether ``source`` is a checkpoint of a denoiser kind registered with its own
    ``loader`` (a noise predictor that becomes a denoiser only at a given sigma, such as
    ``ddpm-unet``), rather than a module that denoises as it is."""
    from smoothmix.checkpoint import checkpoint_file, load_checkpoint

    if not checkpoint_file(source).is_file():
        return False
    arch = load_checkpoint(source).get("arch")
    return (isinstance(arch, str) and arch in DENOISERS
            and bool(DENOISERS.metadata(arch).get("loader")))


def _load_diffusion(source: str, sigma: float | None, settings: dict[str, Any]
                    ) -> tuple[nn.Module, dict[str, Any]]:
    try:  # by name: the diffusion module (and its optional diffusers) loads only when used
        diffusion = importlib.import_module("smoothmix.denoisers.diffusion")
    except ImportError as exc:
        raise SmoothmixError(f"cannot load the diffusion denoiser {source}: "
                             f"{first_line(exc)}") from None
    module, record = diffusion.load(source, sigma=sigma, **settings)
    return module.eval(), _checked_record(record)


def _load_checkpoint(source: str) -> tuple[nn.Module, dict[str, Any]]:
    from smoothmix.checkpoint import (
        checkpoint_file,
        file_sha256,
        load_checkpoint,
        strip_wrapper_prefixes,
    )
    from smoothmix.models import list_models

    ckpt = load_checkpoint(source)
    arch = ckpt.get("arch")
    if arch in list_models() and arch not in DENOISERS:
        raise SmoothmixError(f"{source} is a classifier checkpoint (arch {arch!r}), not a "
                             f"denoiser; denoiser kinds: {', '.join(DENOISERS.names())}")
    require(arch in DENOISERS, f"{source}: {DENOISERS.unknown_message(arch)}")
    kwargs = ckpt.get("arch_kwargs") or {}
    require(isinstance(kwargs, dict), f"{source} has a malformed 'arch_kwargs' {kwargs!r}")
    module = DENOISERS.get(arch)(**kwargs)
    try:
        module.load_state_dict(strip_wrapper_prefixes(ckpt["state_dict"]), strict=True)
    except RuntimeError as exc:
        raise SmoothmixError(f"{source} does not fit denoiser {arch!r} "
                             f"{kwargs}: {first_line(exc)}") from None
    if source.startswith(_PRETRAINED):
        identity = {"sha256": ckpt.get("weights_sha256"), "pretrained": source}
    else:
        identity = {"sha256": file_sha256(checkpoint_file(source))}
    sigma = ckpt.get("sigma")
    record = {"kind": arch, "identity": identity, "settings": dict(kwargs),
              "sigma": None if sigma is None else float(sigma)}
    return module.eval(), _checked_record(record)

