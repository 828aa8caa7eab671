"""Reading result files (ours and the reference code's), metrics, tables and the plot."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from smoothmix.analysis import (
    compare_results,
    default_radii,
    format_table,
    parse_time,
    plot_certified_accuracy,
    read_results,
)
from smoothmix.errors import SmoothmixError
from smoothmix.run import RunSpec

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
        x = torch.linspace(0, 1, 8).reshape(8, 1, 1, 1)

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return self.x[i], int(i % 2)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    out = certify_dataset(model, Data(), RunSpec.of(0.5, batch_size=100, progress=False),
                          tmp_path / "c.tsv", n0=10, n=500, alpha=0.01)
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
    # Different image sets: two sets, nothing to bold (each file is alone in its set).
    assert lines[0] == "|  | set | σ | N | α | images | ACR | r = 0 | r = 0.5 | r = 1 |"
    assert lines[2] == "| ref | A | ? | ? | ? | 5 | 0.396 | 60.00 | 40.00 | 20.00 |"
    assert lines[3] == "| ours | B | ? | ? | ? | 4 | 0.684 | 75.00 | 75.00 | 25.00 |"
    assert "**" not in table
    # Same images: ACR ref 0.396 vs 0.684 -> bold; ties: both bold.
    ref = results[0]
    better = dataclasses.replace(ref, predict=ref.label.copy())  # idx 40, 60 now correct
    table = format_table([ref, better], [0.0, 1.0], "markdown", labels=["ref", "better"])
    lines = table.splitlines()
    assert lines[0] == "|  | σ | N | α | images | ACR | r = 0 | r = 1 |"
    assert lines[2] == "| ref | ? | ? | ? | 5 | 0.396 | 60.00 | 20.00 |"
    assert lines[3] == "| better | ? | ? | ? | 5 | **0.816** | **100.00** | **40.00** |"
    tie = format_table([ref, ref], [0.0], "markdown")
    assert tie.count("**60.00**") == 2
    assert "**" not in format_table([ref], [0.0], "markdown")  # one file: nothing to compare


def test_latex_and_csv_tables(files):
    results = [read_results(f) for f in files]
    latex = format_table([results[0], results[0]], [0.25], "latex", labels=["a_b", "c"])
    assert r"\begin{tabular}{lrrrrrr}" in latex
    assert r"& $\sigma$ & $N$ & $\alpha$ & images & ACR & $0.25$ \\" in latex
    assert r"a\_b & ? & ? & ? & 5 & \textbf{0.396} & \textbf{60.00} \\" in latex
    csv = format_table(results, [0.25], "csv").splitlines()
    assert csv[0] == "name,sigma,N,alpha,images,selected,set,radius_cap,ACR,r=0.25"
    fields = csv[2].split(",")
    assert fields[:8] == ["ours", "", "", "", "4", "", "B", ""]
    assert float(fields[8]) == pytest.approx(results[1].acr(), rel=1e-15)
    assert float(fields[9]) == 75.0  # percent, the unit of the markdown table


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


# ---------------------------------------------------------------- comparability (issue 9)


class Line:
    """20 images of 2 x 2 equal pixels v in [0, 1]; the label is the side of 1/2. Under
    LINE_MODEL class 1 wins a draw iff the pixels' sum exceeds 2, so p_1 = Φ((2v - 1)/σ):
    the one-pixel line -1..1 with its boundary at 0, kept inside [0, 1]."""

    num_classes = 2

    def __init__(self):
        import torch

        self.x = torch.linspace(0, 1, 20).reshape(20, 1, 1, 1).expand(20, 1, 2, 2)

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return self.x[i], int(self.x[i, 0, 0, 0].item() > 0.5)


def line_model(boundary: float):
    """Line's base classifier that says 1 iff the line's coordinate x = 2v - 1 (-1..1) plus
    noise exceeds ``boundary``: the pixels' sum must exceed 2 * boundary + 2."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
        model[1].bias.copy_(torch.tensor([boundary + 1.0, -boundary - 1.0]))
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real certify files with their .json companions: a, c (σ 0.5, other seeds), b (σ 0.25),
    n (N 500) and the first 6 of c's 20 rows as an interrupted run would leave them."""
    import shutil

    from smoothmix.certification import certify_dataset

    root = tmp_path_factory.mktemp("runs")
    model = line_model(0.0)
    data = Line()
    paths = {}
    for name, sigma, n, seed in (("a", 0.5, 1000, 0), ("c", 0.5, 1000, 1), ("b", 0.25, 1000, 0),
                                 ("n", 0.5, 500, 0)):
        spec = RunSpec.of(sigma, batch_size=500, seed=seed, progress=False)
        paths[name] = certify_dataset(model, data, spec, root / f"{name}.tsv", n0=10, n=n,
                                      alpha=0.01)
    partial = root / "partial.tsv"
    partial.write_text("".join(paths["c"].read_text().splitlines(keepends=True)[:7]))
    shutil.copy(root / "c.tsv.json", root / "partial.tsv.json")
    paths["partial"] = partial
    return paths


