"""One-shot diffusion denoising (Carlini et al., ICLR 2023): a DDPM as the denoiser D.

An image x in [0, 1] enters the model as z = 2x - 1, so noise of std σ becomes noise of std
2σ there. The forward process is x_t = √ᾱ_t x₀ + √(1 - ᾱ_t) ε, so √ᾱ_t (2(x + δ) - 1) is a
sample of it at the t where (1 - ᾱ_t)/ᾱ_t = 4σ², that is ᾱ* = 1/(1 + 4σ²)
(docs/MATH.md §7.3 derives it; √(1 - ᾱ) = 2σ is the common mistake). D takes the
schedule's step t* nearest to ᾱ*, scales the input by √ᾱ_t*, runs the UNet once at t*,
turns its prediction (ε, v or x₀) into x̂₀ and maps it back to [0, 1].

D is deterministic and acts per sample (the UNet's group norms see one image each), so the
smoothed classifier's shards and resumes stay exact. Soundness does not depend on t*; a t*
far from the noise level only costs accuracy.

Sources (:func:`load`): a local diffusers folder, ``hub:ID[@revision]`` (the only way
anything is fetched), or a smoothmix checkpoint of the ``ddpm-unet`` denoiser kind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothmix.checks import check_sigma
from smoothmix.errors import SmoothmixError, require

__all__ = ["PREDICTION_TYPES", "DiffusionDenoiser", "OneShot", "alpha_bar_target",
           "crop_images", "load", "one_shot_timestep", "pad_images", "sigma_of_alpha_bar",
           "x0_from_prediction"]

#: The scheduler prediction types D honours (diffusers' ``prediction_type`` values).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def alpha_bar_target(sigma: float) -> float:
    """ᾱ* = 1/(1 + 4σ²): the ᾱ whose noise level matches σ in [0, 1] pixel units."""
    return 1.0 / (1.0 + 4.0 * sigma * sigma)


def sigma_of_alpha_bar(alpha_bar: float) -> float:
    """The σ (in [0, 1] pixel units) a step with cumulative ᾱ denoises: ½√((1 - ᾱ)/ᾱ)."""
    return 0.5 * math.sqrt((1.0 - alpha_bar) / alpha_bar)


@dataclass(frozen=True)
class OneShot:
    """The step one-shot denoising runs at, and the noise level it actually matches."""

    timestep: int  # t*
    alpha_bar: float  # ᾱ_t* of the schedule
    alpha_bar_target: float  # ᾱ* = 1/(1 + 4σ²)
    sigma_achieved: float  # ½√((1 - ᾱ_t*)/ᾱ_t*)
    num_train_timesteps: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _alpha_table(alphas_cumprod: Tensor | Sequence[float]) -> list[float]:
    table = [float(a) for a in torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()]
    require(len(table) > 0 and all(0.0 < a < 1.0 for a in table),
            "the diffusion schedule's alphas_cumprod must be a non-empty table of values in "
            "(0, 1)")
    return table


def one_shot_timestep(alphas_cumprod: Tensor | Sequence[float], sigma: float,
                      timestep: int | None = None) -> OneShot:
    """t*: the step of the ᾱ table nearest to ᾱ* = 1/(1 + 4σ²) (the first on a tie).

    σ outside the schedule's range [σ_0, σ_{T-1}] is a one-line error. ``timestep`` fixes t*
    instead (any step of the table; sound at any t*, only accuracy changes).
    """
    sigma = check_sigma(sigma)
    table = _alpha_table(alphas_cumprod)
    target = alpha_bar_target(sigma)
    if timestep is None:
        low, high = sigma_of_alpha_bar(max(table)), sigma_of_alpha_bar(min(table))
        require(low <= sigma <= high,
                f"sigma {sigma:g} is outside the diffusion schedule's range "
                f"[{low:.4g}, {high:.4g}] (σ_t = ½√((1-ᾱ_t)/ᾱ_t) over its {len(table)} steps)")
        timestep = min(range(len(table)), key=lambda t: abs(table[t] - target))
    require(isinstance(timestep, int) and not isinstance(timestep, bool)
            and 0 <= timestep < len(table),
            f"timestep must be an integer step in [0, {len(table) - 1}], got {timestep!r}")
    return OneShot(timestep, table[timestep], target, sigma_of_alpha_bar(table[timestep]),
                   len(table))


def x0_from_prediction(prediction: Tensor, x_t: Tensor, alpha_bar: float | Tensor,
                       prediction_type: str) -> Tensor:
    """x̂₀ from the UNet's output at x_t = √ᾱ x₀ + √(1-ᾱ) ε (DDPM, Ho et al. 2020 eq. 15;
    v = √ᾱ ε - √(1-ᾱ) x₀, Salimans & Ho 2022)."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    root_a, root_1ma = a.sqrt().to(x_t.dtype), (1 - a).sqrt().to(x_t.dtype)
    if prediction_type == "epsilon":
        return (x_t - root_1ma * prediction) / root_a
    if prediction_type == "v_prediction":
        return root_a * x_t - root_1ma * prediction
    if prediction_type == "sample":
        return prediction
    raise SmoothmixError(f"unsupported diffusion prediction_type {prediction_type!r}; "
                         f"supported: {', '.join(PREDICTION_TYPES)}")


