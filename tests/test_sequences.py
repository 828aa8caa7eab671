"""Decisions at given radii with confidence sequences (docs/MATH.md §2.1): soundness against models
with a known answer, run through ``decide_dataset`` exactly as ``smoothmix certify
--radius`` runs them (pool, shared batches, looks, stopping)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import beta as beta_dist
from scipy.stats import norm
from torch import nn

import smoothmix.sequences as seq
from smoothmix.certification import decide_dataset
from smoothmix.errors import SmoothmixError
from smoothmix.run import RunSpec

SIGMA = 1.0


class Bernoulli(nn.Module):
    """Votes class 1 with probability p under the noise (images x = 0): the class is
    1[Phi(first noisy pixel / sigma) < p], a deterministic function of each image's stream."""

    def __init__(self, p: float, sigma: float = SIGMA) -> None:
        super().__init__()
        self.p, self.sigma = p, sigma
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        u = torch.special.ndtr(x.flatten(1)[:, 0] / self.sigma)
        return nn.functional.one_hot((u < self.p).long(), 2).float()


class Zeros:
    """``size`` images x = 0 of shape 1x1x2, all labelled ``label``."""

    num_classes = 2

    def __init__(self, size: int, label: int = 1) -> None:
        self.size, self.label = size, label

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(1, 1, 2), self.label


