"""`smoothmix attack`: PGD on the smoothed soft classifier, then PREDICT at the attacked point.

Ground truth: a certificate of radius R (CERTIFY, level alpha) says g is constant on the
ball, so an attack shorter than R may change PREDICT's answer to another class only when
CERTIFY or PREDICT fails, each with probability <= alpha. The same attack well beyond the
certified radii must change answers, or the check above would be empty.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import Linear2
from scipy.stats import binom, norm
from torch import nn

from smoothmix.analysis import read_attack, read_results
from smoothmix.certification import attack_dataset, certify_dataset, merge_results
from smoothmix.cli import main
from smoothmix.core import Smooth
from smoothmix.empirical import smoothed_attack
from smoothmix.errors import SmoothmixError
from smoothmix.run import RunSpec

SIGMA = 0.5
HEADER = ("idx", "label", "predict", "correct", "time", "adv_predict", "distance",
          "adv_outcome")


@pytest.mark.parametrize("images", [pytest.param(30, marks=pytest.mark.slow), 10])
def test_attacks_inside_the_certified_radius_change_nothing_beyond_alpha(mnist_model, images):  # noqa: F811
    net, test = mnist_model
    smooth, alpha = Smooth(net, 10, SIGMA), 0.01
    changed = flipped_far = certified = 0
    for idx in range(images):
        x, _ = test[idx]
        gen = torch.Generator().manual_seed(idx)
        c, radius = smooth.certify(x, 20, 1000, alpha, 500, generator=gen)
        if c == -1:
            continue
        certified += 1
        x_adv = smoothed_attack(net, x, c, SIGMA, 0.95 * radius, 10, 32, gen)
        assert float((x_adv - x).norm()) <= 0.95 * radius + 1e-5
        answer = smooth.predict(x_adv, 1000, alpha, 500, generator=gen)
        changed += answer not in (c, -1)
        far = smoothed_attack(net, x, c, SIGMA, radius + 2.0, 10, 32, gen)
        flipped_far += smooth.predict(far, 1000, alpha, 500, generator=gen) != c
    assert certified >= 2 * images // 3
    # Each example fails with probability <= 2 alpha (CERTIFY's and PREDICT's failures).
    assert changed <= binom.ppf(0.999, certified, 2 * alpha)
    assert flipped_far >= certified // 2  # the attack does work where nothing is promised


def test_the_attacked_point_depends_on_the_example_seed_alone():
    # A base classifier with constant logits has no gradient, so PGD moves x only along its
    # random fallback direction: that too must come from the example's generator (seeded
    # per example as attack_dataset seeds it), not from the global RNG.
    from smoothmix.certification import example_seed

    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.zero_()
    x = torch.full((1, 2, 2), 0.5)
    points = []
    for global_seed, idx in ((0, 3), (123, 3), (0, 4)):
        torch.manual_seed(global_seed)
        gen = torch.Generator().manual_seed(example_seed(0, idx))
        points.append(smoothed_attack(net, x, 1, SIGMA, 0.3, 4, 8, gen))
    assert torch.equal(points[0], points[1])
    assert not torch.equal(points[0], points[2])
    assert float((points[0] - x).norm()) == pytest.approx(0.3, rel=1e-5)


def test_attack_file_resume_and_distances(tmp_path, mnist_model):  # noqa: F811
    net, test = mnist_model
    run = RunSpec.of(SIGMA, batch_size=300, max_idx=6, progress=False)
    opts = dict(epsilon=0.5, num_steps=5, num_noise=32, n=300, alpha=0.01)
    out = attack_dataset(net, test, run, tmp_path / "a.tsv", **opts)
    lines = out.read_text().splitlines()
    assert lines[0] == "\t".join(HEADER)
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(6))
    for r in rows:
        label, clean, adv = int(r[1]), int(r[2]), int(r[5])
        assert r[3] == str(int(clean == label))
        assert 0 <= float(r[6]) <= 0.5 + 1e-5
        assert r[7] == ("kept" if adv == label else "abstained" if adv == -1 else "changed")
    meta = json.loads((tmp_path / "a.tsv.json").read_text())
    assert meta["kind"] == "attack" and meta["settings"]["epsilon"] == 0.5
    # Resume: cut the last row in half, rerun, get the same rows back.
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:3])
    attack_dataset(net, test, run, out, **opts)
    again = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert [r[:4] + r[5:] for r in again] == [r[:4] + r[5:] for r in rows]


@pytest.mark.parametrize("kwargs, message", [
    (dict(epsilon=-1.0), "epsilon must be >= 0"),
    (dict(epsilon=math.inf), "epsilon must be >= 0"),
    (dict(epsilon=0.5, num_steps=0), "num_steps must be"),
    (dict(epsilon=0.5, num_noise=0), "num_noise must be"),
])
def test_bad_attack_settings_are_one_line_errors(tmp_path, mnist_model, kwargs, message):  # noqa: F811
    net, test = mnist_model
    with pytest.raises(SmoothmixError, match=message):
        attack_dataset(net, test, RunSpec.of(SIGMA, progress=False), tmp_path / "a.tsv",
                       **kwargs)
    assert not (tmp_path / "a.tsv").exists()


def test_attack_cli(tmp_path):
    from smoothmix.checkpoint import save_checkpoint
    from smoothmix.models import create_model

    torch.manual_seed(0)
    ckpt = tmp_path / "lenet.pth"
    save_checkpoint(ckpt, {"arch": "lenet", "state_dict": create_model("lenet").state_dict()})
    out = tmp_path / "a.tsv"
    assert main(["attack", str(ckpt), "--dataset", "mnist", "--sigma", "0.25", "--epsilon",
                 "0.3", "--num-steps", "2", "--num-noise", "8", "--n", "100", "--alpha",
                 "0.01", "--max-idx", "3", "--no-progress", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 4
    assert main(["attack", str(ckpt), "--dataset", "mnist", "--sigma", "0.25", "--epsilon",
                 "-1", "--out", str(out)]) == 2


def test_analyze_puts_the_outcomes_beside_certified_accuracy(tmp_path, mnist_model,  # noqa: F811
                                                             capsys):
    net, test = mnist_model
    run = RunSpec.of(SIGMA, batch_size=300, max_idx=8, progress=False)
    attack = attack_dataset(net, test, run, tmp_path / "att.tsv", epsilon=0.25, num_steps=3,
                            num_noise=16, n=300, alpha=0.01)
    cert = certify_dataset(net, test, run, tmp_path / "cert.tsv", n0=20, n=300, alpha=0.02)
    capsys.readouterr()
    assert main(["analyze", str(attack), str(cert), "--format", "csv"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header == ("name,images,epsilon,clean accuracy (%),kept label at attack (%),"
                      "abstained at attack (%),changed class at attack (%),"
                      "certified at epsilon: cert (%),changed among certified: cert (%),"
                      "bound alpha_C + alpha_P: cert (%)")
    att = [line.split("\t") for line in attack.read_text().splitlines()[1:]]
    crt = [line.split("\t") for line in cert.read_text().splitlines()[1:]]
    clean = 100 * sum(r[3] == "1" for r in att) / 8
    shares = [100 * sum(r[7] == o for r in att) / 8 for o in ("kept", "abstained", "changed")]
    assert sum(shares) == 100
    ok = [r[4] == "1" and float(r[3]) >= 0.25 for r in crt]
    certified = 100 * sum(ok) / 8
    changed = [a[7] == "changed" for a, c in zip(att, ok, strict=True) if c]
    assert changed, "the model certifies some of the 8 images at 0.25"
    expected = [f"{clean:.2f}", *(f"{v:.2f}" for v in shares), f"{certified:.2f}",
                f"{100 * sum(changed) / len(changed):.2f}", "3.00"]  # 0.02 + 0.01
    assert row == ",".join(["att", "8", "0.25", *expected])
    assert main(["analyze", str(attack), str(cert)]) == 0
    assert "not a lower bound" in capsys.readouterr().out  # the markdown note


# ------------------------------------------- a linear classifier: the truth is known


class Halves:
    """``size`` images x = (0.5, 0.5), all of class 1 (inside [0, 1] whichever way PGD
    moves them by less than 0.5)."""

    num_classes = 2

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 1, 2), 0.5), 1


def linear_case(p_a: float, sigma: float) -> tuple[nn.Module, float]:
    """A classifier whose class 1 has probability p_a at x = (0.5, 0.5) under N(0, sigma^2)
    noise, and the true robust radius of its smoothed classifier there (the distance to the
    boundary: g = f for a linear f)."""
    margin = sigma * 5.0 * norm.ppf(p_a)  # w.x + b at x
    return Linear2(margin + 0.5), margin / 5.0  # w.x = (3 - 4) / 2 = -0.5


@pytest.mark.slow
def test_certified_at_epsilon_is_no_lower_bound_on_the_kept_share(tmp_path, capsys):
    # p_A = 0.7, sigma = 0.5: g is provably constant within 0.262 > epsilon = 0.25, and
    # CERTIFY at N = 100,000 certifies (nearly) every image at 0.25. PGD moves x 0.25 towards
    # the boundary, where p_1 = Phi(0.012 / 0.5) = 0.51: PREDICT (n = 10,000, alpha = 0.001)
    # abstains there most of the time, which is no failure of anything. The old reading
    # ("certified accuracy <= robust accuracy, up to alpha") fails by 80 points; what the
    # theorem gives (another class among certified images with probability <= 2 alpha) holds.
    sigma, eps, alpha, images = 0.5, 0.25, 0.001, 40
    model, true_radius = linear_case(0.7, sigma)
    assert true_radius == pytest.approx(0.2622, abs=1e-4) and true_radius > eps
    data = Halves(images)
    cert = certify_dataset(model, data, RunSpec.of(sigma, batch_size=20_000, progress=False),
                           tmp_path / "cert.tsv", n0=100, n=100_000, alpha=alpha)
    attack = attack_dataset(model, data, RunSpec.of(sigma, batch_size=10_000, progress=False),
                            tmp_path / "att.tsv", epsilon=eps, num_steps=10, num_noise=64,
                            n=10_000, alpha=alpha)
    crt, att = read_results(cert), read_attack(attack)
    assert np.allclose(att.distance, eps, atol=1e-5)  # the attack uses the whole ball
    certified = crt.correct & (crt.radius >= eps)
    assert certified.mean() >= 0.9
    assert att.correct.all()  # at x, p_1 = 0.7: PREDICT returns the label
    # The bound: another class at the attacked point of a certified image, <= 2 alpha each.
    changed = int((att.outcome[certified] == "changed").sum())
    assert changed <= binom.ppf(0.999, int(certified.sum()), 2 * alpha)
    # Abstentions are not bounded: most attacked points abstain (P ~ 0.91 each).
    assert att.rate("abstained") >= 0.6
    # So the old claim is false: certified at epsilon is far above the kept share.
    assert certified.mean() - att.robust_accuracy() >= 0.3
    capsys.readouterr()
    assert main(["analyze", str(attack), str(cert), "--format", "csv"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split(",")
    assert [float(v) for v in row[4:7]] == pytest.approx(
        [100 * att.rate(o) for o in ("kept", "abstained", "changed")])
    assert float(row[7]) == pytest.approx(100 * certified.mean())
    assert float(row[8]) == pytest.approx(100 * changed / certified.sum())
    assert float(row[9]) == pytest.approx(100 * 2 * alpha)


LEGACY = ("idx", "label", "predict", "correct", "time", "adv_predict", "distance", "robust")


def to_legacy(path) -> list[str]:
    """The file's rows as smoothmix 0.1.0 wrote them (last column robust), header first."""
    lines = path.read_text().splitlines()
    assert lines[0] == "\t".join(HEADER)
    out = ["\t".join(LEGACY)]
    for line in lines[1:]:
        f = line.split("\t")
        out.append("\t".join([*f[:7], str(int(f[2] == f[1] and f[5] == f[1]))]))
    return out


