"""``smoothmix demo``: Gaussian augmentation vs SmoothMix on real MNIST, end to end, offline.

The demo is one budget of ``smoothmix reproduce mnist-0.50 --methods gaussian,smoothmix``
(:mod:`smoothmix.reproduce`): both LeNets are trained with their presets on the same images,
epochs and seed, certified on the same test subset, and tabulated beside the published
values. Everything is written under ``outdir`` and is resumable: rerunning the demo
continues where a killed run stopped and reuses what is finished.

The budget is far below the published recipes (90 epochs on 60k images, N = 100,000 on
all 10k test images), so the numbers are an illustration of the pipeline, not a
reproduction of docs/MATH.md §5; the table says so.

How long it takes depends on the machine (the cores, and whether others use them), so the
demo first states its expected time from a short probe (:func:`probe`: a few training
batches of each method and a few certification blocks, timed here, a few seconds) and
extrapolates to the budget (:func:`estimate_seconds`), instead of quoting a constant.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smoothmix.errors import require
from smoothmix.reproduce import Budget, reproduce

__all__ = ["METHODS", "PROBE_BATCHES", "PROBE_BLOCKS", "SIGMAS", "DemoBudget", "ProbeTimings",
           "describe_estimate", "estimate_seconds", "probe", "run_demo"]

METHODS = ["gaussian", "smoothmix"]
SIGMAS = {0.25: "mnist-0.25", 0.5: "mnist-0.50", 1.0: "mnist-1.00"}


@dataclass(frozen=True)
class DemoBudget:
    """What the demo spends. The defaults take a few minutes on 2 CPU cores (README)."""

    sigma: float = 0.5
    train_images: int = 20_000
    epochs: int = 3
    certify_skip: int = 100  # certify every 100th test image: 100 images
    n: int = 10_000
    # Both methods step on 64 images (equal optimiser steps: a fair race on a tiny budget;
    # the Gaussian preset uses 256), and SmoothMix warms its mix term up over the first
    # epoch instead of 10.
    batch_size: int = 64
    warmup: int = 1

    def experiment(self) -> str:
        require(self.sigma in SIGMAS, f"demo --sigma must be one of 0.25, 0.5, 1.0 (the "
                f"published MNIST tables), got {self.sigma}")
        return SIGMAS[self.sigma]

    def to_budget(self) -> Budget:
        return Budget(epochs=self.epochs, train_subset=self.train_images,
                      batch_size=self.batch_size, warmup=self.warmup, skip=self.certify_skip,
                      n=self.n)


# The probe: training batches timed per method, and blocks of noisy copies voted on (each
# after one untimed warm-up, which pays for allocation and first-call costs).
PROBE_BATCHES = 2
PROBE_BLOCKS = 2


@dataclass(frozen=True)
class ProbeTimings:
    """What :func:`probe` measured on this machine."""

    train_batch_s: dict[str, float]  # per method: seconds per training batch of the budget's
    vote_s: float  # seconds per noisy copy the base classifier votes on (CERTIFY, evaluation)


def estimate_seconds(budget: DemoBudget, timings: ProbeTimings, *, test_images: int = 10_000,
                     eval_images: int | None = None, n0: int | None = None) -> float:
    """The expected wall time of a fresh demo: per method, its training batches at the
    probed rate, and the votes of the per-epoch noisy test accuracy (``eval_images`` per
    epoch) and of CERTIFY (n0 + N per certified image) at the probed rate per copy. Early
    abstain only saves votes, and loading and writing files is not counted, so the CERTIFY
    part is an upper estimate and the whole a rough one."""
    from smoothmix.reproduce.experiments import N0
    from smoothmix.reproduce.pipeline import EVAL_IMAGES

    eval_images = EVAL_IMAGES if eval_images is None else eval_images
    n0 = N0 if n0 is None else n0
    batches = budget.epochs * math.ceil(budget.train_images / budget.batch_size)
    images = len(range(0, test_images, budget.certify_skip))
    votes = budget.epochs * eval_images + images * (n0 + budget.n)
    return sum(batches * t + votes * timings.vote_s for t in timings.train_batch_s.values())


def probe(budget: DemoBudget, device: str | None = None, *,
          clock: Callable[[], float] = time.perf_counter) -> ProbeTimings:
    """Time :data:`PROBE_BATCHES` training batches of each method (its preset's method and
    options, the budget's batch size, on random images of MNIST's shape: the cost does not
    depend on the pixels) and :data:`PROBE_BLOCKS` certification blocks of LeNet, on
    ``device`` with the threads this process has."""
    import torch

    from smoothmix.core import Smooth
    from smoothmix.device import resolve_device
    from smoothmix.models import create_model
    from smoothmix.reproduce.experiments import get_experiment
    from smoothmix.run import RunSpec

    exp = get_experiment(budget.experiment())
    dev = resolve_device(device)
    x = torch.rand(budget.batch_size, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (budget.batch_size,), device=dev)
    per_batch = {m: _timed(_train_step(exp.preset_name(m), budget, dev, x, y), PROBE_BATCHES,
                           clock) for m in METHODS}
    block = RunSpec.batch_size
    smooth = Smooth(create_model("lenet").to(dev), 10, budget.sigma)
    per_block = _timed(lambda: smooth.votes(x[0], block, block).read(), PROBE_BLOCKS, clock)
    return ProbeTimings(per_batch, per_block / block)


def _train_step(preset_name: str, budget: DemoBudget, device: Any, x: Any, y: Any
                ) -> Callable[[], object]:
    """One optimiser step of the preset's method (with the budget's warm-up) on (x, y)."""
    import torch

    from smoothmix.methods import create_method, method_options
    from smoothmix.models import create_model
    from smoothmix.training.presets import get_preset

    preset = get_preset(preset_name)
    model = create_model(preset.arch).to(device).train()
    options = dict(preset.options)
    if "warmup" in method_options(preset.method):
        options["warmup"] = budget.warmup
    method = create_method(preset.method, preset.sigma, 10, **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=0.9)

    def step() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss = method(model, x, y, 0).loss
        loss.backward()
        optimizer.step()
        return loss.item()  # waits for the device

    return step


def _timed(work: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    """Seconds per call of ``work``, over ``repeats`` calls after one warm-up call."""
    work()
    start = clock()
    for _ in range(repeats):
        work()
    return (clock() - start) / repeats


def describe_estimate(budget: DemoBudget, timings: ProbeTimings) -> str:
    """The line the demo starts with: the expected time here, and what the probe measured."""
    per_batch = ", ".join(f"{m} {t:.3g} s" for m, t in timings.train_batch_s.items())
    return (f"expected time on this machine: about {_duration(estimate_seconds(budget, timings))}"
            f" for a fresh run (probe: {per_batch} per training batch of {budget.batch_size}; "
            f"{_small(timings.vote_s)} per noisy copy certified)")


def _small(seconds: float) -> str:
    return f"{1e3 * seconds:.3g} ms" if seconds >= 1e-3 else f"{1e6 * seconds:.3g} µs"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_demo(outdir: str | os.PathLike = "smoothmix-demo", budget: DemoBudget | None = None,
             device: str | None = None, progress: bool = True, estimate: bool = True) -> str:
    """Run the demo into ``outdir`` and return the results table (markdown). With
    ``estimate``, first print the expected time on this machine (:func:`probe`), and at the
    end the time it took."""
    from smoothmix.distributed import distributed_env

    budget = budget or DemoBudget()
    say = estimate and distributed_env()[0] == 0
    if say:
        print(f"smoothmix demo: {describe_estimate(budget, probe(budget, device))}", flush=True)
    start = time.perf_counter()
    summary = reproduce(budget.experiment(), outdir, methods=METHODS, budget=budget.to_budget(),
                        device=device, progress=progress)
    if say:
        print(f"smoothmix demo: done in {_duration(time.perf_counter() - start)}", flush=True)
    return summary.get("table", "")
