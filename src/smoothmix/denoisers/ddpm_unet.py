"""The ``ddpm-unet`` denoiser kind: a small DDPM (diffusers ``UNet2DModel`` + its
``DDPMScheduler`` config) that smoothmix trains with the ``ddpm`` method.

Its module is the noise predictor ε_θ(x_t, t), trained on model-space images 2x - 1 padded
to ``sample_size`` (28x28 MNIST into 32x32, padding with black that carries no noise, as at
denoising time). Its settings (the checkpoint's ``arch_kwargs``) are the UNet's size and the
scheduler's config, all JSON values. A checkpoint of it is a diffusion denoiser:
``smoothmix.denoisers.diffusion.load(CHECKPOINT, sigma=...)``, or :meth:`DDPMUNet.one_shot`
on the module in hand. It predicts ε only (Ho et al. 2020), the objective of the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from smoothmix.denoisers.diffusion import DiffusionDenoiser
from smoothmix.denoisers.diffusion_sources import import_diffusers
from smoothmix.denoisers.registry import DENOISERS
from smoothmix.errors import require

__all__ = ["DDPMUNet", "ddpm_unet"]


class DDPMUNet(nn.Module):
    """ε_θ(x_t, t) of a DDPM: ``forward(x_t, t)`` for model-space images of the model's
    ``sample_size`` and integer steps ``t`` (N,), returning ε̂ of ``x_t``'s shape.

    ``alphas_cumprod`` (float64, not saved: it follows from ``scheduler_config``) is the ᾱ
    table of the scheduler.
    """

    alphas_cumprod: Tensor
    prediction_type = "epsilon"

    def __init__(self, unet_config: dict[str, Any], scheduler_config: dict[str, Any]) -> None:
        super().__init__()
        diffusers = import_diffusers()
        self.unet = diffusers.UNet2DModel(**unet_config)
        scheduler = diffusers.DDPMScheduler(**scheduler_config, prediction_type="epsilon")
        self.scheduler_config = dict(scheduler_config)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.double(),
                             persistent=False)

    @property
    def channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def sample_size(self) -> tuple[int, int]:
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.unet(x_t, t).sample

    def one_shot(self, sigma: float, *, clip: bool = True,
                 timestep: int | None = None) -> DiffusionDenoiser:
        """The one-shot denoiser for σ around this (shared, not copied) UNet."""
        return DiffusionDenoiser(self.unet, self.alphas_cumprod, sigma,
                                 prediction_type=self.prediction_type, channels=self.channels,
                                 sample_size=self.sample_size, clip=clip, timestep=timestep)


@DENOISERS.register(
    "ddpm-unet", description="small DDPM UNet (diffusers UNet2DModel), trained by the "
    "'ddpm' method; a one-shot diffusion denoiser at any sigma of its schedule",
    trained_by="ddpm", needs_sigma=True,
    loader="smoothmix.denoisers.diffusion:load")
def ddpm_unet(*, channels: int = 1, sample_size: int = 32,
              block_out_channels: Sequence[int] = (16, 32, 64), layers_per_block: int = 1,
              norm_num_groups: int = 8, num_train_timesteps: int = 1000,
              beta_schedule: str = "linear", beta_start: float = 1e-4,
              beta_end: float = 0.02) -> DDPMUNet:
    """A DDPM UNet without attention (0.64M parameters at the defaults, for 32x32 padded
    MNIST) and the linear β schedule of Ho et al. (2020): 1000 steps, β from 1e-4 to 0.02."""
    widths = [int(w) for w in block_out_channels]
    require(len(widths) >= 1 and all(w > 0 and w % norm_num_groups == 0 for w in widths),
            f"ddpm-unet block_out_channels must be positive multiples of norm_num_groups "
            f"({norm_num_groups}), got {list(block_out_channels)}")
    require(sample_size % 2 ** (len(widths) - 1) == 0,
            f"ddpm-unet sample_size {sample_size} must be divisible by "
            f"{2 ** (len(widths) - 1)} (one halving per extra block)")
    unet_config = {"sample_size": int(sample_size), "in_channels": int(channels),
                   "out_channels": int(channels), "layers_per_block": int(layers_per_block),
                   "block_out_channels": tuple(widths), "norm_num_groups": int(norm_num_groups),
                   "down_block_types": ("DownBlock2D",) * len(widths),
                   "up_block_types": ("UpBlock2D",) * len(widths)}
    scheduler_config = {"num_train_timesteps": int(num_train_timesteps),
                        "beta_schedule": str(beta_schedule), "beta_start": float(beta_start),
                        "beta_end": float(beta_end)}
    return DDPMUNet(unet_config, scheduler_config)
