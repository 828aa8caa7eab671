"""The interface every training method implements, and the pieces they share.

A method turns one batch ``(x, y)`` into a differentiable loss; the training loop knows
nothing else about it. Hyperparameters are declared once per method as :class:`Option`
objects, so that validation, defaults, the CLI flags and the presets all come from the
same table.

Noise layout (all methods): the ``m`` noise draws of a batch of ``B`` images are one
tensor of shape ``(m, B, ...)``; the noisy copies go through the model as ONE batch of
``m*B`` rows with copy ``i`` of image ``b`` at row ``i*B + b``, so per-image averages
over the copies are ``.view(m, B, K).mean(0)`` and labels are ``y.repeat(m)``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from smoothmix.checks import check_num_classes, check_sigma
from smoothmix.errors import SmoothmixError

__all__ = [
    "LOG_CLAMP", "Option", "OptionInfo", "StepOutput", "TrainingMethod", "accuracy", "at_least",
    "check_batch", "cross_entropy_copies", "forward_groups", "full_precision",
    "has_batch_statistics", "kl_divergence", "logit_sums", "mean_over_copies",
    "method_side_data", "noisy_accuracy_sums", "noisy_copies", "non_negative", "positive",
    "soft_cross_entropy", "unwrap_ddp", "warmup_factor",
]

# Anything below this is treated as 0 inside a log (docs/MATH.md §3.3/3.5/3.6 clamp at 1e-20).
LOG_CLAMP = 1e-20


@dataclass
class StepOutput:
    """What a method returns for one batch.

    ``loss`` is the scalar to back-propagate; ``metrics`` are detached scalar tensors on the
    batch's device (batch means), to be accumulated by the loop and read once per logging
    interval, so a step never waits for the device.
    """

    loss: Tensor
    metrics: dict[str, Tensor]


class OptionInfo(NamedTuple):
    """Public description of one method option (for the CLI, presets and docs)."""

    default: Any
    help: str
    type: type
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Option:
    """Declaration of one hyperparameter of a method.

    ``check`` returns an error text (the part after "must be") or ``None`` when the value is
    fine; ``nullable`` options accept ``None`` as a real value (e.g. "no max-norm").
    """

    default: Any
    help: str
    type: type
    check: Callable[[Any], str | None] | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False

    def info(self) -> OptionInfo:
        return OptionInfo(self.default, self.help, self.type, self.choices)


def at_least(bound: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= bound else f"at least {bound:g}"


def positive(v: float) -> str | None:
    return None if v > 0 else "positive"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "non-negative"


def _coerce(method: str, name: str, option: Option, value: Any) -> Any:
    """Convert ``value`` to the option's type or raise a one-line error naming the option."""
    where = f"{method} option {name}"
    if value is None:
        return None if option.nullable else option.default
    if isinstance(value, bool) and option.type is not bool:
        raise SmoothmixError(f"{where} must be a number, got {value!r}")
    try:
        if option.type is int:
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError
            value = int(as_float)
        elif option.type is float:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = option.type(value)
    except (TypeError, ValueError):
        kind = {int: "an integer", float: "a finite number"}.get(option.type, option.type.__name__)
        raise SmoothmixError(f"{where} must be {kind}, got {value!r}") from None
    if option.choices is not None and value not in option.choices:
        valid = ", ".join(map(str, option.choices))
        raise SmoothmixError(f"{where} must be one of {valid}, got {value!r}")
    if option.check is not None:
        problem = option.check(value)
        if problem:
            raise SmoothmixError(f"{where} must be {problem}, got {value!r}")
    return value


