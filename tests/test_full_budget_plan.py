"""scripts/full-budget-plan: every step names a real preset at a precision the bf16 checks
allow, and a run (with stand-in installs that only echo their commands) trains each row
from the training install, then certifies every row its folder holds from the other."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from smoothmix.training.presets import get_preset

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("full-budget-plan", "full-budget-train")


def plan() -> list[tuple[str, str, str]]:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "full-budget-plan"), "--list"],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines()]  # type: ignore[misc]


def test_every_step_is_a_preset_at_an_allowed_precision():
    steps = plan()
    assert steps[0] == ("1.00", "-", "-") and steps.count(("denoised",)) == 1
    steps = [step for step in steps if step != ("denoised",)]
    trained = [(sigma, row) for sigma, row, _ in steps if row != "-"]
    assert len(trained) == len(set(trained))
    for sigma, row, precision in steps:
        if row == "-":
            continue
        preset = get_preset(f"mnist-{row}-{sigma}")  # raises on a misspelt row or sigma
        assert preset.sigma == float(sigma)
        # results/2026-12-06-bf16-check-cpu: MACER may not train in bf16; Stability,
        # Consistency and SmoothMix at T = 3 were never checked.
        allowed = {"gaussian", "smoothadv", "smoothmix", "smoothmix-onestep"}
        kind = "smoothmix" if row.startswith("smoothmix-eta") else row  # the η rows: T = 8
        if kind == "smoothmix" and preset.options["num_steps"] not in (4, 8):
            allowed.discard("smoothmix")
        assert precision == ("bf16" if kind in allowed else "fp32"), (sigma, row, precision)


def stand_in(path: Path) -> Path:
    """A venv whose smoothmix and python print their command lines."""
    (path / "bin").mkdir(parents=True)
    for name, body in (("smoothmix", 'echo "smoothmix $*"'),
                       # A checkpoint's "precision epoch epochs" come from CKPT.info.
                       ("python", 'if [ "$1" = -c ]; then case $2 in *read_checkpoint*) '
                                  'cat "$3.info" ;; *) echo "abc123 0.0" ;; esac; '
                                  'else echo "python $*"; fi')):
        exe = path / "bin" / name
        exe.write_text(f"#!/usr/bin/env bash\n{body}\n")
        exe.chmod(0o755)
    return path


def copy_plan(tmp_path: Path) -> dict[str, str]:
    """The two scripts under tmp_path/scripts, and the environment of a run with stand-in
    installs on a CPU with bf16 hardware."""
    for name in SCRIPTS:
        (tmp_path / "scripts").mkdir(exist_ok=True)
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    for folder in ("2026-12-01-mnist-0.50-full", "2026-12-06-mnist-1.00-full"):
        (tmp_path / "results" / folder).mkdir(parents=True)
    train_env, certify_env = stand_in(tmp_path / "train"), stand_in(tmp_path / "certify")
    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    return {**os.environ, "TRAIN_ENV": str(train_env), "CERTIFY_ENV": str(certify_env),
            "CPUINFO": str(tmp_path / "cpuinfo")}


def test_each_row_is_trained_then_every_held_row_certified(tmp_path):
    env = copy_plan(tmp_path)
    script = str(tmp_path / "scripts" / "full-budget-plan")
    subprocess.run(["bash", script], env=env, check=True, capture_output=True)

    one = (tmp_path / "results" / "2026-12-06-mnist-1.00-full" / "certify.log").read_text()
    runs = [line for line in one.splitlines() if line.startswith("smoothmix reproduce")]
    assert runs[0].startswith("smoothmix reproduce mnist-1.00 --methods "
                              "consistency,stability,gaussian --skip 20 "
                              "--decide-radii 0,0.5,1,1.5,2 ")
    assert "--methods consistency,stability,gaussian,smoothmix " in runs[1]
    assert "python scripts/certify-undecided" in one and "install abc123 0.0" in one
    train = (tmp_path / "results" / "2026-12-06-mnist-1.00-full" / "train.log").read_text()
    assert ("smoothmix train --preset mnist-macer-1.00 --seed 0 --test-subset 1000 "
            "--outdir results/2026-12-06-mnist-1.00-full/macer --precision fp32") in train
    # The sigma = 0.25 folder did not exist: the plan makes one, dated, and fills it.
    (quarter,) = (tmp_path / "results").glob("*-mnist-0.25-full")
    runs = [line for line in (quarter / "certify.log").read_text().splitlines()
            if line.startswith("smoothmix reproduce")]
    assert runs[0].split(" --skip")[0] == "smoothmix reproduce mnist-0.25 --methods gaussian"
    assert "--decide-radii 0,0.25,0.5,0.75 " in runs[-1]
    # The η rows: their own folder, CERTIFY only (no KT decisions, nothing undecided).
    (eta,) = (tmp_path / "results").glob("*-mnist-1.00-eta")
    log = (eta / "certify.log").read_text()
    runs = [line for line in log.splitlines() if line.startswith("smoothmix reproduce")]
    assert runs[-1].startswith("smoothmix reproduce mnist-1.00 --methods smoothmix-eta1,"
                               "smoothmix-eta4,smoothmix-eta16,smoothmix-eta2,smoothmix-eta8 "
                               f"--skip 20 --outdir {eta.relative_to(tmp_path)} ")
    assert "--decide-radii" not in log and "certify-undecided" not in log
    # Issue 28's protocol, once, from the certification install, into its own folder.
    (denoised,) = (tmp_path / "results").glob("*-denoised-mnist-0.50")
    assert (f"python scripts/denoised-mnist {denoised.relative_to(tmp_path)}"
            in (denoised / "run.log").read_text())

    missing = subprocess.run(["bash", script], env={**env, "TRAIN_ENV": ""},
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "TRAIN_ENV" in missing.stderr


def trained_precisions(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """Run the plan; each sigma = 0.5 row's --precision as the training command got it."""
    subprocess.run(["bash", str(tmp_path / "scripts" / "full-budget-plan")], env=env,
                   check=True, capture_output=True)
    log = (tmp_path / "results" / "2026-12-01-mnist-0.50-full" / "train.log").read_text()
    return {line.split("--preset mnist-")[1].split("-0.50")[0]: line.split("--precision ")[1]
            .split()[0] for line in log.splitlines() if line.startswith("smoothmix train")}


