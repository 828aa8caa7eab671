"""scripts/gpu-check: the budget planner, and a whole ``--smoke`` run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import helpers
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu-check"


def load_script():
    return helpers.load_script(SCRIPT)


def test_planner_predicts_from_the_probe_and_takes_the_largest_budget_that_fits(tmp_path):
    gc = load_script()
    probe = (1, 1000, 100, 1000)  # 1 epoch of 1000 images; 100 test images x 1100 samples
    summary = {"rows": [
        {"method": "gaussian", "train_seconds": 1.0, "certify_seconds": 1.1},
        {"method": "smoothmix", "train_seconds": 4.0, "certify_seconds": 1.1},
    ]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    rates = gc.probe_rates(tmp_path / "summary.json", probe)
    assert rates["smoothmix"]["train_s_per_image_epoch"] == pytest.approx(4e-3)
    assert rates["gaussian"]["certify_s_per_sample"] == pytest.approx(1e-5)
    budget = (10, 60_000, 20, 10_000)  # 500 test images x 10,100 samples
    expected = 2 * 5.0 + (1e-3 + 4e-3) * 10 * 60_000 + 2 * 1e-5 * 500 * 10_100
    assert gc.predict_seconds(rates, budget) == pytest.approx(expected)
    budgets = [(90, 60_000, 1, 100_000), budget, (1, 10_000, 100, 10_000)]
    # 3,111 s needed: it fits only when 0.8 x the time left covers it
    assert gc.choose_budget(rates, budgets, expected / gc.SAFETY + 1) == (budget, expected)
    assert gc.choose_budget(rates, budgets, expected / gc.SAFETY - 1)[0] == budgets[2]
    assert gc.choose_budget(rates, budgets, 10) is None
    assert gc.BUDGETS[0] == (90, 60_000, 1, 100_000)  # the full published budget comes first
    full = gc.reproduce_cmd("py", tmp_path, gc.BUDGETS[0], "cuda")
    assert full[:6] == ["py", "-m", "smoothmix", "reproduce", "mnist-0.50", "--methods"]
    assert full[full.index("--outdir") + 1] == str(tmp_path) and "--epochs" not in full
    short = gc.reproduce_cmd("py", tmp_path, budget, "cuda")
    assert short[short.index("--epochs") + 1] == "10" and "--warmup" in short


@pytest.mark.slow
def test_smoke_runs_every_stage_on_the_cpu_into_at_most_8_files(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, MPLBACKEND="Agg")
    # --smoke fits 3 minutes on quiet cores; the budget here leaves room for busy shared
    # ones (every stage imports torch afresh, which alone takes 20-50 s at a load of 15).
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--smoke",
                             "--minutes", "5"], capture_output=True, text=True, timeout=400,
                            env=env)
    files = sorted(out.iterdir())
    assert all(f.is_file() for f in files) and len(files) <= 8, files
    assert all(f.stat().st_size < 16 * 2**20 for f in files)
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert summary["smoke"] and summary["seconds"] < 300, result.stdout[-3000:]
    assert stages["install"]["status"] == "skipped"
    # Every stage has its record; on shared, loaded cores a benchmark may be stopped at its
    # limit or find no time left, and says so.
    for name in ("train_lenet", "train_resnet110", "certify_lenet", "certify_resnet110"):
        assert stages[name]["status"] in ("ok", "stopped at its time limit", "skipped"), (
            name, stages[name])
    assert stages["cuda_tier"]["status"] == "ok", (stages, result.stdout[-3000:])
    assert stages["reproduce_probe"]["status"] == "ok", (stages, result.stdout[-3000:])
    # The CUDA tier ran and was skipped here, with its reason, in the junit summary.
    suite = ET.parse(out / "cuda-tier.xml").getroot().iter("testsuite").__next__()
    assert int(suite.get("skipped")) == int(suite.get("tests")) >= 8
    assert "no CUDA device" in (out / "cuda-tier.log").read_text()
    # The probe's measured rates planned the reproduce stage; a table came back either way.
    repro = summary["reproduce"]
    assert set(repro["rates"]) == {"gaussian", "smoothmix"}
    assert "table_budget" in repro and (out / "table.md").is_file()
    assert "gaussian" in (out / "table.md").read_text()
    assert result.returncode == (0 if all(s["status"] in ("ok", "skipped")
                                          for s in stages.values()) else 1)
