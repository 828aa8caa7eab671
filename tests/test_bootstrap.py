"""The paired bootstrap of two runs on the same images (smoothmix.bootstrap)."""

import dataclasses

import numpy as np
import pytest

from smoothmix.analysis import CertificationResults
from smoothmix.bootstrap import paired_bootstrap
from smoothmix.errors import SmoothmixError


def results(radius, correct, idx=None, path="run.tsv"):
    n = len(radius)
    idx = np.arange(n) if idx is None else np.asarray(idx)
    label = np.zeros(n, dtype=int)
    predict = np.where(np.asarray(correct), 0, 1)
    return CertificationResults(path=path, idx=idx, label=label, predict=predict,
                                radius=np.asarray(radius, dtype=float), time=np.zeros(n))


def test_identical_runs_differ_by_exactly_zero():
    rng = np.random.default_rng(1)
    a = results(rng.uniform(0, 2, 300), rng.random(300) < 0.9)
    d = paired_bootstrap(a, a, [0.0, 0.5, 1.0], resamples=500)
    assert d.acr == 0 and d.acr_interval == (0.0, 0.0)
    assert d.certified == (0.0, 0.0, 0.0) and all(i == (0.0, 0.0) for i in d.certified_intervals)
    assert not d.acr_excludes_zero()


def test_a_constant_shift_is_recovered_exactly_and_row_order_does_not_matter():
    rng = np.random.default_rng(2)
    radius = rng.uniform(0.5, 2, 200)
    a, b = results(radius + 0.1, np.ones(200, bool)), results(radius, np.ones(200, bool))
    shuffled = np.random.default_rng(3).permutation(200)
    b = dataclasses.replace(b, idx=b.idx[shuffled], label=b.label[shuffled],
                            predict=b.predict[shuffled], radius=b.radius[shuffled])
    d = paired_bootstrap(a, b, [0.0], resamples=300)
    assert d.acr == pytest.approx(0.1) and d.acr_interval == pytest.approx((0.1, 0.1))
    assert d.acr_excludes_zero()


def test_interval_covers_the_truth_at_about_its_level():
    """Two independent models whose per-image radii differ by noise of mean 0.05: the 90%
    interval of the ACR difference covers 0.05 in about 90% of repeated test sets."""
    covered, trials = 0, 200
    for t in range(trials):
        rng = np.random.default_rng(100 + t)
        base = rng.uniform(0, 2, 400)
        a = results(base + 0.05 + rng.normal(0, 0.3, 400), np.ones(400, bool))
        b = results(base, np.ones(400, bool))
        lo, hi = paired_bootstrap(a, b, [], resamples=400, level=0.9, seed=t).acr_interval
        covered += lo <= 0.05 <= hi
    assert 0.84 <= covered / trials <= 0.96


def test_pairing_is_what_narrows_the_interval():
    """Radii that vary a lot between images but little between the two runs: the paired
    interval is much narrower than the spread of either ACR alone."""
    rng = np.random.default_rng(4)
    base = rng.uniform(0, 3, 500)
    a = results(base + rng.normal(0, 0.01, 500), np.ones(500, bool))
    b = results(base, np.ones(500, bool))
    lo, hi = paired_bootstrap(a, b, [], resamples=1000).acr_interval
    assert hi - lo < 0.01 < 2 * 1.96 * base.std() / np.sqrt(500)


def test_different_images_or_bad_options_are_one_line_errors():
    a = results([1.0, 1.0], [True, True])
    b = results([1.0, 1.0], [True, True], idx=[0, 2])
    with pytest.raises(SmoothmixError, match="different images"):
        paired_bootstrap(a, b, [0.0])
    with pytest.raises(SmoothmixError, match="level"):
        paired_bootstrap(a, a, [0.0], level=1.0)
    with pytest.raises(SmoothmixError, match="resamples"):
        paired_bootstrap(a, a, [0.0], resamples=0)
