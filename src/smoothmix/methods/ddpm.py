"""DDPM training (Ho et al. 2020): the ε-MSE at a uniform step, no labels.

It trains a denoiser, not a classifier (``trains = "denoiser"``): the model is a DDPM
denoiser kind such as ``ddpm-unet`` (:class:`smoothmix.denoisers.ddpm_unet.DDPMUNet`),
called as ``model(x_t, t)``. Per image: x₀ = 2x - 1 padded to the model's size with black,
t ~ U{0, ..., T-1}, ε ~ N(0, I) inside the image (none on the padding, which the one-shot
denoiser also sees noise-free), x_t = √ᾱ_t x₀ + √(1-ᾱ_t) ε, and the loss is
‖ε_θ(x_t, t) - ε‖² averaged over the image's pixels (not the padding).

σ does not enter the loss; the monitor reports the one-shot denoiser's PSNR at the run's σ.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from smoothmix.denoisers.diffusion import one_shot_timestep, pad_images
from smoothmix.errors import SmoothmixError, require
from smoothmix.methods.base import StepOutput, TrainingMethod, check_batch, unwrap_ddp

__all__ = ["DDPM", "diffusion_of"]

def diffusion_of(model: nn.Module) -> Any:
    """The DDPM module inside DDP / torch.compile wrappers: it has ``alphas_cumprod``,
    ``sample_size`` and ``one_shot``. Anything else is a one-line error."""
    inner = model
    for _ in range(4):  # DDP, torch.compile and the monitor's placed view, in any nesting
        inner = unwrap_ddp(inner)
        inner = getattr(inner, "_orig_mod", inner)
        inner = getattr(inner, "inner", inner)  # training.evaluation's placed view
    if not all(hasattr(inner, a) for a in ("alphas_cumprod", "sample_size", "one_shot")):
        raise SmoothmixError(f"method ddpm trains a DDPM denoiser (e.g. --arch ddpm-unet), got "
                             f"{type(inner).__name__}")
    require(getattr(inner, "prediction_type", "epsilon") == "epsilon",
            "method ddpm trains ε-prediction models only")
    return inner


def _padding_mask(x: Tensor, size: tuple[int, int]) -> Tensor:
    """1 on the image's pixels, 0 on the padding, shaped (1, 1, *size)."""
    ones = torch.ones((1, 1, *x.shape[-2:]), device=x.device, dtype=x.dtype)
    return pad_images(ones, size, value=0.0)


class DDPM(TrainingMethod):
    """``L = mean over image pixels of (ε_θ(√ᾱ_t x₀ + √(1-ᾱ_t) ε, t) - ε)²``, t uniform."""

    name = "ddpm"
    trains: ClassVar[str] = "denoiser"
    options = {}

    # -- hooks (tests override these to fix the randomness) -------------------------------
    def _timesteps(self, n: int, steps: int, device: torch.device) -> Tensor:
        return torch.randint(0, steps, (n,), device=device)

    def _epsilon(self, x0: Tensor) -> Tensor:
        return torch.randn_like(x0)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        check_batch(x, y)
        net = diffusion_of(model)
        t = self._timesteps(len(x), len(net.alphas_cumprod), x.device)
        loss = self.epsilon_mse(model, net, x, t, self._epsilon)
        return StepOutput(loss, {"loss": loss.detach()})

    def epsilon_mse(self, model: nn.Module, net: Any, x: Tensor, t: Tensor,
                    draw: Any) -> Tensor:
        """The loss at steps ``t`` with ε from ``draw(x0)`` (the image region only)."""
        return self.epsilon_errors(model, net, x, t, draw).mean()

    def epsilon_errors(self, model: nn.Module, net: Any, x: Tensor, t: Tensor,
                       draw: Any) -> Tensor:
        """Per image, the mean squared ε error over its own pixels (not the padding)."""
        size = net.sample_size
        x0 = pad_images(2 * x - 1, size, value=-1.0)
        mask = _padding_mask(x, size)
        eps = draw(x0) * mask
        alpha_bar = net.alphas_cumprod.to(x.device)[t].view(-1, 1, 1, 1)
        x_t = (alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps).to(x.dtype)
        pred = model(x_t, t).float()
        error = (pred - eps.float()).square() * mask
        return error.flatten(1).sum(1) / (mask.sum() * x0.shape[1])

    def probe_output(self, model: nn.Module, x: Tensor) -> Tensor:
        """The loop's first-batch check calls the model as a denoiser would be used: the
        one-shot denoiser at the run's σ (``model(x_t, t)`` is the noise predictor)."""
        return diffusion_of(model).one_shot(self.sigma)(x)

    @torch.no_grad()
    def monitor(self, model: nn.Module, x: Tensor, y: Tensor,
                generator: torch.Generator) -> dict[str, Tensor]:
        """Sums over a test batch, with draws from the loop's ``generator``: ``eps_mse``,
        the loss at uniform steps; ``psnr``, of the one-shot denoiser at the run's σ on
        x + δ (dB; absent when σ is outside the schedule)."""
        net = diffusion_of(model)
        t = torch.randint(0, len(net.alphas_cumprod), (len(x),), generator=generator,
                          device=x.device)

        def draw(x0: Tensor) -> Tensor:
            return torch.randn(x0.shape, generator=generator, device=x0.device,
                               dtype=x0.dtype)

        out = {"eps_mse": self.epsilon_errors(model, net, x, t, draw).sum()}
        try:
            one_shot_timestep(net.alphas_cumprod, self.sigma)
        except SmoothmixError:
            return out
        noise = draw(x) * self.sigma
        denoised = net.one_shot(self.sigma)(x + noise)
        mse = (denoised - x).float().square().flatten(1).mean(1).clamp_min(1e-12)
        out["psnr"] = (-10 * mse.log10()).sum()
        return out
