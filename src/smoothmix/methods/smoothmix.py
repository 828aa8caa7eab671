"""SmoothMix (Jeong et al. 2021; docs/MATH.md §3.6): mixup along the adversarial path of the
smoothed classifier, to calibrate its confidence off the data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothmix.methods.attacks import project_ball, smoothmix_search
from smoothmix.methods.base import (
    LOG_CLAMP,
    Option,
    StepOutput,
    TrainingMethod,
    accuracy,
    at_least,
    check_batch,
    forward_groups,
    full_precision,
    kl_divergence,
    mean_over_copies,
    noisy_copies,
    non_negative,
    positive,
    unwrap_ddp,
    warmup_factor,
)
from smoothmix.models import Normalize
from smoothmix.models.lenet import LeNet

__all__ = ["SmoothMix", "is_mode_free"]

# Layers whose forward is the same function in train and eval mode and reads no batch
# statistics. Exact types only: a subclass may override forward (and read self.training).
_MODE_FREE_LAYERS: frozenset[type[nn.Module]] = frozenset({
    nn.Sequential, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.LayerNorm, nn.GroupNorm,
    Normalize, LeNet,
})


def is_mode_free(model: nn.Module) -> bool:
    """True when every submodule is a layer known to compute the same function in train
    and eval mode (no batch norm, no dropout, no unknown module that might read
    ``self.training``). Unknown modules count as mode-dependent: the answer errs towards
    the slower, always-correct path."""
    return all(type(mod) in _MODE_FREE_LAYERS for mod in model.modules())


class SmoothMix(TrainingMethod):
    """``L = L_nat + eta * w * L_mix`` (docs/MATH.md §3.6).

    Per batch: ``m`` noise draws, reused everywhere; the unrestricted search gives the path
    ``x~(0..T)``; the anchor ``x0`` is ``x`` (``mix_step=0``) or the one-step adversary
    projected onto the ``w * step_size`` ball (``mix_step=1``); ``L_nat`` is the CE of the
    ``m`` noisy copies of ``x0`` and ``F^(x0)`` their mean softmax; with ``lam ~ U[0, 1/2)``,
    ``x_mix = (1 - lam) x0 + lam x~(T)`` and ``y_mix = (1 - lam) F^(x0) + lam / K``;
    ``L_mix`` is the mean over copies and batch of ``1[argmax F^(x0) = y] * KL(y_mix ||
    F(x_mix + delta_i))``. ``y_mix`` is not detached (the reference code's behaviour, which
    produced the published numbers). ``w = min(1, (epoch + 1) / warmup)``.

    The ``x0`` and ``x_mix`` copies (``m B`` rows each) share one backward, and on an
    accelerator one forward too (see :func:`~smoothmix.methods.base.forward_groups`).

    Shared first forward: with ``mix_step=0`` the search's first step and ``L_nat`` both
    evaluate the model on the ``m`` noisy copies of ``x``. When the search's eval mode
    changes nothing (:func:`is_mode_free`: no batch norm, dropout or unknown layers) and
    the model is a plain module (not DDP/compiled, whose train-mode forwards have side
    effects), ONE train-mode forward serves both: ``dJ/dx`` is taken from it with
    ``autograd.grad`` (input only, graph kept) and the same logits feed ``L_nat``. The loss
    and its gradients are those of the two-forward step (tests/test_methods.py checks
    both against each other); it saves one of the ``T + 2`` forwards per step. The price:
    the final backward also computes the input gradient of the first layer (the input is a
    leaf that requires grad). For LeNet on a CPU that input gradient of its 1-channel conv
    costs about the saved forward; on GPUs, where the step is launch-bound, one forward
    fewer is the gain (benchmarks/train_throughput.py measures the step).
    """

    name = "smoothmix"
    # Option values, set by TrainingMethod.__init__ from the table below.
    num_noise: int
    num_steps: int
    step_size: float
    eta: float
    mix_step: int
    warmup: int
    max_norm: float | None
    options = {
        "num_noise": Option(4, "m: noise draws per image, shared by search and losses "
                            "(published: MNIST 4, CIFAR-10 2)", int, at_least(1)),
        "num_steps": Option(4, "T: steps of the adversarial search (published: MNIST 3/4/8 "
                            "for sigma 0.25/0.5/1.0, CIFAR-10 4)", int, at_least(1)),
        "step_size": Option(1.0, "length of each search step in [0, 1] pixel units "
                            "(published: 1.0; CIFAR-10 0.5/1.0/2.0 for sigma 0.25/0.5/1.0)",
                            float, positive),
        "eta": Option(1.0, "weight eta of the mixup loss (published: 1.0 or 5.0)", float,
                      non_negative),
        "mix_step": Option(0, "anchor of the mixup: 0 = clean input, 1 = one-step adversary "
                           "(the '+ one-step adversary' variant)", int, choices=(0, 1)),
        "warmup": Option(10, "epochs over which the mixup weight w grows linearly to 1 "
                         "(0 = no warm-up)", int, non_negative),
        "max_norm": Option(None, "optional L2 bound on the search's distance from x "
                           "(default: unrestricted)", float, positive, nullable=True),
    }

    def _mix_lambda(self, x: Tensor) -> Tensor:
        """Mixup weights ``lam ~ U[0, 1/2)`` per example (hook for tests)."""
        return torch.rand(x.shape[0], device=x.device, dtype=x.dtype) / 2

    def shares_first_forward(self, model: nn.Module) -> bool:
        """Whether this step can serve the first search step and ``L_nat`` with one forward
        (see the class docstring)."""
        plain = unwrap_ddp(model) is model and not hasattr(model, "_orig_mod")
        return self.mix_step == 0 and plain and is_mode_free(model)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        check_batch(x, y)
        m, batch, num_classes = self.num_noise, x.shape[0], self.num_classes
        noise = self._noise(x, m)
        w = warmup_factor(epoch, self.warmup)
        lam = self._mix_lambda(x)  # the search draws no random numbers: same stream order
        lam_x = lam.view(-1, *([1] * (x.dim() - 1)))

        if self.shares_first_forward(model):
            # One train-mode forward: the search's first input gradient and L_nat.
            x_leaf = x.detach().requires_grad_(True)
            logits0 = full_precision(model(noisy_copies(x_leaf, noise)))
            smoothed = mean_over_copies(logits0.softmax(-1), m)
            objective = -smoothed.gather(1, y.unsqueeze(1)).clamp_min(LOG_CLAMP).log().sum()
            (first_grad,) = torch.autograd.grad(objective, x_leaf, retain_graph=True)
            path = smoothmix_search(model, x, y, noise, self.num_steps, self.step_size,
                                    self.max_norm, first_grad=first_grad)
            x_mix = (1 - lam_x) * x + lam_x * path[-1]
            logits_mix = full_precision(model(noisy_copies(x_mix, noise)))
        else:
            path = smoothmix_search(model, x, y, noise, self.num_steps, self.step_size,
                                    self.max_norm)
            x0 = x if self.mix_step == 0 else project_ball(path[1], x, w * self.step_size)
            x_mix = (1 - lam_x) * x0 + lam_x * path[-1]
            logits0, logits_mix = forward_groups(
                model, [noisy_copies(x0, noise), noisy_copies(x_mix, noise)]
            )
            logits0, logits_mix = full_precision(logits0), full_precision(logits_mix)
            smoothed = mean_over_copies(logits0.softmax(-1), m)
        y_copies = y.repeat(m)
        loss_nat = F.cross_entropy(logits0, y_copies)
        lam_y = lam.to(smoothed.dtype).unsqueeze(1)
        y_mix = (1 - lam_y) * smoothed + lam_y / num_classes
        correct = smoothed.detach().argmax(-1) == y
        kl = kl_divergence(y_mix.unsqueeze(0), logits_mix.log_softmax(-1).view(m, batch, -1))
        loss_mix = (kl * correct).mean()
        loss = loss_nat + (self.eta * w) * loss_mix
        return StepOutput(loss, {
            "loss": loss.detach(),
            "loss_nat": loss_nat.detach(),
            "loss_mix": loss_mix.detach(),
            "mix_fraction": correct.float().mean(),
            "acc": accuracy(logits0, y_copies),
        })
