"""Certification throughput: smoothmix's ``Smooth.certify`` against the reference loop and
against a bare inference loop (the model-bound limit).

Same model, same images, same n0 + N noisy samples per image and the same ``batch_size``:

* smoothmix  - ``smoothmix.core.Smooth.certify``;
* reference  - a transcription of Cohen et al.'s ``core.Smooth._sample_noise``: per batch of
  ``batch_size``, ``x.repeat``, ``randn_like``, forward, ``argmax``, predictions copied to
  the host and counted with numpy (``count_arr``);
* model-bound - forward passes only, over the same number of pre-made noisy images, at the
  batch size that is fastest for this model and device (picked by a short scan).

One run each per N (a fresh ``Smooth`` per N, as one dataset run uses one, told the run's
work as ``certify_dataset`` does: its CPU chunk is tuned once, at the first image, and
serves every later one); prints
samples/s and the two ratios for every N. Usage:
    python benchmarks/certify_throughput.py [--images 12] [--n 10000,100000] [--batch 1000]
        [--checkpoint PATH] [--device auto]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from smoothmix.core import Smooth
from smoothmix.data import load_dataset
from smoothmix.device import resolve_device
from smoothmix.models import create_model, list_models, model_defaults


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_sample_noise(model, x, num, batch_size, sigma, num_classes) -> np.ndarray:
    """Cohen et al.'s ``_sample_noise`` (core.py), device taken from x instead of 'cuda'."""
    with torch.no_grad():
        counts = np.zeros(num_classes, dtype=int)
        for _ in range(math.ceil(num / batch_size)):
            this_batch_size = min(batch_size, num)
            num -= this_batch_size
            batch = x.repeat((this_batch_size, 1, 1, 1))
            noise = torch.randn_like(batch) * sigma
            predictions = model(batch + noise).argmax(1)
            counts += count_arr(predictions.cpu().numpy(), num_classes)
        return counts


def count_arr(arr: np.ndarray, length: int) -> np.ndarray:
    counts = np.zeros(length, dtype=int)
    for idx in arr:
        counts[idx] += 1
    return counts


def reference_certify(model, x, n0, n, batch_size, sigma, num_classes) -> None:
    counts0 = reference_sample_noise(model, x, n0, batch_size, sigma, num_classes)
    c_hat = counts0.argmax().item()
    counts = reference_sample_noise(model, x, n, batch_size, sigma, num_classes)
    return c_hat, counts[c_hat]


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def bare_loop(model, shape, count, batch, device) -> None:
    """Forward passes only, over ``count`` pre-made noisy images in batches of ``batch``."""
    noisy = torch.randn((batch, *shape), device=device)
    with torch.inference_mode():
        for start in range(0, count, batch):
            model(noisy[: min(batch, count - start)])


def best_batch(model, shape, device, candidates, samples: int = 8000) -> int:
    """The batch size at which bare forward passes run fastest here."""
    rates = {}
    for batch in candidates:
        bare_loop(model, shape, batch, batch, device)  # warm-up (allocator, kernel choice)
        rates[batch] = samples / timed(lambda b=batch: bare_loop(model, shape, samples, b,
                                                                  device), device)
    print("  model-bound scan (samples/s by batch): "
          + ", ".join(f"{b}: {r:,.0f}" for b, r in rates.items()))
    return max(rates, key=rates.get)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="MNIST test images to certify "
                        "per N (the one-off chunk timing is amortised over them, as in a real "
                        "run)")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=_counts, default=[10_000, 100_000],
                        help="comma-separated sample counts N (default 10000,100000)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--checkpoint", default=None, help="LeNet checkpoint (default: random)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="lenet", choices=list_models(),
                        help="architecture with random weights; other than lenet, the images "
                        "are random too, of the architecture's input shape (speed only)")
    parser.add_argument("--scan-samples", type=int, default=8000,
                        help="samples per batch size in the model-bound scan")
    args = parser.parse_args()

    device = resolve_device(args.device)
    if args.checkpoint:
        from smoothmix.checkpoint import load_model

        model, _ = load_model(args.checkpoint, device)
    else:
        torch.manual_seed(0)
        model = create_model(args.arch).to(device).eval()
    if args.arch == "lenet" or args.checkpoint:
        data = load_dataset("mnist", "test")
        images = [data[i][0].to(device) for i in range(args.images)]
    else:  # e.g. cifar_resnet110: random weights and inputs are fine for speed
        shape = model_defaults(args.arch).input_shape
        images = [torch.rand(shape, device=device) for _ in range(args.images)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{args.arch}, {len(images)} images per N, n0={args.n0}, batch_size={args.batch}")

    Smooth(model, 10, args.sigma).certify(images[0], 10, 1000, 0.001, args.batch)  # warm-up
    reference_certify(model, images[0], 10, 1000, args.batch, args.sigma, 10)
    candidates = (125, 250, 500, 1000) if device.type == "cpu" else (1000, 4000, 10000, 20000)
    best = best_batch(model, images[0].shape, device, candidates, args.scan_samples)
    for n in args.n:
        compare(model, images, args.n0, n, args.batch, args.sigma, best, device)


def compare(model, images, n0: int, n: int, batch: int, sigma: float, best: int,
            device: torch.device) -> None:
    """Time the three loops on ``images`` at N = ``n`` and print the ratios."""
    smooth = Smooth(model, 10, sigma)  # one object for the run, as certify_dataset uses,
    smooth.expect(images[0], len(images) * n, min(n, batch))  # announcing the run's work
    per_image = n0 + n
    total = per_image * len(images)
    # Alternate image by image so that a change in machine load hits all three alike.
    t_ours = t_ref = t_bound = 0.0
    for x in images:
        t_ours += timed(lambda x=x: smooth.certify(x, n0, n, 0.001, batch), device)
        t_ref += timed(lambda x=x: reference_certify(model, x, n0, n, batch, sigma, 10), device)
        t_bound += timed(lambda x=x: bare_loop(model, x.shape, per_image, best, device), device)
    bound = total / t_bound
    ours, ref = total / t_ours, total / t_ref
    tuned = sorted(set(smooth._tuned.values()))
    print(f"N = {n:,} ({len(images)} images x {per_image:,} samples; tuned chunk {tuned}):")
    print(f"  smoothmix Smooth.certify : {ours:10,.0f} samples/s")
    print(f"  reference transcription  : {ref:10,.0f} samples/s")
    print(f"  model-bound (batch {best:5d}): {bound:10,.0f} samples/s")
    print(f"  smoothmix / model-bound = {ours / bound:.2f}   (target >= 0.9)")
    print(f"  smoothmix / reference   = {ours / ref:.2f}   (target >= 1.2)")


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N[,N2,...], got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"sample counts must be >= 1, got {text!r}")
    return counts


if __name__ == "__main__":
    main()
