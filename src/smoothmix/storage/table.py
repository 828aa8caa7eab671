"""The result table: one tab-separated header line, then one row per example (or, for
``decide`` files, one group of rows per example, written together).

This module is the one reader and writer of these files. It knows every header smoothmix
has written (:data:`COLUMNS`, and :data:`LEGACY` for older releases, which resume in their
own format), parses a row by its column names (:func:`parse_fields`: the same rules for a
resume, a merge and analysis), cuts off the torn last line a crash leaves
(:func:`read_rows` with ``repair``), fsyncs every row group as it is written
(:class:`RowWriter`), refuses a file of another run (:func:`resumable_rows`) and merges the
shards of one run (:func:`merge_tables`). Radii are written with ``repr`` so that no
example moves across a ``>= r`` threshold; times are seconds (the reference code's
``H:MM:SS.ffffff`` is read too).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from smoothmix.errors import require
from smoothmix.storage import atomic_write, differing_keys, settings_diff
from smoothmix.storage.merge import same_run
from smoothmix.storage.records import ResultRecord, read_record, write_record
from smoothmix.storage.shards import extends_selection

__all__ = ["ATTACK_OUTCOMES", "COLUMNS", "LEGACY", "RowWriter", "Table", "fit_row", "has_rows",
           "header_of", "merge_tables", "parse_fields", "parse_time", "read_rows",
           "require_complete", "resumable_rows", "start_table"]

COLUMNS: dict[str, tuple[str, ...]] = {
    # n_a, n_b: the estimation's votes for the selected class and the largest other count
    # (-1 when skipped), from which either bound's radius can be recomputed; bound: the
    # formula of the radius column (cohen or two-sided). (0.5) selected: the class the n0
    # selection chose (abstentions and skipped rows too); n_label: the estimation's votes
    # for the label (-1 when no estimation ran: skipped), for p_y = n_label / (samples - n0).
    "certify": ("idx", "label", "predict", "radius", "correct", "time", "samples", "status",
                "n_a", "n_b", "bound", "selected", "n_label"),
    "predict": ("idx", "label", "predict", "correct", "time"),
    # attack_dataset: PREDICT at x (predict, correct) and at the attacked point
    # (adv_predict; adv_outcome: kept the label, abstained, or changed to another class).
    "attack": ("idx", "label", "predict", "correct", "time", "adv_predict", "distance",
               "adv_outcome"),
    # decide_dataset: one row per (example, radius), an example's rows written together.
    # Not the certify names on purpose: `tested` is the class tested (the label in label
    # mode, certified or not) and `at_radius` the radius asked about, so a script written
    # for certify files (`(correct & radius >= r)`) fails on a KeyError instead of
    # computing nonsense.
    "decide": ("idx", "label", "tested", "at_radius", "decision", "certified_correct",
               "samples", "time"),
}
# Headers of older smoothmix files that a run may still resume or merge, in their format.
LEGACY: dict[str, tuple[tuple[str, ...], ...]] = {
    "certify": (("idx", "label", "predict", "radius", "correct", "time"),
                ("idx", "label", "predict", "radius", "correct", "time", "samples", "status"),
                ("idx", "label", "predict", "radius", "correct", "time", "samples", "status",
                 "n_a", "n_b", "bound")),  # 0.3 to 0.4
    "decide": (("idx", "label", "predict", "radius", "decision", "correct", "samples",
                "time"),),
    # smoothmix 0.1/0.2 attack files: robust = PREDICT returned the label at both points.
    "attack": (("idx", "label", "predict", "correct", "time", "adv_predict", "distance",
                "robust"),),
}
ATTACK_OUTCOMES = ("kept", "abstained", "changed")
# Literals, not imports: storage loads neither scipy (statistics) nor torch (sequences);
# tests/test_storage.py holds them equal to those modules' lists.
_CHOICES = {"status": ("certified", "abstain", "skipped"),
            "bound": ("cohen", "two-sided"),  # smoothmix.statistics.BOUNDS
            "decision": ("certified", "not-certified", "undecided"),  # sequences.DECISIONS
            "adv_outcome": ATTACK_OUTCOMES}
_INTEGER = ("idx", "label", "predict", "tested", "selected", "n_label")
_REAL = ("radius", "at_radius", "samples", "distance", "n_a", "n_b")


def parse_time(text: str) -> float:
    """Seconds from ``12.5`` (smoothmix) or ``H:MM:SS.ffffff`` / ``D day, H:MM:SS`` (the
    reference code's ``str(timedelta)``)."""
    days = 0.0
    if "day" in text:
        day_part, text = text.split(",")
        days = float(day_part.split()[0])
    parts = [float(p) for p in text.strip().split(":")]
    if len(parts) > 3:
        raise ValueError(text)
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return days * 86400 + seconds


def parse_fields(raw: bytes | str, columns: Sequence[str]) -> list[str] | None:
    """The fields of one row if each known column holds a value of its type (integers,
    reals, a time, one of the named choices); None for a torn or malformed row."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        fields = text.split("\t")
        if len(fields) != len(columns):
            return None
        for name, value in zip(columns, fields, strict=True):
            if name in _INTEGER:
                int(value)
            elif name in _REAL:
                float(value)
            elif name == "time":
                parse_time(value)
            elif name in _CHOICES and value not in _CHOICES[name]:
                return None
        return fields
    except ValueError:
        return None


@dataclass(frozen=True)
class Table:
    """The complete rows of a result file: ``lines`` (each ending in a newline) and their
    ``idx``, in file order."""

    path: Path
    columns: tuple[str, ...]
    lines: list[str]
    idx: list[int]

    def rows_per_example(self) -> Counter[int]:
        """How many rows each idx has (decide files: one per radius)."""
        return Counter(self.idx)

    def records(self) -> list[dict[str, str]]:
        """Each row as {column: text}."""
        return [dict(zip(self.columns, line.rstrip("\n").split("\t"), strict=True))
                for line in self.lines]


def header_of(path: str | os.PathLike) -> tuple[str, ...]:
    with open(path, "rb") as fh:
        return tuple(fh.readline().decode("utf-8", "replace").rstrip("\n").split("\t"))


def has_rows(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists and holds something after its header line."""
    if not Path(path).exists():
        return False
    with open(path, "rb") as fh:
        head = fh.read(4096)
    return head.count(b"\n") >= 1 and len(head) > head.index(b"\n") + 1


def _check_header(path: Path, columns: tuple[str, ...], kind: str | None, raw: bytes) -> None:
    require(kind is None or columns == COLUMNS[kind] or columns in LEGACY.get(kind, ()),
            f"{path} is not a smoothmix {kind} result file (header {raw[:60]!r})")


def read_rows(path: str | os.PathLike, kind: str | None = None, *, repair: bool = False,
              strict: bool = True, analysis: bool = False) -> Table:
    """The complete rows of ``path`` (of result ``kind``, any header when None).

    A torn or malformed *last* line is what a crash leaves behind: it is cut off when
    ``repair``, an error when ``strict``, else ignored. A malformed line anywhere else means
    the file is damaged. ``analysis``: blank lines are skipped and any malformed line is an
    error naming it (a file read for numbers must be whole).
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    raw_header, complete, tail = lines[0], lines[1:-1], lines[-1]
    columns = tuple(raw_header.decode("utf-8", "replace").split("\t"))
    _check_header(path, columns, kind, raw_header)
    rows: list[str] = []
    idx: list[int] = []
    good_end = len(raw_header) + 1
    for pos, raw in enumerate([*complete, tail] if analysis else complete):
        fields = parse_fields(raw, columns) if raw.strip() or not analysis else []
        if fields is None:
            require(not analysis, f"{path}: line {pos + 2} is malformed: {raw[:80]!r}")
            require(pos == len(complete) - 1 and not tail,
                    f"{path}: line {pos + 2} is damaged ({raw[:60]!r}); fix or remove it")
            tail = raw
            break
        if fields:
            rows.append(raw.decode() + "\n")
            idx.append(int(fields[0]))
        good_end += len(raw) + 1
    if tail and not analysis:
        require(repair or not strict, f"{path} ends in an incomplete row; rerun to repair it")
        if repair:
            with open(path, "r+b") as fh:
                fh.truncate(good_end)
    return Table(path, columns, rows, idx)


def start_table(path: Path, record: ResultRecord) -> None:
    """A new run's file: its record, then the header of its kind (each written atomically)."""

    write_record(path, record)
    atomic_write(path, "\t".join(COLUMNS[record.kind]) + "\n")


def resumable_rows(path: Path, kind: str, settings: Mapping[str, Any], *, repair: bool = True,
                   group: int = 1) -> Table | None:
    """The rows already in ``path`` if it belongs to this run (a torn last line, or the
    rows of an example a crash cut short when an example has ``group`` rows, repaired
    when ``repair``); None if there is nothing to resume; SmoothmixError if it is another
    run's file (the differing settings named by :func:`smoothmix.storage.settings_diff`)."""

    if not has_rows(path):
        return None
    record = read_record(path, required=False)
    require(record is not None,
            f"{path} exists but has no settings file {path.name}.json, so it cannot be "
            "resumed safely; choose another output file or move it away")
    assert record is not None
    old = record.comparable(settings)
    diff = settings_diff(old, settings)
    extend = record.kind == kind and extends_selection(old, settings)
    require(record.kind == kind and (not diff or extend),
            f"{path} was written by another run ({diff or record.kind + ' file'}); rerun with "
            "the same settings to resume, or choose another output file"
            + ("; a smaller max_idx (--max) than the file's is not cut out of it"
               if differing_keys(old, settings) == ["max_idx"] else ""))
    if extend and diff and repair:  # the same run asked for more images: extend the file
        write_record(path, _extended(record, settings))
    table = read_rows(path, kind, repair=repair, strict=repair)
    return _drop_partial_group(table, group) if repair and group > 1 else table


def _extended(record: ResultRecord, settings: Mapping[str, Any]) -> ResultRecord:
    """``record`` with the larger ``max_idx`` of ``settings`` (the file's own format kept),
    and in its info each earlier max_idx the file was extended from."""
    before = record.settings.get("max_idx")
    info = {**record.info, "extended_from_max_idx": [
        *record.info.get("extended_from_max_idx", []), before]}
    return replace(record.with_settings({**record.settings, "max_idx": settings["max_idx"]}),
                   info=info)


def _drop_partial_group(table: Table, group: int) -> Table:
    """Remove the rows of an example cut short by a crash (only ever the last written)."""

    counts = table.rows_per_example()
    partial = [i for i, c in counts.items() if c != group]
    require(not partial or (len(partial) == 1 and partial[0] == table.idx[-1]
                            and counts[partial[0]] < group),
            f"{table.path} has examples with a wrong number of rows ({partial[:3]}); it is "
            "damaged")
    if not partial:
        return table
    keep = len(table.lines) - counts[partial[0]]
    atomic_write(table.path, "\t".join(table.columns) + "\n" + "".join(table.lines[:keep]))
    return Table(table.path, table.columns, table.lines[:keep], table.idx[:keep])


def fit_row(kind: str, fields: Sequence[object], columns: Sequence[str]) -> list[object]:
    """A row of :data:`COLUMNS` ``[kind]`` as a file of ``columns`` (an older release's header
    of :data:`LEGACY`) holds it: the columns it lacks cut off; a 0.1.0 attack file's last
    column is ``robust`` (PREDICT returned the label at x and at the attacked point), not
    the outcome."""
    fields = list(fields)
    if kind == "attack" and tuple(columns) in LEGACY["attack"]:
        label, prediction, adv = (int(fields[i]) for i in (1, 2, 5))  # type: ignore[call-overload]
        fields = [*fields[:-1], int(prediction == label and adv == label)]
    return fields[: len(columns)]


class RowWriter:
    """Appends row groups to a result file: each group is one write, flushed and fsync'ed,
    so a killed run loses at most the example in flight and tears at most its last row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def __enter__(self) -> RowWriter:
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._fh is not None
        self._fh.close()

    def write(self, rows: Iterable[Sequence[object]]) -> None:
        assert self._fh is not None
        self._fh.write("".join("\t".join(str(f) for f in row) + "\n" for row in rows))
        self._fh.flush()
        os.fsync(self._fh.fileno())


def require_complete(found: Iterable[int], expected: Iterable[int], what: str) -> None:
    found_set = set(found)
    expected = list(expected)
    missing = [i for i in expected if i not in found_set]
    require(not missing, f"{what} miss {len(missing)} example(s), first idx {missing[:5]}")
    extra = sorted(found_set - set(expected))
    require(not extra, f"{what} hold idx {extra[:5]} that the run's settings do not cover")


def merge_tables(out_path: str | os.PathLike, shards: Sequence[str | os.PathLike],
                 expected: Callable[[Mapping[str, Any]], Iterable[int]],
                 group: Callable[[Mapping[str, Any]], int] = lambda settings: 1) -> Path:
    """Merge the shard files of one run into ``out_path``, sorted by idx (an example's rows
    in their order). Refuses shards of different runs, a shard given twice or missing,
    rows that overlap, an example without all its ``group(settings)`` rows, and gaps
    relative to ``expected(settings)``, the examples the run covers."""

    require(len(shards) >= 1, "merge needs at least one shard file")
    records = [read_record(p, required=True) for p in shards]
    first = records[0]
    assert first is not None
    for path, rec in zip(shards, records, strict=True):
        assert rec is not None
        require(rec.kind == first.kind, f"{path} is a {rec.kind} file, {shards[0]} a "
                f"{first.kind} file")
    common, _ = same_run([(p, rec.settings) for p, rec in zip(shards, records, strict=True)
                          if rec is not None])
    columns = header_of(shards[0])
    rows: dict[int, list[str]] = {}
    for path in shards:
        require(header_of(path) == columns, f"{path} has other columns than {shards[0]}")
        table = read_rows(path, first.kind)
        mine: dict[int, list[str]] = {}
        for i, line in zip(table.idx, table.lines, strict=True):
            mine.setdefault(i, []).append(line)
        for i, lines in mine.items():
            require(i not in rows, f"idx {i} appears twice (overlapping shards at {path})")
            require(len(lines) == group(common), f"{path}: idx {i} has {len(lines)} rows, not "
                    f"{group(common)}; the shard is incomplete or damaged")
            rows[i] = lines
    require_complete(rows.keys(), expected(common), "merged shards")
    out = Path(out_path)
    merged = first.with_settings({**common, "shard": "0/1"})
    existing = read_record(out, required=False) if has_rows(out) else None
    if existing is not None:
        before = existing.comparable(merged.settings)
        diff = settings_diff(before, merged.settings)
        require(existing.kind == first.kind
                and (not diff or extends_selection(before, merged.settings)),
                f"{out} already holds another run ({diff or existing.kind}); choose another "
                "output file")
    write_record(out, merged)
    atomic_write(out, "\t".join(columns) + "\n" + "".join(
        line for i in sorted(rows) for line in rows[i]))
    return out

