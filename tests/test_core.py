"""Soundness of CERTIFY/PREDICT against closed-form ground truth (docs/MATH.md §2).

A linear binary classifier f(x) = 1[w.x + b > 0] smoothed with N(0, sigma^2 I) noise has
p_A = Phi(|w.x + b| / (sigma ||w||)) and its smoothed classifier is f itself, so the true
robust radius is the distance |w.x + b| / ||w|| to the decision boundary. Every trial that
certifies a wrong class or a radius beyond that distance is a false certificate; CERTIFY
promises they happen with probability at most alpha.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import Linear2, exact_false_certification_rate
from scipy.stats import binom, binomtest, norm
from torch import nn

from smoothmix.core import (
    FUTILITY_CHECKS,
    Certificate,
    Smooth,
    certified_radius,
    certifying_votes,
    clopper_pearson_lower,
    smallest_certifying_n,
    smallest_predicting_n,
)
from smoothmix.errors import SmoothmixError


def linear_case(p_a: float, sigma: float) -> tuple[Linear2, torch.Tensor, float]:
    """A classifier and an image x = 0 whose top class 1 has probability p_a; true radius."""
    margin = sigma * 5.0 * norm.ppf(p_a)  # w.x + b at x = 0
    return Linear2(margin), torch.zeros(1, 1, 2), margin / 5.0


def false_certifications(p_a: float, sigma: float, n0: int, n: int, alpha: float,
                         trials: int) -> int:
    model, x, true_radius = linear_case(p_a, sigma)
    smooth = Smooth(model, num_classes=2, sigma=sigma)
    torch.manual_seed(1234)
    bad = 0
    for _ in range(trials):
        label, radius = smooth.certify(x, n0=n0, n=n, alpha=alpha, batch_size=1000)
        if label == 0 or (label == 1 and radius > true_radius * (1 + 1e-9)):
            bad += 1
    return bad


@pytest.mark.parametrize("trials", [pytest.param(3000, marks=pytest.mark.slow), 1000])
def test_false_certification_rate_matches_exact_value_and_stays_below_alpha(trials):
    p_a, sigma, n0, n, alpha = 0.8, 0.5, 11, 200, 0.1
    q = exact_false_certification_rate(p_a, n0, n, alpha)
    assert 0.02 < q <= alpha  # the test has power: false certificates do happen
    bad = false_certifications(p_a, sigma, n0, n, alpha, trials)
    assert binomtest(bad, trials, q).pvalue > 1e-3, (bad, trials, q)
    assert binomtest(bad, trials, alpha, alternative="greater").pvalue > 1e-3


def test_false_certification_harness_catches_an_unsound_bound(monkeypatch):
    # The same harness must flag a bound without confidence (the point estimate n_A / n).
    import smoothmix.core as core

    monkeypatch.setattr(core, "clopper_pearson_lower", lambda n_a, n, alpha: n_a / n)
    bad = false_certifications(0.8, 0.5, 11, 200, 0.1, 600)
    assert binomtest(bad, 600, 0.1, alternative="greater").pvalue < 1e-3


def test_radius_approaches_the_true_radius_as_n_grows():
    sigma = 0.5
    model, x, true_radius = linear_case(0.9, sigma)
    smooth = Smooth(model, num_classes=2, sigma=sigma)
    torch.manual_seed(0)
    gaps = []
    for n in (1_000, 10_000, 100_000):
        radii = [smooth.certify(x, 100, n, 0.001, batch_size=100_000)[1] for _ in range(5)]
        assert all(0 < r <= true_radius for r in radii)
        gaps.append(true_radius - float(np.mean(radii)))
    assert gaps[0] > gaps[1] > gaps[2]
    # Expected gap at n = 1e5: z_0.999 * sqrt(p(1-p)/n) / phi(Phi^-1(p)) * sigma ~ 0.008.
    assert gaps[2] < 0.03 * sigma


def test_clopper_pearson_matches_statsmodels_and_its_definition():
    proportion_confint = pytest.importorskip("statsmodels.stats.proportion").proportion_confint
    for n in (1, 7, 100, 1000, 100_000):
        for n_a in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for alpha in (0.001, 0.01, 0.05):
                ours = clopper_pearson_lower(n_a, n, alpha)
                ref = proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]
                assert ours == pytest.approx(float(np.nan_to_num(ref)), rel=1e-9, abs=1e-12)
                if n_a == 0:
                    assert ours == 0.0
                else:
                    # Defining property: P(Bin(n, p_lower) >= n_a) = alpha.
                    assert binom.sf(n_a - 1, n, ours) == pytest.approx(alpha, rel=1e-6)
    assert clopper_pearson_lower(10, 10, 0.001) == pytest.approx(0.001 ** (1 / 10))


@pytest.mark.parametrize("n, cap", [(100_000, 3.81), (10_000, 3.20)])
def test_radius_cap_with_unanimous_votes(n, cap):
    for sigma in (0.25, 1.0):
        radius = certified_radius(clopper_pearson_lower(n, n, 0.001), sigma)
        assert radius == pytest.approx(cap * sigma, abs=0.005 * sigma)
        assert radius == pytest.approx(sigma * norm.ppf(0.001 ** (1 / n)), rel=1e-12)


class Constant(nn.Module):
    def __init__(self, label: int, num_classes: int = 10) -> None:
        super().__init__()
        self.label, self.num_classes = label, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), self.num_classes)
        out[:, self.label] = 1.0
        return out


def test_certify_with_unanimous_classifier_reaches_the_cap():
    smooth = Smooth(Constant(3), num_classes=10, sigma=0.5)
    label, radius = smooth.certify(torch.rand(1, 4, 4), 100, 10_000, 0.001, batch_size=1000)
    assert label == 3
    assert radius == pytest.approx(0.5 * norm.ppf(0.001 ** (1e-4)), rel=1e-12)


def test_smallest_certifying_n_is_exact():
    for alpha in (0.5, 0.1, 0.01, 0.001, 1e-6, 0.0625):
        n_min = smallest_certifying_n(alpha)
        brute = next(n for n in range(1, 200) if clopper_pearson_lower(n, n, alpha) >= 0.5)
        assert n_min == brute
    assert smallest_certifying_n(0.001) == 10  # 0.001 ** (1/10) = 0.5012 >= 1/2
    smooth = Smooth(Constant(1), num_classes=10, sigma=0.25)
    assert smooth.certify(torch.zeros(1, 2, 2), 1, 10, 0.001, 100)[0] == 1
    with pytest.raises(SmoothmixError, match=r"n >= 10"):
        smooth.certify(torch.zeros(1, 2, 2), 1, 9, 0.001, 100)


def test_smallest_predicting_n_is_exact():
    for alpha in (0.1, 0.01, 0.001):
        n_min = smallest_predicting_n(alpha)
        brute = next(n for n in range(1, 200) if binomtest(n, n, 0.5).pvalue <= alpha)
        assert n_min == brute
    with pytest.raises(SmoothmixError, match=r"n >= 11"):
        Smooth(Constant(1), 10, 0.25).predict(torch.zeros(1, 2, 2), 10, 0.001, 100)


class Tied(nn.Module):
    """Classes 0 and 1 exactly tied under the noise (sign of the first pixel's noise at
    x = 0); class 2 never wins."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)[:, 0]
        return torch.stack([z, -z, torch.full_like(z, -1e9)], dim=1)


