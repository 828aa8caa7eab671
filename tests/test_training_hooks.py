"""The loop's hooks (training.callbacks) and its execution strategy (training.strategy)."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers import NoisyCE, tiny_config, tiny_data, tiny_model

from smoothmix.checkpoint import read_checkpoint
from smoothmix.errors import SmoothmixError
from smoothmix.methods import StepOutput, create_method
from smoothmix.training import TrainConfig, fit, loop
from smoothmix.training.callbacks import Callback, default_callbacks
from smoothmix.training.strategy import ExecutionStrategy


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_fit_start(self, run):
        self.calls.append(("fit_start", run.start_epoch))

    def on_epoch_start(self, run, epoch):
        self.calls.append(("epoch_start", epoch))

    def on_train_epoch_end(self, run, epoch, metrics):
        self.calls.append(("train_epoch_end", epoch, sorted(metrics)))
        metrics["train_extra"] = 1.5  # a callback may add a column

    def on_epoch_end(self, run, epoch, metrics):
        self.calls.append(("epoch_end", epoch, sorted(metrics)))

    def on_fit_end(self, run):
        self.calls.append(("fit_end",))


def test_hooks_are_called_in_order_and_may_add_log_columns(tmp_path):
    rec = Recorder()
    fit(tiny_model(), NoisyCE(0.25), tiny_data(32, 1), tiny_data(16, 2), tiny_config(epochs=2),
        tmp_path / "r", metadata={"arch": None}, callbacks=[rec])
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["fit_start", "epoch_start", "train_epoch_end", "epoch_end",
                     "epoch_start", "train_epoch_end", "epoch_end", "fit_end"]
    # The noisy evaluation (a default callback) has run before a user's hook.
    assert "test_noisy_acc" in rec.calls[2][2] and "time_s" not in rec.calls[2][2]
    assert {"time_s", "train_extra", "test_noisy_loss"} <= set(rec.calls[3][2])
    with open(tmp_path / "r" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train_extra"]) for r in rows] == [1.5, 1.5]

    # A resumed run starts at its checkpoint's epoch.
    rec2 = Recorder()
    fit(tiny_model(), NoisyCE(0.25), tiny_data(32, 1), tiny_data(16, 2), tiny_config(epochs=3),
        tmp_path / "r", resume=True, metadata={"arch": None}, callbacks=[rec2])
    assert rec2.calls[0] == ("fit_start", 2) and rec2.calls[1] == ("epoch_start", 2)


def test_fit_end_runs_after_an_error(tmp_path):
    class Boom(NoisyCE):
        def __call__(self, model, x, y, epoch):
            out = super().__call__(model, x, y, epoch)
            return StepOutput(out.loss * float("nan"), out.metrics)

    rec = Recorder()
    with pytest.raises(SmoothmixError, match="diverged"):
        fit(tiny_model(), Boom(0.25), tiny_data(32, 1), None, tiny_config(epochs=2), tmp_path / "b",
            callbacks=[rec])
    assert rec.calls[-1] == ("fit_end",)


class FolderProbe(Callback):
    """Records, at its turn in the callback list, the log row so far and what the run folder
    holds: (checkpoint epoch, log.csv rows, TensorBoard event bytes)."""

    def __init__(self, rows: list, folders: list) -> None:
        self.rows, self.folders = rows, folders

    def on_train_epoch_end(self, run, epoch, metrics):
        self.rows.append(sorted(metrics))

    def on_epoch_end(self, run, epoch, metrics):
        ckpt, log = run.outdir / "checkpoint.pth.tar", run.outdir / "log.csv"
        self.folders.append((
            read_checkpoint(ckpt).epoch if ckpt.is_file() else 0,
            len(log.read_text().splitlines()) - 1 if log.is_file() else 0,
            sum(p.stat().st_size for p in run.outdir.glob("events.out.tfevents.*"))))


def test_default_callbacks_write_the_logs_before_the_checkpoint(tmp_path, monkeypatch):
    # A probe after each default callback sees what that callback did: the noisy evaluation
    # adds its columns first (so both logs and the checkpoint record them), then log.csv, the
    # TensorBoard events and last the checkpoint. Logs first: a kill between the two leaves a
    # row past the checkpoint, which a resume drops and writes again; the old order
    # (checkpoint first) lost the row of the epoch in between for good (the SIGKILL test
    # of test_train_cli.py caught it).
    rows, folders = [], []
    monkeypatch.setattr(loop, "default_callbacks", lambda test_set, sigma: [
        c for cb in default_callbacks(test_set, sigma) for c in (cb, FolderProbe(rows, folders))])
    fit(tiny_model(), NoisyCE(0.25), tiny_data(32, 1), tiny_data(16, 2), tiny_config(epochs=1),
        tmp_path / "r", metadata={"arch": None})
    assert len(rows) == len(folders) == 4
    assert "test_noisy_acc" in rows[0]
    header_only = folders[0][2]  # the event file's header, written when the writer opened
    assert [(epoch, logged, events > header_only) for epoch, logged, events in folders] == [
        (0, 0, False), (0, 1, False), (0, 1, True), (1, 1, True)]
    assert "test_noisy_acc" in read_checkpoint(tmp_path / "r" / "checkpoint.pth.tar").metrics
    assert "test_noisy_acc" in (tmp_path / "r" / "log.csv").read_text().splitlines()[0]


class _Killed(Exception):
    pass


class _KillAtEpoch(Callback):
    """Dies in the ``at``-th epoch's end, at its place among the writers (a SIGKILL there)."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def on_epoch_end(self, run, epoch, metrics):
        self.calls += 1
        if self.calls == self.at:
            raise _Killed


