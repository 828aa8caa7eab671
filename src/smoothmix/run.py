"""One dataset run's specification: what every dataset entry point shares.

:func:`smoothmix.certification.certify_dataset`, ``predict_dataset``, ``decide_dataset``,
``attack_dataset`` and :func:`smoothmix.targets.build_targets` take a :class:`RunSpec` (the
examples selected, the shard, the seed of the (seed, idx) noise streams, what the caller knows
about the model and data, how the model is asked to run, the noise, the block size) and add
only what their kind computes (n0, n, alpha, radii, epsilon, ...). A bare sigma or
:class:`~smoothmix.noise.Noise` in place of the spec is one with the default fields.

Before 0.5 each entry point redeclared these as keyword arguments; that form, deprecated in
0.5, was removed in 0.6: such a keyword is a one-line ``TypeError`` naming :class:`RunSpec`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smoothmix.checks import check_count, is_real
from smoothmix.errors import SmoothmixError, is_integer, require
from smoothmix.execution import EXECUTION_KEYS
from smoothmix.noise import Noise, make_noise
from smoothmix.storage.shards import Shard

__all__ = ["NOISE_BATCH", "RunSpec", "as_spec"]

# Noisy copies per block by default (RunSpec.batch_size, the CLI's --noise-batch): the most
# noisy images held in memory at once.
NOISE_BATCH = 1000


@dataclass(frozen=True)
class RunSpec:
    """What a dataset run shares with every kind of run.

    ``noise``: the smoothing noise (:mod:`smoothmix.noise`). ``batch_size``: noisy copies per
    block (default :data:`NOISE_BATCH`). ``skip`` / ``max_idx``: every ``skip``-th example
    with idx < ``max_idx`` (-1: all; else an integer >= 1).
    ``shard=(i, k)``: every k-th of those from the i-th (None: all, or under torchrun each
    rank its share, merged by rank 0). ``seed``: of the (seed, idx) noise streams.
    ``num_classes``: default the dataset's. ``identity``: what the caller knows about the
    model and data (checkpoint hash, dataset, split, ...), stored with the settings; a rerun
    into the same file must match it. ``execution``: the execution asked for (keys of
    :data:`smoothmix.execution.EXECUTION_KEYS`; unset keys take a resumed file's recorded
    values, else the defaults). ``progress``: show a progress bar. ``denoiser`` (0.5, reserved
    for denoised smoothing): the record of a denoiser run before the classifier, JSON
    values only (its identity, e.g. a checkpoint's sha256 or a model id and revision; its
    settings; the sigma it was built for); recorded in the settings as ``denoiser`` only
    when given, so that a rerun with another denoiser, or none, is refused by name; a model
    that is a :class:`smoothmix.denoisers.Denoised` fills it from its record when unset.
    ``allow_denoiser_sigma_mismatch`` (0.6): run with a denoiser built for another sigma
    than the noise's (refused otherwise; :func:`smoothmix.denoisers.denoiser_for_run`).
    ``model_sigma`` (0.6): the sigma the model was trained at, where the caller knows it (the
    CLI passes a checkpoint's, or a pretrained model card's; from Python, e.g.
    ``pretrained_info(name)["sigma"]``). Recorded in the result file's ``info``, not its
    settings: it does not decide a row, so a resume neither compares it nor needs it (files
    of 0.5 and earlier keep resuming), and ``smoothmix analyze`` flags a file certified at
    another sigma than its model's. None (the default): not recorded.
    """

    noise: Noise
    batch_size: int = NOISE_BATCH
    skip: int = 1
    max_idx: int = -1
    shard: Shard | None = None
    seed: int = 0
    num_classes: int | None = None
    identity: Mapping[str, object] = field(default_factory=dict)
    execution: Mapping[str, object] = field(default_factory=dict)
    progress: bool = True
    denoiser: Mapping[str, object] | None = None
    allow_denoiser_sigma_mismatch: bool = False
    model_sigma: float | None = None

    def __post_init__(self) -> None:
        require(isinstance(self.noise, Noise),
                f"RunSpec.noise must be a smoothmix.noise.Noise, got {self.noise!r} (use "
                "RunSpec.of(sigma, ...) for Gaussian noise)")
        check_count("batch_size", self.batch_size)
        require(is_integer(self.skip) and self.skip >= 1, f"skip must be >= 1, got {self.skip!r}")
        # 0 would select nothing and another negative mean "all" by accident: only -1 says so.
        require(is_integer(self.max_idx) and (self.max_idx == -1 or self.max_idx >= 1),
                f"max_idx (--max) must be -1 (all) or an integer >= 1, got {self.max_idx!r}")
        # Plain ints: the settings file records them (a numpy integer is no JSON value).
        object.__setattr__(self, "skip", int(self.skip))
        object.__setattr__(self, "max_idx", int(self.max_idx))
        unknown = sorted(set(self.execution or {}) - set(EXECUTION_KEYS))
        require(not unknown, f"unknown execution option(s) {unknown}; known: "
                f"{', '.join(EXECUTION_KEYS)}")
        # Copies: a caller's dict changed later must not change a spec.
        object.__setattr__(self, "identity", dict(self.identity or {}))
        object.__setattr__(self, "execution", dict(self.execution or {}))
        require(isinstance(self.allow_denoiser_sigma_mismatch, bool),
                "allow_denoiser_sigma_mismatch must be True or False, got "
                f"{self.allow_denoiser_sigma_mismatch!r}")
        if self.denoiser is not None:
            object.__setattr__(self, "denoiser", _json_record(self.denoiser))
        if self.model_sigma is not None:
            object.__setattr__(self, "model_sigma", _model_sigma(self.model_sigma))

    def info(self) -> dict[str, object]:
        """What the spec adds to a result file's ``info`` (never compared on resume): the
        model's training sigma when known."""
        return {} if self.model_sigma is None else {"model_sigma": self.model_sigma}

    @classmethod
    def of(cls, sigma: float | Noise, *, grid: int | None = None, **fields: Any) -> RunSpec:
        """A spec from a sigma (Gaussian noise) or a noise, and ``grid`` levels as before."""
        return cls(make_noise(sigma, grid), **fields)

    def replace(self, **changes: Any) -> RunSpec:
        """This spec with some fields changed."""
        return dataclasses.replace(self, **changes)

    def denoiser_settings(self) -> dict[str, object]:
        """The ``denoiser`` key of a run's settings: none without a denoiser (the settings of
        every earlier file then compare equal), else the denoiser's record."""
        return {} if self.denoiser is None else {"denoiser": dict(self.denoiser)}


