"""Denoised smoothing, training side (issue 28): the DnCNN denoiser kind, the denoiser
methods (denoise-mse, denoise-stability, MSE then stability via --init), plain training
without noise, and how the loop, the checkpoint and certify treat them."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch
from torch import nn

from smoothmix.checkpoint import file_sha256, load_checkpoint
from smoothmix.cli import main
from smoothmix.denoisers import DENOISERS
from smoothmix.denoisers.dncnn import DnCNN
from smoothmix.errors import SmoothmixError
from smoothmix.methods import METHODS, create_method
from smoothmix.methods.denoising import psnr
from smoothmix.training import get_preset, resolve, train

SMALL = {"depth": 3, "width": 8}  # a DnCNN small enough for CI
QUICK = dict(dataset="mnist", train_subset=64, test_subset=32, epochs=1, batch_size=32,
             device="cpu", progress=False, workers=0)


def quick(outdir, **kw):
    """One quick epoch on 64 embedded MNIST images; keywords override."""
    return train(outdir, **{**QUICK, **kw})


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """An off-the-shelf LeNet checkpoint (plain training, no noise)."""
    out = tmp_path_factory.mktemp("clf") / "plain"
    return quick(out, method="plain", lr=0.05)


def read_log(path):
    with open(path / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- the DnCNN denoiser


def test_dncnn_is_registered_keeps_the_shape_and_starts_as_the_identity():
    for channels, shape in ((1, (3, 1, 28, 28)), (3, (2, 3, 17, 9))):
        d = DENOISERS.get("dncnn")(channels=channels, **SMALL)
        x = torch.rand(shape)
        out = d(x)
        assert out.shape == x.shape
        assert torch.equal(out, x)  # zero last layer: D starts as the identity
    assert DENOISERS.metadata("dncnn")["paper"] == {"depth": 17, "width": 64}
    d = DENOISERS.get("dncnn")(channels=1)
    assert (d.depth, d.width) == (10, 32)
    assert sum(isinstance(m, nn.Conv2d) for m in d.modules()) == 10


def test_dncnn_has_no_normalisation_layer_and_acts_per_sample():
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    d = DnCNN(1, depth=4, width=8)
    assert not any(isinstance(m, norm_types) for m in d.modules())
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.3)  # a trained-looking denoiser, not the identity
    x = torch.rand(5, 1, 12, 12)
    for mode in (True, False):  # even in train mode nothing couples the batch
        d.train(mode)
        with torch.no_grad():
            batch = d(x)
            alone = torch.cat([d(x[i:i + 1]) for i in range(5)])
        torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-5)  # float rounding only
        assert not torch.equal(batch, x)


def test_the_denoiser_takes_the_datas_channels_unless_given():
    from smoothmix.training.kinds import build_denoiser

    pytest.importorskip("diffusers")
    rgb = [(torch.rand(3, 32, 32), 0)]
    for kind in ("dncnn", "ddpm-unet"):  # ddpm-unet has a default of 1: not the data's
        assert build_denoiser(kind, {}, rgb)[1]["channels"] == 3
        assert build_denoiser(kind, {"channels": 1}, rgb)[1]["channels"] == 1


def test_dncnn_bad_settings_are_one_line_errors():
    with pytest.raises(SmoothmixError, match="dncnn depth") as info:
        DnCNN(1, depth=1)
    one_line(info)


# ---------------------------------------------------------------- the methods


def test_denoise_mse_loss_decreases_and_reports_psnr():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    y = torch.zeros(16, dtype=torch.long)
    d = DnCNN(1, depth=3, width=8)
    method = create_method("denoise-mse", 0.5, 10)
    assert (method.trains, method.uses_noise) == ("denoiser", True)
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same noise each step: the loss is comparable
        out = method(d, x, y, 0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    assert float(out.metrics["psnr"]) > float(psnr(x + 0.5 * torch.randn_like(x), x).mean())


def test_psnr_is_ten_log_ten_of_one_over_mse():
    clean = torch.zeros(2, 1, 4, 4)
    estimate = clean + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    assert psnr(estimate, clean).tolist() == pytest.approx([20.0, 40.0], rel=1e-5)


def test_stability_trains_the_denoiser_through_a_frozen_classifier_in_eval(lenet):
    method = create_method("denoise-stability", 0.5, 10, classifier=str(lenet))
    f = method.frozen.model
    assert method.identity() == {"classifier_sha256": file_sha256(lenet),
                                 "classifier_arch": "lenet"}
    d = DnCNN(1, depth=3, width=8).train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    out = method(d, x, y, 0)
    out.loss.backward()
    assert d.net[-1].weight.grad is not None and d.net[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in f.parameters())
    assert not f.training
    assert set(out.metrics) == {"loss", "acc", "agree"}
    soft = create_method("denoise-stability", 0.5, 10, classifier=str(lenet),
                         stability_target="soft")
    soft(d, x, y, 0).loss.backward()  # the soft target trains too


def test_plain_trains_without_noise_and_takes_no_sigma():
    method = create_method("plain", None, 2)
    assert method.sigma is None and not method.uses_noise
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.cat([torch.zeros(8, 1, 4, 4), torch.ones(8, 1, 4, 4)])
    y = torch.cat([torch.zeros(8), torch.ones(8)]).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = None
    for _ in range(10):
        out = method(model, x, y, 0)  # deterministic: no noise at all
        first = first if first is not None else float(out.loss.detach())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.loss.detach()) < first
    assert set(method.monitor(model, x, y, torch.Generator())) == {"clean_acc", "clean_loss"}


# ---------------------------------------------------------------- through train()


def test_plain_run_records_no_sigma_and_certify_needs_an_explicit_one(lenet, tmp_path,
                                                                        capsys):
    ckpt = load_checkpoint(lenet)
    assert ckpt["sigma"] is None and ckpt["config"]["noise"] == "none"
    assert ckpt["method"] == "plain" and ckpt["arch"] == "lenet"
    assert "test_clean_acc" in ckpt["metrics"]
    out = tmp_path / "c.tsv"
    assert main(["certify", str(lenet), "--out", str(out), "--n", "10", "--max", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained without noise" in err and "--sigma" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["certify", str(lenet), "--sigma", "0.25", "--out", str(out), "--n", "10",
                 "--n0", "10", "--max", "1", "--no-progress"]) == 0
    assert out.is_file()


def test_plain_run_resumes_without_a_sigma(tmp_path):
    out = tmp_path / "plain"
    quick(out, method="plain", lr=0.05)
    quick(out, epochs=2, resume=True)
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 2 and ckpt["sigma"] is None and ckpt["config"]["noise"] == "none"
    assert "optimizer" not in ckpt["config"]  # SGD runs keep the keys they always had


def test_mse_run_records_the_denoiser_and_monitors_psnr_and_the_pair(lenet, tmp_path):
    out = tmp_path / "mse"
    path = quick(out, method="denoise-mse", arch="dncnn", arch_kwargs=SMALL, sigma=0.5,
                 optimizer="adam", lr=1e-3, method_options={"classifier": str(lenet)})
    ckpt = load_checkpoint(path)
    assert (ckpt["arch"], ckpt["sigma"], ckpt["normalization"]) == ("dncnn", 0.5, None)
    assert ckpt["arch_kwargs"] == {**SMALL, "channels": 1}  # rebuilt from the checkpoint
    assert ckpt["config"]["classifier_sha256"] == file_sha256(lenet)
    assert ckpt["config"]["optimizer"] == "adam"
    rebuilt = DENOISERS.get(ckpt["arch"])(**ckpt["arch_kwargs"])
    rebuilt.load_state_dict(ckpt["state_dict"])
    row = read_log(out)[0]
    assert {"test_psnr", "test_psnr_noisy", "test_noisy_acc", "train_psnr"} <= set(row)
    # Resume: a second epoch continues the same run.
    quick(out, epochs=2, resume=True)
    assert load_checkpoint(path)["epoch"] == 2 and len(read_log(out)) == 2


def test_stability_run_resumes_and_refuses_another_classifier(lenet, tmp_path):
    clf = tmp_path / "f.pth.tar"
    shutil.copy(lenet, clf)
    out = tmp_path / "stab"
    quick(out, method="denoise-stability", arch="dncnn", arch_kwargs=SMALL, sigma=0.5,
          optimizer="adam", lr=1e-3, method_options={"classifier": str(clf)})
    ckpt = load_checkpoint(out)
    assert ckpt["method_options"]["classifier"] == str(clf)
    assert ckpt["config"]["classifier_sha256"] == file_sha256(clf)
    quick(out, epochs=2, resume=True)
    assert load_checkpoint(out)["epoch"] == 2
    other = quick(tmp_path / "other", method="plain", lr=0.05, seed=3)
    shutil.copy(other, clf)  # the same path, another classifier
    with pytest.raises(SmoothmixError, match="classifier_sha256") as info:
        quick(out, epochs=3, resume=True)
    one_line(info)
    assert load_checkpoint(out)["epoch"] == 2  # nothing overwritten


def test_mse_then_stability_starts_from_the_mse_weights(lenet, tmp_path, capsys):
    mse = quick(tmp_path / "mse", method="denoise-mse", arch="dncnn", sigma=0.5,
                optimizer="adam", lr=1e-2)
    preset = "mnist-dncnn-mse-stability-0.50"
    assert get_preset(preset).needs_init
    with pytest.raises(SmoothmixError, match="--init") as info:
        quick(tmp_path / "tune0", preset=preset, method_options={"classifier": str(lenet)})
    one_line(info)
    out = tmp_path / "tune"
    seen = {}

    class Probe:  # the weights the first epoch starts from
        def on_fit_start(self, run):
            seen.update({k: v.clone() for k, v in run.raw_model.state_dict().items()})

        def __getattr__(self, name):
            return lambda *a: None

    capsys.readouterr()
    quick(out, preset=preset, init=str(mse), method_options={"classifier": str(lenet)},
          callbacks=[Probe()])
    header = capsys.readouterr().out.splitlines()[0]  # says what the run fine-tunes
    assert header.startswith("smoothmix train: dncnn on mnist") and f"init={mse};" in header
    start = load_checkpoint(mse)["state_dict"]
    assert all(torch.equal(seen[k], start[k]) for k in start)
    ckpt = load_checkpoint(out)
    assert ckpt["config"]["init"] == str(mse)
    assert ckpt["config"]["init_sha256"] == file_sha256(mse)
    assert ckpt["method"] == "denoise-stability"
    assert ckpt["arch_kwargs"] == {"channels": 1, "depth": 10, "width": 32}  # complete
    quick(out, epochs=2, resume=True)  # a resume keeps the recorded init
    assert load_checkpoint(out)["config"]["init_sha256"] == file_sha256(mse)
    with pytest.raises(SmoothmixError, match="--init") as info:
        quick(out, epochs=3, resume=True, init=str(lenet))
    one_line(info)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, match", [
    (dict(method="denoise-mse", arch="lenet", sigma=0.5), "is a classifier architecture"),
    (dict(method="denoise-mse", sigma=0.5), "trains a denoiser: pass --arch"),
    (dict(method="gaussian", arch="dncnn", sigma=0.5), "is a denoiser kind"),
    (dict(method="plain", sigma=0.5), "trains without noise"),
    (dict(method="denoise-stability", arch="dncnn", sigma=0.5), "needs --classifier"),
    (dict(method="denoise-stability", arch="dncnn", sigma=0.5,
          method_options={"classifier": "/nonexistent/f.pth.tar"}), "does not exist"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, kw, match):
    out = tmp_path / "r"
    with pytest.raises(SmoothmixError, match=match) as info:
        quick(out, **kw)
    one_line(info)
    assert not out.exists()


def test_init_of_another_architecture_is_refused(lenet, tmp_path):
    with pytest.raises(SmoothmixError, match="lenet checkpoint") as info:
        quick(tmp_path / "r", method="denoise-mse", arch="dncnn", sigma=0.5, init=str(lenet))
    one_line(info)


def test_a_denoiser_checkpoint_is_not_a_classifier(lenet, tmp_path, capsys):
    mse = quick(tmp_path / "mse", method="denoise-mse", arch="dncnn", arch_kwargs=SMALL,
                sigma=0.5)
    assert main(["certify", str(mse), "--out", str(tmp_path / "c.tsv"), "--n", "10"]) == 2
    assert "is a denoiser (dncnn)" in capsys.readouterr().err
    with pytest.raises(SmoothmixError, match="--classifier: .*denoiser"):
        create_method("denoise-stability", 0.5, 10, classifier=str(mse))


def test_the_loop_checks_a_denoiser_outputs_images(tmp_path):
    from helpers import tiny_config, tiny_data, tiny_model

    from smoothmix.training import fit

    with pytest.raises(SmoothmixError, match="a denoiser must output an image") as info:
        fit(tiny_model(), create_method("denoise-mse", 0.5, 2), tiny_data(16, 1), None,
            tiny_config(epochs=1), tmp_path / "r", metadata={"arch": None})
    one_line(info)


def test_presets_and_reproduce_rows(tmp_path):
    for name in ("mnist-plain", "mnist-dncnn-mse-0.50", "mnist-dncnn-stability-0.50",
                 "mnist-dncnn-mse-stability-0.50"):
        p = get_preset(name)
        assert resolve(outdir=tmp_path, preset=name).recipe == p.recipe()
        assert p.method in METHODS
    assert get_preset("mnist-plain").sigma is None
    assert get_preset("mnist-dncnn-mse-0.50").optimizer == "adam"
    from smoothmix.reproduce.experiments import _preset_rows

    rows = _preset_rows("mnist", 0.5)
    assert "gaussian" in rows and not any("dncnn" in r for r in rows)


def test_denoiser_training_runs_under_bf16(lenet, tmp_path):
    out = tmp_path / "bf16"
    quick(out, method="denoise-stability", arch="dncnn", arch_kwargs=SMALL, sigma=0.5,
          optimizer="adam", lr=1e-3, precision="bf16",
          method_options={"classifier": str(lenet)})
    row = read_log(out)[0]
    assert load_checkpoint(out)["config"]["precision"] == "bf16"
    assert float(row["test_psnr"]) > 0 and 0 <= float(row["test_noisy_acc"]) <= 1


DDP_SCRIPT = '''
import sys
from smoothmix.training import train
train(sys.argv[1], dataset="mnist", method="denoise-stability", arch="dncnn",
      arch_kwargs={"depth": 3, "width": 8}, sigma=0.5, optimizer="adam", lr=1e-3,
      train_subset=64, test_subset=32, epochs=1, batch_size=32, device="cpu",
      progress=False, workers=0, method_options={"classifier": sys.argv[2]})
'''


@pytest.mark.slow
def test_denoiser_training_runs_under_ddp(lenet, tmp_path):
    """Two CPU ranks (gloo): the frozen classifier on each rank, the monitor's sums
    all-reduced, one checkpoint written by rank 0."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("SMOOTHMIX_DATA", None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(tmp_path / "r"),
                           str(lenet)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "r")
    assert ckpt["config"]["world_size"] == 2 and ckpt["arch"] == "dncnn"
    assert {"test_psnr", "test_noisy_acc"} <= set(read_log(tmp_path / "r")[0])
