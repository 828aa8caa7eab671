"""High-level training API: what ``smoothmix train`` runs, callable from Python.

Two ways in:

* by name — ``train("runs/x", dataset="mnist", method="smoothmix", sigma=0.5)`` or
  ``train("runs/x", preset="mnist-smoothmix-0.50")``: builds the model, loads the data,
  creates the method and calls :func:`~smoothmix.training.loop.fit`;
* your own network and data — pass ``model=`` (an ``nn.Module`` mapping [0, 1] images to
  logits; wrap it with :func:`smoothmix.models.wrap_model` to add normalisation) and
  ``train_set=``/``test_set=`` (any ``Dataset`` of ``(image, label)``)::

      from smoothmix.models import wrap_model
      from smoothmix.training import train
      ckpt = train("runs/mine", model=wrap_model(my_net), train_set=ds, test_set=ds_test,
                   num_classes=10, method="consistency", sigma=0.25, epochs=30, lr=0.05)

  or, with everything explicit, ``fit(model, create_method(...), train_set, test_set,
  TrainConfig(...), outdir)``.

Precedence: explicit arguments > preset > the checkpoint's settings (when resuming) >
per-dataset defaults. Every check that can fail on user input runs before anything is
written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from smoothmix import distributed
from smoothmix.checkpoint import CHECKPOINT_NAME, load_checkpoint
from smoothmix.errors import SmoothmixError, require
from smoothmix.training.loop import TrainConfig, check_outdir, fit, seed_everything
from smoothmix.training.presets import get_preset

# Per-dataset schedule defaults (docs/MATH.md §3.6 table; ImageNet: Cohen et al.'s 90/0.1/30).
SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"epochs": 90, "lr": 0.01, "lr_step": 30},
    "cifar10": {"epochs": 150, "lr": 0.1, "lr_step": 50},
    "imagenet": {"epochs": 90, "lr": 0.1, "lr_step": 30},
}
_FALLBACK_SCHEDULE = {"epochs": 90, "lr": 0.1, "lr_step": 30}

# TrainConfig fields that define a run's trajectory: on --resume they must match the stored run
# (except a larger --epochs, which extends it).
_RESUME_RECIPE = ("epochs", "batch_size", "lr", "lr_step", "lr_gamma", "lr_milestones",
                  "momentum", "weight_decay", "seed", "precision")

# Options that count things and must be at least 1 (m and T of docs/MATH.md §3).
_COUNT_OPTIONS = {"num_noise": "m (--num-noise)", "num_steps": "T (--num-steps)"}


def option_flag(name: str) -> str:
    """The CLI flag of a method option (``deferred_epochs`` is set by ``--deferred``)."""
    return "--deferred" if name == "deferred_epochs" else "--" + name.replace("_", "-")


def default_batch_size(method: str, num_noise: int | None, dataset: str | None = None) -> int:
    """Images per step of the reference recipes: 256 images × m copies are split into m
    steps of 256/m; MACER takes 256 images × its 16 copies on MNIST (the SmoothMix
    repository's script default) and 64 × 16 elsewhere (the original MACER code)."""
    if method == "macer":
        return 256 if dataset == "mnist" else 64
    return max(1, 256 // max(1, num_noise or 1))


@dataclass
class TrainSpec:
    """A fully resolved training run (what gets stored in the checkpoint's config)."""

    method: str
    sigma: float
    method_options: dict[str, Any]
    config: TrainConfig
    dataset: str | None = None
    arch: str | None = None
    normalization: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    train_subset: int | None = None
    test_subset: int | None = None
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self, num_classes: int | None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "arch": self.arch, "normalization": self.normalization, "num_classes": num_classes,
            "method": self.method, "method_options": dict(self.method_options),
            "arch_kwargs": dict(self.arch_kwargs),
        }
        if self.dataset is not None:
            meta.update(dataset=self.dataset, train_subset=self.train_subset,
                        test_subset=self.test_subset)
        if self.preset is not None:
            meta["preset"] = self.preset
        return meta


def _saved_settings(outdir: Path) -> dict[str, Any] | None:
    """The settings of the run in ``outdir``, when resuming it (None for a fresh run)."""
    if not (outdir / CHECKPOINT_NAME).is_file():
        return None
    ckpt = load_checkpoint(outdir / CHECKPOINT_NAME)
    saved = dict(ckpt.get("config") or {})
    for key in ("arch", "arch_kwargs", "method", "sigma", "method_options", "normalization"):
        if ckpt.get(key) is not None:
            saved[key] = ckpt[key]
    if saved:  # runs before 0.3 stored only amp
        saved["precision"] = saved.get("precision") or ("bf16" if saved.get("amp") else "fp32")
    return saved


def _validate_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    from smoothmix.methods import METHODS, method_options

    require(method in METHODS, f"unknown method {method!r}; valid methods: "
            f"{', '.join(sorted(METHODS))}")
    accepted = method_options(method)
    for name, value in options.items():
        if name not in accepted:
            takes = ", ".join(option_flag(k) for k in accepted) or "none"
            raise SmoothmixError(f"{option_flag(name)} is not an option of method {method!r} "
                                 f"(its options: {takes})")
        if name in _COUNT_OPTIONS:
            require(isinstance(value, (int, float)) and value >= 1,
                    f"{_COUNT_OPTIONS[name]} must be an integer >= 1, got {value}")
    return dict(options)


def _resume_conflicts(spec: TrainSpec, saved: Mapping[str, Any], sources: Mapping[str, str],
                      explicit_epochs: int | None) -> tuple[list[str], int | None]:
    """Settings of ``spec`` that contradict the stored run ``saved``, as ``"name S (stored
    V)"`` strings, and the stored epoch count when ``--epochs`` deliberately extends it.

    Settings nobody asked for were taken from the stored run, so a difference here always
    comes from a flag or preset value (``sources`` names which: ``{"lr": "--lr"}``).
    Execution settings (device, amp, workers, ...) are free to change.
    """
    from smoothmix.methods import method_options

    current: dict[str, Any] = {
        "method": spec.method, "sigma": spec.sigma, "dataset": spec.dataset,
        "arch": spec.arch, "train_subset": spec.train_subset, "test_subset": spec.test_subset,
        "arch_kwargs": spec.arch_kwargs,
        **{k: getattr(spec.config, k) for k in _RESUME_RECIPE},
    }
    conflicts: list[str] = []
    extends: int | None = None

    def differs(old: Any, new: Any) -> bool:
        if isinstance(old, (list, tuple)) or isinstance(new, (list, tuple)):
            return list(old or []) != list(new or [])
        if isinstance(old, float) or isinstance(new, float):
            return old is None or new is None or not math.isclose(old, new)
        return old != new

    def note(name: str, new: Any, old: Any) -> None:
        conflicts.append(f"{name} {_show(new)} from {sources.get(name, 'the defaults')} "
                         f"(stored {_show(old)})")

    for name, new in current.items():
        if name not in saved:  # not recorded by the run (e.g. a custom model's dataset)
            continue
        old = saved[name]
        if name == "epochs" and explicit_epochs is not None and old is not None \
                and explicit_epochs > old:
            extends = int(old)  # a deliberate extension, announced by train()
        elif differs(old, new):
            note(name, new, old)
    if saved.get("method") == spec.method:
        defaults = {k: info.default for k, info in method_options(spec.method).items()}
        old_opts, new_opts = dict(saved.get("method_options") or {}), spec.method_options
        for key in sorted(set(old_opts) | set(new_opts)):
            old, new = old_opts.get(key, defaults.get(key)), new_opts.get(key, defaults.get(key))
            if differs(old, new):
                conflicts.append(f"{option_flag(key)} {_show(new)} from "
                                 f"{sources.get(key, 'the defaults')} (stored {_show(old)})")
    return conflicts, extends


def _plain_kwargs(kwargs: Any) -> dict[str, Any]:
    """``arch_kwargs`` as a dict of plain values: a checkpoint must hold them, and it is read
    back with ``weights_only`` loading (numbers, strings, lists, tuples, dicts, None)."""
    def plain(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        return v is None or isinstance(v, (bool, int, float, str))

    require(isinstance(kwargs, Mapping) and plain(dict(kwargs)),
            f"arch_kwargs must be a dict of plain values (numbers, strings, lists, dicts) to be "
            f"stored in the checkpoint, got {kwargs!r}")
    return dict(kwargs)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def resolve(
    *,
    outdir: str | os.PathLike,
    dataset: str | None = None,
    arch: str | None = None,
    method: str | None = None,
    sigma: float | None = None,
    preset: str | None = None,
    method_options: Mapping[str, Any] | None = None,
    deferred: int | bool | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    lr_step: int | None = None,
    lr_milestones: tuple[int, ...] | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    seed: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    resume: bool = False,
    custom_model: bool = False,
    **execution: Any,
) -> TrainSpec:
    """Merge explicit settings, a preset and (when resuming) the saved run into a spec.

    ``execution`` holds TrainConfig fields that do not define the recipe (device, amp,
    compile, channels_last, workers, progress, ...). Raises :class:`SmoothmixError` on any
    bad or conflicting setting.
    """
    outdir = Path(outdir)
    explicit_opts = {k: v for k, v in (method_options or {}).items() if v is not None}
    p = get_preset(preset) if preset else None
    if p is not None:
        require(method is None or method == p.method,
                f"--method {method} conflicts with preset {p.name} (method {p.method}); "
                "drop --preset or choose a preset of that method")
        require(dataset is None or dataset == p.dataset,
                f"--dataset {dataset} conflicts with preset {p.name} (dataset {p.dataset}); "
                "drop --preset or choose a preset for that dataset")
    saved = _saved_settings(outdir) if resume else None
    # Where each asserted setting comes from, for the resume conflict message.
    sources: dict[str, str] = {}
    if p is not None:
        named = {k for k in p.as_dict() if k not in ("name", "options", "deferred")}
        named |= set(p.options) | ({"deferred_epochs"} if p.deferred else set())
        sources.update(dict.fromkeys(named, f"preset {p.name}"))
    given = {"dataset": dataset, "arch": arch, "method": method, "sigma": sigma,
             "epochs": epochs, "batch_size": batch_size, "lr": lr, "lr_step": lr_step,
             "lr_milestones": lr_milestones, "momentum": momentum,
             "weight_decay": weight_decay, "seed": seed, "train_subset": train_subset,
             "test_subset": test_subset, "deferred_epochs": deferred, **explicit_opts,
             **{k: v for k, v in execution.items() if k == "lr_gamma"}}
    sources.update({k: "--batch" if k == "batch_size" else option_flag(k)
                    for k, v in given.items() if v is not None})
    if arch_kwargs is not None:
        sources["arch_kwargs"] = "arch_kwargs="
    if lr_step is not None and lr_milestones is None:
        sources["lr_milestones"] = "--lr-step"

    def pick(name: str, value: Any, preset_value: Any = None, default: Any = None) -> Any:
        if value is not None:
            return value
        if preset_value is not None:
            return preset_value
        if saved is not None and saved.get(name) is not None:
            return saved[name]
        return default

    method = pick("method", method, p and p.method)
    require(method is not None, "no training method given: pass --method (or --preset; "
            "`smoothmix presets` lists them)")
    sigma = pick("sigma", sigma, p and p.sigma)
    require(sigma is not None, "no noise level given: pass --sigma (in [0, 1] pixel units)")
    require(isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0,
            f"--sigma must be > 0 (noise standard deviation in [0, 1] pixel units), got {sigma}")
    if sigma > 4:
        raise SmoothmixError(f"--sigma {sigma} is far above 1; sigma is in [0, 1] pixel units, "
                             "not 0..255 (docs/MATH.md §1: sigma 0.5 means N(0, 0.25 I) noise)")

    if not custom_model:
        from smoothmix.data import dataset_defaults
        from smoothmix.models import model_defaults

        dataset = pick("dataset", dataset, p and p.dataset)
        require(dataset is not None, "no dataset given: pass --dataset (or --preset)")
        info = dataset_defaults(dataset)
        arch = pick("arch", arch, p and p.arch, info.arch)
        require(arch is not None, f"dataset {dataset!r} has no default architecture: pass "
                "--arch")
        arch_info = model_defaults(arch)  # validates the name
        normalization = saved.get("normalization") if saved else None
        # A registered architecture (dataset None) brings its own normalisation.
        normalization = normalization or (
            info.normalization if info.normalization != "none" and arch_info.dataset
            else arch_info.normalization)
        arch_kwargs = _plain_kwargs(pick("arch_kwargs", arch_kwargs, None, {}))
        schedule = SCHEDULE_DEFAULTS.get(dataset, _FALLBACK_SCHEDULE)
    else:
        require(arch_kwargs is None, "arch_kwargs= builds a named architecture (arch=); with "
                "model= construct the network yourself")
        normalization = None
        schedule = _FALLBACK_SCHEDULE

    # Method options: saved run < preset < explicit (mismatches with a saved run are caught
    # by the resume check, not silently merged away).
    options: dict[str, Any] = {}
    if saved is not None and saved.get("method") == method:
        options.update(saved.get("method_options") or {})
    if p is not None:
        options.update(p.options)
    options.update(explicit_opts)
    options.pop("deferred_epochs", None)

    execution = dict(execution)
    execution["precision"] = _precision(execution, saved, sources)
    fields = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(execution) - fields)
    require(not unknown, f"unknown training setting(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(fields))}")
    config = TrainConfig(
        epochs=int(pick("epochs", epochs, p and p.epochs, schedule["epochs"])),
        lr=float(pick("lr", lr, p and p.lr, schedule["lr"])),
        lr_step=int(pick("lr_step", lr_step, p and p.lr_step, schedule["lr_step"])),
        lr_milestones=pick("lr_milestones", lr_milestones, p and p.lr_milestones),
        momentum=float(pick("momentum", momentum, None, 0.9)),
        weight_decay=float(pick("weight_decay", weight_decay, p and p.weight_decay, 1e-4)),
        seed=int(pick("seed", seed, None, 0)),
        **execution,
    )
    if lr_step is not None and lr_milestones is None:
        config.lr_milestones = None  # an explicit --lr-step replaces a preset's milestones
    if config.lr_milestones is not None:
        config.lr_milestones = tuple(int(m) for m in config.lr_milestones)
    defer_epochs = _deferred_epochs(deferred, p, saved, method, config)
    if defer_epochs is not None:
        options["deferred_epochs"] = defer_epochs
    options = _validate_options(method, options)
    config.batch_size = int(pick("batch_size", batch_size, p and p.batch_size,
                                 default_batch_size(method, options.get("num_noise"), dataset)))
    config.validate()

    for name, n in (("--train-subset", train_subset), ("--test-subset", test_subset)):
        require(n is None or n >= 1, f"{name} must be >= 1, got {n}")
    spec = TrainSpec(
        method=method, sigma=float(sigma), method_options=options, config=config,
        dataset=dataset, arch=arch, normalization=normalization,
        arch_kwargs=dict(arch_kwargs or {}),
        train_subset=pick("train_subset", train_subset) if not custom_model else None,
        test_subset=pick("test_subset", test_subset) if not custom_model else test_subset,
        preset=p.name if p else (saved or {}).get("preset"),
    )
    if saved is not None:
        conflicts, extends = _resume_conflicts(spec, saved, sources, epochs)
        require(not conflicts, f"cannot resume {outdir}: {'; '.join(conflicts)}; on --resume "
                f"the stored settings are the run's: pass only --outdir {outdir} --resume to "
                "continue it (a larger --epochs extends it), or choose a new --outdir")
        if extends is not None:
            spec.extra["extends_from_epochs"] = extends
    return spec


def _precision(execution: dict[str, Any], saved: Mapping[str, Any] | None,
               sources: dict[str, str]) -> str:
    """The run's precision: the one asked for (``precision``, or ``amp=True``, its older
    spelling), else a resumed run's (checkpoints before 0.3 stored only ``amp``), else
    fp32. Popped from ``execution``; an explicit one is a source for the resume check."""
    from smoothmix.execution import check_precision

    asked = execution.pop("precision", None)
    if execution.pop("amp", False):
        require(asked in (None, "bf16"), f"amp=True means precision bf16, not {asked!r}")
        asked = "bf16"
    if asked is not None:
        sources["precision"] = "--precision"
        return check_precision(asked)
    if saved is not None:
        return str(saved.get("precision") or ("bf16" if saved.get("amp") else "fp32"))
    return "fp32"


def _deferred_epochs(deferred: int | bool | None, p: Any, saved: Mapping[str, Any] | None,
                     method: str, config: TrainConfig) -> int | None:
    """MACER's deferral as an epoch index (None: not deferred).

    ``deferred`` is an epoch (``--deferred 30``; 0 or False: off) or True for the first
    learning-rate drop (the published meaning, also what a preset's ``deferred`` says). Not
    given: the preset's, else a resumed run's stored epoch, so a resume keeps its deferral.
    """
    if deferred is None and p is not None:
        deferred = p.deferred or None
    if deferred is None:
        if saved is not None and saved.get("method") == method:
            return (saved.get("method_options") or {}).get("deferred_epochs")
        return None
    if isinstance(deferred, bool):
        return config.first_lr_drop() if deferred else None
    require(isinstance(deferred, int) and deferred >= 0,
            f"--deferred takes an epoch >= 0 (e.g. 30, the first LR drop), got {deferred!r}")
    return deferred or None


def train(
    outdir: str | os.PathLike,
    *,
    dataset: str | None = None,
    arch: str | None = None,
    method: str | None = None,
    sigma: float | None = None,
    preset: str | None = None,
    method_options: Mapping[str, Any] | None = None,
    deferred: int | bool | None = None,
    resume: bool = False,
    data_dir: str | os.PathLike | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    model: nn.Module | None = None,
    train_set: Any | None = None,
    test_set: Any | None = None,
    num_classes: int | None = None,
    targets: str | os.PathLike | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    **config: Any,
) -> Path:
    """Train a smoothed classifier's base model; return the final checkpoint's path.

    ``config`` takes the :class:`TrainConfig` fields (``epochs``, ``batch_size``, ``lr``,
    ``lr_step``, ``lr_milestones``, ``momentum``, ``weight_decay``, ``seed``, ``device``,
    ``amp``, ``compile``, ``channels_last``, ``workers``, ``progress``, ...). Method
    hyperparameters go in ``method_options`` (e.g. ``{"num_noise": 4, "eta": 5.0}``);
    ``deferred=EPOCH`` switches MACER's robustness term on at that epoch (0-based index;
    ``True``: the first learning-rate drop, ``False``/0: from the start).
    ``targets`` is the soft-target file (``smoothmix targets``) of methods that need one
    (CAT-RS); it must have been built on the whole training set of ``dataset``.
    ``arch_kwargs`` go to the architecture's constructor (``create_model(arch, **arch_kwargs)``,
    e.g. ``{"width": 32}`` for an architecture added by
    :func:`smoothmix.models.register_model`); they are stored in the checkpoint, so
    ``load_model`` rebuilds the same network.
    """
    from smoothmix.methods import METHODS, create_method

    custom = model is not None
    if custom:
        require(train_set is not None, "model= needs train_set= (and usually test_set=)")
    else:
        require(train_set is None and test_set is None,
                "train_set=/test_set= need model= (or use dataset= by name)")
    spec = resolve(outdir=outdir, dataset=dataset, arch=arch, method=method, sigma=sigma,
                   preset=preset, method_options=method_options, deferred=deferred,
                   train_subset=train_subset, test_subset=test_subset, resume=resume,
                   custom_model=custom, arch_kwargs=arch_kwargs, **config)
    outdir = Path(outdir)
    wants_targets = "soft_target" in METHODS[spec.method].side_data
    require(targets is None or wants_targets,
            f"--targets is only used by methods that train on soft targets (catrs), not "
            f"{spec.method}")
    require(targets is None or not custom,
            "targets= needs dataset= by name; with your own train_set attach pi yourself "
            "(smoothmix.data.loaders.attach_side_data(train_set, soft_target=pi))")
    require(targets is not None or not wants_targets or custom,
            f"--method {spec.method} needs --targets FILE: the soft targets built by "
            "`smoothmix targets CHECKPOINT --dataset D --sigma 0.25 --out FILE` from a Gaussian "
            "model trained at sigma 0.25")
    resuming = check_outdir(outdir, resume)  # fail before loading data when the outdir is taken

    if not custom:
        from smoothmix.data import load_dataset
        from smoothmix.models import create_model

        assert spec.dataset is not None and spec.arch is not None
        train_set = load_dataset(spec.dataset, "train", data_dir)
        test_set = load_dataset(spec.dataset, "test", data_dir)
        soft = None
        if targets is not None:
            from smoothmix.checkpoint import file_sha256
            from smoothmix.data.loaders import attach_side_data
            from smoothmix.targets import soft_targets_for

            # Checked against the WHOLE training set; a subset takes its images' rows.
            soft, built = soft_targets_for(targets, train_set, spec.dataset, spec.train_subset)
            spec.extra["targets"] = {"targets_sha256": file_sha256(targets),
                                     "targets_n": built.n}
            if distributed.distributed_env()[0] == 0:
                print(f"smoothmix train: soft targets {targets}: N={built.n:,} votes per image"
                      f"{' (the reference uses 10,000)' if built.n < 10_000 else ''} at sigma "
                      f"{built.meta['sigma']:g}", flush=True)
        if spec.train_subset is not None:
            train_set = train_set.subset(spec.train_subset)
        if soft is not None:
            train_set = attach_side_data(train_set, soft_target=soft)
        if spec.test_subset is not None:
            test_set = test_set.subset(spec.test_subset)
        num_classes = train_set.num_classes
        seed_everything(spec.config.seed)  # the initial weights depend on the seed only
        model = create_model(spec.arch, num_classes=num_classes,
                             normalization=spec.normalization, **spec.arch_kwargs)
    else:
        num_classes = num_classes or getattr(train_set, "num_classes", None)
        require(num_classes is not None, "num_classes= is needed: the training set has no "
                "num_classes attribute")
    assert model is not None
    method_obj = create_method(spec.method, spec.sigma, int(num_classes), **spec.method_options)

    _announce(spec, train_set, outdir, resuming, restart=resume and not resuming)
    metadata = spec.metadata(int(num_classes))
    # The targets' hash takes part in the resume check: a resumed CAT-RS run keeps its pi.
    metadata.update(spec.extra.get("targets", {}))
    return fit(model, method_obj, train_set, test_set, spec.config, outdir, resume=resume,
               sigma=spec.sigma, metadata=metadata)


def _announce(spec: TrainSpec, train_set: Any, outdir: Path, resume: bool,
              restart: bool = False) -> None:
    rank, world, _ = distributed.distributed_env()  # the process group is not up yet
    if rank != 0:
        return
    c = spec.config
    opts = " ".join(f"{k}={v}" for k, v in spec.method_options.items())
    what = f"{spec.arch} on {spec.dataset}" if spec.dataset else "custom model"
    extends = spec.extra.get("extends_from_epochs")
    if extends is not None:
        print(f"smoothmix train: extending the run in {outdir} from {_count(extends, 'epoch')} "
              f"to {c.epochs} (--epochs)", flush=True)
    if restart:
        print(f"smoothmix train: --resume: {outdir} holds no checkpoint yet (the run stopped "
              "before its first epoch ended); starting it from the beginning", flush=True)
    print(f"smoothmix train: {what} ({len(train_set)} images), {spec.method} sigma={spec.sigma}"
          f"{' ' + opts if opts else ''}; {_count(c.epochs, 'epoch')}, batch {c.batch_size}, "
          f"lr {c.lr:g}, {c.precision}{' (resume)' if resume else ''}"
          f"{f', {world} processes' if world > 1 else ''} -> {outdir}", flush=True)
    if c.precision == "bf16":
        from smoothmix.device import resolve_device
        from smoothmix.execution import warn_if_bf16_emulated

        warn_if_bf16_emulated(resolve_device(c.device or "auto"))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