@pytest.mark.parametrize("place", [1, 2, 3])  # after the evaluation, after each writer
def test_a_kill_anywhere_among_the_writers_loses_no_log_row(tmp_path, monkeypatch, place):
    # With the checkpoint written before log.csv (the order before 0.6), a kill between the
    # two lost that epoch's row for good: the resume starts after the checkpoint.
    out = tmp_path / "r"

    def run(resume, kill=None):
        def callbacks(test_set, sigma):
            cbs = default_callbacks(test_set, sigma)
            return [*cbs[:place], *([kill] if kill else []), *cbs[place:]]

        monkeypatch.setattr(loop, "default_callbacks", callbacks)
        fit(tiny_model(), NoisyCE(0.25), tiny_data(32, 1), tiny_data(16, 2),
            tiny_config(epochs=3), out, resume=resume, metadata={"arch": None})

    with pytest.raises(_Killed):
        run(False, _KillAtEpoch(2))
    run(True)
    with open(out / "log.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_a_kill_inside_the_log_append_leaves_no_half_row(tmp_path, monkeypatch):
    # log.csv rows are added through storage (the whole file replaced): a kill while the
    # second epoch's row is written leaves the first row alone, and the resume logs 2 and 3.
    import io

    from smoothmix import storage

    out, real = tmp_path / "r", storage.atomic_write_with

    def torn(path, write):
        if path.name == "log.csv" and b"\n2," in _bytes_of(write):
            def half(fh):
                fh.write(_bytes_of(write)[:-7])  # the row cut short, then the kill
                raise _Killed
            return real(path, half)
        return real(path, write)

    def _bytes_of(write):
        buffer = io.BytesIO()
        write(buffer)
        return buffer.getvalue()

    monkeypatch.setattr(storage, "atomic_write_with", torn)
    with pytest.raises(_Killed):
        fit(tiny_model(), NoisyCE(0.25), tiny_data(32, 1), None, tiny_config(epochs=3), out,
            metadata={"arch": None})
    monkeypatch.setattr(storage, "atomic_write_with", real)
    with open(out / "log.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]  # whole, as before the kill
    fit(tiny_model(), NoisyCE(0.25), tiny_data(32, 1), None, tiny_config(epochs=3), out,
        resume=True, metadata={"arch": None})
    with open(out / "log.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_a_resume_drops_a_torn_last_log_line(tmp_path):
    # What an in-place append (0.5) killed mid-row may leave: epoch 10's row cut after "1",
    # which a resume from epoch 9 must not keep as a row of epoch 1.
    from smoothmix.training.callbacks import CsvLog

    log = tmp_path / "log.csv"
    log.write_text("epoch,loss\n" + "".join(f"{e},0.5\n" for e in range(1, 10)) + "1")
    CsvLog(log, resume_epoch=9).append({"epoch": 10, "loss": 0.25})
    with open(log, newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == [str(e) for e in range(1, 11)]


def test_resume_starts_afresh_after_a_kill_in_the_first_log_write(tmp_path):
    # The first row goes with the header through an atomic write; a kill there leaves its
    # temporary file, which is ours (like a torn checkpoint's).
    from smoothmix.training.rundir import check_outdir

    out = tmp_path / "early"
    out.mkdir()
    (out / ".log.csv.abc123.tmp").write_text("epoch,lo")
    (out / "events.out.tfevents.1.host.1.0").write_bytes(b"\0" * 40)
    assert check_outdir(out, resume=True) is False
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SmoothmixError, match="holds files other than"):
        check_outdir(out, resume=True)


def test_strategy_runs_one_step_on_cpu():
    strategy = ExecutionStrategy(torch.device("cpu"))
    assert strategy.main and strategy.per_rank_batch(16) == 16
    model = strategy.wrap(strategy.place(tiny_model(), channels_last=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = create_method("gaussian", 0.25, 2)
    x, y, side = strategy.to_device((tiny_data(8, 1).images.float() / 255,
                                     torch.arange(8) % 2))
    before = [p.detach().clone() for p in model.parameters()]
    values, keys = strategy.step(method, model, optimizer, x, y, side, epoch=0)
    assert keys == ["acc"] and values.shape == (2,) and side == {}
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert strategy.all_reduce_sum(values) is values and strategy.gather_objects(3) == [3]


def test_strategy_refuses_a_batch_that_does_not_split_over_processes():
    strategy = ExecutionStrategy(torch.device("cpu"), rank=0, world=3)
    with pytest.raises(SmoothmixError, match="not divisible by the 3 processes"):
        strategy.per_rank_batch(16)


def test_fit_accepts_a_typed_training_method(tmp_path):
    method, model = create_method("gaussian", 0.25, 2), tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = fit(model, method, tiny_data(32, 1), None,
               TrainConfig(epochs=1, batch_size=16, device="cpu", progress=False, workers=0),
               tmp_path / "g", metadata={"arch": None})
    # The run is the method's: its name, noise level and options are recorded, its loss
    # trained the weights and its metrics are logged.
    ckpt = read_checkpoint(path)
    assert (ckpt.method, ckpt.sigma, ckpt.num_classes, ckpt.epoch) == ("gaussian", 0.25, 2, 1)
    assert ckpt.method_config == method.config()
    assert before.keys() == ckpt.state_dict.keys()
    assert any(not torch.equal(before[k], v) for k, v in ckpt.state_dict.items())
    assert {"train_loss", "train_acc"} <= set(ckpt.metrics)


def test_train_passes_callbacks_to_the_loop(tmp_path):
    from smoothmix.training import train

    rec = Recorder()
    train(tmp_path / "t", model=tiny_model(), train_set=tiny_data(32, 1), num_classes=2,
          method="gaussian", sigma=0.25, epochs=2, batch_size=16, device="cpu",
          progress=False, workers=0, callbacks=[rec])
    assert [c[0] for c in rec.calls] == ["fit_start", "epoch_start", "train_epoch_end",
                                         "epoch_end", "epoch_start", "train_epoch_end",
                                         "epoch_end", "fit_end"]


def test_fit_takes_a_recipe_and_runtime_as_train_config_does(tmp_path):
    # TrainConfig is the flat spelling of the two records: same run, same checkpoint.
    from smoothmix.checkpoint import load_checkpoint
    from smoothmix.training import Recipe, Runtime

    recipe = Recipe(epochs=2, batch_size=16, lr=0.05, lr_step=2, seed=7)
    runtime = Runtime(device="cpu", progress=False, workers=0)
    assert tiny_config(epochs=2).recipe == recipe and tiny_config(epochs=2).runtime == runtime
    a = fit(tiny_model(), NoisyCE(0.25), tiny_data(32, 1), None, recipe, tmp_path / "a",
            runtime=runtime, metadata={"arch": None})
    b = fit(tiny_model(), NoisyCE(0.25), tiny_data(32, 1), None, tiny_config(epochs=2),
            tmp_path / "b", metadata={"arch": None})
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert list(ca["config"]) == list(cb["config"]) and ca["config"] == cb["config"]
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    with pytest.raises(AttributeError):
        recipe.epochs = 3  # type: ignore[misc]  # frozen


def test_a_run_of_your_own_model_resumes(tmp_path):
    # train(model=...) stores arch_kwargs {}; its resume used to be refused as if the caller
    # had passed arch_kwargs= (which needs a named architecture).
    from smoothmix.checkpoint import load_checkpoint
    from smoothmix.training import train

    kw = dict(train_set=tiny_data(32, 1), num_classes=2, method="gaussian", sigma=0.25,
              batch_size=16, device="cpu", progress=False, workers=0)
    train(tmp_path / "own", model=tiny_model(), epochs=1, **kw)
    train(tmp_path / "own", model=tiny_model(), epochs=2, resume=True, **kw)
    assert load_checkpoint(tmp_path / "own")["epoch"] == 2
    with pytest.raises(SmoothmixError, match="arch_kwargs= builds a named architecture"):
        train(tmp_path / "other", model=tiny_model(), arch_kwargs={"width": 2}, **kw)
