"""What bf16 certification changes: one fp32-trained model certified in fp32 and in bf16 on
the same images with the same seeds (so the same noise), through ``certify_dataset``.

Prints the share of identical predictions, ACR in each precision and their paired
difference (with its standard error over images), certified accuracy at a few radii, and
how many rows have identical vote counts. The result files stay in ``--outdir`` (a rerun
resumes them). Usage:
    python benchmarks/bf16_effect.py --checkpoint PATH [--skip 50] [--n 10000]
        [--sigma 0.5] [--outdir DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from smoothmix.analysis import read_results
from smoothmix.certification import certify_dataset
from smoothmix.checkpoint import load_model
from smoothmix.data import load_dataset
from smoothmix.execution import describe_cpu
from smoothmix.run import RunSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--skip", type=int, default=50, help="every k-th test image")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--outdir", default="bf16-effect")
    args = parser.parse_args()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    model, ckpt = load_model(args.checkpoint, torch.device("cpu"))
    test = load_dataset("mnist", "test")
    print(f"{describe_cpu()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}; checkpoint epoch {ckpt.get('epoch')}, "
          f"every {args.skip}th test image, n0 = 100, N = {args.n:,}, alpha = 0.001")
    files = {}
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        spec = RunSpec.of(args.sigma, skip=args.skip, progress=False,
                          execution={"precision": precision})
        files[precision] = certify_dataset(model, test, spec,
                                           out / f"certify_{precision}.tsv", n=args.n)
        print(f"  {precision}: {time.perf_counter() - start:.0f} s (this invocation)")
    a, b = (read_results(files[p]) for p in ("fp32", "bf16"))
    assert (a.idx == b.idx).all()
    same = float((a.predict == b.predict).mean())
    ra = np.where(a.correct, a.radius, 0.0)
    rb = np.where(b.correct, b.radius, 0.0)
    diff = rb - ra
    counts = [np.loadtxt(f, skiprows=1, usecols=8, ndmin=1, dtype=int) for f in files.values()]
    radii = [0.0, 0.5, 1.0, 1.5]
    print(f"| precision | ACR | {' | '.join(f'r = {r:g}' for r in radii)} |")
    print(f"|---|---|{'---|' * len(radii)}")
    for name, res in (("fp32", a), ("bf16", b)):
        acc = " | ".join(f"{100 * v:.1f}" for v in res.certified_accuracy(radii))
        print(f"| {name} | {res.acr():.4f} | {acc} |")
    print(f"images {len(a)}; identical predictions {100 * same:.1f} %; identical n_a "
          f"{100 * float((counts[0] == counts[1]).mean()):.1f} %; ACR bf16 - fp32 = "
          f"{diff.mean():+.4f} (paired SE {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}); "
          f"mean |n_a difference| {np.abs(counts[0] - counts[1]).mean():.1f} of {args.n:,}")


if __name__ == "__main__":
    main()
