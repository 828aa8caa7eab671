"""Progress lines when the output is not a terminal, against a fake clock; and that
training, certification and the diagnostic emit them."""

from __future__ import annotations

import io

import torch
from torch import nn

from smoothmix import progress as progress_module
from smoothmix.progress import Progress, format_duration


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_line_at_least_once_a_minute_with_rate_and_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = Progress(10, initial=2, unit="step", desc="epoch 1/3", stream=out, clock=clock)
    # Not a terminal: a first line says where a resumed run stands.
    assert out.getvalue() == "epoch 1/3: 2/10 step (20%), ETA unknown\n"
    clock.t = 1030.0
    bar.update()  # 30 s after the last line: nothing
    assert out.getvalue().count("\n") == 1
    clock.t = 1060.0
    bar.update()  # 60 s: 2 steps in 60 s -> 30 s/step, 6 steps left -> 180 s
    assert out.getvalue().splitlines()[-1] == "epoch 1/3: 4/10 step (40%), 30 s/step, ETA 0:03:00"
    clock.t = 1100.0
    bar.update()
    assert out.getvalue().count("\n") == 2
    clock.t = 1125.0
    bar.set_postfix(loss="0.5")
    bar.update()  # 65 s after the last line: 4 steps in 125 s, 31.25 s/step, 4 left: 125 s
    assert out.getvalue().splitlines()[-1] == \
        "epoch 1/3: 6/10 step (60%), 31.2 s/step, ETA 0:02:05, loss=0.5"
    clock.t = 1130.0
    with bar:
        pass  # closing prints the final state
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("epoch 1/3: 6/10 step (60%)")
    bar.close()  # idempotent
    assert len(out.getvalue().splitlines()) == 4


def test_fast_rates_terminal_and_disabled() -> None:
    clock, out = FakeClock(0.0), io.StringIO()
    bar = Progress(1000, unit="img", stream=out, clock=clock, interval=1.0)
    clock.t = 2.0
    bar.update(500)
    assert out.getvalue().splitlines()[-1] == "500/1000 img (50%), 250 img/s, ETA 0:00:02"
    assert format_duration(2 * 86400 + 3661) == "2d 1:01:01"

    quiet = io.StringIO()
    off = Progress(5, stream=quiet, clock=clock, disable=True)
    clock.t = 500.0
    off.update(5)
    off.close()
    assert quiet.getvalue() == ""

    tty = io.StringIO()
    with Progress(5, desc="certify", stream=tty, tty=True) as bar:
        bar.update(5)
    assert "certify" in tty.getvalue() and "5/5" in tty.getvalue()
    assert "ETA" not in tty.getvalue()  # tqdm's own bar, not our line


def test_certification_and_diagnostic_report_progress_in_logs(tmp_path, capsys,
                                                              monkeypatch) -> None:
    from smoothmix.certification import certify_dataset
    from smoothmix.data import TensorImageDataset
    from smoothmix.diagnostics import overconfidence
    from smoothmix.run import RunSpec

    monkeypatch.setattr(progress_module, "INTERVAL_S", 0.0)  # a line on every update
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    images = torch.randint(0, 255, (6, 1, 2, 2), dtype=torch.uint8)
    data = TensorImageDataset(images, torch.arange(6) % 3, 3, "tiny")
    certify_dataset(model, data, RunSpec.of(0.5, batch_size=20, skip=2), tmp_path / "c.tsv",
                    n0=10, n=20)
    err = capsys.readouterr().err
    assert "certify c.tsv: 0/3 img (0%), ETA unknown" in err
    assert "certify c.tsv: 3/3 img (100%)" in err

    x = images.float() / 255
    overconfidence(model, x, torch.arange(6) % 3, 0.5, 3, num_steps=1, n=10, batch_size=3)
    err = capsys.readouterr().err
    assert "diagnose: 3/6 img (50%)" in err and "diagnose: 6/6 img (100%)" in err


class _Constant(nn.Module):
    """Logits that always vote for class 1 (certifies at every n)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 1.0]).expand(len(x), 2)


def test_smooth_certify_shows_its_samples_only_when_asked(capsys, monkeypatch) -> None:
    # Issue 27 item 6: one image at a large N ran minutes without a word.
    from smoothmix.core import Smooth

    smooth = Smooth(_Constant(), 2, 0.5)
    x = torch.zeros(1, 2, 2)

    def run(**kw):
        return smooth.certify(x, 10, 500, 0.01, 64,
                              generator=torch.Generator().manual_seed(3), **kw)

    quiet = run()
    assert capsys.readouterr().err == ""  # off by default in the API
    shown = run(progress=True)
    assert shown == quiet  # the same draws, so the same certificate
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("certify: 0/510 samples")
    assert lines[-1].startswith("certify: 510/510 samples (100%)")
    # Every drawn block advances the bar; outside certify no bar is left open.
    seen: list[int] = []
    monkeypatch.setattr(progress_module.Progress, "update",
                        lambda self, n=1: seen.append(n))
    run(progress=True)
    assert sum(seen) == 510 and progress_module.sample_counter() is None


def test_the_progress_bar_keeps_the_pinned_votes() -> None:
    from smoothmix.core import Smooth

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    smooth = Smooth(model, 3, 0.5)
    x = torch.rand(1, 2, 2)
    answers = [smooth.certify(x, 20, 300, 0.01, 32, generator=torch.Generator().manual_seed(1),
                              progress=show) for show in (False, True)]
    assert answers[0] == answers[1]
