"""The dataset runner: file format, per-example seeding, resume, refusal, shards, merge."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from smoothmix.certification import (
    certify_dataset,
    merge_results,
    parse_shard,
    predict_dataset,
    selected_indices,
    shard_path,
)
from smoothmix.core import Smooth
from smoothmix.errors import SmoothmixError
from smoothmix.run import RunSpec

CERTIFY = dict(n0=10, n=200, alpha=0.01)  # certify_dataset's own arguments


def spec(sigma: float = 0.25, **fields: object) -> RunSpec:
    """The run of these tests: ``sigma``, 64 noisy copies per block, no progress bar, and
    ``fields`` (max_idx, skip, shard, ...)."""
    return RunSpec.of(sigma, batch_size=64, progress=False, **fields)


class ToyDataset:
    num_classes = 3

    def __init__(self, size: int = 12) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.rand(size, 1, 4, 4, generator=gen)
        self.y = torch.randint(0, 3, (size,), generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def rows(path) -> list[list[str]]:
    """Data rows without the time column."""
    lines = path.read_text().splitlines()
    at = lines[0].split("\t").index("time")
    return [(f := line.split("\t"))[:at] + f[at + 1:] for line in lines[1:]]


class Pausing(nn.Module):
    """``model``, ``pause`` seconds slower per call: every certificate takes measurable time."""

    def __init__(self, model: nn.Module, pause: float) -> None:
        super().__init__()
        self.model, self.pause = model, pause

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.pause)
        return self.model(x)


def test_result_file_format_and_per_example_seeding(tmp_path, model):
    ds = ToyDataset()
    pause = 0.002
    start = time.perf_counter()
    out = certify_dataset(Pausing(model, pause), ds, spec(), tmp_path / "c.tsv", **CERTIFY)
    wall = time.perf_counter() - start
    lines = out.read_text().splitlines()
    assert lines[0] == ("idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples\tstatus"
                        "\tn_a\tn_b\tbound\tselected\tn_label")
    assert len(lines) == 1 + len(ds)
    from smoothmix.certification import example_seed

    smooth = Smooth(model, 3, 0.25)
    times = []
    for idx, line in enumerate(lines[1:]):
        (i, label, pred, radius, correct, time_s, samples, status, n_a, n_b, bound, selected,
         n_label) = line.split("\t")
        gen = torch.Generator().manual_seed(example_seed(0, idx))
        expect = smooth.certificate(ds.x[idx], 10, 200, 0.01, 64, generator=gen,
                                    label=int(ds.y[idx]), skip_wrong=False)
        assert (int(i), int(label), int(pred), float(radius)) == (idx, int(ds.y[idx]),
                                                                  *expect[:2])
        assert (int(samples), status, int(n_a), int(n_b)) == expect[2:6]
        assert (int(selected), int(n_label)) == (expect.selected, expect.n_label)
        assert int(n_label) >= 0 and (int(selected) != int(label) or n_label == n_a)
        assert bound == "cohen"
        assert repr(float(radius)) == radius  # full precision, round-trips exactly
        assert int(correct) == (int(pred) == int(label))
        times.append(float(time_s))
    # The time column is each certificate's own duration in seconds: at least one model call,
    # and all of them together no more than the whole run.
    assert min(times) >= pause and sum(times) <= wall, (times, wall)
    meta = json.loads((tmp_path / "c.tsv.json").read_text())
    assert meta["kind"] == "certify"
    assert meta["settings"]["sigma"] == 0.25 and meta["settings"]["n"] == 200
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(out, sep="\t")  # how the reference analysis scripts read it
    assert list(frame.columns)[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert frame["radius"].tolist() == [float(r[3]) for r in rows(out)]


def test_skip_and_max_follow_the_reference_semantics():
    assert list(selected_indices(100, skip=20)) == [0, 20, 40, 60, 80]
    assert list(selected_indices(100, skip=20, max_idx=50)) == [0, 20, 40]  # idx < max
    assert list(selected_indices(10, skip=1, max_idx=-1, shard=(1, 3))) == [1, 4, 7]
    assert list(selected_indices(100, skip=20, shard=(1, 2))) == [20, 60]


def test_predict_file(tmp_path, model):
    out = predict_dataset(model, ToyDataset(), spec(skip=3), tmp_path / "p.tsv", n=200,
                          alpha=0.01)
    lines = out.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tcorrect\ttime"
    assert [int(line.split("\t")[0]) for line in lines[1:]] == [0, 3, 6, 9]


def test_resume_skips_written_rows_and_repairs_a_torn_line(tmp_path, model):
    ds = ToyDataset()
    full = certify_dataset(model, ds, spec(), tmp_path / "full.tsv", **CERTIFY)
    part = tmp_path / "part.tsv"
    certify_dataset(model, ds, spec(max_idx=-1), part, **CERTIFY)
    # Simulate a crash after 5 examples, in the middle of writing the 6th row.
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:6]) + lines[6][:5])
    certify_dataset(model, ds, spec(), part, **CERTIFY)
    assert rows(part) == rows(full)
    # A complete run is a no-op.
    before = part.read_bytes()
    certify_dataset(model, ds, spec(), part, **CERTIFY)
    assert part.read_bytes() == before


def test_malformed_last_complete_line_is_repaired_but_a_damaged_middle_is_refused(tmp_path,
                                                                                  model):
    ds = ToyDataset()
    full = certify_dataset(model, ds, spec(), tmp_path / "full.tsv", **CERTIFY)
    path = tmp_path / "c.tsv"
    lines = full.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]) + "3\t1\n")
    (tmp_path / "c.tsv.json").write_text((tmp_path / "full.tsv.json").read_text())
    certify_dataset(model, ds, spec(), path, **CERTIFY)
    assert rows(path) == rows(full)
    path.write_text("".join(lines[:3]) + "garbage\n" + "".join(lines[4:]))
    with pytest.raises(SmoothmixError, match="line 4 is damaged"):
        certify_dataset(model, ds, spec(), path, **CERTIFY)


@pytest.mark.parametrize(
    "change, word",
    [
        (dict(sigma=0.5), "sigma"),
        (dict(n=300), "n:"),
        (dict(alpha=0.001), "alpha"),
        (dict(skip=2), "skip"),
        (dict(seed=1), "seed"),
        (dict(identity={"checkpoint_sha256": "other"}), "checkpoint_sha256"),
    ],
)
def test_refuses_to_append_to_another_runs_file(tmp_path, model, change, word):
    ds = ToyDataset()
    path = tmp_path / "c.tsv"
    certify_dataset(model, ds, spec(max_idx=4), path, **CERTIFY)
    settings = {**CERTIFY, **change}
    sigma = settings.pop("sigma", 0.25)
    fields = {k: settings.pop(k) for k in ("skip", "seed", "identity") if k in settings}
    before = path.read_bytes()
    with pytest.raises(SmoothmixError, match=word) as info:
        certify_dataset(model, ds, spec(sigma, max_idx=4, **fields), path, **settings)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before


def test_refuses_a_file_without_settings_and_a_predict_file(tmp_path, model):
    ds = ToyDataset()
    path = tmp_path / "c.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n")
    with pytest.raises(SmoothmixError, match="no settings file"):
        certify_dataset(model, ds, spec(), path, **CERTIFY)
    p = predict_dataset(model, ds, spec(max_idx=2), tmp_path / "p.tsv", n=200, alpha=0.01)
    with pytest.raises(SmoothmixError, match="another run"):
        certify_dataset(model, ds, spec(), p, **CERTIFY)


def test_a_file_with_only_a_header_is_started_afresh(tmp_path, model):
    ds = ToyDataset()
    path = tmp_path / "c.tsv"
    certify_dataset(model, ds, spec(0.5, max_idx=1), path, **CERTIFY)
    path.write_text(path.read_text().splitlines(keepends=True)[0])  # header only
    certify_dataset(model, ds, spec(max_idx=3), path, **CERTIFY)
    assert len(rows(path)) == 3


def test_shards_merge_to_the_single_process_result(tmp_path, model):
    ds = ToyDataset(13)
    single = certify_dataset(model, ds, spec(skip=2), tmp_path / "all.tsv", **CERTIFY)
    parts = [certify_dataset(model, ds, spec(skip=2, shard=(i, 3)), tmp_path / f"s{i}.tsv",
                             **CERTIFY) for i in range(3)]
    merged = merge_results(tmp_path / "merged.tsv", parts[::-1])
    assert rows(merged) == rows(single)
    # The merged file is the single-process run: resuming into it has nothing to do.
    before = merged.read_bytes()
    certify_dataset(model, ds, spec(skip=2), merged, **CERTIFY)
    assert merged.read_bytes() == before


def test_merge_refuses_overlaps_gaps_and_other_runs(tmp_path, model):
    ds = ToyDataset()
    s0, s1 = (certify_dataset(model, ds, spec(shard=(i, 2)), tmp_path / f"s{i}.tsv", **CERTIFY)
              for i in range(2))
    with pytest.raises(SmoothmixError, match="shard 1/2 is missing"):
        merge_results(tmp_path / "m.tsv", [s0])
    with pytest.raises(SmoothmixError, match="given more than once"):
        merge_results(tmp_path / "m.tsv", [s0, s1, s0])
    other = certify_dataset(model, ds, spec(0.5, shard=(1, 2)), tmp_path / "o1.tsv", **CERTIFY)
    with pytest.raises(SmoothmixError, match="another run"):
        merge_results(tmp_path / "m.tsv", [s0, other])
    # A gap: shard 1 lost its last row.
    lines = s1.read_text().splitlines(keepends=True)
    s1.write_text("".join(lines[:-1]))
    with pytest.raises(SmoothmixError, match=r"miss 1 example\(s\), first idx \[11\]"):
        merge_results(tmp_path / "m.tsv", [s0, s1])
    # An overlap: shard 1 also holds a row of shard 0.
    s1.write_text("".join(lines) + s0.read_text().splitlines(keepends=True)[1])
    with pytest.raises(SmoothmixError, match="idx 0 appears twice"):
        merge_results(tmp_path / "m.tsv", [s0, s1])
    assert not (tmp_path / "m.tsv").exists()


def test_torchrun_ranks_shard_and_rank_zero_merges(tmp_path, model, monkeypatch):
    # The logic of a 2-rank run, in one process: rank 1 first, then rank 0 merges.
    ds = ToyDataset()
    single = certify_dataset(model, ds, spec(), tmp_path / "single.tsv", **CERTIFY)
    out = tmp_path / "dist.tsv"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert certify_dataset(model, ds, spec(), out, **CERTIFY) == shard_path(out, 1, 2)
    assert not out.exists()
    monkeypatch.setenv("RANK", "0")
    assert certify_dataset(model, ds, spec(), out, **CERTIFY) == out
    assert rows(out) == rows(single)
    assert shard_path(out, 0, 2).name == "dist.rank0of2.tsv"
    with pytest.raises(SmoothmixError, match="leave --shard out"):
        certify_dataset(model, ds, spec(shard=(0, 2)), out, **CERTIFY)


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(SmoothmixError, match="shard"):
            parse_shard(bad)


def test_bad_counts_fail_before_any_file_is_written(tmp_path, model):
    with pytest.raises(SmoothmixError, match="use n >= 10"):
        certify_dataset(model, ToyDataset(), RunSpec.of(0.25, progress=False),
                        tmp_path / "c.tsv", n0=10, n=5, alpha=0.001)
    assert not (tmp_path / "c.tsv").exists()


def test_an_older_six_column_file_resumes_in_its_own_format(tmp_path, model):
    ds = ToyDataset()
    out = certify_dataset(model, ds, spec(), tmp_path / "c.tsv", **CERTIFY)
    full = rows(out)
    lines = out.read_text().splitlines()
    legacy = ["\t".join(line.split("\t")[:6]) for line in lines[:6]]  # header + 5 rows
    out.write_text("\n".join(legacy) + "\n")
    certify_dataset(model, ds, spec(), out, **CERTIFY)
    assert out.read_text().splitlines()[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert rows(out) == [row[:5] for row in full]


@pytest.mark.slow
def test_skip_wrong_gives_the_full_runs_metrics_on_real_mnist(tmp_path, mnist_model):
    from smoothmix.analysis import read_results

    net, test = mnist_model
    run = RunSpec.of(0.5, batch_size=100, max_idx=40, progress=False)
    opts = dict(n0=20, n=200, alpha=0.001)
    full = certify_dataset(net, test, run, tmp_path / "full.tsv", **opts)
    fast = certify_dataset(net, test, run, tmp_path / "fast.tsv", skip_wrong=True, **opts)
    full_rows, fast_rows = rows(full), rows(fast)
    skipped = [r for r in fast_rows if r[6] == "skipped"]
    assert len(skipped) >= 3  # the set has wrong rows, and they were skipped
    for a, b in zip(full_rows, fast_rows, strict=True):
        if b[6] == "skipped":
            assert b[2:6] == ["-1", "0.0", "0", "20"]  # no claim, only the selection drawn
            assert a[4] == "0"  # the full run scored it 0 as well
            # The same selection, recorded; no estimation ran, so no votes for the label.
            assert b[10] == a[10] != a[1] and b[11] == "-1" and int(a[11]) >= 0
        else:
            assert a == b  # identical row, same noise
    radii = [0.0, 0.25, 0.5, 0.75, 1.0]
    a, b = read_results(full), read_results(fast)
    assert a.acr() == b.acr() and a.acr() > 0
    assert (a.certified_accuracy(radii) == b.certified_accuracy(radii)).all()
    assert sum(int(r[5]) for r in fast_rows) < sum(int(r[5]) for r in full_rows)
    meta = json.loads((tmp_path / "fast.tsv.json").read_text())
    assert meta["settings"]["skip_wrong"] is True
    with pytest.raises(SmoothmixError, match="skip_wrong"):  # a file of the other mode
        certify_dataset(net, test, run, full, skip_wrong=True, **opts)


def test_a_dataset_run_records_its_execution_and_resume_reuses_it(tmp_path, model):
    ds = ToyDataset()
    out = certify_dataset(model, ds, spec(execution={"chunk": 16, "layout": "contiguous"}),
                          tmp_path / "c.tsv", **CERTIFY)
    settings = json.loads((tmp_path / "c.tsv.json").read_text())["settings"]
    assert {k: settings[k] for k in ("precision", "layout", "chunk", "compile")} == {
        "precision": "fp32", "layout": "contiguous", "chunk": 16, "compile": False}
    assert settings["threads"] == torch.get_num_threads()
    full = rows(out)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:4]) + "\n")  # killed after three rows
    certify_dataset(model, ds, spec(), out, **CERTIFY)  # no flags: the recorded values
    assert rows(out) == full
    for bad, field in (({"chunk": 32}, "chunk"), ({"precision": "bf16"}, "precision"),
                       ({"layout": "channels_last"}, "layout")):
        before = out.read_bytes()
        with pytest.raises(SmoothmixError, match=field) as info:
            certify_dataset(model, ds, spec(execution=bad), out, **CERTIFY)
        assert "\n" not in str(info.value) and out.read_bytes() == before


def test_arguments_are_checked_once_per_run_not_once_per_image(tmp_path, model, monkeypatch):
    """The runners check n0/n/alpha/batch where they enter; the per-image path of Smooth
    (its private _certificate/_predict) does not check them again."""
    import smoothmix.core as core
    from smoothmix.certification import attack_dataset, decide_dataset

    calls: list[str] = []
    for name in ("check_certify_args", "check_predict_args"):
        real = getattr(core, name)
        monkeypatch.setattr(core, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    ds = ToyDataset(4)
    certify_dataset(model, ds, spec(), tmp_path / "c.tsv", **CERTIFY)
    predict_dataset(model, ds, spec(), tmp_path / "p.tsv", n=200, alpha=0.01)
    attack_dataset(model, ds, spec(), tmp_path / "a.tsv", epsilon=0.1, num_steps=2,
                   num_noise=4, n=200, alpha=0.01)
    decide_dataset(model, ds, spec(), tmp_path / "d.tsv", radii=[0.1], **CERTIFY)
    assert calls == []  # core's own checks never ran: the runners' ran once, by import
    smooth = Smooth(model, 3, 0.25)
    smooth.certificate(ds[0][0], 10, 200, 0.01, 64)
    smooth.predict(ds[0][0], 200, 0.01, 64)
    assert calls == ["check_certify_args", "check_predict_args"]  # public methods check


def test_a_larger_max_extends_a_finished_file(tmp_path, model):
    # Issue 27 item 5: --max 7 after --max 5, everything else unchanged, was refused as
    # "another run". The rows of a run depend only on its settings and (seed, idx).
    ds = ToyDataset()
    whole = certify_dataset(model, ds, spec(max_idx=7), tmp_path / "whole.tsv", **CERTIFY)
    path = certify_dataset(model, ds, spec(max_idx=5), tmp_path / "c.tsv", **CERTIFY)
    first = path.read_text().splitlines()
    certify_dataset(model, ds, spec(max_idx=7), path, **CERTIFY)
    assert path.read_text().splitlines()[:len(first)] == first  # appended, not rewritten
    assert rows(path) == rows(whole)
    record = json.loads((tmp_path / "c.tsv.json").read_text())
    assert record["settings"]["max_idx"] == 7
    assert record["info"]["extended_from_max_idx"] == [5]
    # ... and to all images (max_idx -1); rerunning it then has nothing to do.
    certify_dataset(model, ds, spec(), path, **CERTIFY)
    assert [int(r[0]) for r in rows(path)] == list(range(12))
    before = path.read_bytes()
    certify_dataset(model, ds, spec(), path, **CERTIFY)
    assert path.read_bytes() == before


def test_a_smaller_max_than_the_files_is_refused(tmp_path, model):
    ds = ToyDataset()
    path = certify_dataset(model, ds, spec(max_idx=7), tmp_path / "c.tsv", **CERTIFY)
    before = path.read_bytes(), (tmp_path / "c.tsv.json").read_bytes()
    with pytest.raises(SmoothmixError, match=r"max_idx: 7 in the file vs 5 now.*smaller max"):
        certify_dataset(model, ds, spec(max_idx=5), path, **CERTIFY)
    assert (path.read_bytes(), (tmp_path / "c.tsv.json").read_bytes()) == before
    # A larger max with another setting changed is still another run.
    with pytest.raises(SmoothmixError, match="another run"):
        certify_dataset(model, ds, spec(max_idx=9), path, **{**CERTIFY, "n": 300})


def test_torchrun_extends_a_merged_file(tmp_path, model, monkeypatch):
    ds = ToyDataset()
    single = certify_dataset(model, ds, spec(max_idx=9), tmp_path / "single.tsv", **CERTIFY)
    out = tmp_path / "dist.tsv"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for max_idx in (5, 9):  # a merged 2-rank run, then the same job with a larger --max
        for rank in ("1", "0"):
            monkeypatch.setenv("RANK", rank)
            certify_dataset(model, ds, spec(max_idx=max_idx), out, **CERTIFY)
    assert rows(out) == rows(single)
