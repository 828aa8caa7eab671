"""The distribution of p_y beside ACR, and the paper's curves beside ours (issue 27 item 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from smoothmix import plots
from smoothmix.analysis import read_results
from smoothmix.cli import main
from smoothmix.core import clopper_pearson_lower
from smoothmix.errors import SmoothmixError
from smoothmix.label_probability import format_p_label, p_label, require_p_label
from smoothmix.plots import paper_curves, plot_certified_accuracy

FIXTURES = Path(__file__).parent / "fixtures" / "results"
HEADER = ("idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples\tstatus\tn_a\tn_b\tbound\t"
          "selected\tn_label\n")
# n0 = 10, N = 200: p_y = n_label / draws is 1.0, 0.995, 0.95, 0.6 (an abstain the early
# stop ended after 100 draws: 60/100) and 0.3 (selection chose class 0, the label is 1).
ROWS = [(0, 1, 1, 1.2, 200, 210, "certified", 200, 0, 1, 200),
        (1, 1, 1, 0.9, 199, 210, "certified", 199, 1, 1, 199),
        (2, 0, 0, 0.5, 190, 210, "certified", 190, 10, 0, 190),
        (3, 1, -1, 0.0, 60, 110, "abstain", 60, 40, 1, 60),
        (4, 1, -1, 0.0, 60, 210, "abstain", 140, 60, 0, 60)]


def write_file(path: Path, rows=ROWS, **settings) -> Path:
    """A certify file of the 0.5 format, with its companion."""
    path.write_text(HEADER + "".join(
        f"{i}\t{y}\t{p}\t{r}\t{int(p == y)}\t0.1\t{s}\t{st}\t{a}\t{b}\tcohen\t{sel}\t{k}\n"
        for i, y, p, r, k, s, st, a, b, sel, k in rows))
    record = {"smoothmix": "0.5.0", "kind": "certify", "settings": {
        "sigma": 0.5, "n0": 10, "n": 200, "alpha": 0.01, "skip": 1, "max_idx": -1, "seed": 0,
        "num_examples": len(rows), "precision": "fp32", "shard": "0/1", **settings},
        "info": {}}
    Path(f"{path}.json").write_text(json.dumps(record))
    return path


def old_files(tmp_path) -> list[Path]:
    """A 0.4.0 file and a reference-code file: neither has n_label."""
    old = tmp_path / "old.tsv"
    shutil.copy(FIXTURES / "v0.4.0" / "certify.tsv", old)
    shutil.copy(FIXTURES / "v0.4.0" / "certify.tsv.json", f"{old}.json")
    ref = tmp_path / "reference.tsv"
    ref.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t1.23\t1\t0:00:14.6\n")
    return [old, ref]


def test_the_distribution_of_p_y_by_hand(tmp_path):
    res = read_results(write_file(tmp_path / "a.tsv"))
    dist = p_label(res)
    assert dist.values.tolist() == [1.0, 0.995, 0.95, 0.6, 0.3]
    assert dist.share_at_least([0.5, 0.9, 0.99, 0.999]).tolist() == [0.8, 0.6, 0.4, 0.2]
    assert dist.quantiles([0.1, 0.25, 0.5]).tolist() == [0.3, 0.6, 0.95]
    x, share = dist.ecdf()
    assert x.tolist() == [0.3, 0.6, 0.95, 0.995, 1.0] and share[-1] == 1.0
    lower = p_label(res, lower=True)
    # Over the planned N = 200 for every row: the stopped row's 60 votes count over 200, not
    # over its 100 draws (the stop depends on the counts; a bound over the draws made would
    # not hold at level alpha).
    assert lower.values.tolist() == [clopper_pearson_lower(k, 200, 0.01)
                                     for k in (200, 199, 190, 60, 60)]
    assert np.all(lower.values < dist.values) and lower.kind == "lower (α=0.01)"
    table = format_p_label([res], labels=["a"], lower=True)
    point_row, lower_row = table.splitlines()[2:4]
    assert point_row == ("| a | point | 5 | 0.7690 | 80.00 | 60.00 | 40.00 | 20.00 | 0.3000 "
                         "| 0.6000 | 0.9500 |")
    assert lower_row.startswith("| a | lower (α=0.01) | 5 |")
    csv = format_p_label([res], "csv", labels=["a"]).splitlines()
    assert csv[0].startswith("name,estimate,images,mean p_y,p_y >= 0.5 (%)")
    assert csv[1].startswith("a,point,5,0.769")


def test_files_without_n_label_are_named_in_one_line_never_skipped(tmp_path, capsys):
    old, ref = old_files(tmp_path)
    new = write_file(tmp_path / "new.tsv")
    skipped = write_file(tmp_path / "skip.tsv", skip_wrong=True)
    results = [read_results(p) for p in (new, old, ref, skipped)]
    with pytest.raises(SmoothmixError) as error:
        require_p_label(results)
    message = str(error.value)
    assert "\n" not in message and "3 of 4 file(s)" in message
    assert str(old) in message and str(ref) in message and str(skipped) in message
    assert str(new) + " " not in message
    # The command: exit 2, one line, and no table printed before it.
    capsys.readouterr()
    assert main(["analyze", str(new), str(old), str(ref), "--p-label"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert str(old) in err and str(ref) in err
    # Without --p-label, the old files analyse as before.
    assert main(["analyze", str(old), str(ref)]) == 0


def test_analyze_reports_p_y_beside_acr_and_plots_its_ecdf(tmp_path, capsys):
    a, b = write_file(tmp_path / "a.tsv"), write_file(tmp_path / "b.tsv", rows=ROWS[:3])
    plot = tmp_path / "curves.png"
    assert main(["analyze", str(a), str(b), "--p-label-lower", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| ACR |" in out and "| name | estimate | images | mean p_y |" in out
    assert "| b | point | 3 | 0.9817 | 100.00 | 100.00 | 66.67 | 33.33 |" in out
    assert out.count("lower (α=0.01)") == 2
    assert plot.is_file() and (tmp_path / "curves-p_label.png").is_file()


def test_paper_curves_match_a_file_by_its_record_or_its_name(tmp_path):
    from smoothmix.reproduce.experiments import get_experiment

    recorded = write_file(tmp_path / "certify_x.tsv", experiment="mnist-0.50", method="smoothmix")
    named = write_file(tmp_path / "certify_gaussian.tsv")
    other = write_file(tmp_path / "macer.tsv", sigma=0.25)
    unknown = write_file(tmp_path / "mine.tsv")
    results = [read_results(p) for p in (recorded, named, other, unknown)]
    # Without --published only the file that records its experiment gets a curve.
    curves, warnings = paper_curves(results)
    published = get_experiment("mnist-0.50").published["smoothmix"]["curve"]
    assert [(c.method, c.beside) for c in curves] == [("smoothmix", 0)]
    assert list(curves[0].radii) == published["radii"] and warnings == []
    curves, warnings = paper_curves(results, experiment="mnist-0.50")
    assert [(c.method, c.beside) for c in curves] == [("smoothmix", 0), ("gaussian", 1)]
    assert any("macer is at sigma 0.25" in w for w in warnings)
    assert any(w.startswith("mine: no published curve in mnist-0.50") for w in warnings)
    with pytest.raises(SmoothmixError, match="unknown experiment 'mnist-9'"):
        paper_curves(results, experiment="mnist-9")


def test_the_paper_curves_are_drawn_dashed_beside_ours(tmp_path, monkeypatch, capsys):
    files = [write_file(tmp_path / f"certify_{m}.tsv") for m in ("gaussian", "smoothmix")]
    figures = []

    def keep(fig, out, dpi):
        figures.append([(line.get_label(), line.get_linestyle(), line.get_color())
                        for line in fig.axes[0].get_lines()])
        return Path(out)

    monkeypatch.setattr(plots, "_save", keep)
    argv = ["analyze", *map(str, files), "--plot", str(tmp_path / "p.png")]
    assert main([*argv, "--published", "mnist-0.50"]) == 0
    lines = {label: (style, color) for label, style, color in figures[-1]}
    assert lines["gaussian (paper)"][0] == "--" and lines["smoothmix (paper)"][0] == "--"
    assert lines["certify_gaussian"][0] == "-"  # ours solid beside the paper's dashes
    assert lines["gaussian (paper)"][1] == lines["certify_gaussian"][1]
    assert main(argv) == 0  # no experiment recorded or named: our curves alone
    assert not any("(paper)" in label for label, _, _ in figures[-1])
    capsys.readouterr()
    assert main([*argv[:-2], "--published", "mnist-0.50"]) == 2  # needs --plot
    assert "give --plot FILE" in capsys.readouterr().err


def test_a_note_on_the_plot(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(plots, "_save",
                        lambda fig, out, dpi: titles.append(fig.axes[0].get_title()) or out)
    res = read_results(write_file(tmp_path / "a.tsv"))
    plot_certified_accuracy([res], tmp_path / "p.png", note="reduced budget")
    assert titles[0].splitlines()[-1] == "reduced budget"
