"""The rows of `smoothmix reproduce` beyond the tables' defaults: the η figure's presets and
the one-step row run and are labelled like any other row; asking for one at a σ where it
has no preset is a one-line error naming where it exists (exit 2, nothing written)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from smoothmix import reproduce as rep
from smoothmix.cli import main
from smoothmix.errors import SmoothmixError
from smoothmix.training.presets import get_preset

ETA_ROWS = [f"smoothmix-eta{eta}" for eta in (1, 2, 4, 8, 16)]


def test_eta_presets_change_only_eta():
    base = get_preset("mnist-smoothmix-1.00")
    for eta, row in zip((1, 2, 4, 8, 16), ETA_ROWS, strict=True):
        p = get_preset(f"mnist-{row}-1.00")
        assert p.options == {**base.options, "eta": float(eta)}
        assert dataclasses.replace(p, name=base.name, options=base.options, note="") == base


def test_eta_rows_run_when_named_and_are_labelled_like_any_row():
    exp = rep.get_experiment("mnist-1.00")
    # Not part of the table's default rows (the full table stays the paper's) ...
    assert not set(ETA_ROWS) & set(exp.runnable())
    assert exp.runnable()[-1] == "smoothmix-onestep"
    # ... but every one runs when named, with its preset, beside the table's rows.
    asked = ["smoothmix", *ETA_ROWS, "smoothmix-onestep"]
    assert rep.select_methods(exp, asked) == asked
    for row in [*ETA_ROWS, "smoothmix-onestep"]:
        assert rep._train_kwargs(exp, row, rep.Budget())["preset"] == f"mnist-{row}-1.00"
    assert exp.methods()[-len(ETA_ROWS):] == ETA_ROWS
    assert "smoothmix-eta4     preset mnist-smoothmix-eta4-1.00 (90 epochs), η figure" in \
        rep.describe_experiments()


@pytest.mark.parametrize("where", ["figure", "methods"])
def test_published_values_of_an_eta_row_are_matched(monkeypatch, where):
    # The authors' η curves, when added to published.json (in the figure's rows or in the
    # table's methods), are the row's published values.
    published = json.loads(json.dumps(rep.experiments._published()))
    entry = published["experiments"]["mnist-1.00"]
    values = {"acr": 1.7, "certified": [90.0] * 8}
    if where == "figure":
        entry["figures"]["eta"]["rows"]["smoothmix-eta4"] = values
    else:
        entry["methods"]["smoothmix-eta4"] = values
    monkeypatch.setattr(rep.experiments, "_published", lambda: published)
    exp = rep.get_experiment("mnist-1.00")
    assert exp.published["smoothmix-eta4"] == values
    assert "smoothmix-eta4" in rep.select_methods(exp, ["smoothmix-eta4"])


def test_reproduce_plans_eta_and_onestep_rows_with_their_presets(tmp_path, monkeypatch):
    # The plan only (training and certification are tested in test_reproduce): each named
    # row trains its own preset into OUTDIR/<row> and is certified under its own name.
    import smoothmix.certification
    import smoothmix.checkpoint
    import smoothmix.training

    calls = []
    monkeypatch.setattr(smoothmix.training, "train", lambda outdir, **kw: calls.append(
        ("train", outdir.name, kw["preset"])))
    monkeypatch.setattr(smoothmix.checkpoint, "load_model", lambda *a, **k: (None, {}))
    monkeypatch.setattr(smoothmix.checkpoint, "file_sha256", lambda path: "0" * 64)
    monkeypatch.setattr(smoothmix.certification, "certify_dataset", lambda model, data, spec,
                        out, **kw: calls.append(("certify", out.name, spec.identity["method"])))
    monkeypatch.setattr(rep.pipeline, "write_report", lambda exp, out, methods, *a, **k:
                        calls.append(("report", tuple(methods))) or {"table": ""})
    rep.reproduce("mnist-1.00", tmp_path / "r", methods=["smoothmix-eta1", "smoothmix-onestep"],
                  budget=rep.Budget(epochs=1, train_subset=64, n=100, skip=5000),
                  progress=False)
    assert calls == [
        ("train", "smoothmix-eta1", "mnist-smoothmix-eta1-1.00"),
        ("certify", "certify_smoothmix-eta1.tsv", "smoothmix-eta1"),
        ("train", "smoothmix-onestep", "mnist-smoothmix-onestep-1.00"),
        ("certify", "certify_smoothmix-onestep.tsv", "smoothmix-onestep"),
        ("report", ("smoothmix-eta1", "smoothmix-onestep")),
    ]


@pytest.mark.parametrize("experiment, row, message", [
    ("mnist-0.50", "smoothmix-eta1", "no preset mnist-smoothmix-eta1-0.50; the rows of the η "
     "figure exist at σ = 1.00: smoothmix-eta1, smoothmix-eta2, smoothmix-eta4, "
     "smoothmix-eta8, smoothmix-eta16 (smoothmix reproduce mnist-1.00 --methods "
     "smoothmix-eta1)"),
    ("mnist-0.25", "smoothmix-eta16", "no preset mnist-smoothmix-eta16-0.25; the rows of the η "
     "figure exist at σ = 1.00"),
    ("mnist-0.50", "smoothmix-onestep", "no preset mnist-smoothmix-onestep-0.50; row "
     "smoothmix-onestep exists at σ = 1.00 (smoothmix reproduce mnist-1.00 --methods "
     "smoothmix-onestep)"),
    ("cifar10-1.00", "smoothmix-onestep", "no preset cifar10-smoothmix-onestep-1.00; row "
     "smoothmix-onestep exists at σ = 0.50"),
])
def test_a_row_at_a_sigma_without_its_preset_is_one_line_exit_2(tmp_path: Path, capsys,
                                                                 experiment, row, message):
    out = tmp_path / "never"
    assert main(["reproduce", experiment, "--methods", f"gaussian,{row}", "--outdir",
                 str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_published_row_without_a_preset_says_where_it_has_one():
    with pytest.raises(SmoothmixError, match="catrs has a preset at σ = 0.25 \\(mnist-0.25\\)"):
        rep.select_methods(rep.get_experiment("mnist-0.50"), ["catrs"])


def test_certify_device_is_resolve_devices_alone(monkeypatch):
    # One device rule: reproduce asks smoothmix.device.resolve_device (which maps ranks
    # under torchrun) and patches nothing itself.
    import smoothmix.device

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(smoothmix.device, "resolve_device", lambda name: ("resolved", name))
    assert rep.pipeline._certify_device("cuda") == ("resolved", "cuda")