def analyze(capsys, *argv):
    from smoothmix.cli import main

    code = main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_companion_gives_settings_and_completeness(runs):
    a, part = read_results(runs["a"]), read_results(runs["partial"])
    assert (a.run.sigma, a.run.n, a.run.alpha, a.run.selected) == (0.5, 1000, 0.01, 20)
    assert a.complete and not part.complete and len(part) == 6 and part.run.selected == 20


def test_incomplete_file_is_marked_and_strict_refuses(runs, capsys):
    code, out, err = analyze(capsys, runs["a"], runs["c"], runs["partial"], "--radii", "0,0.5")
    assert code == 0
    assert "partial is incomplete: 6 of the 20 rows its run selected" in err
    assert "certify different images: a 20, c 20, partial 6" in err
    row = next(line for line in out.splitlines() if line.startswith("| partial"))
    assert "| 6 of 20 (incomplete) |" in row and "**" not in row  # alone in its set
    a_row = next(line for line in out.splitlines() if line.startswith("| a "))
    assert a_row.startswith("| a | A | 0.5 | 1000 | 0.01 | 20 |")
    code, out, err = analyze(capsys, runs["a"], runs["partial"], "--strict")
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == ("smoothmix analyze: error: --strict: 2 warning(s) "
                                            "above; no table was written")
    # Comparable, complete files: no warning, and --strict prints the table.
    code, out, err = analyze(capsys, runs["a"], runs["c"], "--strict", "--radii", "0")
    assert code == 0 and err == "" and out.startswith("|  | σ | N | α | images |")


def test_differing_sigma_and_n_are_warned_and_best_only_among_comparable(runs, capsys):
    results = [read_results(runs[k]) for k in ("a", "b", "c", "n")]
    comparison = compare_results(results, ["a", "b", "c", "n"])
    assert comparison.groups == [0, 1, 0, 2]
    assert "the files differ in σ: a 0.5, b 0.25, c 0.5, n 0.5" in comparison.warnings
    assert "the files differ in N: a 1000, b 1000, c 1000, n 500" in comparison.warnings
    table = format_table(results, [0.0, 0.5], "markdown", labels=["a", "b", "c", "n"])
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines()[2:6]}
    assert rows["b"].startswith("| b | B | 0.25 |") and "**" not in rows["b"]
    assert rows["n"].startswith("| n | C | 0.5 | 500 |") and "**" not in rows["n"]
    # Within set A the better of a and c at each column is bold (ties: both).
    acc = {k: 100 * results[i].certified_accuracy([0.0, 0.5]) for i, k in ((0, "a"), (2, "c"))}
    for col, r in enumerate(("0", "0.5")):
        best = max(acc["a"][col], acc["c"][col])
        for k in ("a", "c"):
            cell = f"{acc[k][col]:.2f}"
            assert (f"**{cell}**" in rows[k]) == (acc[k][col] == best), (k, r)
    assert "Bold: best within a set of comparable files" in table


