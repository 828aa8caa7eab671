"""Samples per decision: confidence sequences (``certify --radii``) against fixed-N CERTIFY.

On an MNIST sigma = 0.5 model (``--checkpoint``, or a small Gaussian-trained LeNet trained
here through the training API) and the same test images, this runs

* fixed-N CERTIFY (``certify_dataset``: n0 + N samples per image, fewer after an early
  abstain), read at each radius as "certified at r" = correct and radius >= r;
* each confidence sequence (``decide_dataset`` with ``--sequence kt|union|staged``, the
  label as the class, cap ``--cap``) deciding "robust at r" for the same radii,

and prints, per procedure and radius, the mean samples per decision, the ratio
100,100 / mean (the issue's goal: >= 30x fewer than CERTIFY's 100,100), certified accuracy,
and each procedure's wall time for the whole table. The result files stay in ``--outdir``
(rerunning resumes them). Small defaults run in minutes on 2 CPU cores; the README's
figures use e.g. ``--images 500 --n 100000 --cap 100000 --checkpoint ...``. Usage:
    python benchmarks/certify_budget.py [--checkpoint PATH] [--images 40] [--n 10000]
        [--cap 100000] [--radii 0.5,1.0] [--sequences kt,union,staged] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from smoothmix.analysis import read_decisions, read_results
from smoothmix.certification import certify_dataset, decide_dataset
from smoothmix.checkpoint import load_model
from smoothmix.data import load_dataset
from smoothmix.device import resolve_device
from smoothmix.run import RunSpec

SIGMA = 0.5
CERTIFY_COST = 100_100  # n0 + N of the published protocol


def train_small_model(outdir: Path, device: str, subset: int, epochs: int) -> Path:
    """A LeNet trained with Gaussian augmentation at sigma = 0.5 on ``subset`` images."""
    from smoothmix.training import train

    return train(outdir, dataset="mnist", arch="lenet", method="gaussian", sigma=SIGMA,
                 train_subset=subset, test_subset=500, epochs=epochs, lr=0.05,
                 batch_size=256, device=device, progress=False)


def decision_table(path: Path, radii: list[float]) -> dict[float, tuple[float, float]]:
    """radius -> (mean samples per decision, certified accuracy) from a decide file."""
    res = read_decisions(path)
    at = {float(r): j for j, r in enumerate(res.radii)}
    return {r: (float(res.samples[:, at[r]].mean()), float(res.certified[:, at[r]].mean()))
            for r in radii}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None,
                        help="MNIST sigma=0.5 checkpoint (default: train a small one here)")
    parser.add_argument("--images", type=int, default=40, help="test images (spread evenly "
                        "over the test set)")
    parser.add_argument("--n", type=int, default=10_000, help="N of fixed-N CERTIFY")
    parser.add_argument("--cap", type=int, default=100_000, help="sample cap per image of "
                        "the sequences")
    parser.add_argument("--radii", default="0.5,1.0")
    parser.add_argument("--sequences", default="kt,union,staged")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--train-subset", type=int, default=20_000)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--outdir", default=None, help="where the result files go "
                        "(default: a new temporary folder)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--modes", default="label,deployment",
                        help="label: test the label's class (evaluation, no selection "
                        "samples); deployment: select the class on n0 = 100 samples first")
    args = parser.parse_args()
    radii = [float(r) for r in args.radii.split(",")]
    sequences = args.sequences.split(",")

    outdir = Path(args.outdir or tempfile.mkdtemp(prefix="certify_budget_"))
    outdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    checkpoint = args.checkpoint
    if checkpoint is None:
        start = time.perf_counter()
        checkpoint = train_small_model(outdir / "model", str(device), args.train_subset,
                                       args.train_epochs)
        print(f"trained a LeNet (Gaussian, sigma={SIGMA}, {args.train_subset} images x "
              f"{args.train_epochs} epochs) in {time.perf_counter() - start:.0f} s")
    model, _ = load_model(checkpoint, device)
    test = load_dataset("mnist", "test")
    skip = max(1, len(test) // args.images)
    spec = RunSpec.of(SIGMA, batch_size=args.batch, skip=skip, max_idx=skip * args.images,
                      progress=False)
    print(f"device {device}, load average {os.getloadavg()[0]:.2f}; {args.images} test "
          f"images (every {skip}th), sigma={SIGMA}, alpha={args.alpha}, results in {outdir}")

    table = []
    start = time.perf_counter()
    fixed = certify_dataset(model, test, spec, outdir / f"certify_n{args.n}.tsv",
                            n=args.n, alpha=args.alpha)
    seconds = time.perf_counter() - start
    res = read_results(fixed)
    samples = np.loadtxt(fixed, skiprows=1, usecols=6, ndmin=1)  # the samples column
    for r, acc in zip(radii, res.certified_accuracy(radii), strict=True):
        table.append((f"CERTIFY N={args.n}", r, float(samples.mean()), float(acc), seconds))
    for mode in args.modes.split(","):
        for name in sequences:
            start = time.perf_counter()
            suffix = "" if mode == "label" else "_deployment"
            path = decide_dataset(model, test, spec,
                                  outdir / f"decide_{name}_cap{args.cap}{suffix}.tsv",
                                  radii=radii, sequence=name, n=args.cap,
                                  use_label=mode == "label", alpha=args.alpha)
            seconds = time.perf_counter() - start
            for r, (mean, acc) in decision_table(path, radii).items():
                table.append((f"{name} (cap {args.cap}, {mode} mode)", r, mean, acc, seconds))

    print("| procedure | r | mean samples / decision | 100,100 / mean | certified acc. | "
          "wall time of the table (s) |")
    print("|---|---|---|---|---|---|")
    for name, r, mean, acc, seconds in table:
        print(f"| {name} | {r} | {mean:,.0f} | {CERTIFY_COST / mean:.0f}x | {100 * acc:.1f} % "
              f"| {seconds:.1f} |")
    print("(a resumed run times only the part computed now; CERTIFY's wall time covers "
          "all radii at once, each sequence's likewise; deployment mode's samples include "
          "its n0 = 100 selection samples, label mode draws none)")


if __name__ == "__main__":
    main()