@pytest.mark.parametrize("trials", [pytest.param(2000, marks=pytest.mark.slow), 600])
def test_predict_abstains_at_the_right_rate_on_a_tie(trials):
    n, alpha = 100, 0.1
    k = np.arange(n + 1)
    rejects = np.array([binomtest(int(i), n, 0.5).pvalue <= alpha for i in k])
    r = float(binom.pmf(k, n, 0.5)[rejects].sum())  # chance PREDICT names a class
    assert 0.05 < r <= alpha
    smooth = Smooth(Tied(), num_classes=3, sigma=1.0)
    torch.manual_seed(7)
    answers = [smooth.predict(torch.zeros(1, 1, 1), n, alpha, 1000) for _ in range(trials)]
    named = sum(a != -1 for a in answers)
    assert set(answers) <= {-1, 0, 1}
    assert binomtest(named, trials, r).pvalue > 1e-3, (named, r)
    assert binomtest(named, trials, alpha, alternative="greater").pvalue > 1e-3


def test_predict_returns_a_clear_winner():
    model, x, _ = linear_case(0.99, 0.25)
    torch.manual_seed(0)
    assert Smooth(model, 2, 0.25).predict(x, 1000, 0.001, 256) == 1


class SwitchAfter(nn.Module):
    """Class 0 for the first ``k`` rows it ever sees, class 1 afterwards."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.seen = k, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(self.seen, self.seen + len(x))
        self.seen += len(x)
        return nn.functional.one_hot((rows >= self.k).long(), 2).float()


def test_certify_bounds_with_fresh_samples_only():
    # Selection sees class 0 only, the n fresh samples class 1 only: reusing the selection
    # votes would count 100 for class 0; fresh counting gives n_A = 0 and abstains.
    model = SwitchAfter(100)
    smooth = Smooth(model, 2, 0.5)
    full = smooth.certificate(torch.zeros(1, 2, 2), 100, 1000, 0.01, 64, early_abstain=False)
    assert full == (-1, 0.0, 1100, "abstain", 0, 1000, 0, -1)  # selected 0, no label given
    assert model.seen == 1100  # exactly n0 + n noisy samples, chunked within batch_size
    model.seen = 0  # early abstain: futile once 0 + (1000 - t) < k*; the first of the
    # FUTILITY_CHECKS evenly spaced checks past that point stops it, at a block end
    assert smooth.certify(torch.zeros(1, 2, 2), 100, 1000, 0.01, 64) == (-1, 0.0)
    first = 1000 - certifying_votes(1000, 0.01) + 1
    first_check = first + (1000 - first) // (FUTILITY_CHECKS + 1)
    assert model.seen == 100 + 64 * math.ceil(first_check / 64) < 1100


class ModeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.bn(x).flatten(1)[:, :2]


def test_base_classifier_runs_in_eval_mode_and_mode_is_restored():
    model = ModeRecorder().train()
    Smooth(model, 2, 0.5).certify(torch.zeros(1, 1, 2), 10, 100, 0.1, 50)
    assert model.modes and not any(model.modes)
    assert model.training


def test_chunks_respect_batch_size():
    sizes: list[int] = []

    class Spy(Constant):
        def forward(self, x):
            sizes.append(len(x))
            return super().forward(x)

    Smooth(Spy(0, 2), 2, 0.5).predict(torch.zeros(3, 8, 8), 1000, 0.01, batch_size=300)
    assert sum(sizes) == 1000 and max(sizes) <= 300
    sizes.clear()
    Smooth(Spy(0, 2), 2, 0.5, chunk_size=64).predict(torch.zeros(1, 2, 2), 200, 0.01, 1000)
    assert sum(sizes) == 200 and max(sizes) == 64


@pytest.mark.parametrize("chunk", [0, -3, 1.5, True, np.int64(64), "64"])
def test_a_bad_chunk_size_is_one_error_where_it_enters(chunk):
    # One check (the execution's), so Smooth(chunk_size=...) and --chunk say the same thing;
    # a recorded chunk is a plain int, so a numpy integer is refused rather than recorded.
    with pytest.raises(SmoothmixError, match=r"chunk \(rows per forward\) must be an integer"):
        Smooth(Constant(0, 2), 2, 0.5, chunk_size=chunk)


def test_cpu_chunk_is_a_fixed_rule_never_timing():
    # Separate processes must vote identically, so the chunk never depends on a timing:
    # every forward is CPU_CHUNK rows (the block's tail excepted), in every call.
    from smoothmix.execution import CPU_CHUNK

    sizes: list[int] = []

    class Spy(Constant):
        def forward(self, x):
            sizes.append(len(x))
            return super().forward(x)

    smooth = Smooth(Spy(1, 2), 2, 0.5)
    for _ in range(3):
        assert smooth.predict(torch.zeros(1, 2, 2), 60_000, 0.01, batch_size=1000) == 1
    assert sum(sizes) == 180_000
    assert set(sizes) == {CPU_CHUNK}
    ex = smooth.execution(torch.device("cpu"), 1000)
    assert (ex.chunk, ex.precision, ex.layout) == (CPU_CHUNK, "fp32", "contiguous")
    sizes.clear()
    Smooth(Spy(1, 2), 2, 0.5).predict(torch.zeros(1, 2, 2), 300, 0.01, batch_size=100)
    assert set(sizes) == {100}  # never more than the block


@pytest.mark.parametrize("n, alpha", [(100_000, 0.001), (10_000, 0.001), (500, 0.05), (10, 0.001)])
def test_certifying_votes_is_the_exact_threshold(n, alpha):
    k = certifying_votes(n, alpha)
    assert clopper_pearson_lower(k, n, alpha) >= 0.5
    assert k == 0 or clopper_pearson_lower(k - 1, n, alpha) < 0.5
    if n == 100_000:
        assert k == 50_490  # docs/MATH.md §2.1


class Buckets(nn.Module):
    """Three classes with probabilities (p, (1 - p) / 2, (1 - p) / 2) under the noise of
    sigma: the class is the bucket of Phi(first pixel / sigma) (images x = 0)."""

    def __init__(self, p: float, sigma: float) -> None:
        super().__init__()
        self.cuts = torch.tensor([p, (1 + p) / 2])
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.special.ndtr(x.flatten(1)[:, 0] / self.sigma)
        return nn.functional.one_hot(torch.bucketize(u, self.cuts), 3).float()


@pytest.mark.parametrize("p_a", [0.42, 0.5, 0.53, 0.56])
def test_early_abstain_gives_the_full_runs_answer_on_the_same_stream(p_a):
    # Around p = 1/2 many runs abstain, some certify: the shortcut may only save samples.
    smooth = Smooth(Buckets(p_a, 0.5), 3, 0.5)
    x = torch.zeros(1, 1, 2)
    n0, n, batch = 11, 2000, 100
    k_star = certifying_votes(n, 0.01)
    saved, statuses = 0, set()
    for seed in range(30):
        full, early = (
            smooth.certificate(x, n0, n, 0.01, batch, torch.Generator().manual_seed(seed),
                               early_abstain=flag)
            for flag in (False, True)
        )
        assert (early.prediction, early.radius) == (full.prediction, full.radius)
        assert full.samples == n0 + n
        statuses.add(early.status)
        if early.samples < n0 + n:
            saved += 1
            assert early.status == "abstain" and (early.samples - n0) % batch == 0
            # It cannot stop before the failures alone exceed n - k*.
            assert early.samples - n0 > n - k_star
    if p_a < 0.5:
        assert saved == 30  # all abstain, every one stopped early
    if p_a > 0.55:
        assert "certified" in statuses


def test_certify_is_the_certificate_and_skip_wrong_skips_the_estimation():
    smooth = Smooth(Constant(3), num_classes=10, sigma=0.5)
    x = torch.zeros(1, 2, 2)
    full = smooth.certificate(x, 10, 1000, 0.001, 100)
    assert full.status == "certified" and full.samples == 1010
    assert smooth.certify(x, 10, 1000, 0.001, 100) == (full.prediction, full.radius)
    assert full.selected == 3 and full.n_label == -1  # no label given: no n_label
    # A label only adds its estimation votes (here all of them: the selection is the label).
    assert smooth.certificate(x, 10, 1000, 0.001, 100, label=3) == full._replace(n_label=1000)
    assert smooth.certificate(x, 10, 1000, 0.001, 100, label=4) == (-1, 0.0, 10, "skipped", -1,
                                                                    -1, 3, -1)
    # Without the shortcut the estimation runs for a wrong selection too, and counts the label.
    kept = smooth.certificate(x, 10, 1000, 0.001, 100, label=4, skip_wrong=False)
    assert kept == full._replace(n_label=0)
    # The six fields of 0.4 still construct a certificate by position.
    assert Certificate(-1, 0.0, 10, "skipped") == (-1, 0.0, 10, "skipped", -1, -1, -1, -1)
    with pytest.raises(SmoothmixError, match="label 10 is not a class"):
        smooth.certificate(x, 10, 1000, 0.001, 100, label=10)


def test_a_seeded_result_depends_only_on_the_execution():
    # Noise is drawn one fixed chunk at a time and the chunk is a recorded setting (never a
    # timing), so fresh objects with the same execution agree exactly: what makes sharded
    # and single-process runs agree row for row.
    model, x, _ = linear_case(0.6, 0.5)
    for chunk in (None, 1000, 333, 64):
        answers = {
            Smooth(model, 2, 0.5, chunk_size=chunk).certificate(
                x, 10, 3000, 0.01, 1000, generator=torch.Generator().manual_seed(3))
            for _ in range(3)
        }
        assert len(answers) == 1


def test_same_generator_seed_gives_same_answer():
    model, x, _ = linear_case(0.7, 0.5)
    smooth = Smooth(model, 2, 0.5)
    runs = [smooth.certify(x, 10, 500, 0.01, 128, generator=torch.Generator().manual_seed(5))
            for _ in range(2)]
    assert runs[0] == runs[1] and runs[0][0] == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sigma=0.0), "sigma must be a positive"),
        (dict(sigma=-0.5), "sigma must be a positive"),
        (dict(sigma=float("nan")), "sigma must be a positive"),
        (dict(alpha=0.0), r"alpha must lie in \(0, 1\)"),
        (dict(alpha=1.0), r"alpha must lie in \(0, 1\)"),
        (dict(n0=0), "n0 must be an integer >= 1"),
        (dict(n=0), "n=0 can never certify at alpha=0.001: use n >= 10"),
        (dict(n=5), "n=5 can never certify at alpha=0.001: use n >= 10"),
        (dict(n=1e5), "n must be an integer"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(x=torch.zeros(4, 1, 2, 2)), "a batch"),
        (dict(x=torch.zeros(2, 2)), "C x H x W"),
        (dict(x=torch.zeros(1, 2, 2, dtype=torch.uint8)), "float"),
        (dict(x=[[0.0]]), "torch.Tensor"),
        (dict(x=torch.full((1, 2, 2), math.nan)), "NaN or infinite"),
        (dict(x=torch.tensor([[[0.0, math.inf], [0.0, 0.0]]])), "NaN or infinite"),
        (dict(x=torch.full((1, 2, 2), 255.0)), r"\[0, 1\].*0\.\.255\? divide by 255"),
        (dict(x=torch.full((1, 2, 2), -0.4)), r"in \[0, 1\] .*got pixels in \[-0.4, -0.4\]"),
        (dict(num_classes=3), "logits of shape"),
        (dict(num_classes=1), "num_classes must be an integer >= 2"),
    ],
)
def test_bad_input_gives_one_line_smoothmix_error(kwargs, message):
    args = dict(sigma=0.5, alpha=0.001, n0=10, n=100, batch_size=50, x=torch.zeros(1, 2, 2),
                num_classes=2)
    args.update(kwargs)
    with pytest.raises(SmoothmixError, match=message) as info:
        smooth = Smooth(Constant(0, 2), args["num_classes"], args["sigma"])
        smooth.certify(args["x"], args["n0"], args["n"], args["alpha"], args["batch_size"])
    assert "\n" not in str(info.value)


def test_a_resolved_execution_with_a_request_beside_it_is_refused():
    # The execution fixes precision, layout, chunk and compile; a request beside it used to
    # be ignored without a word.
    from smoothmix.execution import resolve_execution

    model = Linear2(0.0)
    ex = resolve_execution(model, torch.device("cpu"), 100)
    Smooth(model, 2, 0.5, execution=ex)  # alone: fine
    with pytest.raises(SmoothmixError, match="drop precision, chunk_size"):
        Smooth(model, 2, 0.5, execution=ex, precision="bf16", chunk_size=10)


def test_a_nan_image_is_refused_not_certified():
    # NaN logits vote argmax = 0 on every draw: without the check this "certifies" class 0
    # at the largest radius the budget allows.
    smooth = Smooth(Linear2(0.0), num_classes=2, sigma=0.5)
    with pytest.raises(SmoothmixError, match="NaN"):
        smooth.certify(torch.full((1, 1, 2), math.nan), n0=10, n=100, alpha=0.001,
                       batch_size=100)


def test_certified_radius_and_bound_validate_their_inputs():
    with pytest.raises(SmoothmixError, match="certifies nothing"):
        certified_radius(0.4, 0.5)
    with pytest.raises(SmoothmixError):
        clopper_pearson_lower(5, 4, 0.01)
    assert certified_radius(0.5, 1.0) == 0.0
    assert certified_radius(norm.cdf(1.0), 0.5) == pytest.approx(0.5)
    assert math.isinf(certified_radius(1.0, 0.5))


def test_predict_abstains_when_rejected_draws_outnumber_the_top_class(monkeypatch):
    """Rejected draws (the grid sampler's) side with the runner-up, so n_b can exceed n_a;
    a two-sided test that is then significant must not return the top class."""
    import torch

    from smoothmix.votes import Votes

    smooth = Smooth(torch.nn.Linear(2, 2), 2, 0.5)
    votes = Votes(torch.tensor([30, 0]), torch.tensor(200), 230)
    monkeypatch.setattr(smooth, "votes", lambda *a, **k: votes)
    assert smooth.predict(torch.zeros(1, 1, 2), n=230, alpha=0.001, batch_size=100) == -1
    votes = Votes(torch.tensor([200, 0]), torch.tensor(30), 230)  # the top class clearly wins
    assert smooth.predict(torch.zeros(1, 1, 2), n=230, alpha=0.001, batch_size=100) == 0