def _model_sigma(value: object) -> float:
    """A model's training sigma as recorded: a positive finite number (any size: it is what
    a checkpoint says, not an input to check against the sigma limit)."""
    number = float(value) if is_real(value) else math.nan  # type: ignore[arg-type]
    require(math.isfinite(number) and number > 0,
            f"RunSpec.model_sigma must be a positive number (the sigma the model was trained "
            f"at) or None, got {value!r}")
    return number


def _json_record(denoiser: object, what: str = "RunSpec.denoiser") -> dict[str, Any]:
    """``denoiser`` as the settings file will read it back (tuples become lists, ...), so
    that a resume compares like with like; a one-line error naming ``what`` when it is not
    a JSON mapping. Also the JSON check of :func:`smoothmix.denoisers.compose.Denoised`'s
    records."""
    if not isinstance(denoiser, Mapping) or not denoiser:
        raise SmoothmixError(f"{what} must be a non-empty mapping (identity, "
                             f"settings, sigma), got {denoiser!r}")
    try:
        record: dict[str, Any] = json.loads(json.dumps(dict(denoiser), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SmoothmixError(f"{what} must hold JSON values only ({exc})") from None
    return record


# The spec's fields that the entry points took as keyword arguments before 0.5 (deprecated
# in 0.5, removed in 0.6; the denoiser's and model_sigma were only ever RunSpec fields), and
# build_targets' precision: named in the error that replaced them.
_REMOVED_KEYWORDS = frozenset({f.name for f in dataclasses.fields(RunSpec)}
                              - {"noise", "denoiser", "allow_denoiser_sigma_mismatch",
                                 "model_sigma"}
                              | {"grid", "precision"})


def _removed_keyword_error(caller: str, name: str) -> TypeError:
    """The one-line ``TypeError`` of a keyword ``caller`` does not take: for a run field
    passed as a keyword (the form removed in 0.6), it says the field goes in a
    :class:`RunSpec`."""
    message = f"{caller}() got an unexpected keyword argument {name!r}"
    if name in _REMOVED_KEYWORDS:
        example = "execution={'precision': ...}" if name == "precision" else f"{name}=..."
        message += (f": the run's fields go in a smoothmix.run.RunSpec (RunSpec.of(sigma, "
                    f"{example})) since 0.6")
    return TypeError(message)


def as_spec(spec: RunSpec | float | Noise, extra: Mapping[str, Any], caller: str) -> RunSpec:
    """The spec of an entry point called with a :class:`RunSpec`, or with a bare sigma or
    noise (a spec with the default fields). ``extra``: the keywords the entry point did not
    declare; any is a ``TypeError`` (the run's fields as keywords, the form before 0.5, were
    removed in 0.6: the error says to put them in a RunSpec)."""
    if extra:
        raise _removed_keyword_error(caller, sorted(extra)[0])
    return spec if isinstance(spec, RunSpec) else RunSpec.of(spec)
