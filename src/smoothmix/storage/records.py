"""The settings record beside a result file: ``FILE.json`` (kind, settings, info, provenance).

One type, :class:`ResultRecord`, reads every sidecar smoothmix has written: the top-level keys
other than ``kind``, ``settings`` and ``info`` are its provenance (``smoothmix``, and since
0.3 ``git_commit``), kept as they were, so a merge or a rewrite never changes what an older
release recorded. ``schema`` tells the layouts apart without a key on disk (the file format
stays that of the release that wrote it): 1 for releases up to 0.2, whose settings have no
execution keys (they ran in :data:`smoothmix.execution.LEGACY_EXECUTION`), 2 since 0.3.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smoothmix.errors import SmoothmixError, require
from smoothmix.storage import atomic_write

__all__ = ["ResultRecord", "new_record", "read_meta", "read_record", "record_path",
           "write_record"]


@dataclass(frozen=True)
class ResultRecord:
    """What ``FILE.json`` says about the run that wrote ``FILE``."""

    kind: str  # certify | predict | attack | decide
    settings: dict[str, Any]  # what decides a row: a resume or merge must agree on it
    info: dict[str, Any] = field(default_factory=dict)  # how it ran (batch, device, argv)
    provenance: dict[str, Any] = field(default_factory=dict)  # smoothmix, git_commit

    @property
    def schema(self) -> int:
        """1: settings without the execution keys (0.1, 0.2); 2: with them (0.3 on)."""
        return 2 if "precision" in self.settings else 1

    @property
    def release(self) -> str | None:
        """The smoothmix version that wrote the file."""
        return self.provenance.get("smoothmix")

    def comparable(self, now: Mapping[str, object]) -> dict[str, Any]:
        """The settings as the current release would write them: a schema-1 file ran in
        LEGACY_EXECUTION, its chunk and threads unknown (taken from ``now``)."""
        if self.schema == 2:
            return dict(self.settings)
        from smoothmix.execution import LEGACY_EXECUTION

        unknown = {k: now[k] for k in ("chunk", "threads") if k in now}
        return {**LEGACY_EXECUTION, **unknown, **self.settings}

    def with_settings(self, settings: Mapping[str, Any]) -> ResultRecord:
        return replace(self, settings=dict(settings))

    def to_json(self) -> dict[str, Any]:
        """The sidecar's JSON object, keys in the order smoothmix writes them."""
        return {**self.provenance, "kind": self.kind, "settings": self.settings,
                "info": self.info}


def record_path(path: str | os.PathLike) -> Path:
    """``FILE.json`` for ``FILE``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def new_record(kind: str, settings: Mapping[str, Any], info: Mapping[str, Any]) -> ResultRecord:
    """The record of a run starting now (with this release's provenance)."""
    from smoothmix.provenance import provenance

    return ResultRecord(kind, dict(settings), dict(info), dict(provenance()))


def read_record(path: str | os.PathLike, required: bool) -> ResultRecord | None:
    """The record of result file ``path``; None when it has none and it is not
    ``required``; one-line SmoothmixError when it is malformed."""
    meta_path = record_path(path)
    if not meta_path.exists():
        require(not required, f"{path} has no settings file {meta_path.name}")
        return None
    try:
        data = json.loads(meta_path.read_text())
        kind, settings = data["kind"], data["settings"]
        if not (isinstance(settings, dict) and isinstance(kind, str)):
            raise TypeError("not a settings record")
    except (ValueError, KeyError, TypeError):
        raise SmoothmixError(f"{meta_path} is not a smoothmix settings file") from None
    rest = {k: v for k, v in data.items() if k not in ("kind", "settings", "info")}
    return ResultRecord(kind, settings, dict(data.get("info") or {}), rest)


def read_meta(path: str | os.PathLike, required: bool) -> dict[str, Any] | None:
    """The sidecar of ``path`` as the plain dict it holds (``kind``, ``settings``, ...):
    ``None`` when there is none and it is not ``required``; SmoothmixError if malformed
    (:func:`read_record` gives it typed)."""
    record = read_record(path, required)
    return record.to_json() if record is not None else None


def write_record(path: str | os.PathLike, record: ResultRecord) -> None:
    """Write ``FILE.json`` for result file ``path`` atomically."""

    atomic_write(record_path(path), json.dumps(record.to_json(), indent=2) + "\n")
