"""The two records of a training run, each declared once.

* :class:`Recipe` — what decides the trained weights: the data (dataset, subsets), the
  network (arch and its arguments), the method with its options (MACER's deferral as
  ``deferred_epochs``, a warm-up as ``warmup``), σ, the optimiser schedule, the batch, the
  seed and the precision. A resume must agree with it (:data:`RECIPE_FIELDS`); it is what
  a preset builds (:meth:`smoothmix.training.presets.Preset.recipe`) and what
  :func:`smoothmix.training.train` resolves from its keyword arguments.
* :class:`Runtime` — how the run executes, which does not change what the weights mean:
  device, ``torch.compile``, memory layout, CUDA graphs, data workers, the test batch, the
  progress bar. It may change between a run and its resume.

Both are frozen and typed; their field defaults are the only defaults (the per-dataset
schedules of :mod:`smoothmix.training.api` are one more layer above them).

Resolving merges layers of given values (explicit arguments, a preset, a stored run, the
dataset's schedule): plain mappings of field name to value, where a missing or ``None``
value means "not set by this layer"; :func:`merge` takes each field from the first layer
that sets it. :func:`compared` is what a resume compares (values normalised by
:func:`comparable`; the differing keys then come from :func:`smoothmix.storage.differing_keys`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smoothmix.errors import require

__all__ = ["OPTIMIZERS", "OPTION_PREFIX", "RECIPE_FIELDS", "RUNTIME_FIELDS", "SCHEDULE_FIELDS",
           "Recipe", "Runtime",
           "comparable", "compared", "merge", "option_flag", "recipe_values",
           "schedule_notes", "show", "split_settings"]

#: The optimisers a recipe may name (:attr:`Recipe.optimizer`).
OPTIMIZERS = ("sgd", "adam")

#: Prefix of a method option in the flat comparison record (``method_options.eta``).
OPTION_PREFIX = "method_options."


def _schedule(default: Any) -> Any:
    """A schedule field of :class:`Recipe`: what :func:`~smoothmix.training.fit` takes from
    the recipe (the other fields are the run's identity, which it takes from the method
    object and its ``metadata``)."""
    return field(default=default, metadata={"schedule": True})


@dataclass(frozen=True)
class Recipe:
    """What decides the trained weights (resolved: every field holds its value).

    ``method`` and ``sigma`` are None only for a bare :func:`~smoothmix.training.fit` call,
    whose method object names itself; ``dataset``/``arch`` are None for the caller's own
    model and data. The learning rate is multiplied by ``lr_gamma`` every ``lr_step``
    epochs, or at ``lr_milestones`` when given. ``batch_size`` counts images per optimiser
    step over all ranks (each expanded to the method's noise copies inside the method).
    ``precision`` "bf16" runs the method's forward passes under bfloat16 autocast; it changes
    the trajectory, so a resume keeps it. ``optimizer`` is "sgd" (with ``momentum``; every
    classifier recipe) or "adam" (default betas; the published denoiser recipes of Salman
    et al. 2020); both take ``weight_decay`` and the step schedule. ``method_options`` maps
    option names to values.
    """

    method: str | None = None
    sigma: float | None = None
    dataset: str | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    train_subset: int | None = None
    test_subset: int | None = None
    epochs: int = _schedule(90)
    batch_size: int = _schedule(256)
    lr: float = _schedule(0.01)
    lr_step: int = _schedule(30)
    lr_gamma: float = _schedule(0.1)
    lr_milestones: tuple[int, ...] | None = _schedule(None)
    momentum: float = _schedule(0.9)
    optimizer: str = _schedule("sgd")
    weight_decay: float = _schedule(1e-4)
    seed: int = _schedule(0)
    precision: str = _schedule("fp32")
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from smoothmix.execution import check_precision

        check_precision(self.precision)
        if self.lr_milestones is not None:  # any sequence in, a tuple of ints stored
            object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Recipe:
        """The recipe of merged layer values (missing ones take the field defaults), numbers
        coerced to the fields' types (a CLI or JSON value may be an int where a float is
        meant)."""
        given = {k: v for k, v in values.items() if v is not None}
        for name in _INT_FIELDS & given.keys():
            given[name] = int(given[name])
        for name in _FLOAT_FIELDS & given.keys():
            given[name] = float(given[name])
        given["arch_kwargs"] = dict(given.get("arch_kwargs") or {})
        given["method_options"] = dict(given.get("method_options") or {})
        return cls(**given)

    def validate(self) -> None:
        """One-line :class:`~smoothmix.errors.SmoothmixError` on an impossible schedule."""
        require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        require(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        require(self.optimizer in OPTIMIZERS, f"optimizer must be one of "
                f"{', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        require(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        require(self.lr_step >= 1, f"lr step must be >= 1 epoch, got {self.lr_step}")
        require(0 < self.lr_gamma <= 1, f"lr gamma must be in (0, 1], got {self.lr_gamma}")
        if self.lr_milestones is not None:
            ms = list(self.lr_milestones)
            require(all(m >= 1 for m in ms) and ms == sorted(ms),
                    f"lr milestones must be increasing epochs >= 1, got {ms}")

    def first_lr_drop(self) -> int:
        """Epoch index at which the learning rate first drops (MACER's ``--deferred``)."""
        return self.lr_milestones[0] if self.lr_milestones else self.lr_step

    def settings(self) -> dict[str, Any]:
        """The recipe as a flat settings record (what a resume compares)."""
        out = {name: getattr(self, name) for name in RECIPE_FIELDS}
        out.update(arch_kwargs=dict(self.arch_kwargs), method_options=dict(self.method_options))
        return out


@dataclass(frozen=True)
class Runtime:
    """How a run executes, free to change between a run and its resume.

    ``device`` None: :func:`smoothmix.device.resolve_device`'s choice. ``channels_last``
    None: on for image models (the faster layout for convnets on CPUs and GPUs).
    ``compile`` (``torch.compile``) is opt-in; ``cuda_graphs`` captures each epoch's
    fixed-shape step as a CUDA graph (drop-last batches; :mod:`smoothmix.training.graphs`).
    ``workers`` None: ``min(4, CPU cores)`` (:func:`smoothmix.data.loaders.default_workers`).
    ``test_batch_size`` None: ``max(per-rank batch, 256)``.
    """

    device: str | None = None
    compile: bool = False
    channels_last: bool | None = None
    cuda_graphs: bool = False
    workers: int | None = None
    test_batch_size: int | None = None
    log_every: int = 20
    progress: bool = True

    def validate(self) -> None:
        """One-line :class:`~smoothmix.errors.SmoothmixError` on a bad value."""
        require(self.workers is None or self.workers >= 0,
                f"workers must be >= 0, got {self.workers}")
        require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        require(self.test_batch_size is None or self.test_batch_size >= 1,
                f"test batch size must be >= 1, got {self.test_batch_size}")


#: The settings that define a run: on resume a stored value and a given one must agree.
RECIPE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Recipe)
                                       if f.name != "method_options")
