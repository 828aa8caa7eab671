"""Pinned random streams: the votes, certificates and ``--radius`` decisions that the code
of commit c61b9fc computes for a small seeded model. Resumed files must continue with the
rows the old code would have written, so any refactoring of the vote counter, the noise
samplers or the pool must reproduce these numbers exactly (on CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothmix.core import Smooth
from smoothmix.grid import GridNoise
from smoothmix.sequences import PoolItem, make_procedure, run_pool

EXPECTED = {'counts_channels_last': [[62, 525, 13, 0], 600],
 'cert_channels_last': [1, 0.3379060806395184, 320, 'certified', 248, 34],
 'counts_contiguous': [[62, 525, 13, 0], 600],
 'cert_contiguous': [1, 0.3379060806395184, 320, 'certified', 248, 34],
 'counts_grid': [[71, 514, 15, 0], 600],
 'cert_grid': [1, 0.31469756134024257, 320, 'certified', 244, 39],
 'counts_chunk7': [[62, 525, 13, 0], 600],
 'cert_chunk7': [1, 0.3379060806395184, 320, 'certified', 248, 34],
 'counts_grid7': [[74, 503, 23, 0], 600],
 'cert_grid7': [1, 0.34385600002825434, 320, 'certified', 249, 41],
 'cert_abstain': [[-1, 0.0, 1930, 'abstain', 928, 508],
                  [-1, 0.0, 1418, 'abstain', 434, 670],
                  [-1, 0.0, 1418, 'abstain', 396, 665]],
 'cert_skipped': [-1, 0.0, 10, 'skipped', -1, -1],
 'predict': [1, 1, 1, 1],
 'pool_kt_None': [[0, ['not-certified', 'not-certified', 'not-certified'], [20, 16, 16]],
                  [1, ['certified', 'certified', 'undecided'], [73, 109, 410]],
                  [0, ['not-certified', 'not-certified', 'not-certified'], [32, 25, 16]],
                  [1, ['certified', 'certified', 'undecided'], [89, 109, 410]],
                  [0, ['not-certified', 'not-certified', 'not-certified'], [25, 20, 16]]],
 'pool_union_None': [[0, ['not-certified', 'not-certified', 'not-certified'], [25, 16, 16]],
                     [1, ['certified', 'certified', 'undecided'], [89, 165, 410]],
                     [0, ['not-certified', 'not-certified', 'not-certified'], [40, 16, 16]],
                     [1, ['certified', 'certified', 'undecided'], [109, 165, 410]],
                     [0, ['not-certified', 'not-certified', 'not-certified'], [32, 25, 16]]],
 'pool_staged_None': [[0, ['not-certified', 'not-certified', 'not-certified'], [39, 39, 39]],
                      [1, ['certified', 'certified', 'undecided'], [49, 410, 410]],
                      [0, ['not-certified', 'not-certified', 'not-certified'], [39, 39, 39]],
                      [1, ['certified', 'certified', 'certified'], [410, 410, 410]],
                      [0, ['not-certified', 'not-certified', 'not-certified'], [39, 39, 39]]],
 'pool_kt_255': [[0, ['not-certified', 'not-certified', 'not-certified'], [32, 16, 16]],
                 [1, ['certified', 'certified', 'undecided'], [42, 50, 410]],
                 [0, ['not-certified', 'not-certified', 'not-certified'], [25, 20, 16]],
                 [1, ['certified', 'certified', 'certified'], [42, 89, 253]],
                 [0, ['not-certified', 'not-certified', 'not-certified'], [16, 16, 16]]],
 'pool_union_255': [[0, ['not-certified', 'not-certified', 'not-certified'], [32, 16, 16]],
                    [1, ['certified', 'certified', 'undecided'], [50, 73, 410]],
                    [0, ['not-certified', 'not-certified', 'not-certified'], [32, 25, 16]],
                    [1, ['certified', 'certified', 'certified'], [50, 89, 253]],
                    [0, ['not-certified', 'not-certified', 'not-certified'], [16, 16, 16]]],
 'pool_staged_255': [[0, ['not-certified', 'not-certified', 'not-certified'], [39, 39, 39]],
                     [1, ['certified', 'certified', 'certified'], [49, 49, 410]],
                     [0, ['not-certified', 'not-certified', 'not-certified'], [39, 39, 39]],
                     [1, ['certified', 'certified', 'certified'], [49, 49, 410]],
                     [0, ['not-certified', 'not-certified', 'not-certified'], [39, 39, 39]]]}

# From 0.5 a certificate also says which class the n0 step selected and how many estimation
# votes the label got (with label=L, skip_wrong=False): the streams above are unchanged, these
# two fields come from the same draws. [selected, n_label] per case.
EXPECTED_SELECTED = {"channels_last": [1, 18], "contiguous": [1, 18], "grid": [1, 17],
                     "chunk7": [1, 18], "grid7": [1, 10],
                     "abstain": [[1, 484], [2, 670], [2, 396]],  # label = the image's index
                     "skipped": [1, -1]}

SETTINGS = {"channels_last": {}, "contiguous": {"layout": "contiguous"}, "grid": {"grid": 255},
            "chunk7": {"chunk_size": 7, "layout": "contiguous"},
            "grid7": {"grid": 255, "chunk_size": 7}}


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()


def image(i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randint(0, 256, (1, 8, 8), generator=g).float().div(255)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_sample_counts_and_certificates_are_pinned(name):
    smooth = Smooth(net(), 3, 0.5, **SETTINGS[name])
    votes = smooth.votes(image(0), 600, 100, torch.Generator().manual_seed(1))
    counts = [*votes.counts.tolist(), int(votes.rejected)]  # the rejected draws last
    assert [counts, votes.drawn] == EXPECTED[f"counts_{name}"]
    cert = smooth.certificate(image(1), 20, 300, 0.001, 64, torch.Generator().manual_seed(2))
    assert list(cert[:6]) == EXPECTED[f"cert_{name}"]
    assert (cert.selected, cert.n_label) == (EXPECTED_SELECTED[name][0], -1)  # no label given
    labelled = smooth.certificate(image(1), 20, 300, 0.001, 64,
                                  torch.Generator().manual_seed(2), label=0, skip_wrong=False)
    assert list(labelled[:6]) == EXPECTED[f"cert_{name}"]  # the label changes no draw
    assert [labelled.selected, labelled.n_label] == EXPECTED_SELECTED[name]


def test_early_abstain_skip_and_predict_are_pinned():
    smooth = Smooth(net(), 3, 3.0)
    got = [smooth.certificate(image(i), 10, 2000, 0.001, 128, torch.Generator().manual_seed(3),
                              label=i, skip_wrong=False) for i in range(3)]
    assert [list(c[:6]) for c in got] == EXPECTED["cert_abstain"]
    assert [[c.selected, c.n_label] for c in got] == EXPECTED_SELECTED["abstain"]
    skipped = smooth.certificate(image(0), 10, 2000, 0.001, 128,
                                 torch.Generator().manual_seed(3), label=2)
    assert list(skipped[:6]) == EXPECTED["cert_skipped"]
    assert [skipped.selected, skipped.n_label] == EXPECTED_SELECTED["skipped"]
    predictions = [Smooth(net(), 3, 0.5).predict(image(i), 200, 0.01, 50,
                                                 torch.Generator().manual_seed(i))
                   for i in range(4)]
    assert predictions == EXPECTED["predict"]


@pytest.mark.parametrize("grid", [None, 255])
@pytest.mark.parametrize("sequence", ["kt", "union", "staged"])
def test_pool_decisions_are_pinned(sequence, grid):
    noise = GridNoise(0.5, grid) if grid else None
    items = [PoolItem(i, image(i), torch.Generator().manual_seed(10 + i),
                      make_procedure(sequence, [0.0, 0.1, 0.3], 0.5, 0.01, 400,
                                     None if i % 2 else 0, 10), noise)
             for i in range(5)]
    done = {}
    run_pool(net(), items, 0.5, 3, 37, lambda it: done.__setitem__(
        it.key, [it.procedure.cls, it.procedure.decisions, it.procedure.samples]))
    assert [done[i] for i in range(5)] == EXPECTED[f"pool_{sequence}_{grid}"]
