"""The recipe of a training run, declared once.

A :class:`Recipe` holds everything that defines a run's trajectory: what is trained (method,
σ, dataset, architecture and its arguments, subsets), the optimiser schedule and the method
options. Every layer that can set a recipe value speaks this record: the presets
(:meth:`smoothmix.training.presets.Preset.recipe`), the keyword arguments of
:func:`smoothmix.training.train` and the CLI flags, a stored run
(:meth:`smoothmix.checkpoint.Checkpoint.settings`) and ``smoothmix reproduce``'s budget.
``None`` means "not set by this layer"; :func:`merge` takes each field from the first layer
that sets it.

:data:`RECIPE_FIELDS` is the one list of settings a resume must agree with, and
:func:`compared` what is compared of two of them (values normalised by
:func:`comparable`; the differing keys then come from :func:`smoothmix.storage.differing_keys`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Prefix of a method option in the flat comparison record (``method_options.eta``).
OPTION_PREFIX = "method_options."


@dataclass
class Recipe:
    """One layer of recipe values (``None``: not set here). ``method_options`` maps option
    names to values (MACER's deferral as ``deferred_epochs``)."""

    method: str | None = None
    sigma: float | None = None
    dataset: str | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_step: int | None = None
    lr_gamma: float | None = None
    lr_milestones: tuple[int, ...] | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    seed: int | None = None
    precision: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Recipe:
        """The recipe fields of a flat settings record (unknown keys are ignored)."""
        values = {k: settings[k] for k in RECIPE_FIELDS if settings.get(k) is not None}
        values["method_options"] = dict(settings.get("method_options") or {})
        return cls(**values)

    def given(self) -> dict[str, Any]:
        """The fields this layer sets (method options apart)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k != "method_options" and v is not None}


#: The settings that define a run: on resume a stored value and a given one must agree.
RECIPE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Recipe)
                                       if f.name != "method_options")
#: The recipe fields that live in :class:`smoothmix.training.TrainConfig` (the schedule).
SCHEDULE_FIELDS: tuple[str, ...] = ("epochs", "batch_size", "lr", "lr_step", "lr_gamma",
                                    "lr_milestones", "momentum", "weight_decay", "seed",
                                    "precision")


def option_flag(name: str) -> str:
    """The CLI flag of a recipe field or method option (``batch_size`` is ``--batch``,
    ``deferred_epochs`` is set by ``--deferred``)."""
    special = {"batch_size": "--batch", "deferred_epochs": "--deferred"}
    return special.get(name) or "--" + name.replace("_", "-")


def merge(layers: Sequence[tuple[str, Recipe]], option_layers: Sequence[Mapping[str, Any]]
          ) -> tuple[Recipe, dict[str, str]]:
    """Each field from the first layer (highest precedence first) that sets it, and which
    layer that was (``{"lr": "--lr"}``, ``{"epochs": "preset X"}``) for messages.

    A layer named ``"flags"`` is the caller's explicit values: its source is the field's
    flag. Method options are merged from ``option_layers`` (lowest precedence first).
    """
    merged = Recipe()
    sources: dict[str, str] = {}
    for name, layer in reversed(layers):
        for key, value in layer.given().items():
            setattr(merged, key, value)
            sources[key] = option_flag(key) if name == "flags" else name
    for options in option_layers:
        merged.method_options.update(options)
    return merged, sources


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