#: The recipe fields the training loop takes from the recipe (optimiser, schedule, batch,
#: seed, precision), marked in :class:`Recipe`'s declaration.
SCHEDULE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Recipe)
                                         if f.metadata.get("schedule"))
#: The execution settings (:class:`Runtime`).
RUNTIME_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Runtime))
_INT_FIELDS = frozenset({"train_subset", "test_subset", "epochs", "batch_size", "lr_step",
                         "seed"})
_FLOAT_FIELDS = frozenset({"sigma", "lr", "lr_gamma", "momentum", "weight_decay"})


def recipe_values(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe fields a flat settings record sets (a layer; unknown keys are ignored)."""
    return {k: settings[k] for k in RECIPE_FIELDS if settings.get(k) is not None}


def split_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], Runtime]:
    """Flat settings (the keywords of the old ``TrainConfig``): the recipe values they set
    and the :class:`Runtime`. An unknown name is a ``TypeError``, as for any keyword
    (``amp``, the spelling of ``precision="bf16"`` deprecated in 0.3, was removed in 0.6:
    its error says so; a config record's ``amp`` beside the ``precision`` it was derived
    from, as :func:`~smoothmix.training.rundir.config_record` writes it, is ignored)."""
    values = dict(settings)
    amp = values.pop("amp", None)
    if amp is not None and (values.get("precision") is None
                            or bool(amp) != (values["precision"] == "bf16")):
        raise TypeError("unknown training setting amp: amp=True is precision=\"bf16\" since "
                        "0.6 (the amp spelling was removed)")
    unknown = sorted(set(values) - set(RECIPE_FIELDS) - set(RUNTIME_FIELDS)
                     - {"method_options"})
    if unknown:
        raise TypeError(f"unknown training setting(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(sorted({*RECIPE_FIELDS, *RUNTIME_FIELDS}))}")
    runtime = Runtime(**{k: v for k, v in values.items() if k in RUNTIME_FIELDS})
    return {k: v for k, v in values.items() if k not in RUNTIME_FIELDS}, runtime


def option_flag(name: str) -> str:
    """The CLI flag of a recipe field or method option (``batch_size`` is ``--batch``,
    ``deferred_epochs`` is set by ``--deferred``)."""
    special = {"batch_size": "--batch", "deferred_epochs": "--deferred"}
    return special.get(name) or "--" + name.replace("_", "-")


def merge(layers: Sequence[tuple[str, Mapping[str, Any]]]
          ) -> tuple[dict[str, Any], dict[str, str]]:
    """Each recipe field from the first layer (highest precedence first) that sets it, and
    which layer that was (``{"lr": "--lr"}``, ``{"epochs": "preset X"}``) for messages.

    A layer named ``"flags"`` is the caller's explicit values: its source is the field's
    flag. Method options are not merged here (they merge option by option).
    """
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, layer in reversed(layers):
        for key, value in recipe_values(layer).items():
            merged[key] = value
            sources[key] = option_flag(key) if name == "flags" else name
    return merged, sources


def schedule_notes(recipe: Recipe) -> tuple[list[str], list[str]]:
    """The effective warm-up and deferral of a recipe: the header's parts (``warm-up 10
    epochs``, ``robustness term from epoch 31``) and a one-line warning for each that the
    run's epochs do not reach (a 1-epoch SmoothMix run with a 10-epoch warm-up keeps the
    mix weight at 0.1: it trains almost plain Gaussian)."""
    options = {**_option_defaults(recipe.method), **recipe.method_options}
    parts: list[str] = []
    warnings: list[str] = []
    warmup = options.get("warmup")
    if isinstance(warmup, int) and warmup > 1:
        # The weight of epoch e (from 0) is min(1, (e + 1) / warmup): the last epoch's says
        # how far a short run gets.
        cut = (f" (cut short: weight {recipe.epochs / warmup:.2g} at epoch {recipe.epochs})"
               if recipe.epochs < warmup else "")
        parts.append(f"warm-up {warmup} epochs{cut}")
        if recipe.epochs < warmup:
            warnings.append(
                f"--epochs {recipe.epochs} is shorter than {recipe.method}'s {warmup}-epoch "
                f"warm-up: its warmed-up term reaches only {recipe.epochs / warmup:.2g} of its "
                f"weight; pass --warmup {recipe.epochs} (or fewer) to reach it")
    deferred = options.get("deferred_epochs")
    if isinstance(deferred, int) and deferred > 0:
        never = f" (never on in a {recipe.epochs}-epoch run)" if recipe.epochs <= deferred else ""
        parts.append(f"robustness term from epoch {deferred + 1}{never}")
        if recipe.epochs <= deferred:
            warnings.append(
                f"--epochs {recipe.epochs} ends before {recipe.method}'s deferral of "
                f"{deferred} epochs: the robustness term is never on (plain Gaussian "
                f"training); pass "
                + (f"--deferred {recipe.epochs - 1} (or fewer) or " if recipe.epochs > 1 else "")
                + "--no-deferred")
    return parts, warnings


def _plain(value: Any) -> Any:
    """A value as it compares: sequences as lists (empty = None), floats to 12 digits."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value] or None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float):
        return float(f"{value:.12g}")
    return value


