"""Files written by older releases (0.2 = c643f3c, 0.3.0 = bfe2bd9, 0.4.0 = b76a30d) still
load, analyse to the same numbers, resume to the rows the old code wrote and merge to the
same file.

The fixtures were written by ``tests/fixtures/results/make_fixtures.py`` running the old
sources on a deterministic untrained lenet; ``calls.json`` beside them names each call, which
these tests replay with the current code on the same model (in the 0.5 form: the recorded
keywords of the run as a :class:`smoothmix.run.RunSpec`, see :func:`replay_args`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import smoothmix.certification as certification
from smoothmix.analysis import read_attack, read_decisions, read_results, read_run_info
from smoothmix.certification import merge_results, read_meta
from smoothmix.run import RunSpec
from smoothmix.storage.merge import merge
from smoothmix.storage.records import read_record
from smoothmix.targets import load_targets

FIXTURES = Path(__file__).parent / "fixtures" / "results"
VERSIONS = ("v0.2", "v0.3.0", "v0.4.0")
# The keywords of a recorded call that belong to the run (RunSpec.of's), not to the entry point.
RUN_KEYS = frozenset(f.name for f in dataclasses.fields(RunSpec)) | {"grid"}
# The numbers the old code computed (its own analysis agreed when the files were written).
CERTIFIED_AT = {0.0: 1 / 6, 0.4: 1 / 6, 0.45: 1 / 6, 0.5: 0.0}
ACR = 0.49994145254589606 / 6


def manifest(version: str) -> dict:
    return json.loads((FIXTURES / version / "calls.json").read_text())


def model() -> torch.nn.Module:
    from smoothmix.models import create_model

    torch.manual_seed(0)
    return create_model("lenet").eval()


def datasets(version: str) -> tuple[object, object]:
    from smoothmix.data import load_dataset

    m = manifest(version)
    return (load_dataset("mnist", "test").subset(m["images"]),
            load_dataset("mnist", "train").subset(m["train_images"]))


def replay_args(m: dict, kwargs: dict) -> tuple[RunSpec, dict]:
    """A call recorded in ``calls.json`` (keywords as the releases before 0.5 took them) in
    the 0.5 form, with the same values: the RunSpec of the manifest's sigma and identity and
    the recorded run keywords, and the entry point's own keywords."""
    spec = RunSpec.of(m["sigma"], identity=m["identity"],
                      **{k: v for k, v in kwargs.items() if k in RUN_KEYS})
    return spec, {k: v for k, v in kwargs.items() if k not in RUN_KEYS}


def without_time(path: Path) -> list[list[str]]:
    """The rows with the time column blanked (the only column that depends on the clock)."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    at = header.index("time")
    return [header] + [[f for i, f in enumerate(line.split("\t")) if i != at]
                       for line in lines[1:]]


def assert_same_rows(actual: list[list[str]], expected: list[list[str]]) -> None:
    """The same rows, cell for cell. A cell written as a non-integer number may differ in its
    last float32 bits (a few ulps, rel. 1e-6): the attack's distance is a float32 norm, and
    another CPU's kernels sum the convolution's gradient in another order. Every other cell
    (labels, predictions, counts, radii from counts, outcomes) must be identical."""
    assert len(actual) == len(expected) and actual[0] == expected[0]
    for got, want in zip(actual[1:], expected[1:], strict=True):
        assert len(got) == len(want), (got, want)
        for a, b in zip(got, want, strict=True):
            if a != b and "." in b:
                assert float(a) == pytest.approx(float(b), rel=1e-6), (got, want)
            else:
                assert a == b, (got, want)


@pytest.fixture(params=VERSIONS)
def old(request, tmp_path) -> Path:
    """A writable copy of one release's fixture folder."""
    copy = tmp_path / request.param
    shutil.copytree(FIXTURES / request.param, copy)
    return copy


def test_fixtures_are_small():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 300_000


