"""SmoothAdv: adversarial training of the smoothed classifier (Salman et al. 2019;
docs/MATH.md §3.3)."""

from __future__ import annotations

from torch import Tensor, nn

from smoothmix.methods.attacks import ddn_attack, pgd_attack
from smoothmix.methods.base import (
    Option,
    StepOutput,
    TrainingMethod,
    accuracy,
    at_least,
    check_batch,
    cross_entropy_copies,
    full_precision,
    noisy_copies,
    non_negative,
    positive,
    warmup_factor,
)

__all__ = ["SmoothAdv"]


class SmoothAdv(TrainingMethod):
    """Attack ``G(x) = mean_i F(x + delta_i)`` inside the epsilon-ball, then train on all
    ``m`` noisy copies of the adversarial point (multi-noise): ``L = mean_i CE(f(x' +
    delta_i), y)``. The noise is drawn once per batch and shared by the attack and the loss;
    epsilon warms up as ``epsilon * min(1, (epoch + 1) / warmup)``.
    """

    name = "smoothadv"
    # Option values, set by TrainingMethod.__init__ from the table below.
    num_noise: int
    attack: str
    num_steps: int
    epsilon: float
    warmup: int
    options = {
        "num_noise": Option(4, "m: noise draws per image, shared by attack and loss "
                            "(published: MNIST 4; CIFAR-10 8/8/2 for sigma 0.25/0.5/1.0)",
                            int, at_least(1)),
        "attack": Option("pgd", "attack on the smoothed classifier: pgd or ddn", str,
                         choices=("pgd", "ddn")),
        "num_steps": Option(10, "T: attack steps (published: MNIST 10; CIFAR-10 2 or 10)", int,
                            at_least(1)),
        "epsilon": Option(255 / 256, "attack radius in [0, 1] pixel units (published: MNIST "
                          "255/256; CIFAR-10 255/256 or 2.0)", float, positive),
        "warmup": Option(10, "epochs over which epsilon grows linearly to its value "
                         "(0 = no warm-up)", int, non_negative),
    }

    def current_epsilon(self, epoch: int) -> float:
        return self.epsilon * warmup_factor(epoch, self.warmup)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        check_batch(x, y)
        m = self.num_noise
        noise = self._noise(x, m)
        epsilon = self.current_epsilon(epoch)
        if self.attack == "pgd":
            x_adv = pgd_attack(model, x, y, noise, epsilon, self.num_steps)
        else:
            # DDN starts at the warmed-up epsilon: the reference training script overwrites
            # the attack's init norm with epsilon_t every epoch (docs/MATH.md §3.3), so the attack's
            # default of 1.0 never applies in training.
            x_adv = ddn_attack(model, x, y, noise, epsilon, self.num_steps, init_norm=epsilon)
        logits = full_precision(model(noisy_copies(x_adv, noise)))
        loss = cross_entropy_copies(logits, y, m)
        return StepOutput(loss, {"loss": loss.detach(), "acc": accuracy(logits, y.repeat(m))})
