"""scripts/denoised-mnist end to end at its TINY=1 size: every training, a few pipelines
certified both ways, a resume of an interrupted result file, and the summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "denoised-mnist"


def run(out: Path, *args: str) -> str:
    env = {**os.environ, "TINY": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), str(out), *args], env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_tiny_protocol_trains_certifies_resumes_and_summarises(tmp_path):
    out = tmp_path / "run"
    run(out, "--only", "train", "plain", "ddpm", "gaussian")
    for name in ("plain", "dncnn-mse", "dncnn-stability", "dncnn-mse-stability", "ddpm"):
        assert (out / name / "checkpoint.pth.tar").exists(), name
    for name in ("plain", "ddpm", "gaussian"):
        for kind in ("decide", "certify"):
            assert (out / f"{kind}_{name}.tsv").exists(), (kind, name)
    assert not (out / "decide_dncnn-mse.tsv").exists()

    decide = out / "decide_plain.tsv"  # interrupt: drop the last example's rows
    lines = decide.read_text(encoding="utf-8").splitlines(keepends=True)
    decide.write_text("".join(lines[:-4]), encoding="utf-8")
    without_time = [line.rsplit("\t", 1)[0] for line in lines]
    certified = (out / "certify_plain.tsv").read_text(encoding="utf-8")
    stdout = run(out, "--only", "plain")
    assert [line.rsplit("\t", 1)[0] for line in decide.read_text(encoding="utf-8")
            .splitlines(keepends=True)] == without_time  # the same rows (time aside)
    assert (out / "certify_plain.tsv").read_text(encoding="utf-8") == certified  # skipped
    assert "decide plain" in stdout and "certify plain" not in stdout

    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary in stdout
    row: dict[str, str] = {}  # the accuracy table's row of each pipeline (the first one)
    for line in summary.splitlines():
        if line.startswith("| "):
            row.setdefault(line.split(" | ")[0].lstrip("| "), line)
    assert row["dncnn-mse"].count("not run") >= 13
    assert row["gaussian"].endswith("| 3 / 3 |") and "not run" not in row["gaussian"]
    assert "| ddpm | 0.25 |" in summary and "| gaussian | 0.5 |" in summary
