"""Consistency regularisation (Jeong & Shin 2020; docs/MATH.md §3.5)."""

from __future__ import annotations

from torch import Tensor, nn

from smoothmix.methods.base import (
    LOG_CLAMP,
    Option,
    StepOutput,
    TrainingMethod,
    accuracy,
    at_least,
    check_batch,
    cross_entropy_copies,
    full_precision,
    kl_divergence,
    mean_over_copies,
    noisy_copies,
    non_negative,
)

__all__ = ["Consistency"]


class Consistency(TrainingMethod):
    """``L = mean_i CE(f(x + delta_i), y) + lbd * mean_i KL(p_bar || p_i) + eta * H(p_bar)``.

    ``p_i = F(x + delta_i)``, ``p_bar = mean_i p_i`` (not detached, as in the reference);
    the entropy's log is clamped at 1e-20. All ``m`` copies go through one forward.
    """

    name = "consistency"
    # Option values, set by TrainingMethod.__init__ from the table below.
    num_noise: int
    lbd: float
    eta: float
    options = {
        "num_noise": Option(2, "m: noise draws per image (published: 2)", int, at_least(2)),
        "lbd": Option(10.0, "weight lambda of the KL consistency term (published: MNIST "
                      "10/5/5, CIFAR-10 20/10/10 for sigma 0.25/0.5/1.0)", float, non_negative),
        "eta": Option(0.5, "weight eta of the entropy term (published: 0.5)", float,
                      non_negative),
    }

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        check_batch(x, y)
        m = self.num_noise
        logits = full_precision(model(noisy_copies(x, self._noise(x, m))))
        loss_ce = cross_entropy_copies(logits, y, m)
        log_p = logits.log_softmax(-1)
        p_bar = mean_over_copies(log_p.exp(), m)
        # KL(p_bar || p_i) for every copy: p_bar broadcast over the copy axis.
        loss_kl = kl_divergence(p_bar.unsqueeze(0), log_p.view(m, *p_bar.shape)).mean()
        loss_ent = -(p_bar * p_bar.clamp_min(LOG_CLAMP).log()).sum(-1).mean()
        loss = loss_ce + self.lbd * loss_kl + self.eta * loss_ent
        return StepOutput(loss, {
            "loss": loss.detach(),
            "loss_ce": loss_ce.detach(),
            "loss_kl": loss_kl.detach(),
            "loss_entropy": loss_ent.detach(),
            "acc": accuracy(logits, y.repeat(m)),
        })
