"""`smoothmix demo` end to end on a tiny budget, and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoothmix.analysis import read_results
from smoothmix.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reruns_from_its_files(tmp_path: Path, capsys) -> None:
    args = ["demo", "--outdir", str(tmp_path / "demo"), "--train-subset", "64", "--epochs", "1",
            "--skip", "2500", "--n", "200", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| gaussian | 4 |" in out and "| smoothmix | 4 |" in out
    assert "Budget: reduced" in out and "64 images per step" in out
    demo = tmp_path / "demo"
    state = json.loads((demo / "reproduce.json").read_text())
    assert state["experiment"] == "mnist-0.50"  # the demo is a budget of reproduce
    assert state["budget"] == {"epochs": 1, "train_subset": 64, "batch_size": 64,
                               "warmup": 1, "deferred": None, "skip": 2500, "n": 200,
                               "max_idx": None, "targets_n": None, "precision": None,
                               "bound": None, "decide_radii": None, "decide_skip": None}
    for name in ("gaussian", "smoothmix"):
        assert (demo / name / "checkpoint.pth.tar").is_file()
        results = read_results(demo / f"certify_{name}.tsv")
        assert list(results.idx) == [0, 2500, 5000, 7500]
    assert (demo / "curves.png").stat().st_size > 0
    table = (demo / "table.md").read_text()

    # A rerun finds everything done: same table, nothing retrained or recertified.
    stamp = (demo / "certify_gaussian.tsv").stat().st_mtime_ns
    assert main(args) == 0
    assert (demo / "table.md").read_text() == table
    assert (demo / "certify_gaussian.tsv").stat().st_mtime_ns == stamp


def test_demo_rejects_bad_budget(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--outdir", str(tmp_path / "d"), "--sigma", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sigma" in err
