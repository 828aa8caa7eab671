"""The over-confidence diagnostic (docs/MATH.md §3.7) on models whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from smoothmix.diagnostics import overconfidence, vote_fractions
from smoothmix.errors import SmoothmixError


class Halfspace(nn.Module):
    """Class 1 where w.x + b > 0, else class 0 (logits of a linear binary classifier)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w.flatten() + self.b
        return torch.stack([-s, s], dim=1)


def test_vote_fractions_match_closed_form_for_a_halfspace() -> None:
    torch.manual_seed(0)
    w = torch.zeros(1, 4, 4)
    w[0, 0, 0] = 1.0
    model = Halfspace(w, -0.5)
    sigma = 0.5
    x = torch.full((3, 1, 4, 4), 0.2)
    x[1, 0, 0, 0] = 0.9
    x[2, 0, 0, 0] = 0.5
    probs = vote_fractions(model, x, sigma, 2, n=20_000, chunk=999)
    for b, x0 in enumerate((0.2, 0.9, 0.5)):
        p1 = norm.cdf((x0 - 0.5) / sigma)  # P(w.(x + delta) + b > 0)
        assert probs[b, 1].item() == pytest.approx(p1, abs=0.015)
        assert probs[b].sum().item() == pytest.approx(1.0)


def test_search_moves_the_vote_away_from_the_true_class() -> None:
    torch.manual_seed(0)
    w = torch.zeros(1, 4, 4)
    w[0, 0, 0] = 1.0
    model = Halfspace(w, -0.5)
    x = torch.full((8, 1, 4, 4), 0.5)
    x[:, 0, 0, 0] = 0.0  # true class 0, at distance 0.5 from the boundary
    y = torch.zeros(8, dtype=torch.long)
    rows = overconfidence(model, x, y, sigma=0.25, num_classes=2, step_size=0.25, num_steps=4,
                          n=4000, batch_size=3)
    assert [r.path_length for r in rows] == [0, 0.25, 0.5, 0.75, 1.0]
    for r in rows:
        assert r.mean_distance <= r.path_length + 1e-6
        assert r.true_class + r.max_other_class == pytest.approx(1.0)  # two classes
    # The gradient points along w, so after t steps x[0,0,0] = 0.25 t (clamped to 1).
    for t, r in enumerate(rows):
        x0 = min(1.0, 0.25 * t)
        assert r.mean_distance == pytest.approx(x0, abs=1e-5)
        assert r.true_class == pytest.approx(norm.cdf((0.5 - x0) / 0.25), abs=0.03)
    assert rows[0].true_class > 0.95 and rows[-1].max_other_class > 0.95
    assert not math.isnan(rows[-1].true_class)


def test_bad_input_is_a_clear_error() -> None:
    model = Halfspace(torch.ones(1, 2, 2), 0.0)
    x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(SmoothmixError, match="sigma"):
        overconfidence(model, x, y, sigma=0.0, num_classes=2)
    with pytest.raises(SmoothmixError, match="labels"):
        overconfidence(model, x, y[:1], sigma=0.5, num_classes=2)


def _halfspace_case() -> tuple[Halfspace, torch.Tensor, torch.Tensor]:
    w = torch.zeros(1, 4, 4)
    w[0, 0, 0] = 1.0
    x = torch.full((5, 1, 4, 4), 0.5)
    x[:, 0, 0, 0] = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4])
    return Halfspace(w, -0.5), x, torch.zeros(5, dtype=torch.long)


def test_rows_come_from_the_seed_whatever_the_batch_size_or_global_rng() -> None:
    # Each image draws from its own (seed, idx) stream, as certify's examples do.
    model, x, y = _halfspace_case()
    kw = dict(sigma=0.25, num_classes=2, step_size=0.25, num_steps=2, n=200, progress=False)
    torch.manual_seed(1)
    a = overconfidence(model, x, y, batch_size=2, seed=7, **kw)
    torch.manual_seed(2)
    b = overconfidence(model, x, y, batch_size=5, seed=7, **kw)
    # Equal votes; the means differ at most in float64 rounding (summed in other groups).
    assert [list(r.__dict__.values()) for r in a] == [
        pytest.approx(list(r.__dict__.values()), rel=1e-9, abs=1e-9) for r in b]
    assert overconfidence(model, x, y, seed=8, **kw) != a
    # Dataset indices name the streams: the same image at another index draws other noise.
    assert overconfidence(model, x, y, seed=7, indices=[10, 11, 12, 13, 14], **kw) != a


def test_the_diagnostic_restores_the_model_mode() -> None:
    model, x, y = _halfspace_case()
    model.train()
    overconfidence(model, x, y, sigma=0.25, num_classes=2, num_steps=1, n=20, progress=False)
    assert model.training
    model.eval()
    overconfidence(model, x, y, sigma=0.25, num_classes=2, num_steps=1, n=20, progress=False)
    assert not model.training


def test_votes_are_counted_by_the_one_vote_counter() -> None:
    # The vote counter's own check names a classifier with the wrong number of classes
    # (the diagnostic's former one-hot count failed with a torch error).
    class ThreeLogits(Halfspace):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = super().forward(x)
            return torch.cat([s, s[:, :1]], dim=1)

    model, x, y = _halfspace_case()
    bad = ThreeLogits(model.w.detach(), -0.5)
    with pytest.raises(SmoothmixError, match="base classifier returned logits of shape"):
        overconfidence(bad, x, y, sigma=0.25, num_classes=2, num_steps=1, n=20,
                       progress=False)
    gens = [torch.Generator().manual_seed(3) for _ in range(len(x))]
    again = [torch.Generator().manual_seed(3) for _ in range(len(x))]
    assert torch.equal(vote_fractions(model, x, 0.25, 2, 50, generators=gens),
                       vote_fractions(model, x, 0.25, 2, 50, generators=again))


def test_grid_noise_votes_at_the_snapped_point() -> None:
    from smoothmix.noise import GridGaussianNoise

    model, x, y = _halfspace_case()
    x = (x * 255).round() / 255
    rows = overconfidence(model, x, y, GridGaussianNoise(0.25), 2, step_size=0.3, num_steps=2,
                          n=400, progress=False)
    for r in rows:
        assert r.true_class + r.max_other_class == pytest.approx(1.0)
        # The voted point is the search's point rounded to the grid (<= half a step per pixel).
        assert r.mean_distance <= r.path_length + 4 * 0.5 / 255
