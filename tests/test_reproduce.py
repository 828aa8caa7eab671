"""`smoothmix reproduce` on a tiny budget of the embedded MNIST: outputs, rerun continues,
budget conflicts and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from smoothmix import reproduce as rep
from smoothmix.analysis import read_results
from smoothmix.cli import main
from smoothmix.errors import SmoothmixError

# Two cheap rows (Gaussian 1 step of 64; Consistency 1 step of 64 x 2 copies), 4 test
# images, N = 100: a few seconds on one CPU core.
TINY = ["--methods", "gaussian,consistency", "--epochs", "1", "--train-subset", "64",
        "--skip", "2500", "--n", "100", "--decide-radii", "0,0.5", "--decide-skip", "1250",
        "--no-progress"]


def run(out: Path, *extra: str, experiment: str = "mnist-0.50") -> int:
    return main(["reproduce", experiment, "--outdir", str(out), *TINY, *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """One finished tiny run (copied by the tests that change it) and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("reproduce") / "r"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run(out) == 0
    return out, buf.getvalue()


def copy_of(finished: tuple[Path, str], tmp_path: Path) -> Path:
    shutil.copytree(finished[0], tmp_path / "r")
    return tmp_path / "r"


@pytest.mark.slow
def test_tiny_budget_end_to_end(finished) -> None:
    out, printed = finished
    assert "[1/5] train gaussian" in printed and "[4/5] certify consistency" in printed
    assert "Budget: reduced" in printed
    for m in ("gaussian", "consistency"):
        assert (out / m / "checkpoint.pth.tar").is_file()
        assert list(read_results(out / f"certify_{m}.tsv").idx) == [0, 2500, 5000, 7500]
    assert (out / "curves.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "mnist-0.50" and not summary["full_budget"]
    assert summary["n"] == 100 and summary["radii"][:2] == [0.0, 0.25]
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["gaussian"]["published_acr"] == 1.558
    res = read_results(out / "certify_gaussian.tsv")
    assert rows["gaussian"]["acr"] == pytest.approx(res.acr())
    # Time: this invocation's per stage, and the whole run's as its files record it.
    log = (out / "gaussian" / "log.csv").read_text().splitlines()
    epoch_seconds = sum(float(line.split(",")[-1]) for line in log[1:])
    assert rows["gaussian"]["train_epochs_seconds_total"] == pytest.approx(epoch_seconds, abs=0.1)
    assert rows["gaussian"]["certify_rows_seconds_total"] == pytest.approx(res.time.sum(), abs=0.1)
    assert rows["gaussian"]["train_seconds"] >= epoch_seconds - 0.1  # started here
    table = (out / "table.md").read_text()
    assert "Budget: reduced" in table and "N=100" in table and "4 images" in table
    # The KT decisions, on every 1250th image (8), in their own table.
    assert "KT confidence-sequence decisions" in table and "(8 images)" in table
    assert len(rows["gaussian"]["decisions"]["certified_accuracy"]) == 2
    acr = rows["gaussian"]["acr"]
    # Ours, then (published, difference) computed by hand from the summary; the first 4
    # images are no subset the authors' logs were summed over: full-set values, starred.
    assert not rows["gaussian"]["published_same_images"]
    assert f"| gaussian | 4 | {acr:.3f} (1.558*, {acr - 1.558:+.3f}) |" in table
    acc0 = rows["gaussian"]["certified_accuracy"][0]
    assert f"{acc0:.2f} (99.15*, {acc0 - 99.15:+.2f})" in table
    assert "* published value of the full test set" in table


def test_same_subset_published_values_and_the_decisions_table(tmp_path: Path) -> None:
    # The protocol in miniature: CERTIFY on every 20th image, KT decisions on
    # images below the cap; the table puts the authors' every-20th value beside ours.
    from smoothmix.reproduce import Budget, Experiment, _format, get_experiment

    exp: Experiment = get_experiment("mnist-0.50")
    budget = Budget(skip=20, decide_radii=(0.0, 0.5), n=1000).normalised(exp)
    # Only the certification is reduced: the line says so, and not that training was.
    line = budget.describe(exp)
    assert line.startswith("Budget: reduced, not the published one. Training: the published "
                           "budget (the presets). Certification: CERTIFY on every 20th")
    assert "Training: 3 epochs (everything else as the presets)." in \
        Budget(epochs=3, skip=20).normalised(exp).describe(exp)
    row = {"method": "gaussian", "examples": 500, "acr": 1.5,
           "certified_accuracy": [98.0] * len(exp.radii), "published_acr": 1.558,
           "published_certified_accuracy": exp.published["gaussian"]["certified"],
           "published_same_images": True, "published_same_images_acr": 1.537,
           "published_same_images_certified_accuracy":
           exp.published["gaussian"]["subsets"]["20"]["certified"],
           "published_same_images_acr_range": [1.53, 1.542],
           "published_same_images_certified_range": [[97.5, 98.5]] * 4 + [[98.5, 99.0]]
           + [[97.5, 98.5]] * 3,
           "published_certified_range": [[99.11, 99.18], [98.3, 98.38], [96.85, 97.01]] * 3,
           "decisions": {"examples": 10000, "radii": [0.0, 0.5],
                         "certified_accuracy": [99.0, 97.0], "mean_samples": [120.0, 300.0]}}
    table = _format(exp, [row], budget, 3.0)
    # Each value outside the authors' 5-seed range on the same images is named, once.
    assert ("CERTIFY, outside the authors' 5-seed range on the same images: gaussian ACR "
            "1.500 (seeds 1.530-1.542); gaussian r = 1: 98.00 (seeds 98.50-99.00).") in table
    # r = 0.5 (97.00) lies inside its range, r = 0 (99.00) does not:
    assert ("KT decisions (an image undecided at the cap counts as not certified), outside "
            "the authors' 5-seed range on the same images: gaussian "
            "r = 0: 99.00 (seeds 99.11-99.18). (A sixth seed") in table
    inside = {**row, "acr": 1.535, "certified_accuracy": [98.0] * 4 + [98.5] + [98.0] * 3,
              "decisions": {**row["decisions"], "certified_accuracy": [99.12, 97.0]}}
    table_inside = _format(exp, [inside], budget, 3.0)
    assert "CERTIFY: every value lies inside the authors' 5-seed range" in table_inside
    assert "not certified): every value lies inside the authors' 5-seed range" in table_inside
    # Decisions on part of the test set (--max) are not compared with full-set values.
    part = Budget(skip=20, decide_radii=(0.0, 0.5), n=1000, max_idx=100).normalised(exp)
    table_part = _format(exp, [{**row, "published_same_images": False}], part, 3.0)
    assert "on every test image below index 100 (10000 images)" in table_part
    assert "CERTIFY on every 20th test image below index 100 (5 images)" in part.describe(exp)
    assert "on every test image below index 100 (100 images), cap" in part.describe(exp)
    assert "| gaussian | 10000 | 99.00 | 97.00 | 210 |" in table_part
    assert "KT decisions (an image" not in table_part
    # Without the ranges (other subsets, older published.json), no such line.
    bare = {k: v for k, v in row.items() if not k.endswith("_range")}
    bare |= {"published_same_images_acr_range": None,
             "published_same_images_certified_range": None, "published_certified_range": None}
    assert "5-seed range" not in _format(exp, [bare], budget, 3.0)
    assert "| gaussian | 500 | 1.500 (1.537, -0.037) | 98.00 (98.44, -0.44) |" in table
    assert "every 20th test image from idx 0 (500 images)" in table
    assert "KT confidence-sequence decisions" in table and "on the full test set" in table
    assert "| gaussian | 10000 | 99.00 (99.15, -0.15) | 97.00 (96.90, +0.10) | 210 |" in table
    certify_rows = [line for line in table.splitlines() if line.startswith("| gaussian | 500")]
    assert certify_rows and "*" not in certify_rows[0]  # every cell from the same images


@pytest.mark.slow
def test_rerun_continues(finished, tmp_path: Path) -> None:
    # Rerun: nothing retrained or recertified, the same table.
    out = copy_of(finished, tmp_path)
    table = (out / "table.md").read_text()
    first = {r["method"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    stamps = {p: p.stat().st_mtime_ns for p in (out / "certify_gaussian.tsv",
                                                  out / "gaussian" / "checkpoint.pth.tar")}
    # The state file keeps the provenance of the run that started the folder.
    state = json.loads((out / "reproduce.json").read_text())
    (out / "reproduce.json").write_text(json.dumps({**state, "git_commit": "started-by"}))
    assert run(out) == 0
    assert json.loads((out / "reproduce.json").read_text())["git_commit"] == "started-by"
    assert (out / "table.md").read_text() == table
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # The rerun's stages found their work done: the stage times summed over both
    # invocations keep the first's (a rerun used to overwrite them with its tenths).
    again = {r["method"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    for m in ("gaussian", "consistency"):
        total = again[m]["stage_seconds_all_invocations"]
        for stage in ("train", "certify", "decide"):
            assert total[stage] == pytest.approx(
                first[m][f"{stage}_seconds"] + again[m][f"{stage}_seconds"], abs=0.11)
        assert first[m]["stage_seconds_all_invocations"]["train"] == first[m]["train_seconds"]

    # An interrupted certification (its last row lost) resumes: the row comes back the same.
    tsv = out / "certify_consistency.tsv"
    full = tsv.read_text()
    lines = full.splitlines(keepends=True)
    tsv.write_text("".join(lines[:-1]))
    assert run(out) == 0
    assert [r.split("\t")[:4] for r in tsv.read_text().splitlines()] == \
        [r.split("\t")[:4] for r in full.splitlines()]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_shard_certify_and_decisions(tmp_path: Path) -> None:
    # Under torchrun both stages shard the images across the ranks and rank 0 merges them;
    # a single process then recomputes both files from the same checkpoint, row for row.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    dist = tmp_path / "dist"
    # --num-samples: torchrun would read --n as an abbreviation of its own options.
    tiny = [a if a != "--n" else "--num-samples" for a in TINY[2:]]
    tiny += ["--methods", "gaussian", "--device", "cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", "-m", "smoothmix", "reproduce", "mnist-0.50", "--outdir",
           str(dist), *tiny]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("certify", "decide"):
        assert (dist / f"{stage}_gaussian.rank1of2.tsv").is_file()  # rank 1 did its part
    single = tmp_path / "single"
    shutil.copytree(dist, single)
    for f in single.glob("*_gaussian*.tsv*"):
        f.unlink()
    assert main(["reproduce", "mnist-0.50", "--outdir", str(single), *tiny]) == 0

    def rows(path: Path) -> list[list[str]]:  # the time column aside
        table = [line.split("\t") for line in path.read_text().splitlines()]
        t = table[0].index("time")
        return [row[:t] + row[t + 1:] for row in table]

    for name, count in (("certify_gaussian.tsv", 4), ("decide_gaussian.tsv", 8 * 2)):
        assert len(rows(dist / name)) == count + 1
        assert rows(dist / name) == rows(single / name)


@pytest.mark.slow
def test_interrupted_training_resumes(tmp_path: Path, capsys) -> None:
    # A run killed after epoch 1 of 2 is what train() leaves after 1 epoch of the same
    # recipe: reproduce must resume it (epoch 2 only), not restart or refuse it.
    from smoothmix.training import train

    out = tmp_path / "r"
    budget = rep.Budget(epochs=2, train_subset=128, skip=5000, n=100)
    exp = rep.get_experiment("mnist-0.50")
    kwargs = rep._train_kwargs(exp, "gaussian", budget) | {"epochs": 1}
    train(out / "gaussian", progress=False, **kwargs)
    (out / rep.STATE_NAME).write_text(json.dumps(
        {"experiment": "mnist-0.50", "budget": json.loads(json.dumps(budget.__dict__))}))
    rep.reproduce("mnist-0.50", out, methods=["gaussian"], budget=budget, progress=False)
    printed = capsys.readouterr().out
    assert "(resume)" in printed and "epoch 2/2" in printed and "epoch 1/2" not in printed
    log = (out / "gaussian" / "log.csv").read_text().splitlines()
    assert len(log) == 3  # header + epochs 1 and 2


@pytest.mark.slow
def test_changed_budget_is_refused_and_nothing_is_touched(finished, tmp_path: Path,
                                                          capsys) -> None:
    out = finished[0]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert run(out, "--methods", "gaussian", "--n", "300") == 2
    err = one_line_error(capsys)
    assert "another budget" in err and "--n 100 -> 300" in err
    assert run(out, "--methods", "gaussian", "--deferred", "1") == 2
    assert "--deferred (full) -> 1" in one_line_error(capsys)
    assert main(["reproduce", "mnist-0.25", "--outdir", str(out), *TINY]) == 2
    assert "holds experiment mnist-0.50" in one_line_error(capsys)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.mark.parametrize("args, message", [
    (["mnist-0.3"], "unknown experiment 'mnist-0.3' (did you mean 'mnist-0.50' or "
     "'mnist-0.25'?); valid experiments: mnist-0.25, "),
    (["mnist-0.50", "--methods", "smoothmixx"], "unknown method 'smoothmixx' for mnist-0.50; "
     "its methods: gaussian, stability"),
    (["mnist-0.50", "--methods", "gaussian,gaussian"], "repeats"),
    (["mnist-0.50", "--n", "5"], "can never certify"),
    (["mnist-0.50", "--epochs", "0"], "--epochs must be an integer >= 1"),
    (["mnist-0.50", "--deferred", "-1"], "--deferred must be an integer >= 0"),
    ([], "name an EXPERIMENT"),
    (["mnist-0.50", "--device", "bogus"], "unknown device 'bogus'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys, args,
                                                        message) -> None:
    out = tmp_path / "never"
    assert main(["reproduce", *args, "--outdir", str(out)]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_published_only_row_and_missing_dataset(tmp_path: Path, capsys, monkeypatch) -> None:
    # A row with published values but no preset cannot be run (CAT-RS before its presets).
    published = json.loads(json.dumps(rep._published()))
    published["experiments"]["mnist-0.50"]["methods"]["newmethod"] = {"acr": 1.0}
    monkeypatch.setattr(rep.experiments, "_published", lambda: published)
    with pytest.raises(SmoothmixError, match="'newmethod' has no training preset for "
                       "mnist-0.50 .*no preset mnist-newmethod-0.50"):
        rep.select_methods(rep.get_experiment("mnist-0.50"), ["newmethod"])
    assert "newmethod" not in rep.select_methods(rep.get_experiment("mnist-0.50"), None)
    monkeypatch.undo()

    out = tmp_path / "c"
    empty = tmp_path / "nodata"
    empty.mkdir()
    assert main(["reproduce", "cifar10-0.50", "--outdir", str(out), "--data-dir",
                 str(empty), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert str(empty) in err and "cifar" in err.lower()
    assert not out.exists()

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert run(taken) == 2
    assert "not a reproduce folder" in one_line_error(capsys)
    assert (taken / "notes.txt").read_text() == "mine" and len(list(taken.iterdir())) == 1


def test_list_and_experiment_table() -> None:
    assert rep.list_experiments() == ["mnist-0.25", "mnist-0.50", "mnist-1.00", "cifar10-0.25",
                                      "cifar10-0.50", "cifar10-1.00", "imagenet-0.50",
                                      "imagenet-1.00"]
    text = rep.describe_experiments()
    for name in rep.list_experiments():
        assert f"\n{name}: " in text
    assert "every 100th validation image (500 images)" in text
    e = rep.get_experiment("mnist-0.50")
    assert e.runnable() == ["gaussian", "stability", "smoothadv", "macer", "consistency",
                            "smoothmix"]
    assert len(e.published["smoothmix"]["certified"]) == len(e.radii) == 8
    assert rep.get_experiment("mnist-1.00").runnable()[-1] == "smoothmix-onestep"
    # Every published value of docs/MATH.md §5 ships: 7 CIFAR-10 columns x 3 sigmas minus the
    # missing SmoothMix sigma = 1.0, plus the one-step row.
    cifar = [rep.get_experiment(f"cifar10-{s}").published for s in ("0.25", "0.50", "1.00")]
    assert sum(len(p) for p in cifar) == 21
    assert cifar[2]["catrs"]["acr"] == 0.815 and "smoothmix" not in cifar[2]
    full = rep.Budget()
    assert full.describe(e).startswith("Budget: full") and "10000 images" in full.describe(e)
    assert "N=100,000" in full.describe(rep.get_experiment("imagenet-1.00"))
    small = rep.Budget(skip=2, deferred=0).describe(e)
    assert "every 2nd test image (5000 images)" in small and "MACER not deferred" in small
    assert "every 22nd" in rep.Budget(skip=22).describe(e)
    assert "every 11th" in rep.Budget(skip=11).describe(e)
    assert rep.Budget(skip=1, n=100_000).normalised(e).is_full()
    assert rep.Budget(skip=100).normalised(rep.get_experiment("imagenet-0.50")).is_full()
    assert rep.Budget(skip=100).normalised(e) == rep.Budget(skip=100)


def test_budget_overrides_reach_train_only_where_they_apply() -> None:
    e = rep.get_experiment("mnist-0.50")
    b = rep.Budget(epochs=3, train_subset=1000, batch_size=64, warmup=1, deferred=1)
    assert rep._train_kwargs(e, "macer", b) == {
        "preset": "mnist-macer-0.50", "seed": 0, "test_subset": rep.EVAL_IMAGES, "epochs": 3,
        "train_subset": 1000, "batch_size": 64, "deferred": 1}
    assert rep._train_kwargs(e, "smoothmix", b)["method_options"] == {"warmup": 1}
    assert "deferred" not in rep._train_kwargs(e, "smoothmix", b)
    assert rep._train_kwargs(e, "gaussian", rep.Budget()) == {
        "preset": "mnist-gaussian-0.50", "seed": 0, "test_subset": rep.EVAL_IMAGES}


def test_a_longer_row_list_adds_rows_and_a_shorter_one_is_refused(finished, tmp_path: Path,
                                                                  capsys) -> None:
    # The folder holds the rows it certified (gaussian, consistency). Leaving one out would
    # drop it from the table: refused, one line naming the folder and the rows, nothing
    # touched. A certification file reproduce did not write (no record) is not a row.
    out = copy_of(finished, tmp_path)
    (out / "certify_undecided.tsv").write_text("idx\tlabel\n")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert run(out, "--methods", "gaussian") == 2
    err = one_line_error(capsys)
    assert f"--outdir {out} holds the rows consistency, gaussian" in err
    assert "leave out consistency" in err and "--methods gaussian,consistency)" in err
    assert "nothing was overwritten" in err
    assert run(out, "--methods", "consistency,stability") == 2
    assert "leave out gaussian" in one_line_error(capsys)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # A superset (in any order) adds the new row and keeps the others as they were.
    assert run(out, "--methods", "stability,gaussian,consistency") == 0
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()
               if p.suffix == ".tsv" or p.name == "checkpoint.pth.tar")
    rows = [r["method"] for r in json.loads((out / "summary.json").read_text())["rows"]]
    assert rows == ["stability", "gaussian", "consistency"]
    assert rep.held_rows(out, "mnist-0.50") == ["consistency", "gaussian", "stability"]


def test_rows_trained_first_are_certified_as_they_are(finished, tmp_path: Path,
                                                      capsys) -> None:
    # The full-budget workflow: scripts/full-budget-train trains a row into OUT/<row>/ with
    # reproduce's arguments (its log and the machine notes beside it), then reproduce
    # certifies it. The folder has no reproduce.json yet; the training is picked up, not
    # redone, and the user's files are left as they are.
    out = tmp_path / "r"
    out.mkdir()
    shutil.copytree(finished[0] / "gaussian", out / "gaussian")
    mine = {"train.log": "== train mnist-gaussian-0.50\n", "machine.txt": "a CPU\n"}
    for name, text in mine.items():
        (out / name).write_text(text)
    ckpt = out / "gaussian" / "checkpoint.pth.tar"
    trained = ckpt.stat().st_mtime_ns
    assert run(out, "--methods", "gaussian") == 0
    assert ckpt.stat().st_mtime_ns == trained
    assert (read_results(out / "certify_gaussian.tsv").idx.tolist()
            == read_results(finished[0] / "certify_gaussian.tsv").idx.tolist())
    assert all((out / name).read_text() == text for name, text in mine.items())
    # Refused, naming it: a training folder of a row not asked for, a file reproduce would
    # write; and a folder holding no row at all (someone else's).
    for name, make in (("consistency", lambda p: shutil.copytree(finished[0] / "consistency", p)),
                       ("table.md", lambda p: p.write_text("mine")),
                       ("certify_gaussian.tsv", lambda p: p.write_text("mine"))):
        other = tmp_path / f"other-{name}"
        other.mkdir()
        shutil.copytree(finished[0] / "gaussian", other / "gaussian")
        make(other / name)
        before = {p: p.stat().st_mtime_ns for p in other.rglob("*")}
        capsys.readouterr()
        assert run(other, "--methods", "gaussian") == 2
        err = one_line_error(capsys)
        assert "not a reproduce folder" in err and f"it holds {name}" in err
        assert {p: p.stat().st_mtime_ns for p in other.rglob("*")} == before
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "train.log").write_text("mine")
    assert run(lonely, "--methods", "gaussian") == 2
    assert "nor a training folder of the rows asked for, gaussian" in one_line_error(capsys)
    assert [p.name for p in lonely.iterdir()] == ["train.log"]


def test_a_row_folder_of_another_preset_is_refused_before_anything_runs(finished,
                                                                        tmp_path: Path,
                                                                        capsys) -> None:
    # OUTDIR/consistency holds a Gaussian run (say, trained for another row): the rows
    # before it (stability, new) must not run first and leave the folder half-changed.
    out = copy_of(finished, tmp_path)
    shutil.copy(out / "gaussian" / "checkpoint.pth.tar", out / "consistency")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert run(out, "--methods", "stability,gaussian,consistency") == 2
    err = one_line_error(capsys)
    assert (f"the training folder of row consistency ({out / 'consistency'}) holds a run of "
            "preset mnist-gaussian-0.50, not mnist-consistency-0.50") in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert not (out / "stability").exists()


def test_stage_seconds_add_up_over_invocations() -> None:
    from smoothmix.reproduce.report import stage_seconds_all_invocations as total

    first = total(None, {"train_seconds": 100.0, "certify_seconds": 50.0})
    assert first == {"train": 100.0, "certify": 50.0}
    second = total({"stage_seconds_all_invocations": first},
                   {"train_seconds": 0.5, "certify_seconds": 7.0, "decide_seconds": 993.5})
    assert second == {"train": 100.5, "certify": 57.0, "decide": 993.5}
    # A summary written before the totals were kept: its seconds are the base.
    assert total({"train_seconds": 3.0, "decide_seconds": 993.5}, {"decide_seconds": 0.4}) \
        == {"train": 3.0, "decide": 993.9}
