"""`smoothmix train` / `smoothmix presets` end to end: real processes, SIGKILL, torchrun."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from smoothmix.checkpoint import load_checkpoint, load_model
from smoothmix.cli import main
from smoothmix.training import PRESETS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("SMOOTHMIX_DATA", None)
TINY = ["--dataset", "mnist", "--arch", "lenet", "--train-subset", "256", "--test-subset", "64",
        "--device", "cpu", "--no-progress", "--lr-step", "2"]


def smoothmix_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "smoothmix", *args]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(smoothmix_cmd(*args), env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def state_dict(outdir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(outdir / "checkpoint.pth.tar")["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def log_rows(outdir: Path) -> list[dict[str, str]]:
    with open(outdir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- kill and resume


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    args = [*TINY, "--method", "smoothmix", "--sigma", "0.5", "--num-noise", "2",
            "--num-steps", "2", "--batch", "32", "--epochs", "4"]
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    proc = subprocess.Popen(smoothmix_cmd("train", *args, "--outdir", str(killed)), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = killed / "checkpoint.pth.tar"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err  # it was killed, it did not finish
    epoch_at_kill = load_checkpoint(ckpt)["epoch"]
    assert 1 <= epoch_at_kill < 4

    resumed = run_cli("train", "--outdir", str(killed), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    full = run_cli("train", *args, "--outdir", str(ref))
    assert full.returncode == 0, full.stderr

    assert load_checkpoint(ckpt)["epoch"] == 4
    assert_same_weights(state_dict(killed), state_dict(ref))  # CPU: bit for bit
    rows_k, rows_r = log_rows(killed), log_rows(ref)
    assert [r["epoch"] for r in rows_k] == ["1", "2", "3", "4"]
    assert [r["train_loss"] for r in rows_k] == [r["train_loss"] for r in rows_r]
    assert [r["test_noisy_acc"] for r in rows_k] == [r["test_noisy_acc"] for r in rows_r]
    # StepLR every 2 epochs (from --lr-step 2, kept through the resume).
    assert [float(r["lr"]) for r in rows_k] == pytest.approx([0.01, 0.01, 0.001, 0.001])


# ---------------------------------------------------------------- bad input


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("smoothmix train: error: ")
    return lines[0]


@pytest.mark.parametrize("extra, message", [
    (["--method", "smoothmixx", "--sigma", "0.5"], "valid methods"),
    (["--method", "gaussian", "--sigma", "0.5", "--arch", "resnet18"], "unknown architecture"),
    (["--method", "gaussian", "--sigma", "0"], "sigma must be a positive number"),
    (["--method", "gaussian", "--sigma", "-0.5"], "sigma must be a positive number"),
    (["--method", "smoothmix", "--sigma", "0.5", "--num-noise", "0"], "m (--num-noise)"),
    (["--method", "smoothmix", "--sigma", "0.5", "--num-steps", "0"], "T (--num-steps)"),
    (["--method", "gaussian", "--sigma", "0.5", "--num-steps", "3"], "--num-steps is not"),
    (["--method", "smoothadv", "--sigma", "0.5", "--attack", "fgsm"], "pgd, ddn"),
    (["--preset", "mnist-smoothmix-0.3"], "did you mean 'mnist-smoothmix-0.50'"),
    (["--method", "gaussian", "--sigma", "0.5", "--batch", "0"], "batch size"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, extra, message):
    argv = ["train", "--dataset", "mnist", "--outdir", str(tmp_path / "o"), *extra]
    line = one_line_error(capsys, argv)
    assert message in line
    assert not (tmp_path / "o").exists()


def test_unknown_dataset_lists_valid_names(tmp_path, capsys):
    line = one_line_error(capsys, ["train", "--dataset", "svhn", "--method", "gaussian",
                                   "--sigma", "0.5", "--outdir", str(tmp_path / "o")])
    assert "mnist" in line and "cifar10" in line


def test_nonempty_outdir_and_incompatible_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", "gaussian", "--sigma", "0.5", "--epochs", "1",
            "--train-subset", "64", "--outdir", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "is not empty; pass --resume" in one_line_error(capsys, args)
    line = one_line_error(capsys, [*args, "--resume", "--method", "stability"])
    assert "method stability from --method (stored gaussian)" in line
    line = one_line_error(capsys, [*args, "--resume", "--sigma", "0.25"])
    assert "sigma 0.25 from --sigma (stored 0.5)" in line
    line = one_line_error(capsys, [*args, "--resume", "--arch", "cifar_resnet20"])
    assert "arch cifar_resnet20 from --arch (stored lenet)" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing overwritten


def test_resume_keeps_the_stored_run(tmp_path, capsys):
    """The issue's case: a preset run started with --epochs and --train-subset, resumed with
    the preset named again, must not become the preset's 90 epochs on the stored subset."""
    out = tmp_path / "x"
    start = ["train", "--preset", "mnist-smoothmix-0.50", "--epochs", "1", "--train-subset",
             "32", "--test-subset", "16", "--num-steps", "1", "--num-noise", "2", "--batch",
             "32", "--device", "cpu", "--no-progress", "--outdir", str(out)]
    assert main(start) == 0, capsys.readouterr().err
    capsys.readouterr()
    stored = load_checkpoint(out / "checkpoint.pth.tar")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # The preset contradicts two stored settings: both named, with their stored values.
    line = one_line_error(capsys, ["train", "--preset", "mnist-smoothmix-0.50", "--outdir",
                                   str(out), "--resume"])
    assert "epochs 90 from preset mnist-smoothmix-0.50 (stored 1)" in line
    assert "--num-steps 4 from preset mnist-smoothmix-0.50 (stored 1)" in line
    assert f"pass only --outdir {out} --resume" in line
    # A flag that contradicts it, and a smaller --epochs, are errors too.
    line = one_line_error(capsys, ["train", "--outdir", str(out), "--resume", "--lr", "0.1",
                                   "--train-subset", "128"])
    assert "lr 0.1 from --lr (stored 0.01)" in line
    assert "train_subset 128 from --train-subset (stored 32)" in line
    line = one_line_error(capsys, ["train", "--outdir", str(out), "--resume", "--eta", "1"])
    assert "--eta 1 from --eta (stored 5)" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written

    # Flags equal to the stored values are fine; plain --resume continues the stored run
    # (here: already complete).
    assert main(["train", "--outdir", str(out), "--resume", "--no-progress", "--lr", "0.01"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # A larger --epochs is a deliberate extension, announced, on the stored settings.
    assert main(["train", "--outdir", str(out), "--resume", "--no-progress", "--epochs", "2"]) == 0
    said = capsys.readouterr().out
    assert f"extending the run in {out} from 1 epoch to 2" in said
    assert "lenet on mnist (32 images)" in said and "2 epochs" in said and "(resume)" in said
    ckpt = load_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 2 and ckpt["config"]["epochs"] == 2
    assert ckpt["method_options"] == stored["method_options"]
    for key in ("train_subset", "test_subset", "batch_size", "lr", "lr_step", "preset"):
        assert ckpt["config"][key] == stored["config"][key], key


def test_resume_of_a_run_killed_before_its_first_checkpoint(tmp_path, capsys):
    # What a run killed in its first epoch leaves: a header-only log, an event file and a
    # torn checkpoint temp file.
    out = tmp_path / "early"
    out.mkdir()
    (out / "log.csv").write_text("")
    (out / "events.out.tfevents.1.host.1.0").write_bytes(b"\0" * 40)
    (out / ".checkpoint.pth.tar.abc123.tmp").write_bytes(b"PK")
    args = ["train", *TINY, "--method", "gaussian", "--sigma", "0.5", "--epochs", "1",
            "--train-subset", "64", "--outdir", str(out)]
    assert "is not empty; pass --resume" in one_line_error(capsys, args)
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "holds no checkpoint yet" in said and "starting it from the beginning" in said
    assert load_checkpoint(out / "checkpoint.pth.tar")["epoch"] == 1
    assert [r["epoch"] for r in log_rows(out)] == ["1"]

    # A folder that is not ours is still refused, and left as it was.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    line = one_line_error(capsys, ["train", *TINY, "--method", "gaussian", "--sigma", "0.5",
                                   "--outdir", str(other), "--resume"])
    assert "has no checkpoint.pth.tar and holds files other than" in line
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    # So is one whose log has epochs but whose checkpoint is gone.
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "log.csv").write_text("epoch,lr,train_loss\n1,0.01,0.5\n")
    line = one_line_error(capsys, ["train", *TINY, "--method", "gaussian", "--sigma", "0.5",
                                   "--outdir", str(gone), "--resume"])
    assert "holds files other than" in line


