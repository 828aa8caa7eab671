"""Certification throughput through denoised pipelines f∘D: smoothmix's own path against a
transcription of the published one-image-at-a-time loop, on the same models in one run.

Pipelines (fp32, the device of --device, CPU by default on a machine without a GPU):

* ``dncnn``: a LeNet behind a DnCNN (depth 10, width 32), Salman et al. (2020);
* ``ddpm``: a LeNet behind the one-shot denoiser of a ``ddpm-unet`` (Carlini et al., 2023;
  28x28 padded to the UNet's 32x32 and cropped back).

Loops, on the same images with the same n0 + N noisy samples per image and the same
``batch_size`` (the published certify.py's --batch, default 1000):

* smoothmix - one ``certify_dataset`` run over the images on ``Denoised(classifier,
  denoiser)`` with its execution defaults (channels_last for conv nets on CPU, its fixed
  chunk), its one-off costs included (execution set-up, the denoiser probe, the result
  file: once per run, so a run of a few images pays more per image than a real one);
* published - Salman et al.'s certify.py (``microsoft/denoised-smoothing``):
  ``nn.Sequential(denoiser, classifier).eval()`` in NCHW, through their ``core.Smooth``,
  whose ``_sample_noise`` is Cohen et al.'s: per batch ``x.repeat``, ``randn_like`` (the
  global generator), forward, ``argmax``, predictions counted on the host in a Python loop.
  Transcribed in ``benchmarks/certify_throughput.py`` (``reference_certify``), reused here.

samples/s counts the samples each loop actually drew (smoothmix's file says how many: an
abstaining row may stop early). The DnCNN goal is smoothmix >= 1.5x the published loop in
fp32 on CPU; the UNet pipeline is measured without a goal. The loops run one after the
other (smoothmix first, both warmed up), so run it on a quiet machine. Models: checkpoints
when given, else untrained ones built with fixed seeds (throughput does not depend on the
weights; the output says which). Prints a Markdown table (and writes it to --out). Default
run: about two minutes on two idle cores. Usage:
    python benchmarks/denoised_certify.py [--images 4] [--n 5000] [--ddpm-images 2]
        [--ddpm-n 500] [--pipelines dncnn,ddpm] [--classifier CKPT] [--dncnn CKPT]
        [--ddpm CKPT] [--threads T] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify_throughput import reference_certify  # noqa: E402  (the Cohen/Salman loop)

from smoothmix.analysis import read_results  # noqa: E402
from smoothmix.certification import certify_dataset  # noqa: E402
from smoothmix.data import load_dataset  # noqa: E402
from smoothmix.denoisers import DENOISERS, Denoised, load_denoiser  # noqa: E402
from smoothmix.device import resolve_device  # noqa: E402
from smoothmix.execution import describe_cpu  # noqa: E402
from smoothmix.models import create_model  # noqa: E402
from smoothmix.run import RunSpec  # noqa: E402

GOAL = 1.5  # smoothmix / published loop, DnCNN pipeline, fp32 on CPU (issue 28)
NUM_CLASSES = 10
ALPHA = 0.001


@dataclass
class Pipeline:
    name: str
    classifier: nn.Module
    denoiser: nn.Module
    models: str  # what the models are: checkpoints or untrained with seeds
    images: int
    n: int


@dataclass
class Timing:
    smoothmix_samples: int = 0
    smoothmix_seconds: float = 0.0
    published_samples: int = 0
    published_seconds: float = 0.0

    @property
    def smoothmix_rate(self) -> float:
        return self.smoothmix_samples / self.smoothmix_seconds

    @property
    def published_rate(self) -> float:
        return self.published_samples / self.published_seconds


def build_classifier(path: str | None, device: torch.device) -> tuple[nn.Module, str]:
    if path:
        from smoothmix.checkpoint import load_model

        return load_model(path, device)[0].eval(), f"LeNet {path}"
    torch.manual_seed(0)
    return create_model("lenet").to(device).eval(), "LeNet untrained (seed 0)"


def build_denoiser(kind: str, path: str | None, sigma: float,
                   device: torch.device) -> tuple[nn.Module, str]:
    """The DnCNN (depth 10, width 32) or the one-shot DDPM denoiser for ``sigma``."""
    if path:
        module, _ = load_denoiser(path, sigma=sigma)
        return module.to(device).eval(), f"{kind} {path}"
    if kind == "dncnn":
        torch.manual_seed(1)
        module = DENOISERS.get("dncnn")(channels=1, depth=10, width=32)
        return module.to(device).eval(), "DnCNN 10x32 untrained (seed 1)"
    torch.manual_seed(2)
    unet = DENOISERS.get("ddpm-unet")()
    params = sum(p.numel() for p in unet.parameters())
    one_shot = unet.one_shot(sigma).eval().requires_grad_(False)
    return one_shot.to(device), f"ddpm-unet ({params / 1e6:.2f}M) one-shot, untrained (seed 2)"


def certify_run(model: nn.Module, images, spec: RunSpec, n0: int, n: int, path: Path) -> int:
    """smoothmix's path: one ``certify_dataset`` run over ``images`` into a fresh result file
    (its one-off costs, the execution set-up and the denoiser probe, paid once, as in a real
    run); returns the samples it drew."""
    certify_dataset(model, images, spec, path, n0=n0, n=n, alpha=ALPHA)
    samples = read_results(path).samples
    return int(samples.sum()) if samples is not None else len(images) * (n0 + n)


def published_run(model: nn.Module, images, sigma: float, n0: int, n: int,
                  batch: int) -> int:
    """Their certify.py's loop over ``images`` (certify one image at a time)."""
    for x, _label in images:
        reference_certify(model, x, n0, n, batch, sigma, NUM_CLASSES)
    return len(images) * (n0 + n)


