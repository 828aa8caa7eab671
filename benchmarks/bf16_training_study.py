"""Does bf16 training move ACR by more than the seed spread? The short paired study.

Each preset (``--presets``, default the two of issue 15: ``mnist-gaussian-0.50`` and
``mnist-smoothmix-0.50``; issue 25 asks it of ``mnist-smoothadv-0.50``, ``mnist-macer-0.50``,
``mnist-smoothmix-1.00`` (T = 8) and ``mnist-smoothmix-onestep-1.00`` before any of them
trains in bf16) is trained with its batching and method options on the first
``--train-subset`` MNIST training images for ``--epochs`` epochs, in fp32 and in bf16, for
each seed (paired: same seed, same data order). The schedule is compressed so that every
term of the recipe is exercised: the SmoothAdv epsilon and SmoothMix mix warm-ups last 1
epoch, and MACER's learning rate drops before its last epoch, where its robustness term
starts (at lr 0.01 the term diverges, which is why the recipe defers it). Every model is
certified alike in fp32 (CERTIFY n0 = 100, N = ``--n``, alpha = 0.001 on every ``--skip``-th
test image, seed 0) at the preset's sigma, so only the training precision differs. Prints
ACR per run, then per preset the paired mean difference bf16 - fp32 beside the seed SD and
the issue's verdict: bf16 is allowed where |mean difference| < seed SD / 2. Every run lives
in its own folder under ``--outdir``: rerunning resumes (finished trainings and files are
kept).

    python benchmarks/bf16_training_study.py --outdir study [--presets P1,P2] [--seeds 0,1,2]
        [--epochs 3] [--train-subset 20000] [--skip 100] [--n 10000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch

from smoothmix.analysis import read_results
from smoothmix.certification import certify_dataset
from smoothmix.checkpoint import CHECKPOINT_NAME, load_model
from smoothmix.data import load_dataset
from smoothmix.execution import describe_cpu
from smoothmix.run import RunSpec
from smoothmix.training import train
from smoothmix.training.presets import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--presets", default="mnist-gaussian-0.50,mnist-smoothmix-0.50")
    parser.add_argument("--methods", default=None,
                        help="the 0.4 spelling: methods of mnist-METHOD-0.50 presets")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=20_000)
    parser.add_argument("--skip", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    out = Path(args.outdir)
    presets = ([f"mnist-{m}-0.50" for m in args.methods.split(",")] if args.methods
               else args.presets.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    test = load_dataset("mnist", "test")
    print(f"{describe_cpu()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    acr: dict[tuple[str, str], list[float]] = {}
    for seed in seeds:
        for preset in presets:
            for precision in ("fp32", "bf16"):
                acr.setdefault((preset, precision), []).append(
                    one_run(out, preset, precision, seed, args, test))
    report(presets, seeds, acr)


def compressed(preset: str, epochs: int) -> dict:
    """The keyword arguments that fit ``preset``'s recipe into ``epochs`` epochs with every
    term exercised (see the module docstring)."""
    method = get_preset(preset).method
    if method == "macer":  # the term starts after the learning-rate drop, as published
        return {"lr_step": epochs - 1, "deferred": epochs - 1}
    if method in ("smoothmix", "smoothadv"):
        return {"method_options": {"warmup": 1}}
    return {}


def one_run(out: Path, preset: str, precision: str, seed: int, args: argparse.Namespace,
            test: object) -> float:
    run = out / f"{preset}-{precision}-seed{seed}"
    tsv = run / "certify.tsv"
    expected = len(range(0, len(test), args.skip))  # type: ignore[arg-type]
    if tsv.exists() and len(read_results(tsv)) == expected:
        # Certified in full already (perhaps on another machine, from the committed files:
        # checkpoints are not committed), so neither the training nor the model is needed.
        return read_results(tsv).acr()
    if run.exists() and not (run / CHECKPOINT_NAME).exists():
        # A training cut before this machine saw it: its committed log has no checkpoint
        # beside it (checkpoints are not committed), so it restarts from scratch.
        print(f"  {run.name}: no checkpoint here; its partial files are removed and it "
              "trains from scratch", flush=True)
        shutil.rmtree(run)
    start = time.perf_counter()
    train(run, preset=preset, epochs=args.epochs, train_subset=args.train_subset,
          test_subset=500, seed=seed, precision=precision, resume=run.exists(),
          progress=False, **compressed(preset, args.epochs))
    trained = time.perf_counter() - start
    model, _ = load_model(run / CHECKPOINT_NAME, torch.device("cpu"))
    start = time.perf_counter()
    spec = RunSpec.of(get_preset(preset).sigma, skip=args.skip, progress=False,
                      execution={"precision": "fp32"})
    tsv = certify_dataset(model, test, spec, tsv, n=args.n)
    value = read_results(tsv).acr()
    print(f"  {preset} {precision} seed {seed}: ACR {value:.4f} (train {trained:.0f} s, "
          f"certify {time.perf_counter() - start:.0f} s, this invocation)", flush=True)
    return value


def report(presets: list[str], seeds: list[int], acr: dict) -> None:
    print(f"\n| preset | fp32 ACR mean ± sd over {len(seeds)} seeds | bf16 ACR mean ± sd | "
          "bf16 - fp32 (paired mean) | seed sd (larger) | bf16 allowed (abs(diff) < sd / 2) |")
    print("|---|---|---|---|---|---|")
    for preset in presets:
        a, b = acr[(preset, "fp32")], acr[(preset, "bf16")]
        diff = statistics.mean(y - x for x, y in zip(a, b, strict=True))
        sd = max(statistics.stdev(a), statistics.stdev(b)) if len(a) > 1 else float("nan")
        verdict = "yes" if abs(diff) < sd / 2 else "no"
        print(f"| {preset} | {statistics.mean(a):.4f} ± {statistics.stdev(a):.4f} | "
              f"{statistics.mean(b):.4f} ± {statistics.stdev(b):.4f} | {diff:+.4f} | "
              f"{sd:.4f} | {verdict} |")

if __name__ == "__main__":
    main()