def read(path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "idx\tlabel\ttested\tat_radius\tdecision\tcertified_correct\tsamples\ttime"
    return [line.split("\t")[:-1] for line in lines[1:]]  # without time


def claims(path, radius: float) -> np.ndarray:
    return np.array([r[4] == "certified" for r in read(path) if float(r[3]) == radius])


def tolerance(alpha: float, trials: int) -> float:
    """alpha plus 3 binomial standard deviations: a sound procedure stays below it."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


# ----------------------------------------------------------------- the statistics


@pytest.mark.parametrize("a, n, p0", [(0, 1, 0.5), (7, 10, 0.6), (60, 60, 0.84), (3, 40, 0.2)])
def test_kt_evidence_is_the_beta_half_mixture_likelihood_ratio(a, n, p0):
    # Ground truth: integrate p^a (1-p)^(n-a) against the Beta(1/2, 1/2) density.
    mixture, _ = integrate.quad(lambda p: p**a * (1 - p) ** (n - a) * beta_dist.pdf(p, .5, .5),
                                0, 1, limit=200)
    expected = math.log(mixture) - a * math.log(p0) - (n - a) * math.log(1 - p0)
    assert seq.kt_log_evidence(a, n, np.array([p0]))[0] == pytest.approx(expected, rel=1e-6)


def test_union_schedule_and_levels():
    points = seq.union_checkpoints(1000)
    assert points[:28] == list(range(1, 29)) and points[28] == math.ceil(28 * 1.1)
    assert points[-1] == 1000 and all(b > a for a, b in zip(points, points[1:], strict=False))
    assert all(b <= math.ceil(a * 1.1) for a, b in zip(points[28:], points[29:], strict=False))
    total = sum(seq.union_alpha(t, 0.01) for t in range(1, 200_000))
    assert total == pytest.approx(0.01, rel=1e-4) and total <= 0.01
    assert seq.stage_sizes(100_000) == [900, 9009, 90091]
    assert sum(seq.stage_sizes(50)) == 50 and min(seq.stage_sizes(50)) >= 1


# ----------------------------------------------------------------- soundness, as the CLI runs


def false_claim_rate(tmp_path, sequence: str, p: float, p0: float, alpha: float, images: int,
                     cap: int, use_label: bool = True, batch: int = 256) -> float:
    r0 = SIGMA * norm.ppf(p0)
    run = RunSpec.of(SIGMA, batch_size=batch, progress=False)
    out = decide_dataset(Bernoulli(p), Zeros(images), run, tmp_path / f"{sequence}{p}.tsv",
                         radii=[0.0, r0], sequence=sequence, n0=9, n=cap, alpha=alpha,
                         use_label=use_label)
    return float(claims(out, r0).mean())


@pytest.mark.parametrize("sequence", seq.SEQUENCES)
@pytest.mark.parametrize("gap", [0.0, 0.02])
def test_false_claim_rate_at_and_below_p0_is_at_most_alpha(tmp_path, sequence, gap):
    # p_c = p0 - gap <= p0: every claim at r0 = sigma Phi^-1(p0) is false.
    alpha, images = 0.1, 300
    rate = false_claim_rate(tmp_path, sequence, 0.7 - gap, 0.7, alpha, images, cap=600)
    assert rate <= tolerance(alpha, images)


@pytest.mark.parametrize("sequence", seq.SEQUENCES)
def test_false_claim_rate_in_deployment_mode(tmp_path, sequence):
    # The class comes from 9 separate selection samples (class 1 wins with p = 0.7).
    alpha, images = 0.1, 200
    rate = false_claim_rate(tmp_path, sequence, 0.7, 0.7, alpha, images, cap=600,
                            use_label=False)
    assert rate <= tolerance(alpha, images)


def test_the_harness_catches_an_unsound_sequence(tmp_path, monkeypatch):
    # Testing at the full alpha at every checkpoint (no union bound) claims far too often.
    monkeypatch.setattr(seq, "union_alpha", lambda t, alpha: alpha)
    rate = false_claim_rate(tmp_path, "union", 0.7, 0.7, 0.1, 200, cap=600)
    assert rate > tolerance(0.1, 200)


@pytest.mark.parametrize("sequence", seq.SEQUENCES)
def test_confident_images_are_decided_in_few_samples(tmp_path, sequence):
    out = decide_dataset(Bernoulli(0.999), Zeros(40),
                         RunSpec.of(SIGMA, batch_size=256, progress=False), tmp_path / "c.tsv",
                         radii=[0.5, 1.0], sequence=sequence, n=10_000, alpha=0.001)
    rows = read(out)
    assert all(r[4] == "certified" and r[5] == "1" for r in rows)
    used = np.array([int(r[6]) for r in rows])
    assert used.mean() < 10_000 / 20  # at least 20x fewer than the cap


@pytest.mark.parametrize("sequence", seq.SEQUENCES)
def test_linear_classifier_end_to_end(tmp_path, sequence, linear2):
    # p_1 = Phi(margin / (sigma ||w||)) = 0.9: the true radius is the distance to the
    # boundary, margin / ||w|| = sigma Phi^-1(0.9). Claims beyond it are false.
    sigma, alpha, images = 0.5, 0.1, 150
    true_radius = sigma * norm.ppf(0.9)
    model = linear2(5 * true_radius)
    radii = [0.5 * true_radius, 1.01 * true_radius, 1.5 * true_radius]
    out = decide_dataset(model, Zeros(images), RunSpec.of(sigma, batch_size=500, progress=False),
                         tmp_path / "lin.tsv", radii=radii, sequence=sequence, n=2000,
                         alpha=alpha)
    beyond = np.concatenate([claims(out, r) for r in radii[1:]])
    assert beyond.reshape(2, -1).any(axis=0).mean() <= tolerance(alpha, images)
    assert claims(out, radii[0]).mean() > 0.9  # power well inside the true radius


# ----------------------------------------------------------------- the runner


def test_batches_are_full_while_images_remain(tmp_path):
    model = Bernoulli(0.9)
    joined: list[int] = []  # batches run when each image was read (joined the pool)

    class Watched(Zeros):
        def __getitem__(self, i):
            joined.append(len(model.batches))
            return super().__getitem__(i)

    decide_dataset(model, Watched(200), RunSpec.of(SIGMA, batch_size=128, progress=False),
                   tmp_path / "b.tsv", radii=[0.0, 1.0], n=500, alpha=0.01)
    sizes = model.batches
    assert len(joined) == 200 and joined[-1] > 100
    # Every batch before the one the last image joined is full; only the tail runs short.
    assert set(sizes[: joined[-1]]) == {128} and len(sizes) - joined[-1] < 60


def test_the_time_column_is_each_images_share_of_the_wall_time(tmp_path):
    # Images share batches: the time from an image's first batch to its last counts the
    # others' rows too, and summed over a pool of 8 it came to about 8 times the run's wall
    # time. The column is each image's share of its batches instead, so it sums to the run.
    class Slow(Bernoulli):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(0.02)  # the forward dominates every batch
            return super().forward(x)

    start = time.perf_counter()
    out = decide_dataset(Slow(0.5), Zeros(8), RunSpec.of(SIGMA, batch_size=4000, progress=False),
                         tmp_path / "t.tsv", radii=[0.0], n=2000, alpha=0.01)
    wall = time.perf_counter() - start
    lines = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    seconds = [float(row[-1]) for row in lines]
    assert len(seconds) == 8 and min(seconds) > 0
    assert 0.02 < sum(seconds) <= wall


def test_rows_do_not_depend_on_batching_and_resume_after_a_torn_example(tmp_path):
    kwargs = dict(radii=[0.0, 0.5, 1.0], n=400, alpha=0.01)
    run = RunSpec.of(SIGMA, batch_size=64, progress=False)
    whole = decide_dataset(Bernoulli(0.8), Zeros(30), run, tmp_path / "w.tsv", **kwargs)
    other = decide_dataset(Bernoulli(0.8), Zeros(30), run.replace(batch_size=1000),
                           tmp_path / "o.tsv", **kwargs)
    key = sorted  # rows are written in the order examples finish
    assert key(read(whole)) == key(read(other))
    # A crash in the middle of an example's rows: two of its three rows and half a line.
    lines = whole.read_text().splitlines(keepends=True)
    part = tmp_path / "w.tsv"
    part.write_text("".join(lines[:1 + 3 * 10 + 2]) + lines[1 + 3 * 10 + 2][:4])
    decide_dataset(Bernoulli(0.8), Zeros(30), run, part, **kwargs)
    assert key(read(part)) == key(read(other))
    with pytest.raises(SmoothmixError, match="another run"):
        decide_dataset(Bernoulli(0.8), Zeros(30), run, part, **{**kwargs, "radii": [0.0, 0.5]})


@pytest.mark.parametrize("kwargs, message", [
    (dict(radii=[]), "radii must be"),
    (dict(radii=[-1.0]), "radii must be"),
    (dict(radii=[0.5, 0.5]), "radii repeat"),
    (dict(radii=[0.5], sequence="cs"), "unknown sequence"),
    (dict(radii=[0.5], n=5), "can never certify"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(SmoothmixError, match=message):
        decide_dataset(Bernoulli(0.9), Zeros(3), RunSpec.of(SIGMA, progress=False),
                       tmp_path / "x.tsv", **kwargs)
    assert not (tmp_path / "x.tsv").exists()


def test_analyze_reads_decisions(tmp_path, capsys):
    from smoothmix.cli import main

    out = decide_dataset(Bernoulli(0.8), Zeros(20),
                         RunSpec.of(SIGMA, batch_size=100, progress=False), tmp_path / "d.tsv",
                         radii=[0.25, 1.0], n=300, alpha=0.05)
    rows = read(out)
    capsys.readouterr()
    assert main(["analyze", str(out), "--format", "csv"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "name,images,radius,certified accuracy (%),mean samples"
    for line, r in zip(table[1:], (0.25, 1.0), strict=True):
        at = [row for row in rows if float(row[3]) == r]
        acc = 100 * sum(row[5] == "1" for row in at) / 20
        mean = sum(int(row[6]) for row in at) / 20
        assert line == f"d,20,{r:g},{acc:.2f},{mean:.0f}"
    assert main(["analyze", str(out), "--radii", "0.5"]) == 2  # radii come from the file


def test_an_interrupted_decisions_file_is_incomplete_and_analyze_says_so(tmp_path, capsys):
    from smoothmix.analysis import read_decisions
    from smoothmix.cli import main

    out = decide_dataset(Bernoulli(0.8), Zeros(6), RunSpec.of(SIGMA, batch_size=100,
                                                               progress=False),
                         tmp_path / "d.tsv", radii=[0.25, 1.0], n=300, alpha=0.05)
    whole = read_decisions(out)
    assert whole.complete and whole.run is not None and whole.run.selected == 6
    # Per example and radius, whether the cap left it undecided, as the file says.
    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    said = {(int(r[0]), float(r[3])): r[header.index("decision")] == "undecided" for r in rows}
    assert [[said[i, r] for r in whole.radii] for i in whole.idx] == whole.undecided.tolist()
    assert 0 < whole.undecided.sum() < whole.undecided.size
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:1 + 2 * 4]))  # killed after four of the six examples
    cut = read_decisions(out)
    assert len(cut.idx) == 4 and not cut.complete
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "incomplete: 4 of the 6 examples" in err
    assert main(["analyze", str(out), "--strict"]) == 2
    # Without its .json companion (a 0.2 file) nothing says what the run selected.
    (tmp_path / "d.tsv.json").unlink()
    legacy = read_decisions(out)
    assert legacy.run is None and legacy.complete


LEGACY_HEADER = "idx\tlabel\tpredict\tradius\tdecision\tcorrect\tsamples\ttime"


def test_a_release_02_radius_file_resumes_merges_and_analyses_to_the_same_numbers(tmp_path,
                                                                                capsys):
    # smoothmix 0.2 wrote --radius files with certify's column names and no execution in
    # the settings; such a file resumes in its own format and analyses to the same table.
    from smoothmix.analysis import read_decisions, read_results
    from smoothmix.cli import main

    run = RunSpec.of(SIGMA, batch_size=100, progress=False)
    kwargs = dict(radii=[0.25, 1.0], n=300, alpha=0.05)
    new = decide_dataset(Bernoulli(0.8), Zeros(12), run, tmp_path / "new.tsv", **kwargs)
    old = tmp_path / "old.tsv"
    lines = new.read_text().splitlines(keepends=True)
    old.write_text(LEGACY_HEADER + "\n" + "".join(lines[1:1 + 2 * 5]) + lines[11][:3])
    meta = json.loads((tmp_path / "new.tsv.json").read_text())
    for key in ("precision", "layout", "chunk", "compile", "threads"):
        del meta["settings"][key]
    (tmp_path / "old.tsv.json").write_text(json.dumps(meta))
    decide_dataset(Bernoulli(0.8), Zeros(12), run, old, **kwargs)  # resumes, repairs
    text = old.read_text().splitlines()
    assert text[0] == LEGACY_HEADER and len(text) == len(lines)
    a, b = read_decisions(new), read_decisions(old)
    assert (a.certified == b.certified).all() and (a.samples == b.samples).all()
    for path in (new, old):
        capsys.readouterr()
        assert main(["analyze", str(path), "--format", "csv"]) == 0
    # A decisions file where a certify file is needed, and the other way round: one line.
    with pytest.raises(SmoothmixError, match="decisions file") as info:
        read_results(new)
    assert "\n" not in str(info.value)
    (tmp_path / "c.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                                    "0\t1\t1\t0.5\t1\t0.1\n")
    with pytest.raises(SmoothmixError, match="at_radius|decision"):
        read_decisions(tmp_path / "c.tsv")