def measure(pipe: Pipeline, images, sigma: float, n0: int, batch: int) -> Timing:
    """Time both loops on the first ``pipe.images`` images, one after the other."""
    denoised = Denoised(pipe.classifier, pipe.denoiser)
    published = nn.Sequential(pipe.denoiser, pipe.classifier).eval()  # their certify.py
    spec = RunSpec.of(sigma, batch_size=batch, num_classes=NUM_CLASSES, progress=False)
    chosen = images[:pipe.images]
    timing = Timing()
    with tempfile.TemporaryDirectory() as tmp:
        warm = min(pipe.n, batch)  # warm-up of both (allocator, kernel choice): not timed
        certify_run(denoised, images[:1], spec, 10, warm, Path(tmp) / "warm.tsv")
        published_run(published, images[:1], sigma, 10, warm, batch)
        start = time.perf_counter()
        timing.smoothmix_samples = certify_run(denoised, chosen, spec, n0, pipe.n,
                                               Path(tmp) / "run.tsv")
        timing.smoothmix_seconds = time.perf_counter() - start
        start = time.perf_counter()
        timing.published_samples = published_run(published, chosen, sigma, n0, pipe.n, batch)
        timing.published_seconds = time.perf_counter() - start
    # smoothmix votes with a converted copy; the published loop's weights must stay NCHW.
    assert all(m.weight.is_contiguous() for m in published.modules()
               if isinstance(m, nn.Conv2d)), "the published loop's model left NCHW"
    return timing


def table(rows: list[tuple[Pipeline, Timing]], n0: int, batch: int) -> str:
    lines = ["| pipeline | images | n0 + N | published loop (NCHW) samples/s | "
             "smoothmix samples/s | ratio | goal |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for pipe, t in rows:
        ratio = t.smoothmix_rate / t.published_rate
        goal = (f">= {GOAL} ({'met' if ratio >= GOAL else 'NOT met'})"
                if pipe.name == "dncnn" else "none (measured)")
        lines.append(f"| {pipe.name}: {pipe.models} | {pipe.images} | {n0} + {pipe.n:,} | "
                     f"{t.published_rate:,.0f} | {t.smoothmix_rate:,.0f} | {ratio:.2f}x | "
                     f"{goal} |")
    return "\n".join(lines)


def machine(device: torch.device, batch: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else describe_cpu()
    return (f"device {device} ({name}), torch {torch.__version__}, threads "
            f"{torch.get_num_threads()}, cpus {os.cpu_count()}, load average "
            f"{os.getloadavg()[0]:.2f}; fp32; batch_size {batch}; alpha {ALPHA}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", default="dncnn,ddpm",
                        help="comma-separated: dncnn, ddpm (default both)")
    parser.add_argument("--images", type=int, default=4,
                        help="MNIST test images for the DnCNN pipeline (default 4)")
    parser.add_argument("--n", type=int, default=5000, help="N for the DnCNN pipeline")
    parser.add_argument("--ddpm-images", type=int, default=2)
    parser.add_argument("--ddpm-n", type=int, default=500, help="N for the DDPM pipeline")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000,
                        help="noisy images per batch, both loops (published default 1000)")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--classifier", help="LeNet checkpoint (default: untrained, seed 0)")
    parser.add_argument("--dncnn", help="DnCNN checkpoint (default: untrained 10x32, seed 1)")
    parser.add_argument("--ddpm", help="ddpm-unet checkpoint or diffusers folder (default: "
                        "untrained ddpm-unet at its defaults, seed 2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    unknown = set(args.pipelines.split(",")) - {"dncnn", "ddpm"}
    if unknown:
        parser.error(f"unknown pipeline(s) {sorted(unknown)}; known: dncnn, ddpm")
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    classifier, classifier_text = build_classifier(args.classifier, device)
    data = load_dataset("mnist", "test")
    count = max(args.images, args.ddpm_images)
    images = [(data[i][0].to(device), int(data[i][1])) for i in range(count)]
    rows = []
    for kind in args.pipelines.split(","):
        denoiser, text = build_denoiser(kind, getattr(args, kind), args.sigma, device)
        n, k = (args.n, args.images) if kind == "dncnn" else (args.ddpm_n, args.ddpm_images)
        pipe = Pipeline(kind, classifier, denoiser, f"{classifier_text} + {text}", k, n)
        rows.append((pipe, measure(pipe, images, args.sigma, args.n0, args.batch)))
    report = (f"## Certification throughput through denoised pipelines\n\n"
              f"{machine(device, args.batch)}\n\n{table(rows, args.n0, args.batch)}\n")
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