def _size(sample_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if sample_size is None:
        return None
    if isinstance(sample_size, int):
        return sample_size, sample_size
    height, width = (int(s) for s in sample_size)
    return height, width


def pad_images(x: Tensor, size: tuple[int, int] | None, value: float = 0.0) -> Tensor:
    """``x`` (N, C, H, W) centred in ``size`` with ``value`` around (as many pixels above as
    below, one more below/right when odd); unchanged when ``size`` is None or equal."""
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    height, width = x.shape[-2:]
    require(height <= size[0] and width <= size[1],
            f"images of {height}x{width} are larger than the diffusion model's "
            f"{size[0]}x{size[1]}; resize them first")
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return F.pad(x, (left, size[1] - width - left, top, size[0] - height - top), value=value)


def crop_images(x: Tensor, height: int, width: int) -> Tensor:
    """The centre ``height`` x ``width`` of ``x``: the inverse of :func:`pad_images`."""
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top:top + height, left:left + width]


class DiffusionDenoiser(nn.Module):
    """D(x) = clip((x̂₀ + 1)/2), x̂₀ from one UNet call at t* on √ᾱ_t* (2x - 1).

    ``unet(sample, timestep)`` returns the prediction (a tensor, or diffusers' output with a
    ``.sample``); with 2C output channels (learned variance) the first C are the mean's
    prediction and the rest is ignored. ``channels`` and ``sample_size`` are the model's;
    inputs smaller than ``sample_size`` are padded with black (0) and cropped back.

    Channels: a 1-channel model denoises each channel of a C-channel input as its own
    grayscale image (the noise per channel is the σ it was chosen for); a 3-channel model
    gets a 1-channel input replicated to RGB and returns the mean of its three output
    channels (the replicated noise is correlated across channels, which a model trained on
    independent noise has not seen: an accuracy cost, not a soundness one). Other channel
    mismatches are an error.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor | Sequence[float], sigma: float,
                 *, prediction_type: str = "epsilon", channels: int,
                 sample_size: int | Sequence[int] | None = None, clip: bool = True,
                 timestep: int | None = None) -> None:
        super().__init__()
        require(prediction_type in PREDICTION_TYPES,
                f"unsupported diffusion prediction_type {prediction_type!r}; supported: "
                f"{', '.join(PREDICTION_TYPES)}")
        require(isinstance(clip, bool), f"clip must be true or false, got {clip!r}")
        self.unet = unet
        self.sigma = check_sigma(sigma)
        self.one_shot = one_shot_timestep(alphas_cumprod, self.sigma, timestep)
        self.prediction_type = prediction_type
        self.channels = int(channels)
        self.sample_size = _size(sample_size)
        self.clip = clip

    def record_settings(self) -> dict[str, Any]:
        """What changes this denoiser's output besides the weights, for its record when it
        is wrapped in Python (:func:`smoothmix.denoisers.compose.module_record`)."""
        return {"clip": bool(self.clip), "one_shot": self.one_shot.as_dict(),
                "prediction_type": self.prediction_type}

    def extra_repr(self) -> str:
        shot = self.one_shot
        return (f"sigma={self.sigma:g}, t*={shot.timestep}, alpha_bar={shot.alpha_bar:.4f}, "
                f"sigma_achieved={shot.sigma_achieved:.4f}, "
                f"prediction_type={self.prediction_type}, clip={self.clip}")

    def forward(self, x: Tensor) -> Tensor:
        require(x.dim() == 4, f"the diffusion denoiser takes images N x C x H x W, got "
                              f"shape {tuple(x.shape)}")
        n, c, height, width = x.shape
        z = self._to_model_channels(x)
        x0 = self.denoise_model_space(pad_images(2 * z - 1, self.sample_size, value=-1.0))
        out = crop_images((x0 + 1) / 2, height, width)
        if self.clip:
            out = out.clamp(0.0, 1.0)
        return self._from_model_channels(out, n, c).to(x.dtype)

    def denoise_model_space(self, z: Tensor) -> Tensor:
        """x̂₀ for noisy model-space images z = x₀ + (noise of std 2σ), in [-1, 1] units."""
        shot = self.one_shot
        dtype = next((p.dtype for p in self.unet.parameters()), z.dtype)
        x_t = (math.sqrt(shot.alpha_bar) * z).to(dtype)
        t = torch.full((len(z),), shot.timestep, dtype=torch.long, device=z.device)
        out = self.unet(x_t, t)
        prediction = getattr(out, "sample", out)
        if prediction.shape[1] == 2 * x_t.shape[1]:  # learned variance: [mean part, variance]
            prediction = prediction[:, :x_t.shape[1]]
        require(prediction.shape == x_t.shape,
                f"the diffusion UNet returned shape {tuple(prediction.shape)} for input "
                f"{tuple(x_t.shape)}")
        return x0_from_prediction(prediction, x_t, shot.alpha_bar, self.prediction_type)

    def _to_model_channels(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if c == self.channels:
            return x
        if self.channels == 1:  # each channel as its own grayscale image
            return x.reshape(-1, 1, *x.shape[2:])
        require(c == 1 and self.channels == 3,
                f"the diffusion model takes {self.channels}-channel images; {c}-channel input "
                "is supported only for 1- and 3-channel models")
        return x.expand(-1, 3, -1, -1)

    def _from_model_channels(self, out: Tensor, n: int, c: int) -> Tensor:
        if c == self.channels:
            return out
        if self.channels == 1:
            return out.reshape(n, c, *out.shape[2:])
        return out.mean(1, keepdim=True)


_SETTINGS = {"clip": True, "timestep": None}


def _check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(_SETTINGS))
    require(not unknown, f"unknown diffusion denoiser setting{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)}; valid settings: {', '.join(_SETTINGS)}")
    out = {**_SETTINGS, **settings}
    require(isinstance(out["clip"], bool), f"clip must be true or false, got {out['clip']!r}")
    return out


def load(source: str, *, sigma: float, **settings: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The one-shot diffusion denoiser for σ from ``source`` and its record.

    ``source``: a local folder in diffusers' ``save_pretrained`` layout (a ``UNet2DModel``
    folder with a ``scheduler_config.json``, or a ``DDPMPipeline`` folder with ``unet/`` and
    ``scheduler/``), ``hub:ID[@revision]`` (downloaded, or read from the local cache when
    offline), or a smoothmix checkpoint (file or run folder) of the ``ddpm-unet`` kind.
    Settings: ``clip`` (default True, as Carlini et al.) and ``timestep`` (fix t*).

    The record (JSON values): ``kind`` "diffusion"; ``identity`` ({"folder_sha256"},
    {"model_id", "revision"} or {"checkpoint_sha256", "arch"}); ``settings``; ``sigma``; and
    ``one_shot``: t*, ᾱ_t*, ᾱ*, the σ achieved, the prediction type, whether the output has
    a learned variance, and the model's channels and sample size.
    """
    from smoothmix.denoisers import diffusion_sources as sources

    require(sigma is not None, f"the diffusion denoiser {source} serves every noise level: "
            "give the run's sigma (--sigma), from which it picks its step t*")
    sigma = check_sigma(sigma)
    chosen = _check_settings(settings)
    model = sources.resolve(source)
    denoiser = DiffusionDenoiser(model.unet, model.alphas_cumprod, sigma,
                                 prediction_type=model.prediction_type, channels=model.channels,
                                 sample_size=model.sample_size, clip=chosen["clip"],
                                 timestep=chosen["timestep"])
    denoiser.eval().requires_grad_(False)
    one_shot = {**denoiser.one_shot.as_dict(), "prediction_type": model.prediction_type,
                "learned_variance": model.learned_variance, "channels": model.channels,
                "sample_size": list(denoiser.sample_size) if denoiser.sample_size else None}
    record = {"kind": "diffusion", "identity": model.identity, "settings": chosen,
              "sigma": sigma, "one_shot": one_shot}
    return denoiser, record