def test_radius_cap_is_the_closed_form_and_marked(runs, tmp_path):
    from scipy.stats import norm

    b = read_results(runs["b"])
    cap = 0.25 * norm.ppf(0.01 ** (1 / 1000))  # σ·Φ⁻¹(α^(1/N)) with all N samples agreeing
    assert b.radius_cap == pytest.approx(cap, rel=1e-9)
    assert b.radius.max() <= cap + 1e-12  # no certificate can exceed it
    assert (b.radius > 0.99 * cap).any()  # and this file reaches it: a sharp cap
    a = read_results(runs["a"])
    table = format_table([a, b], [0.5, 0.7, 1.0], "markdown", labels=["a", "b"])
    a_row, b_row = table.splitlines()[2:4]
    assert "†" not in a_row  # a's cap is 1.30
    assert b_row.endswith("| 0.00† | 0.00† |") and b_row.count("†") == 2
    assert "† radius beyond the file's cap σ·Φ⁻¹(α^(1/N)) (b 0.651)" in table
    assert "artefact of N" in table


def test_plot_states_settings_in_percent_and_marks_caps(runs, tmp_path):
    import matplotlib

    results = [read_results(runs[k]) for k in ("a", "c")]
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text in the SVG
        svg = plot_certified_accuracy(results, tmp_path / "p.svg", labels=["a", "c"])
    text = svg.read_text()
    assert "σ = 0.5, N = 1000, α = 0.01, 20 images" in text
    assert "certified accuracy (%)" in text and ">100<" in text
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        wide = plot_certified_accuracy(results, tmp_path / "w.svg", max_radius=2.0)
    assert wide.read_text().count("cap 1.30") == 1  # a and c share one cap: one label
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        mixed = plot_certified_accuracy(
            [results[0], read_results(runs["b"])], tmp_path / "m.svg", labels=["a", "b"])
    text = mixed.read_text()
    assert "N = 1000, α = 0.01, 20 images" in text and "a (σ=0.5)" in text
    assert "cap 0.65" in text  # b's cap lies inside the plotted range
    png = plot_certified_accuracy(results, tmp_path / "p.png", dpi=50, figsize=(4, 3))
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == (200, 150)


