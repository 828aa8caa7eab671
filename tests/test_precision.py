"""The precision option (fp32 | bf16) where it enters: certify, train, targets, diagnose and
reproduce; the CPU's bf16 support; resume and merge refuse a file of another precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from smoothmix import execution
from smoothmix.certification import certify_dataset, merge_results
from smoothmix.checkpoint import load_checkpoint
from smoothmix.cli import main
from smoothmix.errors import SmoothmixError
from smoothmix.run import RunSpec

TINY = ["--dataset", "mnist", "--arch", "lenet", "--train-subset", "64", "--test-subset", "32",
        "--device", "cpu", "--no-progress", "--epochs", "1"]


class Images:
    """Six MNIST-shaped images in [0, 1] with labels."""

    num_classes = 3

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.x = torch.rand(6, 1, 8, 8)
        self.y = torch.arange(6) % 3

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()


CERTIFY = dict(n0=10, n=200, alpha=0.01)  # certify_dataset's own arguments
RUN = RunSpec.of(0.25, batch_size=100, progress=False)
BF16 = RUN.replace(execution={"precision": "bf16"})


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bf16_certification_is_recorded_and_resume_and_merge_refuse_another(tmp_path):
    model, data = conv_net(), Images()
    out = certify_dataset(model, data, BF16, tmp_path / "b.tsv", **CERTIFY)
    settings = json.loads((tmp_path / "b.tsv.json").read_text())["settings"]
    assert settings["precision"] == "bf16" and settings["layout"] == "channels_last"
    before = out.read_bytes()
    with pytest.raises(SmoothmixError, match="precision: 'bf16' in the file vs 'fp32'") as e:
        certify_dataset(model, data, RUN.replace(execution={"precision": "fp32"}), out,
                        **CERTIFY)
    assert "\n" not in str(e.value) and out.read_bytes() == before
    certify_dataset(model, data, RUN, out, **CERTIFY)  # no flag: the recorded bf16
    assert out.read_bytes() == before  # complete already
    # Shards of one run in two precisions do not merge.
    for i, p in enumerate(("bf16", "fp32")):
        certify_dataset(model, data, RUN.replace(shard=(i, 2), execution={"precision": p}),
                        tmp_path / f"s{i}.tsv", **CERTIFY)
    with pytest.raises(SmoothmixError, match="precision"):
        merge_results(tmp_path / "m.tsv", [tmp_path / "s0.tsv", tmp_path / "s1.tsv"])
    assert not (tmp_path / "m.tsv").exists()


def test_bf16_changes_the_votes_little_on_the_same_noise(tmp_path):
    model, data = conv_net(), Images()
    a = certify_dataset(model, data, RUN, tmp_path / "a.tsv", **CERTIFY)
    b = certify_dataset(model, data, BF16, tmp_path / "b.tsv", **CERTIFY)
    rows = [[line.split("\t") for line in p.read_text().splitlines()[1:]] for p in (a, b)]
    for ra, rb in zip(*rows, strict=True):
        assert abs(int(ra[8]) - int(rb[8])) <= 20  # n_a within 10 % of n on the same noise


def test_analyze_warns_when_files_differ_in_precision(tmp_path, capsys):
    model, data = conv_net(), Images()
    certify_dataset(model, data, RUN, tmp_path / "a.tsv", **CERTIFY)
    certify_dataset(model, data, BF16, tmp_path / "b.tsv", **CERTIFY)
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")]) == 0
    captured = capsys.readouterr()
    assert "differ in precision" in captured.err + captured.out
    assert "| precision |" in captured.out.replace("precision |", "precision |")


@pytest.mark.parametrize("flags, message", [
    (["--precision", "fp16"], "unknown precision 'fp16'"),
])
def test_bad_precision_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    argv = ["train", *TINY, "--method", "gaussian", "--sigma", "0.5", *flags,
            "--outdir", str(tmp_path / "run")]
    assert message in one_line_error(capsys, argv)
    assert not (tmp_path / "run").exists()


def test_the_removed_amp_flag_is_a_one_line_error_naming_precision(tmp_path, capsys):
    # train --amp (deprecated in 0.3) was removed in 0.6: a usage error naming its spelling.
    argv = ["train", *TINY, "--method", "gaussian", "--sigma", "0.5", "--amp",
            "--outdir", str(tmp_path / "run")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("smoothmix train: error: ")
    assert "(--amp is now --precision bf16; the old spelling was removed in 0.6)" in err
    assert not (tmp_path / "run").exists()
    from smoothmix.training import TrainConfig, train

    with pytest.raises(TypeError, match="amp"):
        train(tmp_path / "run", amp=True)
    with pytest.raises(TypeError, match='amp=True is precision="bf16" since 0.6'):
        TrainConfig(amp=True)
    # A config record (what checkpoints store) writes amp beside its precision: it reads back.
    config = TrainConfig(precision="bf16", device="cpu")
    assert config.to_dict()["amp"] is True and TrainConfig(**config.to_dict()) == config
    assert not (tmp_path / "run").exists()


def test_certify_refuses_an_unknown_precision(tmp_path, capsys):
    argv = ["certify", "x.pth", "--dataset", "mnist", "--sigma", "0.5", "--precision", "int8",
            "--out", str(tmp_path / "c.tsv")]
    assert "unknown precision 'int8'" in one_line_error(capsys, argv)


def test_a_training_resume_keeps_its_precision_and_refuses_another(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", "gaussian", "--sigma", "0.5", "--outdir", str(out)]
    assert main([*args, "--precision", "bf16"]) == 0
    ckpt = load_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["config"]["precision"] == "bf16"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = one_line_error(capsys, [*args, "--resume", "--precision", "fp32"])
    assert "precision fp32 from --precision (stored bf16)" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # No flag: the stored precision, extended by one epoch.
    assert main([*args, "--resume", "--epochs", "2"]) == 0
    assert load_checkpoint(out / "checkpoint.pth.tar")["config"]["precision"] == "bf16"


def test_a_release_02_checkpoint_without_precision_resumes_as_fp32(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", "gaussian", "--sigma", "0.5", "--outdir", str(out)]
    assert main(args) == 0
    path = out / "checkpoint.pth.tar"
    ckpt = load_checkpoint(path)
    del ckpt["config"]["precision"]  # what smoothmix 0.2 stored: amp only
    torch.save(ckpt, path)
    line = one_line_error(capsys, [*args, "--resume", "--precision", "bf16", "--epochs", "2"])
    assert "precision bf16 from --precision (stored fp32)" in line
    assert main([*args, "--resume", "--epochs", "2"]) == 0


def test_reproduce_refuses_a_folder_of_another_precision(tmp_path, capsys):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "reproduce.json").write_text(json.dumps({"experiment": "mnist-0.50",
                                                    "budget": {"precision": None}}))
    line = one_line_error(capsys, ["reproduce", "mnist-0.50", "--precision", "bf16",
                                   "--outdir", str(out), "--no-progress"])
    assert "--precision (full) -> bf16" in line and "nothing was overwritten" in line


@pytest.mark.parametrize("flags, expected", [
    ({"fpu", "avx512f", "amx_bf16", "avx512_bf16"}, "amx"),
    ({"avx512f", "avx512_bf16"}, "avx512_bf16"),
    ({"avx2"}, "none"),
])
def test_cpu_bf16_support_is_read_from_the_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(execution, "_cpu_flags", lambda: frozenset(flags))
    assert execution.cpu_bf16_support() == expected


def test_emulated_bf16_is_said_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(execution, "_cpu_flags", lambda: frozenset({"avx2"}))
    execution._warn_once.cache_clear()
    execution.warn_if_bf16_emulated(torch.device("cpu"))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "emulated" in err and "--precision fp32" in err


def test_diagnose_and_targets_take_the_precision(tmp_path):
    from smoothmix.data import load_dataset
    from smoothmix.diagnostics import overconfidence
    from smoothmix.models import create_model
    from smoothmix.targets import build_targets

    torch.manual_seed(0)
    model = create_model("lenet").eval()
    test = load_dataset("mnist", "test")
    x = torch.stack([test[i][0] for i in range(4)])
    y = torch.tensor([test[i][1] for i in range(4)])
    rows = overconfidence(model, x, y, 0.5, 10, num_steps=1, n=50, progress=False,
                          precision="bf16")
    assert len(rows) == 2 and 0 <= rows[0].true_class <= 1
    with pytest.raises(SmoothmixError, match="unknown precision"):
        overconfidence(model, x, y, 0.5, 10, num_steps=1, n=50, progress=False,
                       precision="half")
    out = build_targets(model, test.subset(3),
                        RunSpec.of(0.25, progress=False, execution={"precision": "bf16"}),
                        tmp_path / "t.npz", n=20)
    assert Path(out).exists()
