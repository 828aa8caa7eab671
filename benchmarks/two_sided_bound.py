"""ACR with Cohen's and the two-sided radius from the same counts (docs/MATH.md §2.2).

Certifies ``--images`` MNIST test images (every (10,000 / images)-th) ONCE with Cohen's
bound (``certify_dataset(bound="cohen")``, resumable in ``--outdir``), then recomputes from
each row's ``n_a, n_b`` columns both radii with :func:`smoothmix.core.radius_from_counts`:
Cohen's at α (checked against the file's radius column) and the two-sided one at α (each of
its two bounds at α/2). It prints ACR and certified accuracy at r = 0, 0.25, ... for both,
and on how many images the two-sided radius is larger or smaller.

One Cohen run suffices: the two-sided radius certifies only when p̲_A at α/2 exceeds ½,
which implies Cohen's p̲_A at α does, so where Cohen abstains (after an early abstain too,
whose partial count already rules out Cohen's k* votes) the two-sided radius abstains as
well, and every row Cohen certifies has its complete counts. Both radii are valid, each at
its own α; the larger of the two per image would be valid only at 1.5 α and is not shown.
Usage:
    python benchmarks/two_sided_bound.py CHECKPOINT [--sigma S (default: the checkpoint's)]
        [--images 500] [--n 10000] [--n0 100] [--alpha 0.001] [--batch 1000]
        [--outdir DIR] [--device auto] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from smoothmix.certification import certify_dataset
from smoothmix.checkpoint import file_sha256, load_model
from smoothmix.core import radius_from_counts
from smoothmix.data import load_dataset
from smoothmix.device import resolve_device
from smoothmix.run import RunSpec


def read_rows(path: Path) -> dict[str, np.ndarray]:
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    cols = list(zip(*(line.split("\t") for line in lines[1:]), strict=True))
    table = dict(zip(head, cols, strict=True))
    out = {k: np.array([int(v) for v in table[k]]) for k in ("idx", "label", "predict", "n_a",
                                                            "n_b", "samples")}
    out["radius"] = np.array([float(v) for v in table["radius"]])
    return out


def radii_from_counts(rows: dict[str, np.ndarray], n: int, alpha: float, sigma: float,
                      bound: str) -> np.ndarray:
    """Each row's radius under ``bound`` from its own counts (NaN where it abstains)."""
    out = np.full(len(rows["idx"]), np.nan)
    for i, (n_a, n_b) in enumerate(zip(rows["n_a"], rows["n_b"], strict=True)):
        r = radius_from_counts(int(n_a), int(n_b), n, alpha, sigma, bound)
        out[i] = np.nan if r is None else r
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--sigma", type=float, default=None,
                        help="noise level (default: the one the checkpoint was trained at)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--step", type=float, default=0.25, help="radius step of the table")
    parser.add_argument("--outdir", default=None, help="where the Cohen result file goes "
                        "(default: a new temporary folder); rerunning resumes it")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; recorded in the file)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    sigma = float(args.sigma if args.sigma is not None else ckpt["sigma"])
    test = load_dataset("mnist", "test")
    skip = max(1, len(test) // args.images)
    outdir = Path(args.outdir or tempfile.mkdtemp(prefix="two_sided_"))
    out = outdir / f"certify_cohen_sigma{sigma:g}_n{args.n}.tsv"
    identity = {"checkpoint_sha256": file_sha256(args.checkpoint), "arch": ckpt.get("arch"),
                "normalization": ckpt.get("normalization"), "dataset": "mnist",
                "split": "test"}
    print(f"device {device}, load average {os.getloadavg()[0]:.2f}; checkpoint "
          f"{args.checkpoint} (trained at sigma={ckpt.get('sigma')}, epoch {ckpt.get('epoch')}); "
          f"{args.images} test images (every {skip}th), sigma={sigma:g}, n0={args.n0}, "
          f"N={args.n}, alpha={args.alpha}; results in {out}")
    start = time.perf_counter()
    spec = RunSpec.of(sigma, batch_size=args.batch, skip=skip, max_idx=skip * args.images,
                      identity=identity, progress=False,
                      execution={"threads": args.threads} if args.threads else {})
    certify_dataset(model, test, spec, out, n0=args.n0, n=args.n, alpha=args.alpha,
                    bound="cohen")
    seconds = time.perf_counter() - start

    rows = read_rows(out)
    full = args.n0 + args.n
    cohen = radii_from_counts(rows, args.n, args.alpha, sigma, "cohen")
    two = radii_from_counts(rows, args.n, args.alpha, sigma, "two-sided")
    abstain = rows["predict"] == -1
    assert np.array_equal(np.isnan(cohen), abstain), "the file's abstentions are not Cohen's"
    assert np.array_equal(np.nan_to_num(cohen), rows["radius"]), "radius is not Cohen's formula"
    assert np.all(np.isnan(two) | ~abstain), "two-sided certifies where Cohen abstains"
    assert np.all((rows["samples"] == full) | abstain)
    correct = rows["predict"] == rows["label"]  # the selected class is the label
    top = float(np.nanmax(np.where(correct, np.fmax(cohen, two), 0.0)))
    radii = [round(i * args.step, 10) for i in range(int(top // args.step) + 1)]

    print(f"certified {len(rows['idx'])} images in {seconds:.0f} s this run "
          f"({seconds / max(1, len(rows['idx'])):.2f} s per image; 0 if it only resumed)")
    head = ["radius (both from the same counts)", "ACR", *(f"r = {r:g}" for r in radii)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, radius in (("Cohen (CERTIFY), α", cohen), ("two-sided, α (α/2 each bound)", two)):
        good = correct & ~np.isnan(radius)  # certified, and the class is the label
        acr = float(np.where(good, radius, 0.0).mean())
        acc = [100 * float((good & (np.nan_to_num(radius) >= r)).mean()) for r in radii]
        print(f"| {name} | {acr:.4f} | " + " | ".join(f"{a:.1f}" for a in acc) + " |")
    cap_c = radius_from_counts(args.n, 0, args.n, args.alpha, sigma, "cohen")
    cap_t = radius_from_counts(args.n, 0, args.n, args.alpha, sigma, "two-sided")
    print(f"radius caps (all N votes for one class): Cohen {cap_c:.4f}, two-sided {cap_t:.4f}")

    certified = correct & ~np.isnan(cohen)
    both = certified & ~np.isnan(two)
    larger = int((both & (two > cohen)).sum())
    lost = int((certified & np.isnan(two)).sum())
    smaller = int((both & (two < cohen)).sum()) + lost
    unanimous = int((certified & (rows["n_a"] == args.n)).sum())
    print(f"of the {int(certified.sum())} images Cohen certifies with the label: two-sided "
          f"larger on {larger}, smaller on {smaller} (of which {lost} abstain at α/2); "
          f"{unanimous} have all N votes for the label (capped)")
    rest = args.n - rows["n_a"][certified]
    spread = rows["n_b"][certified][rest > 0] / rest[rest > 0]
    if len(spread):
        print(f"runner-up's share of the votes not for the label (images with any): median "
              f"{np.median(spread):.2f}, mean {spread.mean():.2f} over {len(spread)} images")
    gain = (two - cohen)[both]
    if len(gain):
        print(f"two-sided minus Cohen where both certify: mean {gain.mean():+.4f}, "
              f"min {gain.min():+.4f}, max {gain.max():+.4f}")


if __name__ == "__main__":
    main()
