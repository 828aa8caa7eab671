"""All six training methods on MNIST at one sigma, on a budget: a small-scale version of
the published comparison (SPEC §5), with every method's published options (its
``mnist-METHOD-SIGMA`` preset) and one shared, reduced training and certification budget.

Changes from the presets, the same for every method so that the race is fair on a
budget: the first ``--train-images`` training images, ``--epochs`` epochs, 64 images per
optimiser step (the presets use 256/m, 256 or 64), warm-ups (SmoothAdv's epsilon,
SmoothMix's mix weight) over 1 epoch instead of 10, and MACER's robustness term from the
start (the preset defers it to the first learning-rate drop, at epoch 30; measured: with
lambda = 16 from the start LeNet fell to chance accuracy from epoch 2 on). CERTIFY on
every ``--skip``-th test image with N = ``--n``.

Usage: ``python benchmarks/mnist_study.py [--sigma 0.5] [--outdir runs/mnist-study]``.
Everything is resumable: rerun the same command after an interruption.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from smoothmix.analysis import format_table, plot_certified_accuracy, read_results
from smoothmix.certification import certify_dataset
from smoothmix.checkpoint import CHECKPOINT_NAME, file_sha256, load_model
from smoothmix.data import load_dataset
from smoothmix.training import train
from smoothmix.training.presets import get_preset

METHODS = ("gaussian", "stability", "smoothadv", "macer", "consistency", "smoothmix")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigma", default="0.50", choices=("0.25", "0.50", "1.00"))
    parser.add_argument("--outdir", default="runs/mnist-study")
    parser.add_argument("--train-images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip", type=int, default=100, help="certify every k-th test image")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()

    out = Path(args.outdir)
    test_set = load_dataset("mnist", "test")
    results, labels, timings = [], [], []
    for method in args.methods.split(","):
        preset = get_preset(f"mnist-{method}-{args.sigma}")
        options = dict(preset.options)
        if "warmup" in _options_of(method):
            options["warmup"] = 1
        run_dir = out / method
        start = time.time()
        train(run_dir, dataset="mnist", arch="lenet", method=method, sigma=preset.sigma,
              method_options=options, deferred=False, epochs=args.epochs, lr=preset.lr,
              lr_step=preset.lr_step, batch_size=64, train_subset=args.train_images,
              test_subset=1000, seed=0, resume=True, progress=False)
        trained = time.time() - start
        ckpt = run_dir / CHECKPOINT_NAME
        model, _ = load_model(ckpt)
        tsv = out / f"certify_{method}.tsv"
        start = time.time()
        certify_dataset(model, test_set, preset.sigma, tsv, n=args.n, skip=args.skip,
                        progress=False,
                        identity={"study": method, "checkpoint_sha256": file_sha256(ckpt)})
        timings.append((method, trained, time.time() - start))
        results.append(read_results(tsv))
        labels.append(method)

    sigma = float(args.sigma)
    radii = [round(sigma * k / 2, 4) for k in range(8)]
    table = format_table(results, radii, "markdown", labels=labels)
    (out / "table.md").write_text(table)
    plot_certified_accuracy(results, out / "certified_accuracy.png", labels=labels)
    print(f"MNIST LeNet, sigma={sigma}: first {args.train_images} training images, "
          f"{args.epochs} epochs, 64 images per step; CERTIFY N={args.n}, alpha=0.001 on "
          f"every {args.skip}th test image\n")
    print(table)
    print("wall time of this invocation (s; 0 where a finished run was reused):")
    for method, t_train, t_cert in timings:
        print(f"  {method:12s} train {t_train:7.1f}  certify {t_cert:7.1f}")


def _options_of(method: str) -> set[str]:
    from smoothmix.methods import method_options

    return set(method_options(method))


if __name__ == "__main__":
    main()
