"""Reading result files (ours and the reference code's), metrics, tables and the plot."""

from __future__ import annotations

import numpy as np
import pytest

from smoothmix.analysis import (
    default_radii,
    format_table,
    parse_time,
    plot_certified_accuracy,
    read_results,
)
from smoothmix.errors import SmoothmixError

# Reference certify.py output: radius "{:.3}", time str(timedelta).
REFERENCE = """idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t7\t7\t1.23\t1\t0:00:14.612345
20\t2\t2\t0.5\t1\t0:00:14.6
40\t1\t-1\t0.0\t0\t0:01:02.5
60\t0\t3\t2.1\t0\t1 day, 0:00:01.5
80\t4\t4\t0.25\t1\t0:00:13.9
"""

# smoothmix output: full-precision radius, seconds.
OURS = """idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t7\t7\t1.2345678901234567\t1\t14.6123
1\t2\t2\t0.7499999999999999\t1\t14.6000
2\t1\t1\t0.75\t1\t14.6000
3\t0\t-1\t0.0\t0\t15.0000
"""


@pytest.fixture
def files(tmp_path):
    ref = tmp_path / "reference.tsv"
    ref.write_text(REFERENCE)
    ours = tmp_path / "ours.tsv"
    ours.write_text(OURS)
    return ref, ours


def test_reads_reference_files_and_computes_metrics_by_hand(files):
    res = read_results(files[0])
    assert len(res) == 5
    assert res.time.tolist() == pytest.approx([14.612345, 14.6, 62.5, 86401.5, 13.9])
    # correct: idx 0 (1.23), 20 (0.5), 80 (0.25); abstain and wrong class do not count,
    # even with a radius (idx 60 has 2.1 for a wrong class).
    acc = res.certified_accuracy([0.0, 0.25, 0.5, 1.0, 1.23, 1.24, 2.0])
    assert acc.tolist() == pytest.approx([3 / 5, 3 / 5, 2 / 5, 1 / 5, 1 / 5, 0, 0])
    assert res.acr() == pytest.approx((1.23 + 0.5 + 0.25) / 5)


def test_reads_our_files_at_full_precision(files):
    res = read_results(files[1])
    # 0.7499999999999999 < 0.75: a 3-digit file would have put it at >= 0.75.
    assert res.certified_accuracy([0.75]).tolist() == [0.5]
    assert res.acr() == pytest.approx((1.2345678901234567 + 0.7499999999999999 + 0.75) / 4)


def test_our_runner_output_agrees_with_a_pandas_reading(tmp_path):
    pandas = pytest.importorskip("pandas")
    import torch
    from torch import nn

    from smoothmix.certification import certify_dataset

    class Data:
        num_classes = 2
        x = torch.linspace(-1, 1, 8).reshape(8, 1, 1, 1)

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return self.x[i], int(i % 2)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    out = certify_dataset(model, Data(), 0.5, tmp_path / "c.tsv", n0=10, n=500, alpha=0.01,
                          batch_size=100, progress=False)
    frame = pandas.read_csv(out, sep="\t")
    expected_acr = float((frame["radius"] * (frame["predict"] == frame["label"])).mean())
    assert read_results(out).acr() == pytest.approx(expected_acr, rel=1e-15)


@pytest.mark.parametrize("text, seconds", [
    ("12.5", 12.5), ("0:00:14.6", 14.6), ("1:02:03", 3723.0), ("2 days, 0:00:01", 172801.0),
])
def test_parse_time(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


def test_markdown_table_marks_best_per_column_including_ties(files):
    results = [read_results(f) for f in files]
    table = format_table(results, [0.0, 0.5, 1.0], "markdown", labels=["ref", "ours"])
    lines = table.splitlines()
    assert lines[0] == "|  | examples | ACR | r = 0 | r = 0.5 | r = 1 |"
    # ACR: ref 0.396, ours 0.684 -> ours bold. r=0: 60.00 vs 75.00. r=1: 20.00 vs 25.00.
    assert lines[2] == "| ref | 5 | 0.396 | 60.00 | 40.00 | 20.00 |"
    assert lines[3] == "| ours | 4 | **0.684** | **75.00** | **75.00** | **25.00** |"
    tie = format_table([results[0], results[0]], [0.0], "markdown")
    assert tie.count("**60.00**") == 2


def test_latex_and_csv_tables(files):
    results = [read_results(f) for f in files]
    latex = format_table(results, [0.25], "latex", labels=["a_b", "c"])
    assert r"\begin{tabular}{lrrr}" in latex
    assert r"a\_b & 5 & 0.396 & 60.00 \\" in latex
    assert r"c & 4 & \textbf{0.684} & \textbf{75.00} \\" in latex
    csv = format_table(results, [0.25], "csv").splitlines()
    assert csv[0] == "name,examples,ACR,r=0.25"
    name, count, acr, acc = csv[2].split(",")
    assert (name, count, float(acc)) == ("ours", "4", 0.75)
    assert float(acr) == pytest.approx(results[1].acr(), rel=1e-15)


def test_default_radii_cover_the_largest_correct_radius(files):
    assert default_radii([read_results(files[0])]) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_plot_is_written(files, tmp_path):
    out = plot_certified_accuracy([read_results(f) for f in files], tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content, message", [
    ("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0.1\n", "no column"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\tx\t0.5\t1\t0.1\n", "line 2 is malformed"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n", "holds no results"),
    ("", "empty"),
    ("idx\tlabel\tpredict\tradius\n0\t1\t1\t0.5\n0\t1\t1\t0.5\n", "more than once"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(SmoothmixError, match=message) as info:
        read_results(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_options(tmp_path, files):
    with pytest.raises(SmoothmixError, match="does not exist"):
        read_results(tmp_path / "nope.tsv")
    results = [read_results(files[0])]
    with pytest.raises(SmoothmixError, match="unknown table format"):
        format_table(results, [0.0], "html")
    with pytest.raises(SmoothmixError, match="2 labels for 1"):
        format_table(results, [0.0], "markdown", labels=["a", "b"])


def test_certified_accuracy_is_monotone_in_radius(files):
    res = read_results(files[0])
    acc = res.certified_accuracy(np.linspace(0, 3, 50))
    assert np.all(np.diff(acc) <= 0)
