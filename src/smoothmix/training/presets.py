"""The published training recipes (docs/MATH.md §3), by name.

A preset fixes everything a recipe needs: data, model, method, σ, optimiser schedule, the
number of images per optimiser step and the method options. Explicit arguments override it.

Batch sizes follow "Batching in the reference recipes": the reference code splits each
loaded batch of 256 images into m chunks and steps once per chunk, so a faithful preset
uses 256/m images per step (each with m noise copies) for SmoothMix, SmoothAdv and
Consistency; 256 images for Gaussian and Stability; MACER 256 images × 16 copies on MNIST
(the SmoothMix repository's script default) and 64 × 16 on CIFAR-10 (the original MACER code).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any

from smoothmix.errors import SmoothmixError
from smoothmix.training.recipe import Recipe

__all__ = ["PRESETS", "SIGMAS", "Preset", "format_presets_table",
           "get_preset", "list_presets"]

SIGMAS = (0.25, 0.50, 1.00)


@dataclass(frozen=True)
class Preset:
    """One published recipe, by name: the values it sets (:meth:`values`) and the whole
    :class:`~smoothmix.training.recipe.Recipe` they make (:meth:`recipe`).
    ``lr_milestones`` (when set) replaces the every-``lr_step`` drop."""

    name: str
    dataset: str
    arch: str
    method: str
    sigma: float | None  # None: a method without noise (plain)
    epochs: int
    lr: float
    lr_step: int
    batch_size: int
    options: dict[str, Any] = field(default_factory=dict)
    lr_milestones: tuple[int, ...] | None = None
    deferred: bool = False  # MACER: λ = 0 until the first learning-rate drop
    weight_decay: float = 1e-4  # SGD weight decay (CIFAR-10 MACER: 5e-4)
    optimizer: str = "sgd"  # "adam": the denoiser recipes of Salman et al. (2020)
    note: str = ""
    needs_init: bool = False  # fine-tunes a trained model: train refuses it without --init

    def values(self) -> dict[str, Any]:
        """The recipe values this preset sets, as a layer of
        :func:`smoothmix.training.recipe.merge` (method options and the deferral apart: they
        merge option by option, and ``deferred`` needs the final schedule)."""
        return {"method": self.method, "sigma": self.sigma, "dataset": self.dataset,
                "arch": self.arch, "epochs": self.epochs, "lr": self.lr,
                "lr_step": self.lr_step, "lr_milestones": self.lr_milestones,
                "batch_size": self.batch_size, "weight_decay": self.weight_decay,
                "optimizer": self.optimizer}

    def recipe(self) -> Recipe:
        """The preset's whole :class:`~smoothmix.training.recipe.Recipe`: its values, the
        recipe defaults for the rest, and ``deferred`` as MACER's ``deferred_epochs`` (the
        first learning-rate drop). ``train(preset=...)`` with nothing else trains it."""
        recipe = Recipe.from_values({**self.values(), "method_options": dict(self.options)})
        if self.deferred:
            recipe = replace(recipe, method_options={**recipe.method_options,
                                                     "deferred_epochs": recipe.first_lr_drop()})
        return recipe

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset,
            "arch": self.arch,
            "method": self.method,
            "sigma": self.sigma,
            "epochs": self.epochs,
            "lr": self.lr,
            "lr_step": self.lr_step,
            "lr_milestones": list(self.lr_milestones) if self.lr_milestones else None,
            "batch_size": self.batch_size,
            "options": dict(self.options),
            "deferred": self.deferred,
            "weight_decay": self.weight_decay,
            "needs_init": self.needs_init,
            "optimizer": self.optimizer,
        }


def _name(dataset: str, method: str, sigma: float, suffix: str = "") -> str:
    return f"{dataset}-{method}{suffix}-{sigma:.2f}"


@dataclass(frozen=True)
class _Schedule:
    """Epochs and the step schedule of a group of presets."""

    epochs: int
    lr: float
    lr_step: int


_MNIST = _Schedule(epochs=90, lr=0.01, lr_step=30)  # docs/MATH.md §3.6 table
# Denoised smoothing on MNIST (_denoised_mnist). Timed on this project's CPU (one thread,
# batch 256): a DnCNN 10x32 step costs 3.7 CPU-ms per image with MSE, 4.1 with stability
# (through the LeNet), a LeNet step 0.23; so a 60k-image epoch is ~4 CPU-minutes for the
# denoisers and 15 CPU-seconds for the LeNet. Adam at the paper's 1e-3 (SGD with momentum
# diverges above lr 0.1 and crawls below); fine-tuning at 1e-4.
_PLAIN_EPOCHS = 90  # ~25 CPU-minutes
_MSE_EPOCHS, _MSE_LR = 15, 1e-3  # ~1 CPU hour
_STAB_EPOCHS, _STAB_LR = 14, 1e-3  # ~1 CPU hour
_TUNE_EPOCHS, _TUNE_LR = 5, 1e-4  # ~20 CPU-minutes, from the MSE denoiser
_CIFAR10 = _Schedule(epochs=150, lr=0.1, lr_step=50)


def _preset(dataset: str, arch: str, method: str, sigma: float, schedule: _Schedule,
            batch: int, *, suffix: str = "", **kw: Any) -> Preset:
    return Preset(name=_name(dataset, method, sigma, suffix), dataset=dataset, arch=arch,
                  method=method, sigma=sigma, epochs=schedule.epochs, lr=schedule.lr,
                  lr_step=schedule.lr_step, batch_size=batch, **kw)


def _mnist() -> list[Preset]:
    """MNIST / LeNet: 90 epochs, lr 0.01 dropped x0.1 every 30."""
    def lenet(method: str, sigma: float, batch: int, **kw: Any) -> Preset:
        return _preset("mnist", "lenet", method, sigma, _MNIST, batch, **kw)

    # SmoothMix: m = 4, α = 1.0, T = 3/4/8; η = 1 at σ = 0.25 and η = 5 at 0.5/1.0
    # (the settings of the published MNIST rows, docs/MATH.md §5).
    out = [lenet("smoothmix", sigma, 64, options={"num_noise": 4, "num_steps": steps,
                                                  "step_size": 1.0, "eta": eta, "mix_step": 0})
           for sigma, steps, eta in ((0.25, 3, 1.0), (0.50, 4, 5.0), (1.00, 8, 5.0))]
    out.append(lenet("smoothmix", 1.00, 64, suffix="-onestep", note="+ one-step adversary",
                     options={"num_noise": 4, "num_steps": 8, "step_size": 1.0, "eta": 5.0,
                              "mix_step": 1}))
    # The η figure at σ = 1.0: mnist-smoothmix-1.00 (T = 8, η = 5) with only η changed;
    # `smoothmix reproduce mnist-1.00 --methods smoothmix-eta1,...` runs them as rows.
    base = next(p for p in out if p.sigma == 1.00)
    out += [replace(base, name=_name("mnist", "smoothmix", 1.00, f"-eta{eta}"),
                    options={**base.options, "eta": float(eta)}, note=f"η figure: η = {eta}")
            for eta in (1, 2, 4, 8, 16)]
    for sigma in SIGMAS:
        out += [
            lenet("gaussian", sigma, 256),
            lenet("stability", sigma, 256, options={"lbd": 2.0}),
            # SmoothAdv MNIST: PGD, T = 10, ε = 255/256, m = 4.
            lenet("smoothadv", sigma, 64, options={"attack": "pgd", "num_steps": 10,
                                                   "epsilon": 255 / 256, "num_noise": 4}),
            # MACER MNIST: k = 16, β = 16, γ = 8, λ = 16/16/6, deferred to the first LR drop,
            # 256 images × 16 copies per step (docs/MATH.md §3.4: the script's default batch).
            lenet("macer", sigma, 256, deferred=True,
                  options={"num_noise": 16, "beta": 16.0, "gamma": 8.0,
                           "lbd": {0.25: 16.0, 0.50: 16.0, 1.00: 6.0}[sigma]}),
            # Consistency MNIST: m = 2, η = 0.5, λ = 10/5/5.
            lenet("consistency", sigma, 128,
                  options={"num_noise": 2, "eta": 0.5,
                           "lbd": {0.25: 10.0, 0.50: 5.0, 1.00: 5.0}[sigma]}),
        ]
    return out


def _cifar10() -> list[Preset]:
    """CIFAR-10 / ResNet-110: 150 epochs, lr 0.1 dropped every 50 (MACER: its own)."""
    def resnet(method: str, sigma: float, batch: int, schedule: _Schedule = _CIFAR10,
               **kw: Any) -> Preset:
        return _preset("cifar10", "cifar_resnet110", method, sigma, schedule, batch, **kw)

    out = [resnet("smoothmix", sigma, 128, options={"num_noise": 2, "num_steps": 4,
                                                    "step_size": step_size, "eta": 5.0,
                                                    "mix_step": 0})
           for sigma, step_size in ((0.25, 0.5), (0.50, 1.0), (1.00, 2.0))]
    # The σ = 0.5 row with the one-step adversary (seed table: ACR 0.737).
    out.append(resnet("smoothmix", 0.50, 128, suffix="-onestep", note="+ one-step adversary",
                      options={"num_noise": 2, "num_steps": 4, "step_size": 1.0, "eta": 5.0,
                               "mix_step": 1}))
    # SmoothAdv CIFAR-10 best recipes (docs/MATH.md §3.3).
    smoothadv = {0.25: (10, 8, 255 / 256), 0.50: (2, 8, 2.0), 1.00: (10, 2, 2.0)}
    for sigma in SIGMAS:
        steps, m, eps = smoothadv[sigma]
        out += [
            resnet("gaussian", sigma, 256),
            resnet("stability", sigma, 256, options={"lbd": 2.0}),
            resnet("smoothadv", sigma, 256 // m, options={"attack": "pgd", "num_steps": steps,
                                                          "epsilon": eps, "num_noise": m}),
            # MACER keeps its own schedule: lr 0.01, 440 epochs, drops at 200 and 400,
            # weight decay 5e-4 (the original MACER code).
            resnet("macer", sigma, 64, _Schedule(epochs=440, lr=0.01, lr_step=200),
                   lr_milestones=(200, 400), weight_decay=5e-4,
                   options={"num_noise": 16, "beta": 16.0, "gamma": 8.0,
                            "lbd": {0.25: 12.0, 0.50: 12.0, 1.00: 4.0}[sigma]}),
            resnet("consistency", sigma, 128,
                   options={"num_noise": 2, "eta": 0.5,
                            "lbd": {0.25: 20.0, 0.50: 10.0, 1.00: 10.0}[sigma]}),
        ]
    return out


def _imagenet() -> list[Preset]:
    """ImageNet / ResNet-50. Gaussian: Cohen et al., 90 epochs, lr 0.1 dropped every 30."""
    out = [_preset("imagenet", "resnet50", "gaussian", sigma, _Schedule(90, 0.1, 30), 256)
           for sigma in SIGMAS]
    # SmoothMix ImageNet: not published in the public code; these are its defaults.
    out += [_preset("imagenet", "resnet50", "smoothmix", sigma, _Schedule(150, 0.1, 50), 256,
                    options={"num_noise": 1, "num_steps": 8, "step_size": 1.0, "eta": 1.0,
                             "mix_step": 0},
                    note="unpublished; reference code defaults")
            for sigma in (0.50, 1.00)]
    return out


def _catrs() -> list[Preset]:
    """CAT-RS (docs/MATH.md §3.8; the CAT-RS repository's EXPERIMENTS.MD). Every preset
    needs --targets: the votes of a Gaussian sigma = 0.25 model (`smoothmix targets`).
    256/M images per step x M copies, SGD 0.9, weight decay 1e-4; M = 4, T = 4, eps = 1.0."""
    catrs = {"num_noise": 4, "num_steps": 4, "epsilon": 1.0}
    note = "needs --targets"
    out = [_preset("cifar10", "cifar_resnet110", "catrs", sigma, _CIFAR10, 64,
                   options={**catrs, "lbd": lbd}, note=note)
           for sigma, lbd in ((0.25, 0.5), (0.50, 1.0), (1.00, 2.0))]
    # MNIST: published for sigma = 0.25 only (0.5 / 1.0 recipes unpublished).
    out.append(_preset("mnist", "lenet", "catrs", 0.25, _Schedule(150, 0.01, 50), 64,
                       options={**catrs, "lbd": 1.0}, note=note))
    # ImageNet sigma = 1.0: M = 2 (batch 256 = 128 images x 2 copies per step), T = 1,
    # lambda 2, eps doubled from epoch 80, K from pi[y]. The reference's extra --lr_drop 85
    # lasts one epoch under its closed-form scheduler.step(epoch); not reproduced here.
    out.append(_preset("imagenet", "resnet50", "catrs", 1.00, _Schedule(90, 0.1, 30), 128,
                       options={"num_noise": 2, "num_steps": 1, "epsilon": 1.0, "lbd": 2.0,
                                "confidence_mask": 1, "epsilon_double_epoch": 80},
                       note=note))
    return out


def _denoisers() -> list[Preset]:
    """Denoisers for denoised smoothing (issue 28). The DDPM's σ enters no loss: it is the
    level at which the training monitor reports the one-shot denoiser's PSNR."""
    # ddpm-unet (0.64M parameters, 32x32 padded MNIST), 256 images per step, measured here
    # (2 cores, nice 10): 2.6 s a step on a quiet machine, 6 s beside a load of 5, so the 5
    # epochs of 235 steps take about 50 minutes to 2 hours. SGD (the loop's optimiser) with
    # momentum 0.9 at lr 0.02 in place of the usual Adam at 2e-4: the ε-MSE falls from 1.05
    # to 0.11 in 30 steps of 64 images (one-shot PSNR at σ = 0.5: 8.7 -> 16.7 dB).
    return [_preset("mnist", "ddpm-unet", "ddpm", 0.50, _Schedule(epochs=5, lr=0.02, lr_step=4),
                    256, weight_decay=0.0, note="DDPM denoiser; sigma: the monitor's PSNR")]


def _denoised_mnist() -> list[Preset]:
    """Denoised smoothing on MNIST (Salman et al., 2020, sized for a CPU): the off-the-shelf
    LeNet (plain cross-entropy, no noise) and a small DnCNN (depth 10, width 32) for
    sigma = 0.5 with each objective, with Adam as in the paper. Each preset is at most about
    one CPU hour here; the stability ones need --classifier (the plain LeNet) and the
    fine-tuning one --init (the MSE denoiser) as well."""
    dncnn: dict[str, Any] = {"dataset": "mnist", "arch": "dncnn", "sigma": 0.50, "batch_size": 256,
             "optimizer": "adam"}
    clf = "needs --classifier (a LeNet, e.g. mnist-plain)"
    return [
        Preset(name="mnist-plain", dataset="mnist", arch="lenet", method="plain", sigma=None,
               epochs=_PLAIN_EPOCHS, lr=0.01, lr_step=30, batch_size=256,
               note="off-the-shelf LeNet, no noise"),
        Preset(name="mnist-dncnn-mse-0.50", method="denoise-mse", epochs=_MSE_EPOCHS,
               lr=_MSE_LR, lr_step=10, **dncnn,
               note="add --classifier to monitor f∘D"),
        Preset(name="mnist-dncnn-stability-0.50", method="denoise-stability",
               epochs=_STAB_EPOCHS, lr=_STAB_LR, lr_step=10, **dncnn,
               note=clf),
        # The paper's strongest variant: stability fine-tuning of the MSE denoiser.
        Preset(name="mnist-dncnn-mse-stability-0.50", method="denoise-stability",
               epochs=_TUNE_EPOCHS, lr=_TUNE_LR, lr_step=_TUNE_EPOCHS, **dncnn,
               needs_init=True, note=f"{clf}, --init (an mnist-dncnn-mse-0.50 checkpoint)"),
    ]


def _build() -> dict[str, Preset]:
    """Every preset, sorted by dataset, method, variant and sigma."""
    presets = [*_mnist(), *_cifar10(), *_imagenet(), *_catrs(), *_denoised_mnist(),
               *_denoisers()]
    order = {"mnist": 0, "cifar10": 1, "imagenet": 2}
    presets.sort(key=lambda p: (order[p.dataset], p.method, p.name.count("-"), p.sigma or 0.0))
    return {p.name: p for p in presets}


PRESETS: dict[str, Preset] = _build()

def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a one-line :class:`SmoothmixError` with
    the nearest names (48 names on one line helped nobody find the one they meant)."""
    if name in PRESETS:
        return PRESETS[name]
    near = difflib.get_close_matches(str(name), PRESETS, n=3, cutoff=0.6)
    guess = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
    family = f" (`smoothmix presets {near[0].rsplit('-', 1)[0]}` shows that family)" if near \
        else ""
    raise SmoothmixError(f"unknown preset {name!r}{guess}; `smoothmix presets` lists all "
                         f"{len(PRESETS)}{family}")


def format_presets_table(presets: list[Preset] | None = None) -> str:
    """A fixed-width table of presets, for ``smoothmix presets``."""
    rows = [("name", "data", "arch", "method", "sigma", "epochs", "lr", "lr drop", "batch",
             "method options")]
    for p in presets if presets is not None else PRESETS.values():
        drops = ",".join(map(str, p.lr_milestones)) if p.lr_milestones else f"every {p.lr_step}"
        opts = " ".join(f"{k}={_fmt(v)}" for k, v in p.options.items())
        if p.deferred:
            opts = (opts + " deferred").strip()
        if p.optimizer != "sgd":
            opts = (opts + f" optimizer={p.optimizer}").strip()
        if p.weight_decay != 1e-4:
            opts = (opts + f" weight_decay={_fmt(p.weight_decay)}").strip()
        if p.note:
            opts = f"{opts} ({p.note})".strip()
        sigma = f"{p.sigma:.2f}" if p.sigma is not None else "-"
        rows.append((p.name, p.dataset, p.arch, p.method, sigma, str(p.epochs),
                     _fmt(p.lr), drops, str(p.batch_size), opts))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
             for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
