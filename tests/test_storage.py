"""smoothmix.storage pieces that the dataset runs share: rows fitted to an older file's
header, and the resumable row array behind CAT-RS targets."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from smoothmix.errors import SmoothmixError
from smoothmix.storage.arrays import ResumableRows, part_paths, read_arrays, require_same
from smoothmix.storage.table import COLUMNS, LEGACY, fit_row


def test_fit_row_cuts_columns_an_older_header_lacks():
    row = [3, 7, 7, "0.5", 1, "0.1000", 210, "certified", 190, 5, "cohen", 7, 190]
    assert fit_row("certify", row, COLUMNS["certify"]) == row
    assert fit_row("certify", row, LEGACY["certify"][0]) == row[:6]
    assert fit_row("certify", row, LEGACY["certify"][1]) == row[:8]
    assert fit_row("certify", row, LEGACY["certify"][2]) == row[:11]  # 0.3 to 0.4


@pytest.mark.parametrize(("label", "clean", "adv", "robust"),
                         [(2, 2, 2, 1), (2, 2, -1, 0), (2, 2, 5, 0), (2, 4, 2, 0)])
def test_fit_row_writes_robust_for_a_0_1_attack_file(label, clean, adv, robust):
    row = [0, label, clean, int(clean == label), "0.1", adv, "0.25", "kept"]
    assert fit_row("attack", row, COLUMNS["attack"]) == row
    assert fit_row("attack", row, LEGACY["attack"][0]) == [*row[:-1], robust]


def test_resumable_rows_resume_refuse_and_finish(tmp_path):
    target = tmp_path / "t.npz"
    settings = {"n": 3, "seed": 0}
    table = ResumableRows(target, settings, (4, 2), np.uint16, {"device": "cpu"}, "test")
    work, work_meta = part_paths(target)
    assert work.exists() and json.loads(work_meta.read_text())["settings"] == settings
    table.rows[1] = [1, 2]
    table.wrote()
    del table  # a crash: the part files stay
    with pytest.raises(SmoothmixError, match=r"\(an unfinished run\) was built by another run"):
        ResumableRows(target, {"n": 3, "seed": 1}, (4, 2), np.uint16, {}, "test")
    with pytest.raises(SmoothmixError, match="has shape"):
        ResumableRows(target, settings, (5, 2), np.uint16, {}, "test")
    table = ResumableRows(target, settings, (4, 2), np.uint16, {}, "test")
    assert table.rows[1].tolist() == [1, 2]  # resumed, not restarted
    table.rows[0] = [3, 0]
    table.finish({**settings, "shard": "0/1"})
    assert not work.exists() and not work_meta.exists()
    counts, meta = read_arrays(target, "test file")
    assert counts.tolist() == [[3, 0], [1, 2], [0, 0], [0, 0]] and meta["shard"] == "0/1"


def test_resumable_rows_name_a_damaged_part(tmp_path):
    target = tmp_path / "t.npz"
    work, work_meta = part_paths(target)
    work.write_bytes(b"not numpy")
    work_meta.write_text("{}")
    with pytest.raises(SmoothmixError, match="is not a test settings file"):
        ResumableRows(target, {}, (1, 2), np.uint16, {}, "test")
    work_meta.write_text(json.dumps({"settings": {}}))
    with pytest.raises(SmoothmixError, match="is damaged"):
        ResumableRows(target, {}, (1, 2), np.uint16, {}, "test")


def test_require_same_names_the_difference():
    require_same("f", {"a": 1}, {"a": 1})
    with pytest.raises(SmoothmixError, match=r"f was built by another run \(a: 1 in the file"):
        require_same("f", {"a": 1}, {"a": 2})


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    """Files written whole (results, sidecars, checkpoints, reports) get the mode any file
    the user creates gets, not mkstemp's 0600, so colleagues on a cluster can read them."""
    from smoothmix.storage import atomic_write, atomic_write_with

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        atomic_write_with(tmp_path / "b.bin", lambda fh: fh.write(b"x"))
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


def test_atomic_append_adds_whole_lines_or_nothing(tmp_path, monkeypatch):
    from smoothmix import storage

    log = tmp_path / "sub" / "log.csv"
    storage.atomic_append(log, "epoch,loss\r\n")  # a missing file (and folder) starts empty
    storage.atomic_append(log, "1,0.5\r\n")
    assert log.read_bytes() == b"epoch,loss\r\n1,0.5\r\n"

    # Killed in the middle of the write: the file is as it was, no half line, no temp file.
    real = os.fsync

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        storage.atomic_append(log, "2,0.4\r\n")
    monkeypatch.setattr(storage.os, "fsync", real)
    assert log.read_bytes() == b"epoch,loss\r\n1,0.5\r\n"
    assert [p.name for p in log.parent.iterdir()] == ["log.csv"]


def test_the_storage_layers_value_lists_are_the_libraries():
    # storage keeps them as literals so that it imports neither scipy nor torch.
    from smoothmix.sequences import DECISIONS
    from smoothmix.statistics import BOUNDS
    from smoothmix.storage.table import _CHOICES

    assert _CHOICES["bound"] == BOUNDS and _CHOICES["decision"] == DECISIONS