def comparable(settings: Mapping[str, Any], keys: Iterable[str] = RECIPE_FIELDS
               ) -> dict[str, Any]:
    """The recipe fields of ``settings`` (those present) normalised for comparison, with
    each method option as its own ``method_options.NAME`` entry, its default filled in when
    the method is registered (an option left at its default equals one not given)."""
    out = {k: _plain(settings[k]) for k in keys if k in settings}
    if "arch_kwargs" in out:
        out["arch_kwargs"] = out["arch_kwargs"] or {}
    options = settings.get("method_options")
    if options is not None:
        defaults = _option_defaults(settings.get("method"))
        for key, value in {**defaults, **options}.items():
            out[OPTION_PREFIX + key] = _plain(value)
    return out


def _option_defaults(method: Any) -> dict[str, Any]:
    from smoothmix.methods import METHODS

    cls = METHODS.get(method) if isinstance(method, str) else None
    return {k: opt.default for k, opt in cls.options.items()} if cls is not None else {}


def compared(stored: Mapping[str, Any], current: Mapping[str, Any],
             skip: Iterable[str] = (), also: Iterable[str] = ()
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The normalised recipe values (:func:`comparable`) of a stored run and of this one
    that are compared: keys both record (an older run that did not record a setting cannot
    contradict it), minus ``skip``, plus the keys ``also`` names (e.g. a soft-target file's
    hash); method options only when the methods agree."""
    keys = (*RECIPE_FIELDS, *also)
    old, new = comparable(stored, keys), comparable(current, keys)
    if old.get("method") != new.get("method"):
        old = {k: v for k, v in old.items() if not k.startswith(OPTION_PREFIX)}
        new = {k: v for k, v in new.items() if not k.startswith(OPTION_PREFIX)}
    shared = (set(old) & set(new)) - set(skip)
    return {k: old[k] for k in shared}, {k: new[k] for k in shared}


def show(value: Any) -> str:
    """A setting as the messages print it (``0.01``, ``30,60``, ``none``)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)
