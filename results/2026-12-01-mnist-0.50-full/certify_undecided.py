"""Fixed-N CERTIFY on the test images the KT decisions left undecided at some r <= 1.0.

How closely does `certify --radii` (KT, cap 100,000) track fixed-N CERTIFY? An image is
undecided when its smoothed margin lies so close to an asked radius that 100,000 samples
settle it neither way; fixed-N CERTIFY still answers it (certified or not). This runs
CERTIFY (n0 = 100, N = 100,000, alpha = 0.001; each image's own (seed 0, idx) noise stream,
as in `smoothmix certify`) on exactly those images, so that the full-test-set
figures can be stated both ways. Resumable: rows are appended and flushed as they finish.

    python results/2026-12-01-mnist-0.50-full/certify_undecided.py [METHOD]

METHOD (default gaussian) names the row: `decide_METHOD.tsv` in, `METHOD/checkpoint.pth.tar`
the model, `certify_undecided_METHOD.tsv` out (the Gaussian file was `certify_undecided.tsv`
until the sixth session).
"""

import csv
import sys
import time
from pathlib import Path

import torch

from smoothmix.checkpoint import load_model
from smoothmix.core import Smooth
from smoothmix.data import load_dataset
from smoothmix.runner import example_generator

HERE = Path(__file__).resolve().parent
METHOD = sys.argv[1] if len(sys.argv) > 1 else "gaussian"
OUT = HERE / f"certify_undecided_{METHOD}.tsv"
HEADER = ["idx", "label", "predict", "radius", "correct", "undecided_at", "time"]

undecided: dict[int, list[str]] = {}
with open(HERE / f"decide_{METHOD}.tsv") as f:
    for row in csv.DictReader(f, delimiter="\t"):
        if row["decision"] == "undecided":
            undecided.setdefault(int(row["idx"]), []).append(row["at_radius"])
done = set()
if OUT.exists():
    with open(OUT) as f:
        done = {int(r["idx"]) for r in csv.DictReader(f, delimiter="\t")}
torch.set_num_threads(2)
model, _ = load_model(HERE / METHOD / "checkpoint.pth.tar", device="cpu")
test = load_dataset("mnist", "test")
smooth = Smooth(model, 10, 0.5)
new = not OUT.exists()
with open(OUT, "a") as f:
    if new:
        f.write("\t".join(HEADER) + "\n")
    for idx in sorted(set(undecided) - done):
        x, label = test[idx]
        start = time.time()
        predict, radius = smooth.certify(x, 100, 100_000, 0.001, 1000,
                                         example_generator(model, 0, idx))
        f.write("\t".join(map(str, [idx, label, predict, f"{radius:.6f}", int(predict == label),
                                    ",".join(undecided[idx]),
                                    f"{time.time() - start:.2f}"])) + "\n")
        f.flush()
print(f"{len(undecided)} undecided images certified into {OUT}")