class TrainingMethod(abc.ABC):
    """One randomized-smoothing training objective (docs/MATH.md §3).

    ``__init__`` validates every option (unknown names and bad values raise
    :class:`SmoothmixError`) and stores them as attributes of the same name.
    ``__call__(model, x, y, epoch)`` returns the loss of one batch. ``model`` is in train
    mode on entry and on exit; attacks switch it to eval mode and freeze its parameters
    while they run. ``x`` holds images in [0, 1] (noise is added here, before the model's
    normalisation layer), ``y`` the integer labels, ``epoch`` the 0-based epoch (for
    warm-ups and deferred terms).
    """

    name: ClassVar[str]
    options: ClassVar[dict[str, Option]] = {}
    # Per-example side data the method needs besides (x, y), by name (e.g. CAT-RS's
    # "soft_target"). The training loop asks the data layer for exactly these rows (looked
    # up by dataset index, on the batch's device) and passes them as keyword arguments:
    # ``method(model, x, y, epoch, soft_target=...)``. Empty for methods that need none.
    side_data: ClassVar[tuple[str, ...]] = ()
    # What the method trains: "classifier" (the model maps images to logits; ``--arch``
    # names an architecture of smoothmix.models) or "denoiser" (the model maps images to
    # images of the same shape; ``--arch`` names a kind of smoothmix.denoisers.DENOISERS,
    # built without a normalisation layer). The loop checks the model's output against it.
    trains: ClassVar[str] = "classifier"
    # False for methods that train without Gaussian noise (``plain``): they take no sigma
    # (``sigma`` is None) and their checkpoints record ``sigma: None``.
    uses_noise: ClassVar[bool] = True

    def __init__(self, sigma: float | None, num_classes: int, **options: Any) -> None:
        if self.uses_noise or sigma is not None:
            sigma = check_sigma(sigma)  # the same rule (and message) as Smooth and the CLI
        classes = check_num_classes(num_classes)
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "(none)"
            raise SmoothmixError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for "
                f"method {self.name}; valid options: {valid}"
            )
        # None only for methods with ``uses_noise = False``, which never read it.
        self.sigma: float = cast(float, sigma)
        self.num_classes = classes
        for key, option in self.options.items():
            setattr(self, key, _coerce(self.name, key, option, options.get(key)))

    def config(self) -> dict[str, Any]:
        """All option values, for checkpoints and logs."""
        return {key: getattr(self, key) for key in self.options}

    def identity(self) -> dict[str, Any]:
        """Plain values identifying what the method read besides its options (e.g. the
        SHA-256 of a frozen classifier's checkpoint): stored in the checkpoint's ``config``
        and compared on resume, so a run never continues with other inputs. Empty here."""
        return {}

    def monitor(self, model: nn.Module, x: Tensor, y: Tensor,
                generator: torch.Generator) -> dict[str, Tensor]:
        """The epoch-end test metrics of one test batch, as SUMS over its examples (scalar
        tensors; the caller sums them over batches and ranks and divides by the number of
        examples, then logs each as ``test_<name>``). Runs under ``torch.no_grad`` with the
        model in eval mode; noise must come from ``generator`` (seeded per epoch and rank,
        so the evaluation never moves the training RNG).

        Default: the base classifier's accuracy and cross-entropy on one Gaussian draw of
        noise level sigma per image (``test_noisy_acc`` / ``test_noisy_loss``).
        """
        return noisy_accuracy_sums(model, x, y, self.sigma, generator)

    def probe_output(self, model: nn.Module, x: Tensor) -> Tensor:
        """The model's output on a batch ``x`` as the loop's first-batch check sees it:
        logits for a classifier, an image of ``x``'s shape for a denoiser. ``model(x)``
        here; a method that calls its model otherwise (``ddpm``: ``model(x_t, t)``)
        overrides it."""
        return model(x)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}(sigma={self.sigma}, num_classes={self.num_classes}, {args})"

    # -- hooks (tests override these to fix the randomness) -------------------------------
    def _noise(self, x: Tensor, m: int) -> Tensor:
        """``m`` Gaussian draws of shape ``(m, *x.shape)`` with standard deviation sigma."""
        return torch.randn((m, *x.shape), device=x.device, dtype=x.dtype) * self.sigma

    @abc.abstractmethod
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        """Loss of one batch (see class docstring); ``side`` holds the rows of the batch's
        examples for every name in :attr:`side_data` (nothing for most methods)."""


def noisy_accuracy_sums(model: nn.Module, x: Tensor, y: Tensor, sigma: float,
                        generator: torch.Generator) -> dict[str, Tensor]:
    """Correct predictions and the summed cross-entropy of ``model`` on ``x`` plus one
    Gaussian draw (std ``sigma``, from ``generator``) per image: the default
    :meth:`TrainingMethod.monitor`."""
    noisy = x + sigma * torch.randn(x.shape, generator=generator, device=x.device,
                                    dtype=x.dtype)
    return logit_sums(model(noisy), y)


def logit_sums(logits: Tensor, y: Tensor) -> dict[str, Tensor]:
    """``{"noisy_acc": correct, "noisy_loss": summed cross-entropy}`` of a batch's logits."""
    logits = logits.float()
    return {"noisy_acc": (logits.argmax(1) == y).sum(),
            "noisy_loss": F.cross_entropy(logits, y, reduction="sum")}


def method_side_data(method: Any) -> tuple[str, ...]:
    """The side-data names a training method (or any loss callable) declares; ``()`` for
    callables without a :attr:`TrainingMethod.side_data` declaration."""
    names = getattr(method, "side_data", ())
    return tuple(str(n) for n in names)


