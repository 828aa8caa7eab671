"""Decision throughput: the pool of ``certify --radii`` (KT decisions, label mode) against
smoothmix's CERTIFY and a bare inference loop, on the same model and images.

* decide    - ``smoothmix.sequences.run_pool`` with each image's KT procedure (the radii
  below, the label as the class, cap ``--cap``), as ``decide_dataset`` runs it: samples
  drawn by all procedures / wall time;
* certify   - ``Smooth.certify`` (n0 = 100, N = ``--cap``) on the same images;
* model-bound - forward passes only over pre-made noisy images (channels_last, fp32, the
  rule's CPU chunk per forward), the limit both can reach.

All three run in fp32 with the execution rule's layout and chunk; one run each, one after
the other (stop other jobs on the cores first). Prints samples/s and the ratios. The
issue-25 case (a LeNet at sigma = 1.0, radii 0..2 sigma), from the repository root:
    python benchmarks/decide_throughput.py --sigma 1.0 \
        --checkpoint results/2026-12-06-mnist-1.00-full/gaussian/checkpoint.pth.tar
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

from smoothmix.checkpoint import load_model
from smoothmix.core import Smooth
from smoothmix.data import load_dataset
from smoothmix.execution import CPU_CHUNK, describe_cpu
from smoothmix.models import create_model
from smoothmix.runner import example_generator
from smoothmix.sequences import PoolItem, make_procedure, run_pool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify_throughput import bare_loop  # noqa: E402  (the model-bound loop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="LeNet checkpoint (default: random)")
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=12, help="MNIST test images")
    parser.add_argument("--cap", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = (load_model(args.checkpoint)[0] if args.checkpoint
             else create_model("lenet")).eval()
    data = load_dataset("mnist", "test")
    images = [data[i] for i in range(args.images)]
    radii = [args.sigma * k / 2 for k in range(5)]  # 0, sigma/2, ..., 2 sigma
    print(f"CPU {describe_cpu()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
          f", cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(f"lenet {'from ' + args.checkpoint if args.checkpoint else '(random weights)'}, "
          f"{len(images)} images, sigma {args.sigma}, radii {radii}, cap {args.cap:,}, "
          f"batch {args.batch}")

    smooth = Smooth(model, 10, args.sigma)
    bare = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def decide(chosen: list[int]) -> int:
        """All ``chosen`` images in one pool, as decide_dataset runs them; samples drawn."""
        items = [PoolItem(i, images[i][0], example_generator(model, 0, i),
                          make_procedure("kt", radii, args.sigma, 0.001, args.cap,
                                         int(images[i][1]), 100)) for i in chosen]
        drawn: list[int] = []
        run_pool(model, items, args.sigma, 10, args.batch,
                 lambda done: drawn.append(done.procedure.drawn))
        return sum(drawn)

    decide([0])  # warm-up: the prepared copy, the allocator
    smooth.certify(images[0][0], 10, 1000, 0.001, args.batch)
    start = time.perf_counter()
    drawn_decide = decide(list(range(len(images))))
    time_decide = time.perf_counter() - start
    start = time.perf_counter()
    for x, _ in images:
        smooth.certify(x, 100, args.cap, 0.001, args.batch)
    time_certify = time.perf_counter() - start
    start = time.perf_counter()
    bare_loop(bare, (1, 28, 28), drawn_decide, CPU_CHUNK, torch.device("cpu"))
    time_bound = time.perf_counter() - start
    rate_decide = drawn_decide / time_decide
    rate_certify = len(images) * (100 + args.cap) / time_certify
    rate_bound = drawn_decide / time_bound
    print(f"  model-bound fp32     : {rate_bound:10,.0f} samples/s")
    print(f"  certify (CERTIFY)    : {rate_certify:10,.0f} samples/s   "
          f"/ model-bound {rate_certify / rate_bound:.2f}")
    print(f"  decide (KT pool)     : {rate_decide:10,.0f} samples/s   "
          f"/ model-bound {rate_decide / rate_bound:.2f}   / certify "
          f"{rate_decide / rate_certify:.2f}   ({drawn_decide / len(images):,.0f} samples "
          "per image)")


if __name__ == "__main__":
    main()
