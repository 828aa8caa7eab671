"""The throughput benchmarks refuse a precision they cannot time, in one usage line, before
loading a model or data (they run whole under scripts/gpu-check --smoke)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("name", ["certify_throughput", "train_throughput"])
def test_an_unknown_precision_is_a_usage_error(name, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = __import__(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--precision", "fp32,fp16"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("error: --precision takes fp32 and bf16, not fp32,fp16")
    assert "Traceback" not in "".join(err)
