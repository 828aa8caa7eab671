"""What the sound 8-bit grid mode (docs/grid.md) costs against float Gaussian noise.

Two measurements on one checkpoint:

* ``timing``: ``Smooth.certify`` (n0, N, batch) on MNIST test images, the float Gaussian
  sampler and ``grid=255`` interleaved image by image (gaussian, grid, gaussian, grid, ...)
  so that a load change on a shared machine hits both alike. Each image's noise comes from a
  generator seeded by its index (the same seed for both modes). One warm-up certify per
  mode (not timed) builds the grid table and the execution first. Prints per-image seconds
  and the ratio grid / gaussian of the totals and the median of the per-image ratios.
* ``acr``: :func:`smoothmix.certification.certify_dataset` on every ``--skip``-th test image
  in both modes (one after the other), then ACR and certified accuracy of each file, and
  how many images got the same prediction.

Usage:
    python benchmarks/grid_cost.py --checkpoint CKPT [--part timing,acr] [--images 0,...]
        [--n 100000] [--n0 100] [--batch 1000] [--acr-n 10000] [--skip 50]
        [--threads 1] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from smoothmix.analysis import compare_results, read_results
from smoothmix.certification import certify_dataset
from smoothmix.checkpoint import load_model
from smoothmix.core import Smooth
from smoothmix.data import load_dataset
from smoothmix.execution import describe_cpu
from smoothmix.run import RunSpec

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def machine_line() -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"CPU: {describe_cpu()}, {os.cpu_count()} logical cores; torch threads "
            f"{torch.get_num_threads()}; load average (1, 5, 15 min): {load}")


def timing(model, sigma: float, test, images: list[int], n0: int, n: int, batch: int,
           alpha: float) -> dict[str, float]:
    smooths = {"gaussian": Smooth(model, 10, sigma), "grid": Smooth(model, 10, sigma, grid=255)}
    for smooth in smooths.values():  # warm-up: table build, execution, first-touch buffers
        smooth.certify(test[images[0]][0], n0, min(n, 2 * batch), alpha, batch,
                       torch.Generator().manual_seed(12345))
    seconds: dict[str, list[float]] = {mode: [] for mode in smooths}
    print(f"{'image':>6} {'label':>5} {'gaussian s':>11} {'grid s':>8} {'ratio':>6}  "
          "(class, radius) gaussian / grid")
    for idx in images:
        x, label = test[idx]
        answers = {}
        for mode, smooth in smooths.items():
            generator = torch.Generator().manual_seed(idx)
            start = time.perf_counter()
            answers[mode] = smooth.certify(x, n0, n, alpha, batch, generator)
            seconds[mode].append(time.perf_counter() - start)
        g, q = seconds["gaussian"][-1], seconds["grid"][-1]
        print(f"{idx:>6} {label:>5} {g:>11.3f} {q:>8.3f} {q / g:>6.3f}  "
              f"({answers['gaussian'][0]}, {answers['gaussian'][1]:.4f}) / "
              f"({answers['grid'][0]}, {answers['grid'][1]:.4f})", flush=True)
    total = {mode: sum(v) for mode, v in seconds.items()}
    ratios = [q / g for g, q in zip(seconds["gaussian"], seconds["grid"], strict=True)]
    samples = len(images) * (n0 + n)
    print(f"total: gaussian {total['gaussian']:.2f} s, grid {total['grid']:.2f} s "
          f"({1e6 * total['gaussian'] / samples:.1f} / {1e6 * total['grid'] / samples:.1f} "
          f"us per sample); ratio of totals {total['grid'] / total['gaussian']:.3f}, median "
          f"per-image ratio {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max "
          f"{max(ratios):.3f})")
    return {"ratio_total": total["grid"] / total["gaussian"],
            "ratio_median": statistics.median(ratios)}


def acr(model, sigma: float, test, out_dir: Path, skip: int, n0: int, n: int, batch: int,
        alpha: float) -> None:
    files = {}
    for mode, grid in (("gaussian", None), ("grid255", 255)):
        start = time.perf_counter()
        spec = RunSpec.of(sigma, grid=grid, batch_size=batch, skip=skip,
                          identity={"dataset": "mnist", "split": "test"}, progress=False)
        files[mode] = certify_dataset(model, test, spec, out_dir / f"certify_{mode}.tsv",
                                      n0=n0, n=n, alpha=alpha)
        print(f"{mode}: certify_dataset {time.perf_counter() - start:.1f} s -> {files[mode]}",
              flush=True)
    results = {mode: read_results(path) for mode, path in files.items()}
    header = " ".join(f"{f'r={r}':>7}" for r in RADII)
    print(f"{'mode':>9} {'images':>6} {'ACR':>7}  {header}  (certified accuracy, %)")
    for mode, res in results.items():
        accuracy = " ".join(f"{100 * a:>7.1f}" for a in res.certified_accuracy(list(RADII)))
        print(f"{mode:>9} {len(res):>6} {res.acr():>7.4f}  {accuracy}")
    a, b = results["gaussian"], results["grid255"]
    same = int((a.predict == b.predict).sum())
    print(f"ACR grid - gaussian: {b.acr() - a.acr():+.4f}; same prediction on {same} of "
          f"{len(a)} images")
    for warning in compare_results([a, b], ["gaussian", "grid255"]).warnings:
        print(f"analyze warning (expected): {warning}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--part", default="timing,acr")
    parser.add_argument("--images", default="0,1000,2000,3000,4000,5000",
                        help="test indices for the timing (comma-separated)")
    parser.add_argument("--n", type=int, default=100_000, help="N of the timing")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--acr-n", type=int, default=10_000, help="N of the ACR runs")
    parser.add_argument("--skip", type=int, default=50, help="every SKIP-th test image (ACR)")
    parser.add_argument("--sigma", type=float, default=None,
                        help="default: the checkpoint's training sigma")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default="grid-cost-out")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, ckpt = load_model(args.checkpoint, torch.device("cpu"))
    sigma = float(args.sigma if args.sigma is not None else ckpt["sigma"])
    test = load_dataset("mnist", "test")
    print(machine_line())
    print(f"checkpoint {args.checkpoint}: arch {ckpt.get('arch')}, epoch {ckpt.get('epoch')}, "
          f"trained at sigma {ckpt.get('sigma')}; certifying at sigma {sigma}")
    parts = args.part.split(",")
    if "timing" in parts:
        images = [int(i) for i in args.images.split(",")]
        print(f"\ntiming: Smooth.certify n0={args.n0} N={args.n} batch={args.batch} "
              f"alpha={args.alpha} on {len(images)} images, modes interleaved")
        start = time.perf_counter()
        timing(model, sigma, test, images, args.n0, args.n, args.batch, args.alpha)
        print(f"timing wall {time.perf_counter() - start:.1f} s; {machine_line()}")
    if "acr" in parts:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"\nacr: certify_dataset n0={args.n0} N={args.acr_n} alpha={args.alpha} "
              f"batch={args.batch} skip={args.skip} -> {out_dir}")
        start = time.perf_counter()
        acr(model, sigma, test, out_dir, args.skip, args.n0, args.acr_n, args.batch, args.alpha)
        print(f"acr wall {time.perf_counter() - start:.1f} s; {machine_line()}")


if __name__ == "__main__":
    main()