def test_every_file_loads_and_analyses_to_the_same_numbers(old):
    res = read_results(old / "certify.tsv")
    assert len(res) == 6 and res.complete
    assert res.run is not None and res.run.sigma == 0.25 and res.run.n == 200
    assert res.run.precision == "fp32" and res.run.bound == "cohen"
    np.testing.assert_allclose(res.certified_accuracy(list(CERTIFIED_AT)),
                               list(CERTIFIED_AT.values()))
    assert res.acr() == pytest.approx(ACR, rel=1e-12)
    decisions = read_decisions(old / "decide.tsv")
    assert decisions.radii.tolist() == [0.0, 0.1]
    np.testing.assert_allclose(decisions.certified_accuracy(), [1 / 6, 1 / 6])
    np.testing.assert_allclose(decisions.mean_samples(), [16, 16])
    attack = read_attack(old / "attack.tsv")
    assert attack.epsilon == 0.1 and attack.alpha == 0.01
    assert attack.outcome.tolist() == ["changed"] * 4 + ["kept", "changed"]
    assert attack.robust_accuracy() == pytest.approx(1 / 6)
    predict = (old / "predict.tsv").read_text().splitlines()
    assert [line.split("\t")[2] for line in predict[1:]] == ["4"] * 6
    record = read_record(old / "certify.tsv", required=True)
    assert record is not None and record.kind == "certify"
    assert read_meta(old / "certify.tsv", required=True) == json.loads(
        (old / "certify.tsv.json").read_text())  # read as written
    assert read_run_info(old / "shards.rank0of2.tsv").selected == 3
    targets = load_targets(old / "targets.npz")
    assert targets.counts.shape == (8, 10) and targets.counts.sum(1).tolist() == [50] * 8


@pytest.mark.parametrize("name", ["certify.tsv", "predict.tsv", "decide.tsv", "attack.tsv"])
def test_a_truncated_copy_resumes_to_the_rows_the_old_code_wrote(old, name):
    m = manifest(old.name)
    call = m["calls"][name]
    original = without_time(FIXTURES / old.name / name)
    lines = (old / name).read_text().splitlines(keepends=True)
    # Keep the header and two examples' rows, then half of the next row: a crash.
    per_example = 2 if name == "decide.tsv" else 1
    keep = 1 + 2 * per_example
    (old / name).write_text("".join(lines[:keep]) + lines[keep][:7])
    test_set, _ = datasets(old.name)
    torch.set_num_threads(1)  # the fixtures ran on one thread (recorded in 0.3.0's files)
    spec, own = replay_args(m, call["kwargs"])
    getattr(certification, call["function"])(model(), test_set, spec, old / name, **own)
    assert_same_rows(without_time(old / name), original)
    assert (old / name).read_text().splitlines()[:keep] == [
        line.rstrip("\n") for line in lines[:keep]]  # the old rows are kept as they were


def test_shards_merge_to_the_same_file(old):
    merged = merge_results(old / "merged.tsv", [old / "shards.rank0of2.tsv",
                                                 old / "shards.rank1of2.tsv"])
    assert without_time(merged) == without_time(FIXTURES / old.name / "certify.tsv")
    settings = read_meta(merged, required=True)["settings"]
    assert settings["shard"] == "0/1"
    assert {k: v for k, v in settings.items() if k != "shard"} == {
        k: v for k, v in read_meta(old / "shards.rank0of2.tsv", True)["settings"].items()
        if k != "shard"}
    # The one merge command takes the targets shards of the same release too.
    out = merge(old / "tmerged.npz", [old / "tshards.rank0of2.npz", old / "tshards.rank1of2.npz"])
    whole = load_targets(old / "targets.npz")
    assert np.array_equal(load_targets(out).counts, whole.counts)
    assert {k: v for k, v in load_targets(out).meta.items()} == whole.meta


def test_a_new_run_into_an_old_file_with_other_settings_is_refused(old):
    from smoothmix.errors import SmoothmixError

    m = manifest(old.name)
    spec, own = replay_args(m, {**m["calls"]["certify.tsv"]["kwargs"], "n": 300})
    test_set, _ = datasets(old.name)
    with pytest.raises(SmoothmixError, match="another run"):
        certification.certify_dataset(model(), test_set, spec, old / "certify.tsv", **own)


def test_a_new_run_writes_the_old_columns_as_the_old_code_did(old, tmp_path):
    """The 0.5 format only adds columns (selected, n_label): a fresh run with the current
    code holds, in the columns an older release wrote, the values that release wrote."""
    m = manifest(old.name)
    call = m["calls"]["certify.tsv"]
    test_set, _ = datasets(old.name)
    torch.set_num_threads(1)
    spec, own = replay_args(m, call["kwargs"])
    new = certification.certify_dataset(model(), test_set, spec, tmp_path / "new.tsv", **own)
    rows = without_time(new)
    original = without_time(FIXTURES / old.name / "certify.tsv")
    assert rows[0][-2:] == ["selected", "n_label"]
    width = len(original[0])  # the header keeps the time column, the rows do not
    assert_same_rows([rows[0][:width]] + [row[:width - 1] for row in rows[1:]], original)
    names = [c for c in rows[0] if c != "time"]
    for row in [dict(zip(names, r, strict=True)) for r in rows[1:]]:
        assert row["n_label"] != "-1" and (row["selected"] == row["predict"]
                                           or row["status"] != "certified")
