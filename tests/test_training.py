"""The training loop, its resume, presets and the resolution of settings (in-process)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from helpers import NoisyCE, tiny_config, tiny_data, tiny_model
from torch import nn

from smoothmix.checkpoint import load_checkpoint
from smoothmix.errors import SmoothmixError
from smoothmix.methods import METHODS, StepOutput, create_method, method_options
from smoothmix.models import wrap_model
from smoothmix.training import PRESETS, evaluate_noisy, fit, get_preset, resolve
from smoothmix.training.loop import check_outdir
from smoothmix.training.presets import format_presets_table

# ---------------------------------------------------------------- tiny stand-ins

def run_fit(outdir, epochs, resume=False, sigma=0.25, seed=7, **kw):
    return fit(tiny_model(), NoisyCE(sigma), tiny_data(80, 1), tiny_data(40, 2),
               tiny_config(epochs=epochs, seed=seed, **kw), outdir, resume=resume,
               metadata={"arch": None, "method": "noisy-ce"})


def read_log(outdir):
    with open(outdir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the loop


def test_fit_reports_progress_lines_in_logs(tmp_path, capsys, monkeypatch):
    # Output that is not a terminal gets plain progress lines (here one per step).
    from smoothmix import progress

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    run_fit(tmp_path / "p", epochs=2, progress=True)  # 80 images / 16 = 5 steps an epoch
    err = capsys.readouterr().err
    assert "train p: 0/10 step (0%), ETA unknown" in err
    assert "epoch 1/2: 5/10 step (50%)" in err and "epoch 2/2: 10/10 step (100%)" in err
    run_fit(tmp_path / "p", epochs=3, resume=True, progress=True)
    assert "train p: 10/15 step (67%), ETA unknown" in capsys.readouterr().err


def test_fit_learns_and_writes_log_checkpoint_tensorboard(tmp_path):
    path = run_fit(tmp_path / "a", epochs=4, lr=0.5, lr_step=3)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 4 and ckpt["method"] == "noisy-ce" and ckpt["sigma"] == 0.25
    assert set(ckpt) >= {"arch", "state_dict", "num_classes", "normalization", "optimizer",
                         "scheduler", "rng", "config"}
    assert ckpt["num_classes"] == 2 and len(ckpt["rng"]) == 1
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in ckpt["state_dict"])
    # StepLR(3, 0.1): epochs 1-3 at 0.5, 4 at 0.05.
    rows = read_log(tmp_path / "a")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.5, 0.5, 0.5, 0.05])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["test_noisy_acc"]) > 0.8  # separable at sigma 0.25
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "a").iterdir())
    # Optimiser: SGD with momentum 0.9 and weight decay 1e-4 by default.
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == 1e-4


def test_train_metrics_are_example_weighted_epoch_means(tmp_path):
    class Constant:
        """Loss = mean label of the batch: the epoch mean must be the dataset's mean label
        (batches of unequal size are weighted by their size)."""

        sigma = 0.5

        def __call__(self, model, x, y, epoch):
            loss = (model(x).sum() * 0 + y.float().mean())
            return StepOutput(loss, {"ones": torch.ones(())})

    train_set = tiny_data(50, 1)  # 16 + 16 + 16 + 2: the last batch is short
    fit(tiny_model(), Constant(), train_set, None, tiny_config(epochs=1), tmp_path / "c")
    row = read_log(tmp_path / "c")[0]
    assert float(row["train_loss"]) == pytest.approx(train_set.labels.float().mean().item())
    assert float(row["train_ones"]) == pytest.approx(1.0)


def test_resume_equals_uninterrupted_bitwise(tmp_path):
    full = load_checkpoint(run_fit(tmp_path / "full", epochs=3))
    run_fit(tmp_path / "part", epochs=1)
    part = load_checkpoint(run_fit(tmp_path / "part", epochs=3, resume=True))
    assert part["epoch"] == 3
    for key, value in full["state_dict"].items():
        assert torch.equal(value, part["state_dict"][key]), key
    mom_full = [s["momentum_buffer"] for s in full["optimizer"]["state"].values()]
    mom_part = [s["momentum_buffer"] for s in part["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(mom_full, mom_part, strict=True))
    assert full["scheduler"] == part["scheduler"]
    assert [r["train_loss"] for r in read_log(tmp_path / "full")] == \
        [r["train_loss"] for r in read_log(tmp_path / "part")]


def test_rerun_of_a_finished_run_changes_nothing(tmp_path):
    run_fit(tmp_path / "a", epochs=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    run_fit(tmp_path / "a", epochs=2, resume=True)  # "nothing to do"
    # No new TensorBoard event file, no rewritten checkpoint or log.
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before


def test_resume_drops_log_rows_written_after_the_checkpoint(tmp_path):
    out = tmp_path / "r"
    run_fit(out, epochs=2)
    # A run killed between writing row 3 and its checkpoint would leave this behind.
    with open(out / "log.csv", "a") as f:
        f.write("3,0.005,9,9,9,9,9\n")
    run_fit(out, epochs=3, resume=True)
    rows = read_log(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["train_loss"]) != 9


def test_seed_reproducible_and_matters(tmp_path):
    a = load_checkpoint(run_fit(tmp_path / "a", epochs=1, seed=3))["state_dict"]
    b = load_checkpoint(run_fit(tmp_path / "b", epochs=1, seed=3))["state_dict"]
    c = load_checkpoint(run_fit(tmp_path / "c", epochs=1, seed=4))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_nonempty_outdir_refused_and_untouched(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SmoothmixError, match="not empty"):
        run_fit(out, epochs=1)
    with pytest.raises(SmoothmixError, match="no checkpoint.pth.tar"):
        run_fit(out, epochs=1, resume=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    # --resume on a new directory starts fresh (job scripts can always pass it).
    assert check_outdir(tmp_path / "new", resume=True) is False


def test_incompatible_resume_is_refused(tmp_path):
    out = tmp_path / "r"
    run_fit(out, epochs=1)
    before = (out / "checkpoint.pth.tar").read_bytes()
    with pytest.raises(SmoothmixError, match=r"sigma: 0.25 in the file vs 0.5 now"):
        run_fit(out, epochs=2, resume=True, sigma=0.5)
    with pytest.raises(SmoothmixError, match=r"batch_size: 16 in the file vs 32 now"):
        run_fit(out, epochs=2, resume=True, batch_size=32)
    with pytest.raises(SmoothmixError, match="method: 'noisy-ce' in the file vs 'other' now"):
        fit(tiny_model(), NoisyCE(0.25), tiny_data(80, 1), None, tiny_config(epochs=2), out,
            resume=True, metadata={"method": "other"})
    assert (out / "checkpoint.pth.tar").read_bytes() == before


def test_model_that_rejects_the_data_is_a_one_line_error(tmp_path):
    model = wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(100, 2)))  # wants 100 pixels
    with pytest.raises(SmoothmixError, match=r"does not accept .* shape \(1, 6, 6\)"):
        fit(model, NoisyCE(0.25), tiny_data(20, 1), None, tiny_config(epochs=1), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    model = wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)))  # 3 logits, 2 classes
    with pytest.raises(SmoothmixError, match=r"one logit per class, shape \(batch, 2\)"):
        fit(model, NoisyCE(0.25), tiny_data(20, 1), None, tiny_config(epochs=1), tmp_path / "x")


def test_evaluate_noisy_counts_against_hand_computation():
    data = tiny_data(30, 5)
    x = data.images.float() / 255
    model = tiny_model(1).eval()
    from smoothmix.data import make_loader

    loader = make_loader(data, 7, "cpu", train=False)
    correct, loss_sum, count = evaluate_noisy(model, loader, 0.3, seed=11).tolist()
    g = torch.Generator().manual_seed(11)
    noise = torch.cat([torch.randn((len(b),) + x.shape[1:], generator=g)
                       for b in torch.arange(30).split(7)])
    with torch.no_grad():
        logits = model(x + 0.3 * noise)
    assert count == 30
    assert correct == (logits.argmax(1) == data.labels).sum().item()
    assert loss_sum == pytest.approx(
        nn.functional.cross_entropy(logits, data.labels, reduction="sum").item(), rel=1e-5)


# ---------------------------------------------------------------- presets and settings

EXPECTED_PRESETS = (
    [f"mnist-smoothmix-{s}" for s in ("0.25", "0.50", "1.00")]
    + ["mnist-smoothmix-onestep-1.00"]
    + [f"{d}-{m}-{s}" for d in ("mnist", "cifar10")
       for m in ("gaussian", "stability", "smoothadv", "macer", "consistency")
       for s in ("0.25", "0.50", "1.00")]
    + [f"cifar10-smoothmix-{s}" for s in ("0.25", "0.50", "1.00")]
    + ["imagenet-smoothmix-0.50", "imagenet-smoothmix-1.00", "imagenet-gaussian-0.50"]
)


def test_every_preset_exists_and_its_options_are_valid_for_its_method():
    assert set(EXPECTED_PRESETS) <= set(PRESETS)
    for p in PRESETS.values():
        assert p.method in METHODS, p.name
        options = dict(p.options)
        if p.deferred:
            options["deferred_epochs"] = p.lr_step
        if p.method == "denoise-stability":
            continue  # needs a classifier checkpoint: tests/test_denoiser_training.py
        create_method(p.method, p.sigma, 10, **options)  # raises on a bad option
        assert p.sigma is None or p.name.endswith(f"{p.sigma:.2f}")


def test_preset_batches_follow_the_reference_recipes():
    for p in PRESETS.values():
        if p.method == "macer":  # docs/MATH.md §3.4: MNIST 256 x 16 copies, CIFAR-10 64 x 16
            assert p.batch_size == (256 if p.dataset == "mnist" else 64), p.name
        else:
            m = p.options.get("num_noise", 1)
            assert p.batch_size == 256 // m, p.name
    mnist = get_preset("mnist-smoothmix-0.50")
    assert (mnist.batch_size, mnist.epochs, mnist.lr, mnist.lr_step) == (64, 90, 0.01, 30)
    assert mnist.options == {"num_noise": 4, "num_steps": 4, "step_size": 1.0, "eta": 5.0,
                             "mix_step": 0}
    assert get_preset("cifar10-smoothadv-1.00").options["epsilon"] == 2.0
    assert get_preset("mnist-smoothadv-0.25").options["epsilon"] == pytest.approx(255 / 256)
    assert get_preset("mnist-macer-1.00").options["lbd"] == 6.0
    assert get_preset("cifar10-macer-0.50").lr_milestones == (200, 400)
    assert get_preset("mnist-smoothmix-onestep-1.00").options["mix_step"] == 1


def test_unknown_preset_lists_valid_names():
    with pytest.raises(SmoothmixError, match="mnist-smoothmix-0.50") as info:
        get_preset("mnist-smoothmix-0.3")
    assert "\n" not in str(info.value)


def test_resolve_preset_then_explicit_overrides(tmp_path):
    spec = resolve(outdir=tmp_path, preset="mnist-smoothmix-0.50")
    assert (spec.dataset, spec.arch, spec.method, spec.sigma) == ("mnist", "lenet", "smoothmix",
                                                                  0.5)
    assert spec.config.batch_size == 64 and spec.config.epochs == 90
    assert spec.method_options["eta"] == 5.0
    spec = resolve(outdir=tmp_path, preset="mnist-smoothmix-0.50", epochs=2, lr=0.1,
                   batch_size=32, sigma=0.25, method_options={"eta": 1.0, "num_steps": None})
    assert (spec.config.epochs, spec.config.lr, spec.config.batch_size) == (2, 0.1, 32)
    assert spec.sigma == 0.25
    assert spec.method_options["eta"] == 1.0 and spec.method_options["num_steps"] == 4


def test_resolve_defaults_and_deferred(tmp_path):
    spec = resolve(outdir=tmp_path, dataset="mnist", method="smoothmix", sigma=0.5,
                   method_options={"num_noise": 2})
    assert spec.arch == "lenet" and spec.config.batch_size == 128  # 256 / m
    assert (spec.config.epochs, spec.config.lr, spec.config.lr_step) == (90, 0.01, 30)
    spec = resolve(outdir=tmp_path, preset="mnist-macer-0.50", lr_step=10)
    assert spec.method_options["deferred_epochs"] == 10  # the first LR drop
    spec = resolve(outdir=tmp_path, preset="cifar10-macer-0.50", deferred=True)
    assert spec.method_options["deferred_epochs"] == 200
    spec = resolve(outdir=tmp_path, preset="mnist-macer-0.50", deferred=False)
    assert "deferred_epochs" not in spec.method_options


def test_macer_batch_and_weight_decay_follow_the_original_recipes(tmp_path):
    # docs/MATH.md §3.4: MNIST MACER steps on 256 images x 16 copies (its script's default batch);
    # CIFAR-10 MACER on 64 x 16 with weight decay 5e-4; everything else decays by 1e-4.
    from smoothmix.training.api import default_batch_size

    assert default_batch_size("macer", 16, "mnist") == 256
    assert default_batch_size("macer", 16, "cifar10") == 64
    assert default_batch_size("smoothmix", 4, "mnist") == 64
    spec = resolve(outdir=tmp_path, dataset="mnist", method="macer", sigma=0.5)
    assert spec.config.batch_size == 256 and spec.config.weight_decay == 1e-4
    spec = resolve(outdir=tmp_path, preset="mnist-macer-0.50")
    assert spec.config.batch_size == 256
    for sigma in ("0.25", "0.50", "1.00"):
        spec = resolve(outdir=tmp_path, preset=f"cifar10-macer-{sigma}")
        assert (spec.config.batch_size, spec.config.weight_decay) == (64, 5e-4)
    assert resolve(outdir=tmp_path, preset="cifar10-macer-0.50",
                   weight_decay=0.0).config.weight_decay == 0.0  # explicit beats the preset
    assert resolve(outdir=tmp_path, preset="cifar10-smoothmix-0.50").config.weight_decay == 1e-4
    assert "weight_decay=0.0005" in format_presets_table([get_preset("cifar10-macer-1.00")])


def test_deferred_takes_an_epoch(tmp_path):
    mnist = "mnist-macer-0.50"
    assert resolve(outdir=tmp_path, preset=mnist).method_options["deferred_epochs"] == 30
    assert resolve(outdir=tmp_path, preset=mnist, deferred=1).method_options[
        "deferred_epochs"] == 1
    assert resolve(outdir=tmp_path, preset=mnist, deferred=30).method_options[
        "deferred_epochs"] == 30
    assert "deferred_epochs" not in resolve(outdir=tmp_path, preset=mnist,
                                            deferred=0).method_options
    spec = resolve(outdir=tmp_path, dataset="mnist", method="macer", sigma=0.5, deferred=2)
    assert spec.method_options["deferred_epochs"] == 2
    with pytest.raises(SmoothmixError, match="--deferred takes an epoch"):
        resolve(outdir=tmp_path, preset=mnist, deferred=-1)
    # The CLI: --deferred EPOCH, --no-deferred = 0 (off, also against a preset).
    from smoothmix.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--outdir", "o", "--deferred", "1"]).deferred == 1
    assert parser.parse_args(["train", "--outdir", "o", "--no-deferred"]).deferred == 0
    assert parser.parse_args(["train", "--outdir", "o"]).deferred is None
    assert parser.parse_args(["train", "--outdir", "o", "--weight-decay", "5e-4"]
                             ).weight_decay == 5e-4


def test_resume_keeps_the_stored_deferral(tmp_path):
    # A run trained with --deferred 1 resumes with deferred_epochs 1 when --deferred is not
    # repeated (not the first LR drop of 30, which would change its recipe).
    from smoothmix.checkpoint import CHECKPOINT_NAME, save_checkpoint

    options = {"num_noise": 16, "lbd": 16.0, "beta": 16.0, "gamma": 8.0, "deferred_epochs": 1}
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {
        "arch": "lenet", "method": "macer", "sigma": 0.5, "method_options": options,
        "config": {"epochs": 3, "lr": 0.01, "lr_step": 30}, "state_dict": {}, "epoch": 1})
    spec = resolve(outdir=tmp_path, dataset="mnist", method="macer", sigma=0.5, resume=True)
    assert spec.method_options["deferred_epochs"] == 1
    with pytest.raises(SmoothmixError, match=r"--deferred 0 from --deferred \(stored 1\)"):
        resolve(outdir=tmp_path, dataset="mnist", method="macer", sigma=0.5, resume=True,
                deferred=0)  # contradicts the stored run: refused before anything runs


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="mnist", method="smoothmixx", sigma=0.5), "valid methods: .*smoothmix"),
    (dict(dataset="mnst", method="gaussian", sigma=0.5), "valid datasets: mnist"),
    (dict(dataset="mnist", arch="lenet5", method="gaussian", sigma=0.5),
     "valid architectures: lenet"),
    (dict(dataset="mnist", method="gaussian", sigma=0.0), "sigma must be a positive number"),
    (dict(dataset="mnist", method="gaussian", sigma=-1), "sigma must be a positive number"),
    (dict(dataset="mnist", method="gaussian", sigma=128.0), "pixel units"),
    (dict(dataset="mnist", method="gaussian"), "pass --sigma"),
    (dict(dataset="mnist", method="smoothmix", sigma=0.5, method_options={"num_noise": 0}),
     "m .* >= 1"),
    (dict(dataset="mnist", method="smoothmix", sigma=0.5, method_options={"num_steps": 0}),
     "T .* >= 1"),
    (dict(dataset="mnist", method="gaussian", sigma=0.5, method_options={"eta": 1.0}),
     "--eta is not an option of method 'gaussian'"),
    (dict(dataset="mnist", method="gaussian", sigma=0.5, deferred=True),
     "--deferred is not an option"),
    (dict(preset="mnist-macer-0.50", method="gaussian"), "conflicts with preset"),
    (dict(dataset="mnist", method="gaussian", sigma=0.5, epochs=0), "epochs must be >= 1"),
    (dict(dataset="mnist", method="gaussian", sigma=0.5, batch_size=0), "batch size"),
])
def test_resolve_bad_input(tmp_path, kwargs, message):
    with pytest.raises(SmoothmixError, match=message) as info:
        resolve(outdir=tmp_path, **kwargs)
    assert "\n" not in str(info.value)


def test_schedule_notes_show_the_effective_warmup_and_deferral(tmp_path):
    from smoothmix.training.recipe import schedule_notes

    parts, warnings = schedule_notes(resolve(outdir=tmp_path, preset="mnist-smoothmix-0.50",
                                             epochs=1).recipe)
    # The header shows where the schedule is cut, not only the preset's warm-up (issue 27).
    assert parts == ["warm-up 10 epochs (cut short: weight 0.1 at epoch 1)"]
    assert len(warnings) == 1
    assert schedule_notes(resolve(outdir=tmp_path, preset="mnist-smoothmix-0.50",
                                  epochs=5).recipe)[0] == [
        "warm-up 10 epochs (cut short: weight 0.5 at epoch 5)"]
    assert schedule_notes(resolve(outdir=tmp_path, preset="mnist-smoothmix-0.50").recipe)[1] == []
    assert schedule_notes(resolve(outdir=tmp_path, preset="mnist-smoothmix-0.50", epochs=1,
                                  method_options={"warmup": 1}).recipe) == ([], [])
    # MACER's deferral to the first LR drop (epoch 30) never comes in a 2-epoch run.
    parts, warnings = schedule_notes(resolve(outdir=tmp_path, preset="mnist-macer-0.50",
                                             epochs=2).recipe)
    assert parts == ["robustness term from epoch 31 (never on in a 2-epoch run)"]
    assert len(warnings) == 1 and "never on" in warnings[0] and "--no-deferred" in warnings[0]
    assert "pass --deferred 1 (or fewer) or --no-deferred" in warnings[0]
    one = schedule_notes(resolve(outdir=tmp_path, preset="mnist-macer-0.50", epochs=1).recipe)
    assert one[1][0].endswith("pass --no-deferred")  # no --deferred below 1 to offer
    assert schedule_notes(resolve(outdir=tmp_path, preset="mnist-macer-0.50", epochs=2,
                                  deferred=1).recipe) == (["robustness term from epoch 2"], [])
    assert schedule_notes(resolve(outdir=tmp_path, dataset="mnist", method="gaussian",
                                  sigma=0.5, epochs=1).recipe) == ([], [])


def test_a_preset_is_the_recipe_train_resolves(tmp_path):
    # One shape: what train(preset=NAME) trains is the preset's own Recipe.
    for name, preset in PRESETS.items():
        assert resolve(outdir=tmp_path, preset=name).recipe == preset.recipe(), name


def test_resolve_and_train_take_explicit_keywords(tmp_path):
    # No **settings bag: a mistyped keyword is Python's own TypeError naming it.
    with pytest.raises(TypeError, match="bogus"):
        resolve(outdir=tmp_path, dataset="mnist", method="gaussian", sigma=0.5, bogus=1)
    from smoothmix.training import train

    with pytest.raises(TypeError, match="bogus"):
        train(tmp_path, dataset="mnist", method="gaussian", sigma=0.5, bogus=1)
    assert not any(tmp_path.iterdir())


def test_train_and_resolve_declare_the_same_settings_as_the_recipe_and_runtime():
    # train() and resolve() spell their settings as explicit keywords (issue 26: help(), IDEs
    # and Python's own TypeError for a mistyped name), so each setting is written in the
    # Recipe/Runtime dataclass and in these two signatures. This keeps the copies from
    # drifting: a new Recipe or Runtime field must reach both signatures and train's docs.
    import dataclasses
    import inspect

    from smoothmix.training import Recipe, Runtime, train

    fields = {f.name for f in dataclasses.fields(Recipe)} | {
        f.name for f in dataclasses.fields(Runtime)}
    beside = {"preset", "method_options", "deferred", "runtime", "resume"}
    settings = fields | beside
    of_train = set(inspect.signature(train).parameters)
    of_resolve = set(inspect.signature(resolve).parameters)
    assert settings <= of_train, settings - of_train
    assert of_resolve - {"outdir", "custom_model"} == settings, of_resolve ^ settings
    documented = {name for name in settings if f"``{name}``" in (train.__doc__ or "")}
    assert documented >= fields | beside - {"resume"}, settings - documented


def test_method_options_table_covers_cli_flags():
    from smoothmix.cli.train import method_option_flags

    cli = {dest for _, dest, *_ in method_option_flags()} | {"deferred_epochs"}
    every = set().union(*(method_options(m) for m in METHODS))
    assert every <= cli, every - cli  # every method option can be typed on the command line


def test_sigma_is_stored_from_method_when_not_given(tmp_path):
    path = fit(tiny_model(), NoisyCE(0.75), tiny_data(20, 1), None, tiny_config(epochs=1),
               tmp_path / "s")
    assert math.isclose(load_checkpoint(path)["sigma"], 0.75)


def test_batch_must_divide_over_processes(tmp_path, monkeypatch):
    from smoothmix import distributed

    monkeypatch.setattr(distributed, "init_distributed", lambda device: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(SmoothmixError, match="--batch 15 is not divisible by the 2 processes"):
        run_fit(tmp_path / "d", epochs=1, batch_size=15)
    assert not (tmp_path / "d").exists()


def test_train_api_with_a_users_own_module_and_dataset(tmp_path):
    from smoothmix.training import train

    path = train(tmp_path / "own", model=tiny_model(), train_set=tiny_data(64, 1),
                 test_set=tiny_data(32, 2), method="consistency", sigma=0.25,
                 method_options={"num_noise": 2, "lbd": 1.0}, epochs=2, batch_size=16, lr=0.2,
                 device="cpu", progress=False, workers=0)
    ckpt = load_checkpoint(path)
    assert ckpt["arch"] is None and ckpt["method"] == "consistency" and ckpt["num_classes"] == 2
    assert ckpt["method_options"] == {"num_noise": 2, "lbd": 1.0}
    assert ckpt["method_config"]["eta"] == 0.5  # the method's default, recorded
    assert len(read_log(tmp_path / "own")) == 2
    with pytest.raises(SmoothmixError, match="needs train_set"):
        train(tmp_path / "x", model=tiny_model(), method="gaussian", sigma=0.25)


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    class BlowsUp(NoisyCE):
        def __call__(self, model, x, y, epoch):
            out = super().__call__(model, x, y, epoch)
            return StepOutput(out.loss * (float("nan") if epoch == 1 else 1.0), out.metrics)

    out = tmp_path / "nan"
    with pytest.raises(SmoothmixError, match="diverged in epoch 2"):
        fit(tiny_model(), BlowsUp(0.25), tiny_data(32, 1), None, tiny_config(epochs=3), out)
    ckpt = load_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
