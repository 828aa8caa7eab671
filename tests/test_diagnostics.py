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
