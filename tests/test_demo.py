"""`smoothmix demo` end to end on a tiny budget, and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoothmix.analysis import read_results
from smoothmix.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reruns_from_its_files(tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    from smoothmix import plots

    drawn = []
    plot = plots.plot_certified_accuracy
    monkeypatch.setattr(plots, "plot_certified_accuracy",
                        lambda *a, **kw: drawn.append(kw) or plot(*a, **kw))
    args = ["demo", "--outdir", str(tmp_path / "demo"), "--train-subset", "64", "--epochs", "1",
            "--skip", "2500", "--n", "200", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # The terminal's table: ours and the paper's, one value per cell, narrow (issue 27 item 9)
    assert "on 4 images" in out and "\ngaussian   ours  " in out and "\n           paper" in out
    start = out.index("\n\n", out.index("ours on 4 images")) + 2
    table = out[start:out.index("\nsmoothmix reproduce", start)]
    assert len(table.splitlines()) == 5  # the head, then ours and the paper's per method
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "(" not in table  # no (published, difference) cells
    # The expected time on this machine, from the probe, first; the time taken at the end.
    assert out.startswith("smoothmix demo: expected time on this machine: about ")
    assert "per training batch of 64" in out and "smoothmix demo: done in " in out
    # The budget paragraph once (the wide table in table.md repeats it), and on the plot.
    assert out.count("Budget: reduced") == 1 and "64 images per step" in out
    assert drawn[-1]["note"] == "reduced budget, not the paper's: 1 epoch, N=200"
    assert {c.method for c in drawn[-1]["published"]} == {"gaussian", "smoothmix"}
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
    assert "Budget: reduced" in table and "| gaussian | 4 |" in table  # the wide one

    # A rerun finds everything done: same table, nothing retrained or recertified.
    stamp = (demo / "certify_gaussian.tsv").stat().st_mtime_ns
    assert main(args) == 0
    assert (demo / "table.md").read_text() == table
    assert (demo / "certify_gaussian.tsv").stat().st_mtime_ns == stamp


def test_demo_rejects_bad_budget(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--outdir", str(tmp_path / "d"), "--sigma", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sigma" in err


def _row(method: str, exp, same: bool = False) -> dict:
    pub = exp.published[method]
    return {"method": method, "examples": 100, "acr": 0.61,
            "certified_accuracy": [97.0, 93.0, 85.0, 70.0, 50.0, 20.0, 0.0, 0.0],
            "published_acr": pub["acr"], "published_certified_accuracy": pub["certified"],
            "published_same_images": same, "published_same_images_acr": None,
            "published_same_images_certified_accuracy": None,
            "published_same_images_acr_range": None,
            "published_same_images_certified_range": None,
            "published_certified_range": None, "published_note": None}


def test_the_terminal_gets_a_narrow_table_with_one_value_per_cell() -> None:
    # Issue 27 item 9: cells of three numbers in rows of 320-380 characters, and a
    # difference (-69.82) at a radius beyond the cap.
    from smoothmix.reproduce import get_experiment
    from smoothmix.reproduce.report import TERMINAL_WIDTH, format_terminal

    exp = get_experiment("mnist-0.50")
    text = format_terminal(exp, [_row("gaussian", exp), _row("smoothmix", exp)], 1.03,
                           "demo/table.md")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= TERMINAL_WIDTH
    table = lines[lines.index("") + 1:]
    assert table[0].split() == ["ACR", "r=0", "r=0.25", "r=0.5", "r=0.75", "r=1", "r=1.25†",
                                "r=1.5†", "r=1.75†"]
    assert table[1].split() == ["gaussian", "ours", "0.610", "97.00", "93.00", "85.00",
                                "70.00", "50.00", "20.00", "0.00", "0.00"]
    assert table[4].split() == ["paper*", "1.693", "98.64", "97.96", "96.98", "95.20",
                                "92.63", "88.45", "81.85", "69.82"]
    assert "demo/table.md" in text and "full test set" in text and "cap 1.030" in text
    assert "Budget" not in text  # said once, at the start of the run


def test_the_wide_table_gives_no_difference_beyond_the_cap() -> None:
    from smoothmix.reproduce import Budget, _format, get_experiment

    exp = get_experiment("mnist-0.50")
    table = _format(exp, [_row("smoothmix", exp)], Budget(n=10_000).normalised(exp), 1.03)
    row = next(line for line in table.splitlines() if line.startswith("| smoothmix"))
    assert "| 50.00 (92.63*, -42.63) |" in row  # r = 1 <= cap: ours, paper, difference
    assert row.endswith("| 20.00 (88.45*) | 0.00 (81.85*) | 0.00 (69.82*) |")
    assert "-69.82" not in table


def test_a_reduced_budget_is_marked_on_the_plot() -> None:
    from smoothmix.reproduce import Budget
    from smoothmix.reproduce.report import _plot_note

    assert _plot_note(Budget()) is None
    assert _plot_note(Budget(epochs=3, n=10_000)) == \
        "reduced budget, not the paper's: 3 epochs, N=10,000"
    assert _plot_note(Budget(skip=20)) == "reduced budget, not the paper's"


def test_the_expected_time_is_extrapolated_from_the_probe() -> None:
    # Issue 27 item 7: a constant ("about 6 minutes") was 62 minutes on shared cores.
    from smoothmix.demo import DemoBudget, ProbeTimings, describe_estimate, estimate_seconds

    timings = ProbeTimings({"gaussian": 0.01, "smoothmix": 0.1}, vote_s=1e-5)
    budget = DemoBudget()  # 3 epochs of 20,000 images in batches of 64; 100 images, N=10,000
    batches = 3 * 313
    votes = 3 * 1000 + 100 * (100 + 10_000)  # per-epoch noisy accuracy, then CERTIFY
    expected = batches * (0.01 + 0.1) + 2 * votes * 1e-5
    assert estimate_seconds(budget, timings) == pytest.approx(expected)
    assert expected == pytest.approx(123.55)
    # Twice the images and N: the certification part doubles (and more for N), training not.
    bigger = DemoBudget(certify_skip=50, n=20_000)
    assert estimate_seconds(bigger, timings) == pytest.approx(
        batches * 0.11 + 2 * (3000 + 200 * 20_100) * 1e-5)
    line = describe_estimate(budget, timings)
    assert line.startswith("expected time on this machine: about 2 min for a fresh run")
    assert "gaussian 0.01 s, smoothmix 0.1 s per training batch of 64; 10 µs per noisy" in line
    slow = ProbeTimings({"gaussian": 1.0, "smoothmix": 10.0}, vote_s=1e-3)
    assert "about 3.4 h" in describe_estimate(budget, slow)  # 939 x 11 s + 2 x 2,026 s
    assert "1 ms per noisy copy" in describe_estimate(budget, slow)


def test_the_probe_times_each_call_after_a_warm_up() -> None:
    from smoothmix.demo import _timed

    calls, ticks = [], iter([10.0, 16.0])
    assert _timed(lambda: calls.append(1), 3, lambda: next(ticks)) == 2.0
    assert len(calls) == 4  # one untimed warm-up, then 3 timed