def test_a_failed_plot_leaves_the_previous_file(runs, tmp_path, monkeypatch):
    # Plots are written through storage like the tables beside them: a savefig that dies
    # half-way leaves the previous figure, not a torn one, and no temporary file.
    from matplotlib.figure import Figure

    results = [read_results(runs["a"])]
    png = plot_certified_accuracy(results, tmp_path / "curves.png", dpi=30)
    before = png.read_bytes()

    def dies(self, fname, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG half")
        else:  # the former direct savefig(path)
            with open(fname, "wb") as fh:
                fh.write(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", dies)
    with pytest.raises(SmoothmixError, match="cannot write plot .*No space left"):
        plot_certified_accuracy(results, png, dpi=30)
    assert png.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [png.name]


def test_analyze_cli_plot_options(runs, tmp_path, capsys):
    code, _, err = analyze(capsys, runs["a"], "--plot", tmp_path / "x.pdf", "--figsize", "3.3,2.5")
    assert code == 0 and (tmp_path / "x.pdf").read_bytes()[:4] == b"%PDF"
    for bad, message in ((["--figsize", "3x2"], "--figsize must be W,H"),
                         (["--dpi", "0"], "--dpi must be >= 1")):
        code, _, err = analyze(capsys, runs["a"], "--plot", tmp_path / "y.png", *bad)
        assert code == 2 and message in err


def test_malformed_companion_is_a_one_line_error(tmp_path, files):
    ours = files[1]
    companion = tmp_path / "ours.tsv.json"
    companion.write_text('{"kind": "certify", "settings": {"sigma": "half", "n": 100}}')
    with pytest.raises(SmoothmixError, match="setting 'sigma' is not a float") as info:
        read_results(ours)
    assert "\n" not in str(info.value)
    companion.write_text("{not json")
    with pytest.raises(SmoothmixError, match="is not a smoothmix settings file"):
        read_results(ours)
    # Settings without the selection: shown, completeness simply not checked.
    companion.write_text('{"kind": "certify", "settings": {"sigma": 0.5, "n": 100, '
                         '"alpha": 0.01}}')
    res = read_results(ours)
    assert (res.run.sigma, res.run.n, res.run.selected, res.complete) == (0.5, 100, None, True)


def test_an_old_file_recording_sigma_above_the_guard_is_analysed(tmp_path):
    """The sigma > 4 guard is for new input: a file of 0.2 (which had no guard) that recorded
    sigma = 12 (0..255 units by mistake) is read, compared and tabled, not refused."""
    import json
    import shutil
    from pathlib import Path

    from scipy.stats import norm

    fixture = Path(__file__).parent / "fixtures" / "results" / "v0.2" / "certify.tsv"
    path = tmp_path / "certify.tsv"
    shutil.copy(fixture, path)
    meta = json.loads(Path(f"{fixture}.json").read_text())
    meta["settings"]["sigma"] = 12.0
    Path(f"{path}.json").write_text(json.dumps(meta))
    res = read_results(path)
    assert res.run is not None and res.run.sigma == 12.0
    assert res.radius_cap == pytest.approx(12.0 * norm.ppf(0.01 ** (1 / 200)), rel=1e-9)
    assert "certify" in format_table([res], [0.5], "markdown", labels=["certify"])


# ------------------------------------------------------- p_y (issue 27 item 4, format of 0.5)


def test_p_label_is_the_estimations_share_of_votes_for_the_label(tmp_path):
    """A 0.5 file gives p_y = n_label / (samples - n0) per image: over all N draws where the
    estimation ran to the end, over the draws before the stop after an early abstain; the
    label's votes also when the n0 step selected another class."""
    import torch

    from smoothmix.certification import certify_dataset
    from smoothmix.core import Smooth
    from smoothmix.runner import example_seed

    model = line_model(-0.1)  # images just below 0 mostly say 1
    data = Line()
    out = certify_dataset(model, data, RunSpec.of(1.0, batch_size=100, progress=False),
                          tmp_path / "c.tsv", n0=10, n=1000, alpha=0.01)
    res = read_results(out)
    assert res.run.n0 == 10 and not res.run.skip_wrong
    assert res.draws.tolist() == (res.samples - 10).tolist()
    statuses = [line.split("\t")[7] for line in out.read_text().splitlines()[1:]]
    early = [i for i, s in enumerate(statuses) if s == "abstain" and res.draws[i] < 1000]
    assert early and "certified" in statuses  # both kinds of rows are covered
    smooth = Smooth(model, 2, 1.0)
    for i in range(len(res)):
        x, label = data[i]
        cert = smooth.certificate(x, 10, 1000, 0.01, 100,
                                  torch.Generator().manual_seed(example_seed(0, i)),
                                  label=label, skip_wrong=False)
        assert (res.selected[i], res.n_label[i], res.samples[i]) == (
            cert.selected, cert.n_label, cert.samples)
    p = res.p_label()
    assert p.tolist() == (res.n_label / res.draws).tolist()
    assert np.all((p >= 0) & (p <= 1))
    # Two classes: where the n0 step selected the other class, the label has the rest of the
    # draws (n_a being the selected class's votes).
    n_a = np.asarray([int(line.split("\t")[8]) for line in out.read_text().splitlines()[1:]])
    wrong = res.selected != res.label
    assert wrong.any() and (n_a + res.n_label == res.draws)[wrong].all()
    assert (res.n_label == n_a)[~wrong].all()


@pytest.mark.parametrize("kind, message", [
    ("reference", "written by the reference code"),
    ("v0.4.0", "written before smoothmix 0.5 and has no n_label column"),
    ("skip_wrong", "with --skip-wrong"),
])
def test_p_label_of_a_file_without_n_label_is_a_one_line_error(tmp_path, files, kind, message):
    import shutil
    from pathlib import Path

    import torch
    from torch import nn

    from smoothmix.certification import certify_dataset

    if kind == "reference":
        path = files[0]
    elif kind == "v0.4.0":
        fixture = Path(__file__).parent / "fixtures" / "results" / "v0.4.0" / "certify.tsv"
        path = tmp_path / "certify.tsv"
        shutil.copy(fixture, path)
        shutil.copy(f"{fixture}.json", f"{path}.json")
    else:
        torch.manual_seed(0)
        path = certify_dataset(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), Line(),
                               RunSpec.of(0.5, batch_size=100, progress=False),
                               tmp_path / "s.tsv", n0=10, n=100, alpha=0.01, skip_wrong=True)
    res = read_results(path)
    assert (res.n_label is None) == (kind != "skip_wrong")
    with pytest.raises(SmoothmixError, match=message) as error:
        res.p_label()
    assert str(path) in str(error.value) and "smoothmix >= 0.5" in str(error.value)
    assert "\n" not in str(error.value)
