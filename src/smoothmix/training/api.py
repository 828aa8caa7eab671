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
  Recipe(...), outdir, runtime=Runtime(...))``.

What decides the weights resolves into one :class:`~smoothmix.training.recipe.Recipe`, how the
run executes into one :class:`~smoothmix.training.recipe.Runtime`. Precedence: explicit
arguments > preset > the checkpoint's settings (when resuming) > per-dataset defaults > the
records' own defaults. Every check that can fail on user input runs before anything is
written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from smoothmix import distributed
from smoothmix.checkpoint import CHECKPOINT_NAME, read_checkpoint
from smoothmix.checks import SIGMA_LIMIT, check_count, check_sigma
from smoothmix.errors import SmoothmixError, require
from smoothmix.storage import differing_keys
from smoothmix.training.callbacks import Callback
from smoothmix.training.kinds import (
    build_denoiser,
    check_arch,
    init_record,
    load_init,
    method_trains,
    method_uses_noise,
)
from smoothmix.training.loop import TrainConfig, fit
from smoothmix.training.presets import Preset, get_preset
from smoothmix.training.recipe import (
    OPTION_PREFIX,
    Recipe,
    Runtime,
    compared,
    merge,
    option_flag,
    recipe_values,
    schedule_notes,
    show,
)
from smoothmix.training.rundir import check_outdir
from smoothmix.training.seeding import seed_everything

__all__ = ["SCHEDULE_DEFAULTS", "TrainSpec", "default_batch_size", "resolve", "train"]

# Per-dataset schedule defaults (docs/MATH.md §3.6 table; ImageNet: Cohen et al.'s 90/0.1/30).
SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"epochs": 90, "lr": 0.01, "lr_step": 30},
    "cifar10": {"epochs": 150, "lr": 0.1, "lr_step": 50},
    "imagenet": {"epochs": 90, "lr": 0.1, "lr_step": 30},
}
_FALLBACK_SCHEDULE = {"epochs": 90, "lr": 0.1, "lr_step": 30}

# Options that count things and must be at least 1 (m and T of docs/MATH.md §3).
_COUNT_OPTIONS = {"num_noise": "m (--num-noise)", "num_steps": "T (--num-steps)"}