@pytest.mark.slow
def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    res = run_cli("train", "--dataset", "mnist", "--method", "nope", "--sigma", "0.5",
                  "--outdir", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- presets


def test_presets_command_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    assert main(["presets", "macer"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert lines and all("macer" in line for line in lines)
    assert main(["presets", "nothing-like-this"]) == 2
    err = capsys.readouterr().err
    assert "mnist-gaussian-0.50" not in err and "lists all" in err  # not all names on a line
    # A typo gets the nearest names or families (issue 27 item 3).
    assert main(["presets", "mnist-smothmix"]) == 2
    assert "(did you mean 'mnist-smoothmix'" in capsys.readouterr().err


def test_preset_with_overrides_trains(tmp_path, capsys):
    out = tmp_path / "p"
    code = main(["train", "--preset", "mnist-consistency-0.25", "--epochs", "1", "--lbd", "3",
                 "--train-subset", "128", "--test-subset", "32", "--no-progress", "--device", "cpu",
                 "--outdir", str(out)])
    assert code == 0, capsys.readouterr().err
    ckpt = load_checkpoint(out / "checkpoint.pth.tar")
    assert (ckpt["method"], ckpt["sigma"], ckpt["arch"]) == ("consistency", 0.25, "lenet")
    assert ckpt["config"]["epochs"] == 1 and ckpt["config"]["batch_size"] == 128
    assert ckpt["config"]["lr"] == 0.01 and ckpt["config"]["preset"] == "mnist-consistency-0.25"
    assert ckpt["method_options"] == {"num_noise": 2, "eta": 0.5, "lbd": 3.0}
    model, _ = load_model(out / "checkpoint.pth.tar")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_epochs_shorter_than_the_warmup_is_said(tmp_path, capsys):
    # A newcomer's `--preset mnist-smoothmix-0.50 --epochs 1` kept the preset's 10-epoch
    # warm-up in silence: the mix weight stayed at 0.1, almost plain Gaussian training. The
    # header shows the effective warm-up, and one warning line says it is not reached.
    out = tmp_path / "w"
    code = main(["train", "--preset", "mnist-smoothmix-0.50", "--epochs", "1", "--num-steps",
                 "1", "--train-subset", "64", "--test-subset", "16", "--no-progress",
                 "--device", "cpu", "--outdir", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    header = [line for line in captured.out.splitlines()
              if line.startswith("smoothmix train: lenet on mnist")]
    assert len(header) == 1, captured.out
    assert "1 epoch, warm-up 10 epochs (cut short: weight 0.1 at epoch 1)," in header[0]
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1, captured.err
    assert "--epochs 1 is shorter than smoothmix's 10-epoch warm-up" in warnings[0]
    assert "only 0.1 of its weight" in warnings[0] and "--warmup 1" in warnings[0]


# ---------------------------------------------------------------- torchrun


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", "-m", "smoothmix", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=150)


@pytest.mark.slow
def test_torchrun_two_process_gloo_training_and_resume(tmp_path):
    # SmoothMix, so that its attack (on the unwrapped module) and its two loss forwards
    # before one backward run under a real 2-process DDP.
    args = ["train", *TINY, "--method", "smoothmix", "--num-noise", "2", "--num-steps", "2",
            "--sigma", "0.25", "--batch", "64"]
    full, part = tmp_path / "full", tmp_path / "part"
    res = torchrun(*args, "--epochs", "2", "--outdir", str(full))
    assert res.returncode == 0, res.stderr[-3000:]
    res = torchrun(*args, "--epochs", "1", "--outdir", str(part))
    assert res.returncode == 0, res.stderr[-3000:]
    res = torchrun("train", "--epochs", "2", "--outdir", str(part), "--resume", "--no-progress",
                   "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]

    ckpt = load_checkpoint(full / "checkpoint.pth.tar")
    assert ckpt["config"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # per-rank noise
    # Rank 0 alone writes: one event file, one row per epoch.
    assert len([p for p in full.iterdir() if p.name.startswith("events.")]) == 1
    assert [r["epoch"] for r in log_rows(full)] == ["1", "2"]
    model, _ = load_model(full / "checkpoint.pth.tar")
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert_same_weights(state_dict(full), state_dict(part))  # resume under torchrun is exact


DDP_SCRIPT = '''
import sys
import torch
from torch import nn
from smoothmix.data import TensorImageDataset
from smoothmix.methods import StepOutput
from smoothmix.models import wrap_model
from smoothmix.training import TrainConfig, fit


class CleanCE:
    """No noise: the only difference between 1 and 2 processes is the data parallelism."""

    sigma = 0.5

    def __call__(self, model, x, y, epoch):
        logits = model(x)
        return StepOutput(nn.functional.cross_entropy(logits, y), {})


g = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (64, 1, 6, 6), generator=g, dtype=torch.uint8)
data = TensorImageDataset(images, torch.randint(0, 3, (64,), generator=g), 3, "random")
torch.manual_seed(0)
model = wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)))
fit(model, CleanCE(), data, None, TrainConfig(epochs=2, batch_size=16, lr=0.5, lr_step=1,
    device="cpu", progress=False, workers=0), sys.argv[1])
'''


@pytest.mark.slow
def test_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    """DistributedSampler semantics: 2 ranks × 8 images with averaged gradients take the same
    steps as 1 process × 16 images."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(script), str(tmp_path / "two")], env=ENV,
                         capture_output=True, text=True, timeout=150)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = state_dict(tmp_path / "one"), state_dict(tmp_path / "two")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # ...and not trivially: the weights moved away from the initialisation.
    torch.manual_seed(0)
    init = torch.nn.Linear(36, 3).weight
    assert (a["1.1.weight"] - init).abs().max() > 1e-2


@pytest.mark.parametrize("old, new", [("--train-images", "--train-subset"),
                                      ("--certify-skip", "--skip")])
def test_removed_demo_flags_are_one_line_errors_naming_the_new_ones(tmp_path, capsys, old,
                                                                    new):
    """demo --train-images / --certify-skip, the spellings of --train-subset / --skip (the
    names train and reproduce use) deprecated in 0.4, were removed in 0.6: a usage error,
    exit 2, naming the new flag, before anything is written."""
    from smoothmix.cli import build_parser

    with pytest.raises(SystemExit) as excinfo:
        main(["demo", old, "7", "--outdir", str(tmp_path / "demo")])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"smoothmix demo: error: unrecognized arguments: {old} 7 ({old} is now "
                   f"{new}; the old spelling was removed in 0.6) (see smoothmix demo --help)")
    assert list(tmp_path.iterdir()) == []
    args = build_parser().parse_args(["demo", "--train-subset", "32", "--skip", "5"])
    assert (args.train_images, args.certify_skip) == (32, 5)
