"""scripts/denoised-mnist end to end at its TINY=1 size: every training, a few pipelines
certified both ways, a resume of an interrupted result file, and the summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_script

from smoothmix.cli import main as smoothmix_main

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "denoised-mnist"


def run(out: Path, *args: str) -> str:
    """The script as the plan runs it: its own process, each smoothmix command another."""
    env = {**os.environ, "TINY": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), str(out), *args], env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def run_in_process(monkeypatch: pytest.MonkeyPatch, out: Path, *args: str) -> None:
    """The script's main in this process, its smoothmix commands through ``cli.main``: the
    same commands, without paying torch's and scipy's imports (~8 s on 2 cores) for each of
    the eleven (the subprocess route is run() below, once)."""
    script = load_script(SCRIPT)

    def smoothmix(*command: str) -> None:
        code = smoothmix_main(list(command))
        assert code == 0, f"step failed (exit {code}): {' '.join(command)}"

    monkeypatch.setattr(script, "smoothmix", smoothmix)
    monkeypatch.setenv("TINY", "1")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(out), *args])
    script.main()


@pytest.mark.slow
def test_tiny_protocol_trains_certifies_resumes_and_summarises(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_in_process(monkeypatch, out, "--only", "train", "plain", "ddpm", "gaussian")
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
    stdout = run(out, "--only", "plain")  # the resume in a process of its own, as in a run
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


def test_a_failed_step_stops_the_script_with_its_command():
    script = load_script(SCRIPT)
    with pytest.raises(SystemExit, match=r"step failed \(exit 2\): certify --no-such-flag"):
        script.smoothmix("certify", "--no-such-flag")
