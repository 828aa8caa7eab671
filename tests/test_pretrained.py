"""Pretrained models by name (issue 27, item 3): the index, the three ways to load, the
offline paths, and the bad inputs (unknown name, tampered file, no network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import smoothmix
from smoothmix import pretrained
from smoothmix.analysis import read_results
from smoothmix.checkpoint import file_sha256, load_checkpoint, load_model
from smoothmix.cli import main
from smoothmix.errors import SmoothmixError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
RUN = RESULTS / "2026-12-01-mnist-0.50-full"
FULL_1 = RESULTS / "2026-12-06-mnist-1.00-full"
NAMES = ["mnist-consistency-0.50", "mnist-consistency-1.00", "mnist-gaussian-0.50",
         "mnist-gaussian-1.00", "mnist-smoothmix-0.50", "mnist-stability-0.50",
         "mnist-stability-1.00"]
EXPORT = ROOT / "scripts" / "export-pretrained"
FAST = ["--n0", "10", "--n", "100", "--alpha", "0.01", "--noise-batch", "100", "--no-progress"]


@pytest.fixture
def no_local(monkeypatch, tmp_path):
    """No $SMOOTHMIX_WEIGHTS, no checkout weights/, an empty cache in tmp_path."""
    monkeypatch.delenv("SMOOTHMIX_WEIGHTS", raising=False)
    monkeypatch.delenv("SMOOTHMIX_WEIGHTS_URL", raising=False)
    monkeypatch.setenv("SMOOTHMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "_checkout_weights", lambda: None)
    return tmp_path / "cache" / "weights"


def _copy(name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(ROOT / "weights" / pretrained.pretrained_info(name)["file"], folder))


def _no_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_index_is_the_model_card():
    assert pretrained.list_pretrained() == NAMES == smoothmix.list_pretrained()
    for name in NAMES:
        info = pretrained.pretrained_info(name)
        assert info["name"] == name and info["preset"] == name and info["licence"] == "MIT"
        sigma = float(name.rsplit("-", 1)[1])
        assert (info["arch"], info["dataset"], info["sigma"], info["seed"]) == ("lenet",
                                                                              "mnist", sigma, 0)
        # the card's curve: 0 to 3.5 sigma in steps of sigma / 2
        assert [float(r) for r in info["certify"]["certified"]] == [k * sigma / 2
                                                                    for k in range(8)]
        assert info["file"] == f"{name}.pt"
        assert file_sha256(ROOT / "weights" / info["file"]) == info["sha256"]
        certify = info["certify"]
        assert (certify["n0"], certify["n"], certify["alpha"]) == (100, 100_000, 0.001)
        assert "500" in certify["images"] and "10,000" in info["decisions"]["images"]
    assert pretrained.pretrained_info("mnist-smoothmix-0.50")["precision"] == "bf16"
    assert pretrained.pretrained_info("mnist-gaussian-0.50")["precision"] == "fp32"
    info = pretrained.pretrained_info("mnist-gaussian-0.50")
    info["sigma"] = 9  # a copy: the index is not changed through it
    assert pretrained.pretrained_info("mnist-gaussian-0.50")["sigma"] == 0.5
    assert "data/pretrained.json" in (ROOT / "pyproject.toml").read_text()  # in the wheel


@pytest.mark.skipif(not RUN.is_dir(), reason="needs the committed results folder")
def test_card_figures_are_those_of_the_result_files():
    for name in NAMES:
        card = pretrained.pretrained_info(name)
        results = read_results(RESULTS / card["certify"]["file"])
        assert card["certify"]["acr"] == round(results.acr(), 4)
        radii = [float(r) for r in card["certify"]["certified"]]
        assert list(card["certify"]["certified"].values()) == [
            round(float(a), 4) for a in results.certified_accuracy(radii)]


def test_weights_file_is_weights_only():
    state = torch.load(ROOT / "weights" / "mnist-gaussian-0.50.pt", weights_only=True)
    model = smoothmix.create_model("lenet")
    assert set(state) == set(model.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.skipif(not RUN.is_dir(), reason="needs the committed training checkpoints")
@pytest.mark.parametrize("name", NAMES)
def test_load_pretrained_equals_the_training_checkpoint(name):
    model, info = smoothmix.load_pretrained(name, source="local")
    assert not model.training and Path(info["path"]).parent == ROOT / "weights"
    trained_in = pretrained.pretrained_info(name)["trained_in"]
    trained, _ = load_model(ROOT / trained_in / "checkpoint.pth.tar")
    images = torch.stack([smoothmix.load_dataset("mnist", "test")[i][0] for i in range(4)])
    with torch.inference_mode():
        assert torch.equal(model(images), trained(images))


def test_smoothmix_weights_env_comes_first(no_local, monkeypatch, tmp_path):
    _no_network(monkeypatch)
    copy = _copy("mnist-smoothmix-0.50", tmp_path / "mine")
    monkeypatch.setenv("SMOOTHMIX_WEIGHTS", str(copy.parent))
    monkeypatch.setattr(pretrained, "_checkout_weights", lambda: ROOT / "weights")
    _, info = pretrained.load_pretrained("mnist-smoothmix-0.50", source="local")
    assert info["path"] == str(copy)


def test_source_local_never_downloads(no_local, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", pytest.fail)
    with pytest.raises(SmoothmixError, match="no local copy of mnist-gaussian-0.50.pt") as exc:
        pretrained.load_pretrained("mnist-gaussian-0.50", source="local")
    assert "SMOOTHMIX_WEIGHTS" in _one_line(exc)


def test_file_url_downloads_into_the_cache(no_local, monkeypatch, tmp_path):
    served = _copy("mnist-consistency-0.50", tmp_path / "served")
    monkeypatch.setenv("SMOOTHMIX_WEIGHTS_URL", (tmp_path / "served").as_uri())
    _, info = pretrained.load_pretrained("mnist-consistency-0.50")
    assert info["path"] == str(no_local / served.name)
    assert file_sha256(info["path"]) == info["sha256"]
    _no_network(monkeypatch)  # now found in the cache, offline too
    _, again = pretrained.load_pretrained("mnist-consistency-0.50", source="local")
    assert again["path"] == info["path"]


def test_a_download_is_written_through_storage(no_local, monkeypatch, tmp_path):
    # storage.atomic_write_with: the file gets the umask's mode (the former writer forced
    # 0644, readable by all whatever the umask) and is fsync'ed before it is renamed.
    from smoothmix import storage

    served = _copy("mnist-consistency-0.50", tmp_path / "served")
    monkeypatch.setenv("SMOOTHMIX_WEIGHTS_URL", (tmp_path / "served").as_uri())
    synced = []
    real = os.fsync
    monkeypatch.setattr(storage.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    old = os.umask(0o077)
    try:
        path = pretrained.weights_file("mnist-consistency-0.50")
    finally:
        os.umask(old)
    assert path == no_local / served.name and path.stat().st_mode & 0o777 == 0o600
    assert synced and [p.name for p in no_local.iterdir()] == [served.name]


def test_tampered_file_is_refused(no_local, monkeypatch, tmp_path):
    copy = _copy("mnist-gaussian-0.50", tmp_path / "mine")
    data = bytearray(copy.read_bytes())
    data[-100] ^= 1
    copy.write_bytes(bytes(data))
    monkeypatch.setenv("SMOOTHMIX_WEIGHTS", str(copy.parent))
    with pytest.raises(SmoothmixError, match="fails its hash check") as exc:
        pretrained.load_pretrained("mnist-gaussian-0.50")
    assert str(copy) in _one_line(exc)
    # The same bytes downloaded: refused, and nothing is left in the cache.
    monkeypatch.delenv("SMOOTHMIX_WEIGHTS")
    monkeypatch.setenv("SMOOTHMIX_WEIGHTS_URL", copy.parent.as_uri())
    with pytest.raises(SmoothmixError, match="fail their hash check") as exc:
        pretrained.load_pretrained("mnist-gaussian-0.50")
    assert "mnist-gaussian-0.50.pt" in _one_line(exc)
    assert not any(no_local.iterdir())


def test_no_network_is_one_line(no_local, monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(SmoothmixError, match="cannot download") as exc:
        pretrained.load_pretrained("mnist-smoothmix-0.50")
    message = _one_line(exc)
    assert pretrained.DEFAULT_URL in message and "SMOOTHMIX_WEIGHTS" in message
    assert not any(no_local.iterdir())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(SmoothmixError, match="did you mean 'mnist-smoothmix-0.50'") as exc:
        smoothmix.load_pretrained("mnist-smoothmix-050")
    assert all(name in _one_line(exc) for name in NAMES)
    with pytest.raises(SmoothmixError, match="source must be"):
        pretrained.weights_file("mnist-smoothmix-0.50", source="web")


def test_pretrained_reference_reads_as_a_checkpoint():
    ckpt = load_checkpoint("pretrained:mnist-gaussian-0.50")
    assert (ckpt["arch"], ckpt["sigma"], ckpt["config"]["dataset"]) == ("lenet", 0.5, "mnist")
    model, ckpt = load_model("pretrained:mnist-gaussian-0.50")
    assert ckpt["normalization_source"] == "checkpoint" and not model.training


def test_cli_certify_pretrained(tmp_path, capsys):
    out = tmp_path / "x.tsv"
    assert main(["certify", "pretrained:mnist-gaussian-0.50", "--max", "2", *FAST,
                 "--out", str(out)]) == 0
    assert "from the model card" in capsys.readouterr().err
    settings = json.loads(Path(f"{out}.json").read_text())["settings"]
    info = pretrained.pretrained_info("mnist-gaussian-0.50")
    assert settings["pretrained"] == "mnist-gaussian-0.50"
    assert settings["checkpoint_sha256"] == info["sha256"]
    assert (settings["sigma"], settings["dataset"]) == (0.5, "mnist")
    assert len(out.read_text().splitlines()) == 3
    assert main(["certify", "pretrained:mnist-gausian-0.50", *FAST, "--out",
                 str(tmp_path / "y.tsv")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "did you mean 'mnist-gaussian-0.50'" in err


def test_cli_certify_pretrained_needs_no_flags_and_ends_with_a_summary(tmp_path, capsys):
    # Issue 27: `certify pretrained:NAME --max 5 --n 1000 --out x.tsv`, no --dataset/--sigma.
    out = tmp_path / "x.tsv"
    assert main(["certify", "pretrained:mnist-smoothmix-0.50", "--max", "2", *FAST,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "--dataset mnist and --sigma 0.5 from the model card" in printed.err
    assert "| ACR |" in printed.out and "warning" not in printed.out + printed.err
    info = json.loads(Path(f"{out}.json").read_text())["info"]
    assert info["model_sigma"] == 0.5  # the card's sigma, beside the run's


def test_a_weights_file_given_as_a_checkpoint_names_its_pretrained_model(tmp_path):
    # weights/NAME.pt is a bare state_dict: say which model it is and how to load it.
    with pytest.raises(SmoothmixError) as info:
        load_checkpoint(_copy("mnist-stability-0.50", tmp_path))
    assert "weights-only file of pretrained model mnist-stability-0.50: pass " \
        "pretrained:mnist-stability-0.50" in _one_line(info)


@pytest.mark.slow
def test_torch_hub_from_a_plain_checkout(tmp_path):
    """hubconf.py puts the checkout's src/ on sys.path itself: no PYTHONPATH, cwd elsewhere."""
    code = (
        "import sys, torch\n"
        f"model = torch.hub.load({str(ROOT)!r}, 'mnist_smoothmix_050', source='local')\n"
        "import smoothmix\n"
        "assert not model.training, 'eval mode'\n"
        "print(smoothmix.__file__)\n"
        "print(model(torch.zeros(1, 1, 28, 28)).shape)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SMOOTHMIX_WEIGHTS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == str(ROOT / "src" / "smoothmix" / "__init__.py")
    assert lines[1] == "torch.Size([1, 10])"
    hubconf = (ROOT / "hubconf.py").read_text()
    assert 'dependencies = ["torch"]' in hubconf


def test_docstring_example_runs():
    import doctest

    assert doctest.testmod(pretrained).failed == 0


def _export(run: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXPORT), "--run", str(run), "--methods",
                           "consistency", "--weights", str(tmp_path / "weights"), "--index",
                           str(tmp_path / "index.json")], capture_output=True, text=True)


