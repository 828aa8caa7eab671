"""What a ``reproduce`` run spends (:class:`Budget`), and the one English line that says so.

The full budget is the presets and the published protocol (``published.json``: n0, N, α;
the full test set, ImageNet every 100th validation image). A budget with overrides (epochs,
training subset, images per step, warm-up, MACER deferral, test skip, N, max index, ...) is
smaller and is stated in every output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from smoothmix.checks import check_count, check_radii
from smoothmix.errors import require
from smoothmix.reproduce.experiments import ALPHA, FULL_N, N0, Experiment
from smoothmix.targets import REFERENCE_N

# The CAT-RS reference's votes per training image: the full budget of `--targets-n`.
FULL_TARGETS_N = REFERENCE_N


@dataclass(frozen=True)
class Budget:
    """What a run spends. ``None`` everywhere is the full published budget; each other value
    overrides one thing for every method of the run (and is stated in the outputs)."""

    epochs: int | None = None  # instead of the presets' epochs
    train_subset: int | None = None  # the first N training images
    batch_size: int | None = None  # images per optimiser step for every method
    warmup: int | None = None  # epochs of SmoothAdv's epsilon / SmoothMix's mix warm-up
    deferred: int | None = None  # MACER: robustness term from this epoch (0: from the start)
    skip: int | None = None  # certify every skip-th test image (default: the protocol's)
    n: int | None = None  # CERTIFY's N (default: the protocol's, 100,000)
    max_idx: int | None = None  # certify only test indices below this
    targets_n: int | None = None  # CAT-RS soft targets: votes per image (default 10,000)
    precision: str | None = None  # training and certification in bf16 (default fp32)
    bound: str | None = None  # CERTIFY's radius formula (default cohen, as published)
    # Also decide "robust at r" with the KT confidence sequence (label mode, cap N) at these
    # radii on every decide_skip-th test image (default all): certified accuracy on the
    # whole test set at a fraction of CERTIFY's cost.
    decide_radii: tuple[float, ...] | None = None
    decide_skip: int | None = None

    def is_full(self) -> bool:
        return all(v is None for v in dataclasses.asdict(self).values())

    def validate(self) -> None:
        """A one-line :class:`SmoothmixError` naming the flag of the first bad value."""
        for name, minimum in (("epochs", 1), ("train_subset", 1), ("batch_size", 1),
                              ("skip", 1), ("n", 1), ("max_idx", 1), ("targets_n", 1),
                              ("decide_skip", 1), ("warmup", 0), ("deferred", 0)):
            value = getattr(self, name)
            if value is not None:
                check_count(f"--{flag(name)}", value, minimum)
        if self.n is not None:
            from smoothmix.core import check_certify_args
            from smoothmix.run import NOISE_BATCH

            check_certify_args(N0, self.n, ALPHA, NOISE_BATCH)
        if self.precision is not None:
            from smoothmix.execution import check_precision

            check_precision(self.precision)
        if self.bound is not None:
            from smoothmix.core import check_bound

            check_bound(self.bound)
        if self.decide_radii is not None:
            check_radii(self.decide_radii, "--decide-radii")
        require(self.decide_skip is None or self.decide_radii is not None,
                "--decide-skip needs --decide-radii")

    def normalised(self, experiment: Experiment) -> Budget:
        """The protocol's own values are not overrides: ``--skip 1 --n 100000`` on MNIST is
        the full budget (and the same budget as no options in a rerun's check)."""
        return dataclasses.replace(
            self, skip=None if self.skip == experiment.skip else self.skip,
            n=None if self.n == FULL_N else self.n,
            targets_n=None if self.targets_n == FULL_TARGETS_N else self.targets_n,
            precision=None if self.precision == "fp32" else self.precision,
            bound=None if self.bound == "cohen" else self.bound,
            decide_radii=tuple(float(r) for r in self.decide_radii) if self.decide_radii
            else None,
            decide_skip=None if self.decide_skip == 1 else self.decide_skip)

    def describe(self, experiment: Experiment) -> str:
        """The one line that says what was spent."""
        protocol = self._certification(experiment)
        if self.is_full():
            return f"Budget: full (the presets; {protocol})."
        train = self._training()
        text = (f"{'; '.join(train)} (everything else as the presets)" if train
                else "the published budget (the presets)")
        return (f"Budget: reduced, not the published one. Training: {text}. "
                f"Certification: {protocol}"
                + (" (the radius is capped by N; the published tables use N=100,000)"
                   if (self.n or FULL_N) < FULL_N else "") + ".")

    def _certification(self, experiment: Experiment) -> str:
        """What certification spends, in words."""
        n = self.n or FULL_N
        skip = self.skip or experiment.skip
        count = _num_certified(experiment, skip, self.max_idx)
        test = which_images(skip, self.max_idx, origin=False)
        protocol = f"CERTIFY on {test} ({count} images), n0={N0}, N={n:,}, alpha={ALPHA}"
        if self.bound is not None:
            protocol += f", {self.bound} radius (published: cohen)"
        if self.decide_radii is not None:
            dskip = self.decide_skip or 1
            dtest = which_images(dskip, self.max_idx, origin=False)
            protocol += (f"; plus KT decisions (certify --radii, label mode) at r = "
                         f"{', '.join(f'{r:g}' for r in self.decide_radii)} on {dtest} "
                         f"({_num_certified(experiment, dskip, self.max_idx)} images), cap "
                         f"N={n:,}, alpha={ALPHA}")
        if self.precision is not None:
            protocol += f"; training and certification in {self.precision} (published: fp32)"
        return protocol

    def _training(self) -> list[str]:
        """The training overrides, in words."""
        train = []
        if self.epochs is not None:
            train.append(_plural(self.epochs, "epoch"))
        if self.train_subset is not None:
            train.append(f"first {self.train_subset} training images")
        if self.batch_size is not None:
            train.append(f"{self.batch_size} images per step")
        if self.warmup is not None:
            train.append(f"warm-up over {_plural(self.warmup, 'epoch')}")
        if self.deferred is not None:
            train.append(f"MACER deferred to epoch {self.deferred}" if self.deferred
                         else "MACER not deferred")
        if self.targets_n is not None:
            train.append(f"CAT-RS soft targets from N={self.targets_n:,} votes per image "
                         f"(reference {FULL_TARGETS_N:,})")
        return train


def which_images(skip: int, max_idx: int | None, *, origin: bool = True) -> str:
    """The images a run covers, in words: the full test set, or every skip-th (from idx 0,
    said when ``origin``: the tables compare them with the authors' same images) below
    index max_idx."""
    if skip == 1 and max_idx is None:
        return "the full test set"
    which = (f"every {_ordinal(skip)} test image" + (" from idx 0" if origin else "")
             if skip > 1 else "every test image")
    return which + (f" below index {max_idx}" if max_idx is not None else "")


def flag(name: str) -> str:
    """The ``smoothmix reproduce`` flag of a :class:`Budget` field, without its dashes."""
    return {"batch_size": "batch", "max_idx": "max"}.get(name, name.replace("_", "-"))



def _ordinal(k: int) -> str:
    suffix = "th" if k % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _num_certified(experiment: Experiment, skip: int, max_idx: int | None) -> int:
    total = experiment.test_images * experiment.skip  # size of the test split
    stop = total if max_idx is None else min(max_idx, total)
    return len(range(0, stop, skip))


__all__ = ["FULL_TARGETS_N", "Budget", "flag", "which_images"]