def test_bf16_only_on_a_cpu_with_bf16_hardware_and_a_resume_keeps_its_precision(tmp_path):
    half = tmp_path / "results" / "2026-12-01-mnist-0.50-full"
    env = copy_plan(tmp_path)
    assert trained_precisions(tmp_path, env) == {"smoothadv": "bf16", "macer": "fp32"}

    # No AMX, no AVX-512-BF16 (an AMD EPYC Zen 3): bf16 would be emulated, 9x slower.
    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu avx2 fma\n")
    assert trained_precisions(tmp_path, env) == {"smoothadv": "fp32", "macer": "fp32"}

    # A bf16 checkpoint past a third of its epochs resumes in bf16 (a resume must agree)...
    ckpt = half / "smoothadv" / "checkpoint.pth.tar"
    ckpt.parent.mkdir()
    ckpt.write_text("stand-in")
    Path(f"{ckpt}.info").write_text("bf16 30 90\n")
    assert trained_precisions(tmp_path, env)["smoothadv"] == "bf16"
    assert ckpt.exists()
    # ...one under a third restarts in fp32 from nothing, and says so in train.log.
    Path(f"{ckpt}.info").write_text("bf16 29 90\n")
    assert trained_precisions(tmp_path, env)["smoothadv"] == "fp32"
    assert not ckpt.parent.exists()
    assert "bf16 at epoch 29 of 90 on a CPU without bf16 hardware: restarting in fp32" in (
        half / "train.log").read_text()
