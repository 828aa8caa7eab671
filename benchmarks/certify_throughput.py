"""Certification throughput: smoothmix's ``Smooth.certify`` against the reference loop and
against a bare inference loop (the model-bound limit), in fp32 and in bf16.

Same weights, same images, same n0 + N noisy samples per image and the same ``batch_size``:

* smoothmix  - ``smoothmix.core.Smooth.certify`` at each ``--precision`` (its default
  layout: channels_last for conv nets on CPU; its fixed chunk);
* reference  - a transcription of Cohen et al.'s ``core.Smooth._sample_noise`` on the plain
  (NCHW, fp32) model: per batch of ``batch_size``, ``x.repeat``, ``randn_like``, forward,
  ``argmax``, predictions copied to the host and counted with numpy (``count_arr``);
* model-bound - forward passes only, over pre-made noisy images, in the fastest layout
  (channels_last on CPU) and fp32, at the batch size that is fastest here (a short scan):
  the issue's goal is smoothmix fp32 >= 0.9 of it. Its bf16 twin is printed beside it.

One run each per N and precision (a fresh ``Smooth``, as one dataset run uses one); prints
samples/s and the ratios, and the CPU with its bf16 support. Usage:
    python benchmarks/certify_throughput.py [--images 12] [--n 10000,100000] [--batch 1000]
        [--precision fp32,bf16] [--compile] [--checkpoint PATH] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time

import numpy as np
import torch

from smoothmix.core import Smooth
from smoothmix.data import load_dataset
from smoothmix.device import resolve_device
from smoothmix.execution import PRECISIONS, describe_cpu
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


def bare_loop(model, shape, count, batch, device, bf16: bool = False) -> None:
    """Forward passes only, over ``count`` pre-made noisy images in batches of ``batch``
    (channels_last: the model given is a channels_last copy)."""
    noisy = torch.randn((batch, *shape), device=device)
    if len(shape) == 3:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for start in range(0, count, batch):
            model(noisy[: min(batch, count - start)])


def best_batch(model, shape, device, candidates, samples: int = 8000) -> int:
    """The batch size at which bare fp32 forward passes run fastest here."""
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
    parser.add_argument("--precision", default="fp32,bf16",
                        help="comma-separated precisions to time smoothmix in")
    parser.add_argument("--compile", action="store_true",
                        help="also time smoothmix with torch.compile (inductor)")
    args = parser.parse_args()
    precisions = args.precision.split(",")
    if not set(precisions) <= set(PRECISIONS):  # before the model and the data load
        parser.error(f"--precision takes {' and '.join(PRECISIONS)}, not {args.precision}")

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
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else describe_cpu()
    print(f"device {device} ({name}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, cpus {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{args.arch}, {len(images)} images per N, n0={args.n0}, batch_size={args.batch}")

    reference = copy.deepcopy(model)  # the plain model: NCHW, fp32
    bare = copy.deepcopy(model).to(memory_format=torch.channels_last)
    variants = [(p, False) for p in precisions]
    if args.compile:
        variants += [(p, True) for p in precisions]
    # Warm-ups and the scan never outgrow what is timed (a tiny smoke run stays tiny).
    warm = min(1000, max(args.n))
    for precision, compiled in variants:  # warm-up (and compile) each
        Smooth(copy.deepcopy(model), 10, args.sigma, precision=precision, compile=compiled
               ).certify(images[0], 10, warm, 0.001, args.batch)
    reference_certify(reference, images[0], 10, warm, args.batch, args.sigma, 10)
    candidates = (125, 250, 500, 1000) if device.type == "cpu" else (1000, 4000, 10000, 20000)
    candidates = tuple(b for b in candidates if b <= args.scan_samples) or candidates[:1]
    best = best_batch(bare, images[0].shape, device, candidates, args.scan_samples)
    for n in args.n:
        compare(model, reference, bare, images, args.n0, n, args.batch, args.sigma, best,
                device, variants)


def compare(model, reference, bare, images, n0: int, n: int, batch: int, sigma: float,
            best: int, device: torch.device, variants) -> None:
    """Time the loops on ``images`` at N = ``n`` and print the ratios."""
    smooths = {(p, c): Smooth(copy.deepcopy(model), 10, sigma, precision=p, compile=c)
               for p, c in variants}
    per_image = n0 + n
    total = per_image * len(images)
    with_bf16 = any(p == "bf16" for p, _ in variants)
    # Alternate image by image so that a change in machine load hits all loops alike.
    t_ours = dict.fromkeys(smooths, 0.0)
    t_ref = t_bound = t_bound16 = 0.0
    for x in images:
        for key, smooth in smooths.items():
            t_ours[key] += timed(lambda x=x, s=smooth: s.certify(x, n0, n, 0.001, batch),
                                 device)
        t_ref += timed(lambda x=x: reference_certify(reference, x, n0, n, batch, sigma, 10),
                       device)
        t_bound += timed(lambda x=x: bare_loop(bare, x.shape, per_image, best, device), device)
        if with_bf16:  # not asked for: e.g. a CPU without bf16 hardware, where it is emulated
            t_bound16 += timed(lambda x=x: bare_loop(bare, x.shape, per_image, best, device,
                                                     bf16=True), device)
    bound, ref = total / t_bound, total / t_ref
    ex = next(iter(smooths.values())).execution(device, min(n, batch))
    print(f"N = {n:,} ({len(images)} images x {per_image:,} samples; layout {ex.layout}, "
          f"chunk {ex.chunk}):")
    print(f"  reference transcription (NCHW fp32) : {ref:10,.0f} samples/s")
    print(f"  model-bound fp32 (batch {best:5d})     : {bound:10,.0f} samples/s")
    if with_bf16:
        print(f"  model-bound bf16 (batch {best:5d})     : {total / t_bound16:10,.0f} samples/s")
    fp32 = None
    for (precision, compiled), seconds in t_ours.items():
        ours = total / seconds
        fp32 = ours if (precision, compiled) == ("fp32", False) else fp32
        name = f"{precision}{' compiled' if compiled else ''}"
        print(f"  smoothmix {name:14s}            : {ours:10,.0f} samples/s   "
              f"/ model-bound fp32 {ours / bound:.2f} (goal >= 0.9 for fp32)   "
              f"/ reference {ours / ref:.2f}"
              + (f"   / smoothmix fp32 {ours / fp32:.2f}" if fp32 and precision != "fp32"
                 else ""))


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
