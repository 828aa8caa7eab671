"""Does bf16 training move ACR by more than the seed spread? The 3-epoch mini-study.

Gaussian and SmoothMix (their mnist-*-0.50 presets: batching, schedule, method options;
SmoothMix's mix warm-up over 1 epoch) trained on the first ``--train-subset`` MNIST training
images for ``--epochs`` epochs, in fp32 and in bf16, for each seed; every model is then
certified the same way in fp32 (CERTIFY n0 = 100, N = ``--n``, alpha = 0.001 on every
``--skip``-th test image, seed 0), so that only the training precision differs. Prints ACR
per run, the mean and standard deviation over seeds per method and precision, and the
bf16 - fp32 difference of the means beside the seed spread. Every run lives in its own
folder under ``--outdir``: rerunning resumes (finished trainings and files are kept).

    python benchmarks/bf16_training_study.py --outdir study [--seeds 0,1,2] [--epochs 3]
        [--train-subset 20000] [--skip 100] [--n 10000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from smoothmix.analysis import read_results
from smoothmix.certification import certify_dataset
from smoothmix.checkpoint import CHECKPOINT_NAME, load_model
from smoothmix.data import load_dataset
from smoothmix.execution import describe_cpu
from smoothmix.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="gaussian,smoothmix")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=20_000)
    parser.add_argument("--skip", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    out = Path(args.outdir)
    seeds = [int(s) for s in args.seeds.split(",")]
    test = load_dataset("mnist", "test")
    print(f"{describe_cpu()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    acr: dict[tuple[str, str], list[float]] = {}
    for seed in seeds:
        for method in args.methods.split(","):
            for precision in ("fp32", "bf16"):
                run = out / f"{method}-{precision}-seed{seed}"
                options = {"warmup": 1} if method == "smoothmix" else {}
                start = time.perf_counter()
                train(run, preset=f"mnist-{method}-0.50", epochs=args.epochs,
                      train_subset=args.train_subset, test_subset=500, seed=seed,
                      precision=precision, method_options=options, resume=run.exists(),
                      progress=False)
                trained = time.perf_counter() - start
                model, _ = load_model(run / CHECKPOINT_NAME, torch.device("cpu"))
                start = time.perf_counter()
                tsv = certify_dataset(model, test, 0.5, run / "certify.tsv", n=args.n,
                                      skip=args.skip, progress=False,
                                      execution={"precision": "fp32"})
                value = read_results(tsv).acr()
                acr.setdefault((method, precision), []).append(value)
                print(f"  {method:9s} {precision} seed {seed}: ACR {value:.4f} (train "
                      f"{trained:.0f} s, certify {time.perf_counter() - start:.0f} s, this "
                      "invocation)", flush=True)
    print(f"\n| method | fp32 ACR mean ± sd over {len(seeds)} seeds | bf16 ACR mean ± sd | "
          "bf16 - fp32 | seed sd (larger of the two) |")
    print("|---|---|---|---|---|")
    for method in args.methods.split(","):
        a, b = acr[(method, "fp32")], acr[(method, "bf16")]
        sd = max(statistics.stdev(a), statistics.stdev(b)) if len(a) > 1 else float("nan")
        print(f"| {method} | {statistics.mean(a):.4f} ± {statistics.stdev(a):.4f} | "
              f"{statistics.mean(b):.4f} ± {statistics.stdev(b):.4f} | "
              f"{statistics.mean(b) - statistics.mean(a):+.4f} | {sd:.4f} |")


if __name__ == "__main__":
    main()