def test_files_of_the_old_format_resume_merge_and_analyse_in_their_own_format(tmp_path,
                                                                               capsys):
    model, _ = linear_case(0.7, 0.5)
    data = Halves(8)
    run = RunSpec.of(0.5, batch_size=400, progress=False)
    opts = dict(epsilon=0.25, num_steps=4, num_noise=8, n=400, alpha=0.3)
    whole = attack_dataset(model, data, run, tmp_path / "whole.tsv", **opts)
    assert len({line.split("\t")[7] for line in whole.read_text().splitlines()[1:]}) >= 2
    expected = to_legacy(whole)
    parts = []
    for i in range(2):
        part = attack_dataset(model, data, run.replace(shard=(i, 2)), tmp_path / f"p{i}.tsv",
                              **opts)
        legacy = to_legacy(part)
        # An interrupted 0.1.0 run: its last row torn in half.
        part.write_text("\n".join(legacy[:-1]) + "\n" + legacy[-1][:5])
        attack_dataset(model, data, run.replace(shard=(i, 2)), part, **opts)  # resumes it
        lines = part.read_text().splitlines()
        assert lines[0] == "\t".join(LEGACY)
        assert [drop_time(x) for x in lines] == [drop_time(x) for x in legacy]
        parts.append(part)
    merged = merge_results(tmp_path / "merged.tsv", parts)
    lines = merged.read_text().splitlines()
    assert [drop_time(x) for x in lines] == [drop_time(x) for x in expected]
    old, new = read_attack(merged), read_attack(whole)
    assert (old.outcome == new.outcome).all() and (old.robust == new.robust).all()
    capsys.readouterr()
    assert main(["analyze", str(merged), "--format", "csv"]) == 0
    assert main(["analyze", str(whole), "--format", "csv"]) == 0
    tables = capsys.readouterr().out.splitlines()
    assert tables[1].split(",")[1:] == tables[3].split(",")[1:]


def drop_time(line: str) -> list[str]:
    fields = line.split("\t")
    return fields[:4] + fields[5:]