@pytest.mark.skipif(not FULL_1.is_dir(), reason="needs the committed results folder")
def test_export_rebuilds_the_committed_weights_and_card(tmp_path):
    """The card is computed from the checkpoint and its result files, never typed: the
    export run again gives the committed weights byte for byte and the same card."""
    done = _export(FULL_1, tmp_path)
    assert done.returncode == 0, done.stderr
    name = "mnist-consistency-1.00"
    assert (tmp_path / "weights" / f"{name}.pt").read_bytes() == \
        (ROOT / "weights" / f"{name}.pt").read_bytes()
    card = json.loads((tmp_path / "index.json").read_text())["models"][name]
    committed = json.loads((ROOT / "src/smoothmix/data/pretrained.json").read_text())
    assert card == committed["models"][name]
    assert list(card["certify"]["certified"]) == ["0", "0.5", "1", "1.5", "2", "2.5", "3", "3.5"]


@pytest.mark.skipif(not FULL_1.is_dir(), reason="needs the committed results folder")
def test_export_refuses_an_incomplete_decisions_file(tmp_path):
    run = tmp_path / "run"
    (run / "consistency").mkdir(parents=True)
    shutil.copy(FULL_1 / "consistency" / "checkpoint.pth.tar", run / "consistency")
    for name in ("certify_consistency.tsv", "certify_consistency.tsv.json",
                 "decide_consistency.tsv.json"):
        shutil.copy(FULL_1 / name, run)
    lines = (FULL_1 / "decide_consistency.tsv").read_text().splitlines(keepends=True)
    (run / "decide_consistency.tsv").write_text("".join(lines[:501]))  # 100 images of 10,000
    done = _export(run, tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip() == (f"export-pretrained: {run}/decide_consistency.tsv is not "
                                   "complete: 100 of 10000 images decided; nothing written")
    assert not (tmp_path / "weights").exists() and not (tmp_path / "index.json").exists()
