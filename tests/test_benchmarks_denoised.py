"""benchmarks/denoised_certify.py runs at a tiny size and prints its table (numbers unchecked:
timing is the lead's, on a quiet machine)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
def test_denoised_certify_runs_tiny_and_writes_its_table(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import denoised_certify

    out = tmp_path / "bench.md"
    report = denoised_certify.main(["--images", "1", "--n", "100", "--ddpm-images", "1",
                                    "--ddpm-n", "20", "--n0", "10", "--batch", "50",
                                    "--out", str(out)])
    assert out.read_text(encoding="utf-8") == report
    assert report in capsys.readouterr().out
    rows = [line for line in report.splitlines() if line.startswith("| dncnn")
            or line.startswith("| ddpm")]
    assert len(rows) == 2
    assert "untrained (seed 1)" in rows[0] and ">= 1.5" in rows[0]
    assert "untrained (seed 2)" in rows[1] and "none (measured)" in rows[1]
    assert "torch " in report and "threads" in report
    del sys.modules["denoised_certify"]
