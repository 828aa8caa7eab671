"""`smoothmix attack`: PGD on the smoothed soft classifier, then PREDICT at the attacked point.

Ground truth: a certificate of radius R (CERTIFY, level alpha) says g is constant on the
ball, so an attack shorter than R may change PREDICT's answer to another class only when
CERTIFY or PREDICT fails, each with probability <= alpha. The same attack well beyond the
certified radii must change answers, or the check above would be empty.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.stats import binom
from test_certification import mnist_model  # noqa: F401 - a fixture: a trained MNIST model

from smoothmix.certification import attack_dataset
from smoothmix.cli import main
from smoothmix.core import Smooth
from smoothmix.empirical import smoothed_attack
from smoothmix.errors import SmoothmixError

SIGMA = 0.5


def test_attacks_inside_the_certified_radius_change_nothing_beyond_alpha(mnist_model):  # noqa: F811
    net, test = mnist_model
    smooth, alpha = Smooth(net, 10, SIGMA), 0.01
    changed = flipped_far = certified = 0
    for idx in range(30):
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
    assert certified >= 20
    # Each example fails with probability <= 2 alpha (CERTIFY's and PREDICT's failures).
    assert changed <= binom.ppf(0.999, certified, 2 * alpha)
    assert flipped_far >= certified // 2  # the attack does work where nothing is promised


def test_attack_file_resume_and_distances(tmp_path, mnist_model):  # noqa: F811
    net, test = mnist_model
    opts = dict(epsilon=0.5, num_steps=5, num_noise=32, n=300, alpha=0.01, batch_size=300,
                max_idx=6, progress=False)
    out = attack_dataset(net, test, SIGMA, tmp_path / "a.tsv", **opts)
    lines = out.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tcorrect\ttime\tadv_predict\tdistance\trobust"
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(6))
    for r in rows:
        label, clean, adv = int(r[1]), int(r[2]), int(r[5])
        assert 0 <= float(r[6]) <= 0.5 + 1e-5
        assert r[7] == str(int(clean == label and adv == label))
    meta = json.loads((tmp_path / "a.tsv.json").read_text())
    assert meta["kind"] == "attack" and meta["settings"]["epsilon"] == 0.5
    # Resume: cut the last row in half, rerun, get the same rows back.
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:3])
    attack_dataset(net, test, SIGMA, out, **opts)
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
        attack_dataset(net, test, SIGMA, tmp_path / "a.tsv", progress=False, **kwargs)
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


def test_analyze_puts_robust_accuracy_beside_certified_accuracy(tmp_path, mnist_model,  # noqa: F811
                                                                capsys):
    from smoothmix.certification import certify_dataset

    net, test = mnist_model
    attack = attack_dataset(net, test, SIGMA, tmp_path / "att.tsv", epsilon=0.25, num_steps=3,
                            num_noise=16, n=300, alpha=0.01, batch_size=300, max_idx=8,
                            progress=False)
    cert = certify_dataset(net, test, SIGMA, tmp_path / "cert.tsv", n0=20, n=300,
                           alpha=0.01, batch_size=300, max_idx=8, progress=False)
    capsys.readouterr()
    assert main(["analyze", str(attack), str(cert), "--format", "csv"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header == ("name,images,epsilon,clean accuracy (%),empirical robust accuracy (%),"
                      "certified at epsilon: cert (%)")
    att = [line.split("\t") for line in attack.read_text().splitlines()[1:]]
    crt = [line.split("\t") for line in cert.read_text().splitlines()[1:]]
    robust = 100 * sum(r[7] == "1" for r in att) / 8
    clean = 100 * sum(r[3] == "1" for r in att) / 8
    certified = 100 * sum(r[4] == "1" and float(r[3]) >= 0.25 for r in crt) / 8
    assert row == f"att,8,0.25,{clean:.2f},{robust:.2f},{certified:.2f}"
    assert certified <= robust + 100 / 8  # a certificate at epsilon survives the attack
