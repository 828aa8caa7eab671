"""What does ``OMP_WAIT_POLICY=PASSIVE`` cost CERTIFY when the job has the cores to itself?

The ``smoothmix`` command sets ``OMP_WAIT_POLICY=PASSIVE`` when the user has not set it:
waiting OpenMP threads then sleep instead of spinning, which keeps two jobs on the same cores
from burning 1.6x the CPU seconds (``benchmarks/oversubscription.py``), and cost nothing
measurable for a training step alone. A training step is a few large kernels; CERTIFY on
MNIST is many short forwards of a small network, where waking a sleeping thread is paid at
every parallel region. This measures that case alone.

Each worker is a fresh process (the policy is read when OpenMP starts) that certifies
``--images`` MNIST test images with ``Smooth.certify`` (n0 = 100, N = ``--n``, batch 1000,
fp32, LeNet with random weights of a fixed seed: throughput does not depend on the weights)
and prints its samples per second. The two policies alternate, ``--repeats`` times each, so
that a drift of the machine (a noisy neighbour of a VM) falls on both.

    python benchmarks/wait_policy.py [--images 1] [--n 100000] [--repeats 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

POLICIES = ("PASSIVE", "ACTIVE")


def worker(images: int, n: int, threads: int) -> None:
    """Certify ``images`` test images; print the samples per second as JSON."""
    import torch

    from smoothmix import Smooth, create_model, load_dataset

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("lenet").eval()
    smooth = Smooth(model, 10, 0.5)
    test = load_dataset("mnist", "test")
    smooth.certify(test[0][0], 100, 1000, 0.001, 1000)  # warm-up: layouts, allocator
    start = time.perf_counter()
    for idx in range(images):
        smooth.certify(test[idx][0], 100, n, 0.001, 1000)
    print(json.dumps({"samples_per_s": images * (100 + n) / (time.perf_counter() - start)}))


def measure(policy: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--worker", "--images", str(args.images), "--n",
           str(args.n), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env={**os.environ, "OMP_WAIT_POLICY": policy},
                         capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.images, args.n, args.threads)
        return
    import torch

    from smoothmix.execution import describe_cpu

    print(f"{describe_cpu()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{args.threads} threads; CERTIFY of {args.images} image(s) at n0 = 100, "
          f"N = {args.n:,}, fp32, LeNet; {args.repeats} alternating runs per policy\n")
    runs: dict[str, list[float]] = {p: [] for p in POLICIES}
    for _ in range(args.repeats):
        for policy in POLICIES:
            runs[policy].append(measure(policy, args))
    print("| OMP_WAIT_POLICY | samples/s, each run | mean | vs PASSIVE |")
    print("|---|---|---|---|")
    base = statistics.mean(runs["PASSIVE"])
    for policy in POLICIES:
        mean = statistics.mean(runs[policy])
        each = ", ".join(f"{v:,.0f}" for v in runs[policy])
        print(f"| {policy} | {each} | {mean:,.0f} | {mean / base:.2f}x |")
    pairs = [a / p for p, a in zip(runs["PASSIVE"], runs["ACTIVE"], strict=True)]
    print(f"\nACTIVE / PASSIVE per alternating pair: {', '.join(f'{r:.2f}' for r in pairs)}")


if __name__ == "__main__":
    main()
