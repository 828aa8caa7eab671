"""benchmarks/wait_policy.py runs at a tiny size (one process per policy), and prints
its table (numbers unchecked: timing is the lead's, on a quiet machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "wait_policy.py"


@pytest.mark.slow
def test_wait_policy_runs_tiny_once_per_policy():
    done = subprocess.run([sys.executable, str(SCRIPT), "--n", "200", "--repeats", "1",
                           "--threads", "1"], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert "N = 200, fp32, LeNet; 1 alternating runs per policy" in lines[0]
    passive, active = (line for line in lines if line.startswith(("| PASSIVE", "| ACTIVE")))
    assert passive.endswith("| 1.00x |") and len(passive.split("|")[2].split(", ")) == 1
    assert len(active.split("|")[2].split(", ")) == 1
    assert lines[-1].startswith("ACTIVE / PASSIVE per alternating pair: ")
    assert len(lines[-1].split(": ")[1].split(", ")) == 1