# -- shared pieces ------------------------------------------------------------------------


def noisy_copies(x: Tensor, noise: Tensor) -> Tensor:
    """The ``m*B`` rows ``x + noise[i]`` (copy-major layout, see module docstring)."""
    return (x.unsqueeze(0) + noise).flatten(0, 1)


def mean_over_copies(probs: Tensor, m: int) -> Tensor:
    """Per-image mean over the ``m`` copies of an ``(m*B, K)`` tensor -> ``(B, K)``."""
    return probs.view(m, -1, probs.shape[-1]).mean(0)


def soft_cross_entropy(target: Tensor, log_q: Tensor) -> Tensor:
    """Row-wise ``-sum_c target_c * log_q_c``; ``target`` keeps its gradient."""
    return -(target * log_q).sum(-1)


def kl_divergence(target: Tensor, log_q: Tensor) -> Tensor:
    """Row-wise ``KL(target || q) = sum_c t_c (log t_c - log q_c)``.

    The soft target keeps its gradient (the references do not detach it). Written out
    instead of ``F.kl_div`` because the latter's gradient w.r.t. the target is NaN where a
    target entry is exactly 0 (an underflowed softmax); here such entries contribute 0 to
    the value and a finite gradient, and elsewhere the two agree.
    """
    return (target * (target.clamp_min(1e-30).log() - log_q)).sum(-1)


def full_precision(t: Tensor) -> Tensor:
    """At least float32 (losses of bf16/fp16 autocast logits are computed in float32;
    float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Top-1 accuracy as a detached scalar tensor (no host sync)."""
    return (logits.detach().argmax(-1) == y).float().mean()


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper, else the model itself.

    Attacks call this: their forwards need no gradient synchronisation (the parameters are
    frozen and identical on every rank), and a DDP forward in train mode would arm the
    reducer for a backward that never comes (attacks differentiate w.r.t. the input only)
    and broadcast buffers on every attack step. Loss terms go through ``model`` itself.
    """
    # torch.compile(DDP(net)) (what ``--compile`` does under torchrun) hides the DDP
    # wrapper behind ``_orig_mod``; its attacks then run on the eager inner module.
    inner = getattr(model, "_orig_mod", model)
    return inner.module if isinstance(inner, DistributedDataParallel) else model


def has_batch_statistics(model: nn.Module) -> bool:
    """Whether ``model`` has batch-norm layers (in train mode they normalise with each
    forward's own batch, so the grouping of forwards changes the loss)."""
    return any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in model.modules())


def forward_groups(
    model: nn.Module, groups: Sequence[Tensor], joint: bool | None = None
) -> list[Tensor]:
    """Logits of several input batches, as ONE forward on accelerators.

    On a GPU one forward of the concatenated rows launches each kernel once instead of
    once per group and keeps the device busy. On the CPU the cost per row is flat from
    64 to 512 rows and the joint activations fall out of cache, so separate forwards are
    the faster choice there and each group gets its own. Batch-norm layers
    in train mode normalise with the batch's own statistics, so for them a joint forward
    would change the loss: they always get separate forwards, as in the reference code.
    One backward serves all groups either way. ``joint`` overrides the device rule.
    """
    if len(groups) == 1:
        return [model(groups[0])]
    if joint is None:
        joint = groups[0].device.type != "cpu"
    if not joint or (model.training and has_batch_statistics(unwrap_ddp(model))):
        return [model(g) for g in groups]
    out = model(torch.cat(list(groups)))
    return list(out.split([len(g) for g in groups]))


def warmup_factor(epoch: int, warmup: int) -> float:
    """``min(1, (epoch + 1) / warmup)`` (0-based epochs); ``warmup = 0`` means none."""
    return 1.0 if warmup <= 0 else min(1.0, (epoch + 1) / warmup)


def check_batch(x: Tensor, y: Tensor) -> None:
    """Cheap shape checks (no device sync) with a clear message instead of a deep error."""
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise SmoothmixError(
            f"a training batch must be images N x ... with N labels, got x {tuple(x.shape)} "
            f"and y {tuple(y.shape)}"
        )
    if not x.is_floating_point():
        raise SmoothmixError(f"images must be floats in [0, 1], got dtype {x.dtype}")


def cross_entropy_copies(logits: Tensor, y: Tensor, m: int) -> Tensor:
    """Mean cross-entropy of the ``m*B`` noisy rows against their labels."""
    return F.cross_entropy(logits, y.repeat(m))