def default_batch_size(method: str, num_noise: int | None, dataset: str | None = None) -> int:
    """Images per step of the reference recipes: 256 images × m copies are split into m
    steps of 256/m; MACER takes 256 images × its 16 copies on MNIST (the SmoothMix
    repository's script default) and 64 × 16 elsewhere (the original MACER code)."""
    if method == "macer":
        return 256 if dataset == "mnist" else 64
    return max(1, 256 // max(1, num_noise or 1))


def _recipe_field(name: str) -> Any:
    """A read-only attribute of :class:`TrainSpec` that reads ``recipe.<name>`` (the names
    of the older flat record)."""
    return property(lambda self: getattr(self.recipe, name), doc=f"``recipe.{name}``")


@dataclass(frozen=True)
class TrainSpec:
    """A fully resolved training run: its :class:`~smoothmix.training.recipe.Recipe` and
    :class:`~smoothmix.training.recipe.Runtime`, plus what the run folder records beside
    them (the normalisation, the preset's name, a soft-target file's hash, an extension)."""

    recipe: Recipe
    runtime: Runtime
    normalization: str | None = None
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # The recipe's identity, read through (the names of the older flat record).
    @property
    def method(self) -> str:
        assert self.recipe.method is not None  # resolve() requires one
        return self.recipe.method

    @property
    def sigma(self) -> float | None:
        """The run's sigma; None only for a method that trains without noise (``plain``)."""
        return self.recipe.sigma

    method_options = _recipe_field("method_options")
    dataset = _recipe_field("dataset")
    arch = _recipe_field("arch")
    arch_kwargs = _recipe_field("arch_kwargs")
    train_subset = _recipe_field("train_subset")
    test_subset = _recipe_field("test_subset")

    @property
    def config(self) -> TrainConfig:
        """The recipe and runtime as one flat record (the older spelling)."""
        return TrainConfig.of(self.recipe, self.runtime)

    def metadata(self, num_classes: int | None) -> dict[str, Any]:
        """What :func:`fit` stores in the checkpoint beside the training state."""
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
    return read_checkpoint(outdir / CHECKPOINT_NAME).settings()


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


def _flags(given: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe values the caller set (precision checked)."""
    flags = recipe_values(given)
    if flags.get("precision") is not None:
        from smoothmix.execution import check_precision

        check_precision(flags["precision"])
    return flags


def _runtime(runtime: Runtime | None, given: Mapping[str, Any]) -> Runtime:
    """``runtime`` (default :class:`Runtime`) with the execution keywords that were set."""
    chosen = {k: v for k, v in given.items() if v is not None}
    return replace(runtime or Runtime(), **chosen)


def _checked_preset(name: str | None, flags: Mapping[str, Any]) -> Preset | None:
    if not name:
        return None
    p = get_preset(name)
    require(flags.get("method") in (None, p.method),
            f"--method {flags.get('method')} conflicts with preset {p.name} (method {p.method}); "
            "drop --preset or choose a preset of that method")
    require(flags.get("dataset") in (None, p.dataset),
            f"--dataset {flags.get('dataset')} conflicts with preset {p.name} (dataset "
            f"{p.dataset}); drop --preset or choose a preset for that dataset")
    return p


def _merged_values(flags: Mapping[str, Any], p: Preset | None, saved: Mapping[str, Any] | None,
                   explicit_opts: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Flags > preset > the stored run, field by field; method options: the stored run's
    (same method) < the preset's < the given ones. Returns the recipe values and, for each
    value a flag or the preset set, where it came from (for the resume-conflict message)."""
    layers: list[tuple[str, Mapping[str, Any]]] = [("flags", flags)]
    if p is not None:
        layers.append((f"preset {p.name}", p.values()))
    if saved is not None:
        layers.append(("stored", saved))
    values, sources = merge(layers)
    sources = {k: v for k, v in sources.items() if v != "stored"}
    if flags.get("arch_kwargs") is not None:
        sources["arch_kwargs"] = "arch_kwargs="
    if flags.get("lr_step") is not None and flags.get("lr_milestones") is None:
        values.pop("lr_milestones", None)  # an explicit --lr-step replaces the milestones
        sources["lr_milestones"] = "--lr-step"
    require(values.get("method") is not None, "no training method given: pass --method (or "
            "--preset; `smoothmix presets` lists them)")
    options: dict[str, Any] = {}
    if saved is not None and saved.get("method") == values["method"]:
        options.update(saved.get("method_options") or {})
    if p is not None:
        options.update(p.options)
        sources.update(dict.fromkeys(p.options, f"preset {p.name}"))
    options.update(explicit_opts)
    sources.update({k: option_flag(k) for k in explicit_opts})
    options.pop("deferred_epochs", None)  # set by _deferred_epochs
    values["method_options"] = options
    return values, sources


def _model_settings(values: dict[str, Any], saved: Mapping[str, Any] | None,
                    custom_model: bool) -> tuple[str | None, dict[str, Any]]:
    """Fill in the dataset's architecture; return the normalisation and the schedule
    defaults of the dataset."""
    if custom_model:
        values.pop("train_subset", None)
        return None, _FALLBACK_SCHEDULE
    from smoothmix.data import dataset_defaults
    from smoothmix.models import model_defaults

    dataset = _given(values.get("dataset"), "no dataset given: pass --dataset (or --preset)")
    info = dataset_defaults(dataset)
    values["arch_kwargs"] = _plain_kwargs(values.get("arch_kwargs") or {})
    schedule = SCHEDULE_DEFAULTS.get(dataset, _FALLBACK_SCHEDULE)
    if method_trains(values["method"]) == "denoiser":  # a denoiser kind, no normalisation
        check_arch(values["method"], values.get("arch"))
        return None, schedule
    values["arch"] = _given(values.get("arch") or info.arch, f"dataset {dataset!r} has no "
                            "default architecture: pass --arch")
    check_arch(values["method"], values["arch"])
    arch_info = model_defaults(values["arch"])  # validates the name
    # A registered architecture (dataset None) brings its own normalisation.
    normalization = (saved or {}).get("normalization") or (
        info.normalization if info.normalization != "none" and arch_info.dataset
        else arch_info.normalization)
    return normalization, schedule


_T = TypeVar("_T")


def _sigma(values: Mapping[str, Any]) -> float | None:
    """The run's sigma: required for a method with noise, refused for one without."""
    method = values["method"]
    if method_uses_noise(method):
        return check_sigma(_given(values.get("sigma"), "no noise level given: pass --sigma "
                                  f"(in (0, {SIGMA_LIMIT:g}], for images scaled to [0, 1])"))
    require(values.get("sigma") is None, f"method {method} trains without noise: it takes no "
            "--sigma (the noise level is chosen when certifying: smoothmix certify --sigma)")
    return None


def _given(value: _T | None, message: str) -> _T:
    """``value``, or the one-line error ``message`` when it is missing."""
    if value is None:
        raise SmoothmixError(message)
    return value


def resolve(
    *,
    outdir: str | os.PathLike,
    preset: str | None = None,
    dataset: str | None = None, arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    method: str | None = None, sigma: float | None = None,
    method_options: Mapping[str, Any] | None = None, deferred: int | bool | None = None,
    train_subset: int | None = None, test_subset: int | None = None,
    epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
    lr_step: int | None = None, lr_gamma: float | None = None,
    lr_milestones: Sequence[int] | None = None, momentum: float | None = None,
    optimizer: str | None = None,
    weight_decay: float | None = None, seed: int | None = None,
    precision: str | None = None,
    runtime: Runtime | None = None, device: str | None = None, compile: bool | None = None,
    channels_last: bool | None = None, cuda_graphs: bool | None = None,
    workers: int | None = None, test_batch_size: int | None = None,
    log_every: int | None = None, progress: bool | None = None,
    resume: bool = False,
    custom_model: bool = False,
) -> TrainSpec:
    """Merge explicit settings, a preset and (when resuming) the saved run into a spec.

    The keywords are those of :func:`train` (``None``: not set here). Raises
    :class:`SmoothmixError` on any bad or conflicting setting.
    """
    outdir = Path(outdir)
    flags = _flags({"dataset": dataset, "arch": arch, "arch_kwargs": arch_kwargs,
                    "method": method, "sigma": sigma, "train_subset": train_subset,
                    "test_subset": test_subset, "epochs": epochs, "batch_size": batch_size,
                    "lr": lr, "lr_step": lr_step, "lr_gamma": lr_gamma,
                    "lr_milestones": lr_milestones, "momentum": momentum, "optimizer": optimizer,
                    "weight_decay": weight_decay, "seed": seed, "precision": precision})
    run = _runtime(runtime, {"device": device, "compile": compile,
                             "channels_last": channels_last, "cuda_graphs": cuda_graphs,
                             "workers": workers, "test_batch_size": test_batch_size,
                             "log_every": log_every, "progress": progress})
    # The caller's arch_kwargs only: a resumed run of the caller's model stores an empty one.
    require(not custom_model or arch_kwargs is None, "arch_kwargs= builds a named architecture "
            "(arch=); with model= construct the network yourself")
    explicit_opts = {k: v for k, v in (method_options or {}).items() if v is not None}
    p = _checked_preset(preset, flags)
    saved = _saved_settings(outdir) if resume else None
    values, sources = _merged_values(flags, p, saved, explicit_opts)
    values["sigma"] = _sigma(values)
    normalization, schedule = _model_settings(values, saved, custom_model)
    recipe = _recipe(values, schedule, deferred, p, saved, sources)
    for name in ("train_subset", "test_subset"):
        if getattr(recipe, name) is not None:
            check_count(option_flag(name), getattr(recipe, name))
    spec = TrainSpec(recipe=recipe, runtime=run, normalization=normalization,
                     preset=p.name if p else (saved or {}).get("preset"))
    if saved is not None:
        _check_resume(spec, saved, sources, flags.get("epochs"), outdir)
    return spec


def _recipe(values: Mapping[str, Any], schedule: Mapping[str, Any],
            deferred: int | bool | None, p: Preset | None, saved: Mapping[str, Any] | None,
            sources: dict[str, str]) -> Recipe:
    """The recipe of the merged values over the dataset's schedule, with the deferral as an
    epoch, the method options checked and the method's default batch; validated."""
    recipe = Recipe.from_values({**schedule, **values})
    method = values["method"]
    defer_epochs = _deferred_epochs(deferred, p, saved, method, recipe.first_lr_drop())
    if deferred is not None:
        sources["deferred_epochs"] = "--deferred"
    elif p is not None and p.deferred:
        sources["deferred_epochs"] = f"preset {p.name}"
    options = dict(recipe.method_options)
    if defer_epochs is not None:
        options["deferred_epochs"] = defer_epochs
    options = _validate_options(method, options)
    batch = values.get("batch_size")
    if batch is None:
        batch = default_batch_size(method, options.get("num_noise"), recipe.dataset)
    recipe = replace(recipe, method_options=options, batch_size=int(batch))
    recipe.validate()
    return recipe


def _check_resume(spec: TrainSpec, saved: Mapping[str, Any], sources: Mapping[str, str],
                  explicit_epochs: int | None, outdir: Path) -> None:
    """Refuse a resume whose settings contradict the stored run, naming each (settings
    nobody asked for came from the stored run, so a difference is always a flag's or the
    preset's); a larger explicit ``epochs`` is an extension, announced by :func:`train`."""
    stored_epochs = saved.get("epochs")
    extends = (explicit_epochs is not None and stored_epochs is not None
               and explicit_epochs > stored_epochs)
    old, new = compared(saved, spec.recipe.settings(), skip=("epochs",) if extends else ())
    conflicts = []
    for key in differing_keys(old, new):
        name = key.removeprefix(OPTION_PREFIX)
        shown = option_flag(name) if key.startswith(OPTION_PREFIX) else name
        conflicts.append(f"{shown} {show(new.get(key))} from "
                         f"{sources.get(name, 'the defaults')} (stored {show(old.get(key))})")
    require(not conflicts, f"cannot resume {outdir}: {'; '.join(conflicts)}; on --resume "
            f"the stored settings are the run's: pass only --outdir {outdir} --resume to "
            "continue it (a larger --epochs extends it), or choose a new --outdir")
    if extends:
        spec.extra["extends_from_epochs"] = int(saved["epochs"])


def _deferred_epochs(deferred: int | bool | None, p: Preset | None,
                     saved: Mapping[str, Any] | None, method: str | None,
                     first_lr_drop: int) -> int | None:
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
        return first_lr_drop if deferred else None
    require(isinstance(deferred, int) and deferred >= 0,
            f"--deferred takes an epoch >= 0 (e.g. 30, the first LR drop), got {deferred!r}")
    return deferred or None


def train(
    outdir: str | os.PathLike,
    *,
    preset: str | None = None,
    dataset: str | None = None, arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    method: str | None = None, sigma: float | None = None,
    method_options: Mapping[str, Any] | None = None, deferred: int | bool | None = None,
    train_subset: int | None = None, test_subset: int | None = None,
    epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
    lr_step: int | None = None, lr_gamma: float | None = None,
    lr_milestones: Sequence[int] | None = None, momentum: float | None = None,
    optimizer: str | None = None, weight_decay: float | None = None, seed: int | None = None,
    precision: str | None = None,
    runtime: Runtime | None = None, device: str | None = None, compile: bool | None = None,
    channels_last: bool | None = None, cuda_graphs: bool | None = None,
    workers: int | None = None, test_batch_size: int | None = None,
    log_every: int | None = None, progress: bool | None = None,
    resume: bool = False,
    data_dir: str | os.PathLike | None = None,
    model: nn.Module | None = None, train_set: Any | None = None,
    test_set: Any | None = None, num_classes: int | None = None,
    targets: str | os.PathLike | None = None, init: str | os.PathLike | None = None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train a smoothed classifier's base model (or a denoiser); return the checkpoint path.

    ``preset``: a recipe of :data:`~smoothmix.training.PRESETS`; ``resume``: continue the
    run in ``outdir``; ``data_dir``: the dataset's files. The recipe
    (:class:`~smoothmix.training.recipe.Recipe`; ``None``: the preset's, a resumed run's,
    else the default): ``dataset``, ``arch``, ``arch_kwargs`` (to the architecture's
    constructor, stored in the checkpoint so that ``load_model`` rebuilds the same network),
    ``method``, ``sigma``, ``method_options`` (e.g. ``{"num_noise": 4, "eta": 5.0}``),
    ``deferred`` (MACER's robustness term from this 0-based epoch; ``True``: the first
    learning-rate drop, ``False``/0: from the start), ``train_subset``, ``test_subset``,
    ``epochs``, ``batch_size``, ``lr``, ``lr_step``, ``lr_gamma``, ``lr_milestones``,
    ``momentum``, ``optimizer`` ("sgd" or "adam"), ``weight_decay``, ``seed`` and
    ``precision`` ("fp32" or "bf16"). The execution
    (:class:`~smoothmix.training.recipe.Runtime`): ``runtime``, or any of its fields as
    keywords (``device``, ``compile``, ``channels_last``, ``cuda_graphs``, ``workers``,
    ``test_batch_size``, ``log_every``, ``progress``). ``targets`` is the soft-target file
    (``smoothmix targets``) of methods that need one (CAT-RS), built on the whole training
    set of ``dataset``. ``init``: start from this checkpoint's weights
    (:mod:`~smoothmix.training.kinds`). ``callbacks`` run after the default ones
    (:class:`~smoothmix.training.callbacks.Callback`)."""
    custom = _check_own_model(model, train_set, test_set)
    spec = resolve(
        outdir=outdir, preset=preset, dataset=dataset, arch=arch, arch_kwargs=arch_kwargs,
        method=method, sigma=sigma, method_options=method_options, deferred=deferred,
        train_subset=train_subset, test_subset=test_subset, epochs=epochs,
        batch_size=batch_size, lr=lr, lr_step=lr_step, lr_gamma=lr_gamma,
        lr_milestones=lr_milestones, momentum=momentum, optimizer=optimizer,
        weight_decay=weight_decay, seed=seed, precision=precision, runtime=runtime,
        device=device, compile=compile, channels_last=channels_last, cuda_graphs=cuda_graphs,
        workers=workers,
        test_batch_size=test_batch_size, log_every=log_every, progress=progress,
        resume=resume, custom_model=custom)
    return _train_spec(spec, Path(outdir), resume, data_dir=data_dir, model=model,
                       train_set=train_set, test_set=test_set, num_classes=num_classes,
                       targets=targets, init=init, callbacks=callbacks)


def _train_spec(spec: TrainSpec, outdir: Path, resume: bool, *, data_dir: Any,
                model: nn.Module | None, train_set: Any, test_set: Any,
                num_classes: int | None, targets: Any, init: Any,
                callbacks: Sequence[Callback]) -> Path:
    """Load what the spec names (or take the caller's model and data), then :func:`fit`."""
    from smoothmix.methods import create_method

    custom = model is not None
    _check_targets(spec, targets, custom)
    resuming = check_outdir(outdir, resume)  # fail before loading data when the outdir is taken
    _check_init_needed(spec, init, resuming)
    arch_kwargs = None
    if model is None:
        model, train_set, test_set, arch_kwargs = _named_run(spec, data_dir, targets)
        num_classes = train_set.num_classes
    else:
        num_classes = _given(num_classes or getattr(train_set, "num_classes", None),
                             "num_classes= is needed: the training set has no num_classes "
                             "attribute")
    method_obj = create_method(spec.method, spec.sigma, int(num_classes), **spec.method_options)
    if resuming:
        start = init_record(init, _saved_settings(outdir), outdir)
    else:
        start = {} if init is None else {"init": str(init),
                                         "init_sha256": load_init(model, init, spec.arch)}

    _announce(spec, train_set, outdir, resuming, restart=resume and not resuming,
              init=start.get("init"))
    metadata = spec.metadata(int(num_classes))
    if arch_kwargs is not None:
        metadata["arch_kwargs"] = arch_kwargs  # complete (a denoiser's channels filled in)
    # The targets' hash takes part in the resume check: a resumed CAT-RS run keeps its pi.
    metadata.update(spec.extra.get("targets", {}))
    metadata.update(start)
    return fit(model, method_obj, train_set, test_set, spec.recipe, outdir, resume=resume,
               runtime=spec.runtime, sigma=spec.sigma, metadata=metadata, callbacks=callbacks)


def _check_own_model(model: nn.Module | None, train_set: Any, test_set: Any) -> bool:
    """Whether the run trains the caller's own model (which then needs its data)."""
    if model is not None:
        require(train_set is not None, "model= needs train_set= (and usually test_set=)")
        return True
    require(train_set is None and test_set is None,
            "train_set=/test_set= need model= (or use dataset= by name)")
    return False


def _check_targets(spec: TrainSpec, targets: Any, custom: bool) -> None:
    """Soft targets are given exactly to the methods that train on them (CAT-RS)."""
    from smoothmix.methods import METHODS

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


def _check_init_needed(spec: TrainSpec, init: Any, resuming: bool) -> None:
    """A preset that fine-tunes (``needs_init``) starts from ``--init``; one line if not."""
    if spec.preset is None or init is not None or resuming:
        return
    preset = get_preset(spec.preset)
    require(not preset.needs_init, f"preset {preset.name} fine-tunes a trained model: pass "
            f"--init CHECKPOINT (the preset's note: {preset.note})")


def _named_run(spec: TrainSpec, data_dir: Any, targets: Any
               ) -> tuple[nn.Module, Any, Any, dict[str, Any]]:
    """The model, training and test sets of a run named by dataset and architecture (the
    soft targets attached to the training set when given), and the model's complete
    construction arguments."""
    from smoothmix.data import load_dataset
    from smoothmix.models import create_model

    assert spec.dataset is not None and spec.arch is not None
    train_set = load_dataset(spec.dataset, "train", data_dir)
    test_set = load_dataset(spec.dataset, "test", data_dir)
    soft = _soft_targets(spec, train_set, targets) if targets is not None else None
    if spec.train_subset is not None:
        train_set = train_set.subset(spec.train_subset)
    if soft is not None:
        from smoothmix.data.loaders import attach_side_data

        train_set = attach_side_data(train_set, soft_target=soft)
    if spec.test_subset is not None:
        test_set = test_set.subset(spec.test_subset)
    seed_everything(spec.recipe.seed)  # the initial weights depend on the seed only
    if method_trains(spec.method) == "denoiser":
        model, kwargs = build_denoiser(spec.arch, spec.recipe.arch_kwargs, train_set)
        return model, train_set, test_set, kwargs
    model = create_model(spec.arch, num_classes=train_set.num_classes,
                         normalization=spec.normalization, **spec.recipe.arch_kwargs)
    return model, train_set, test_set, dict(spec.recipe.arch_kwargs)


def _soft_targets(spec: TrainSpec, train_set: Any, targets: Any) -> Any:
    """The rows of the soft-target file for the images trained on (checked against the
    WHOLE training set; a subset takes its images' rows); their hash goes into the spec."""
    from smoothmix.checkpoint import file_sha256
    from smoothmix.targets import soft_targets_for

    assert spec.dataset is not None  # a named run (checked by _check_targets)
    soft, built = soft_targets_for(targets, train_set, spec.dataset, spec.train_subset)
    spec.extra["targets"] = {"targets_sha256": file_sha256(targets), "targets_n": built.n}
    if distributed.distributed_env()[0] == 0:
        print(f"smoothmix train: soft targets {targets}: N={built.n:,} votes per image"
              f"{' (the reference uses 10,000)' if built.n < 10_000 else ''} at sigma "
              f"{built.meta['sigma']:g}", flush=True)
    return soft


def _announce(spec: TrainSpec, train_set: Any, outdir: Path, resume: bool,
              restart: bool = False, init: str | None = None) -> None:
    """The header line (with the effective warm-up and deferral, and the checkpoint a
    fine-tuning run starts from), and a warning line for each schedule the run's epochs do
    not reach (rank 0)."""
    rank, world, _ = distributed.distributed_env()  # the process group is not up yet
    if rank != 0:
        return
    r = spec.recipe
    opts = " ".join(f"{k}={v}" for k, v in
                    {**spec.method_options, **({"init": init} if init else {})}.items())
    what = f"{spec.arch} on {spec.dataset}" if spec.dataset else "custom model"
    extends = spec.extra.get("extends_from_epochs")
    if extends is not None:
        print(f"smoothmix train: extending the run in {outdir} from {_count(extends, 'epoch')} "
              f"to {r.epochs} (--epochs)", flush=True)
    if restart:
        print(f"smoothmix train: --resume: {outdir} holds no checkpoint yet (the run stopped "
              "before its first epoch ended); starting it from the beginning", flush=True)
    schedule, warnings = schedule_notes(r)
    noise = f"sigma={spec.sigma}" if spec.sigma is not None else "without noise"
    print(f"smoothmix train: {what} ({len(train_set)} images), {spec.method} {noise}"
          f"{' ' + opts if opts else ''}; {_count(r.epochs, 'epoch')}"
          f"{''.join(', ' + part for part in schedule)}, batch {r.batch_size}, "
          f"lr {r.lr:g}, {r.precision}{' (resume)' if resume else ''}"
          f"{f', {world} processes' if world > 1 else ''} -> {outdir}", flush=True)
    for warning in warnings:
        print(f"smoothmix train: warning: {warning}", file=sys.stderr, flush=True)
    if r.precision == "bf16":
        from smoothmix.device import resolve_device
        from smoothmix.execution import warn_if_bf16_emulated

        warn_if_bf16_emulated(resolve_device(spec.runtime.device or "auto"))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
