"""One run specification (smoothmix.run.RunSpec) for every dataset entry point; the older
keyword arguments that built one (deprecated in 0.5) are one-line errors since 0.6."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from smoothmix.certification import certify_dataset, predict_dataset
from smoothmix.data.datasets import TensorImageDataset
from smoothmix.decisions import decide_dataset
from smoothmix.errors import SmoothmixError
from smoothmix.noise import GaussianNoise, GridGaussianNoise
from smoothmix.run import RunSpec, as_spec
from smoothmix.targets import build_targets, load_targets

# The error of the form before 0.5 (sigma and the spec's fields as keywords), removed in 0.6.
REMOVED = (r"certify_dataset\(\) got an unexpected keyword argument '{}': the run's fields go "
           r"in a smoothmix\.run\.RunSpec \(RunSpec\.of\(sigma, {}=\.\.\.\)\) since 0.6$")


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()


def data(count: int = 4) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 1, 8, 8), generator=g, dtype=torch.uint8)
    return TensorImageDataset(images, torch.arange(count) % 3, num_classes=3, name="t")


def test_the_old_keywords_are_one_line_errors_naming_the_spec(tmp_path):
    # Removed in 0.6: the run's fields as keywords beside a sigma (or beside a spec).
    for name, value in [("seed", 3), ("batch_size", 50), ("skip", 2), ("grid", 255),
                        ("identity", {"dataset": "t"})]:
        with pytest.raises(TypeError, match=REMOVED.format(name, name)):
            certify_dataset(net(), data(), 0.5, tmp_path / "old.tsv", n0=10, n=100,
                            alpha=0.01, **{name: value})
        with pytest.raises(TypeError, match=REMOVED.format(name, name)):
            certify_dataset(net(), data(), RunSpec.of(0.5), tmp_path / "old.tsv", n0=10,
                            n=100, alpha=0.01, **{name: value})
    from smoothmix.empirical import attack_dataset

    for kind, call, own in [("predict", predict_dataset, {}),
                            ("decide", decide_dataset, {"radii": [0.1]}),
                            ("attack", attack_dataset, {"epsilon": 0.5})]:
        with pytest.raises(TypeError, match=f"{kind}_dataset\\(\\) got an unexpected keyword "
                           "argument 'seed': the run's fields go in a smoothmix.run.RunSpec"):
            call(net(), data(), 0.5, tmp_path / "old.tsv", seed=1, **own)
    with pytest.raises(TypeError, match=r"build_targets\(\) got an unexpected keyword argument "
                       r"'precision': .*RunSpec\.of\(sigma, execution=\{'precision': \.\.\.\}\)"):
        build_targets(net(), data(2), 0.5, tmp_path / "t.npz", n=20, precision="bf16")
    assert list(tmp_path.iterdir()) == []


def test_a_bare_sigma_or_noise_is_a_spec_with_the_default_fields(tmp_path):
    spec = RunSpec(GaussianNoise(0.5), progress=False)
    new = certify_dataset(net(), data(), spec, tmp_path / "new.tsv", n0=10, n=100,
                          alpha=0.01)
    bare = certify_dataset(net(), data(), 0.5, tmp_path / "bare.tsv", n0=10, n=100,
                           alpha=0.01)
    noise = certify_dataset(net(), data(), GaussianNoise(0.5), tmp_path / "noise.tsv", n0=10,
                            n=100, alpha=0.01)
    rows = [p.read_text().splitlines() for p in (new, bare, noise)]
    strip = [[line.split("\t")[:4] for line in r] for r in rows]  # without the time column
    assert strip[0] == strip[1] == strip[2] and len(rows[0]) == 5


def test_every_entry_point_takes_the_spec(tmp_path):
    spec = RunSpec.of(0.5, grid=255, batch_size=64, progress=False)
    assert isinstance(spec.noise, GridGaussianNoise)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        predict_dataset(net(), data(2), spec, tmp_path / "p.tsv", n=50, alpha=0.01)
        decide_dataset(net(), data(2), spec, tmp_path / "d.tsv", radii=[0.1], n=50,
                       alpha=0.01)
        out = build_targets(net(), data(2), RunSpec.of(0.5, batch_size=64, progress=False),
                            tmp_path / "t.npz", n=20)
    assert load_targets(out).counts.sum(1).tolist() == [20, 20]


def test_spec_checks_and_misuse():
    with pytest.raises(SmoothmixError, match="skip must be >= 1"):
        RunSpec.of(0.5, skip=0)
    with pytest.raises(SmoothmixError, match="batch_size"):
        RunSpec.of(0.5, batch_size=0)
    with pytest.raises(SmoothmixError, match="unknown execution option"):
        RunSpec.of(0.5, execution={"dtype": "fp16"})
    with pytest.raises(SmoothmixError, match="Noise"):
        RunSpec(0.5)  # type: ignore[arg-type]
    spec = RunSpec.of(0.5)
    assert as_spec(spec, {}, "certify_dataset") is spec
    with pytest.raises(TypeError, match="in a smoothmix.run.RunSpec"):
        as_spec(spec, {"seed": 1}, "certify_dataset")
    with pytest.raises(TypeError, match="^certify_dataset\\(\\) got an unexpected keyword "
                       "argument 'sed'$"):
        as_spec(0.5, {"sed": 1}, "certify_dataset")
    identity = {"a": 1}
    spec = RunSpec.of(0.5, identity=identity)
    identity["a"] = 2
    assert spec.identity == {"a": 1} and spec.replace(seed=4).seed == 4


@pytest.mark.parametrize("max_idx", [0, -2, 1.5, None, True, "3"])
def test_spec_refuses_a_max_idx_that_is_neither_all_nor_a_bound(max_idx):
    # 0 selected nothing without a word, -2 meant "all" by accident, 1.5 ended in range()'s
    # TypeError: the spec is where a selection enters, for every kind of run.
    with pytest.raises(SmoothmixError, match=r"max_idx \(--max\) must be -1 \(all\) or an "
                       "integer >= 1"):
        RunSpec.of(0.5, max_idx=max_idx)
    with pytest.raises(SmoothmixError, match="max_idx"):
        RunSpec.of(0.5).replace(max_idx=max_idx)
    # As a keyword (the form removed in 0.6) it is refused before its value is looked at.
    with pytest.raises(TypeError, match=REMOVED.format("max_idx", "max_idx")):
        certify_dataset(net(), data(2), 0.5, "never-written.tsv", max_idx=max_idx)


def test_spec_selection_is_kept_as_plain_ints():
    import numpy as np

    spec = RunSpec.of(0.5, skip=np.int64(2), max_idx=np.int64(7))
    assert (spec.skip, spec.max_idx) == (2, 7) and type(spec.skip) is type(spec.max_idx) is int
    assert RunSpec.of(0.5).max_idx == -1
    with pytest.raises(SmoothmixError, match="skip must be >= 1"):
        RunSpec.of(0.5, skip=True)


def test_targets_record_the_resolved_execution_and_old_files_keep_their_format(tmp_path):
    from smoothmix.execution import EXECUTION_KEYS
    from smoothmix.storage.arrays import write_arrays

    spec = RunSpec.of(0.5, batch_size=64, progress=False)
    out = build_targets(net(), data(3), spec, tmp_path / "t.npz", n=20)
    new = load_targets(out)
    assert set(EXECUTION_KEYS) <= set(new.meta) and new.meta["precision"] == "fp32"
    # A file of an earlier release recorded no execution (the precision only when bf16):
    # the same run reuses it as it is, in its own format, instead of refusing it.
    old_meta = {k: v for k, v in new.meta.items() if k not in EXECUTION_KEYS}
    old = tmp_path / "old.npz"
    write_arrays(old, new.counts, old_meta)
    assert build_targets(net(), data(3), spec, old, n=20) == old
    assert load_targets(old).meta == old_meta
    with pytest.raises(SmoothmixError, match="recorded only its precision"):
        build_targets(net(), data(3), spec.replace(execution={"layout": "contiguous"}), old,
                      n=20)
    with pytest.raises(SmoothmixError, match="another run"):  # bf16 is another run
        build_targets(net(), data(3), spec.replace(execution={"precision": "bf16"}), old,
                      n=20)


def test_targets_under_torchrun_go_through_the_one_runner(tmp_path, monkeypatch):
    # A 2-rank run in one process: rank 1 counts its share (its wait for the merged file
    # stubbed), rank 0 counts and merges, and the merged table equals one process's.
    import smoothmix.runner as runner
    from smoothmix.targets import shard_file

    spec = RunSpec.of(0.5, batch_size=64, progress=False)
    single = load_targets(build_targets(net(), data(5), spec, tmp_path / "one.npz", n=30))
    out = tmp_path / "dist.npz"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    waited = []
    with monkeypatch.context() as patch:
        patch.setattr(runner, "wait_until", waited.append)
        assert build_targets(net(), data(5), spec, out, n=30) == out
    assert len(waited) == 1 and shard_file(out, 1, 2).exists() and not out.exists()
    monkeypatch.setenv("RANK", "0")
    assert build_targets(net(), data(5), spec, out, n=30) == out
    merged = load_targets(out)
    assert (merged.counts == single.counts).all() and merged.meta["shard"] == "0/1"
    monkeypatch.setenv("RANK", "1")  # a rerun of the finished job: nothing to do
    assert build_targets(net(), data(5), spec, out, n=30) == out


# Its model is a bare classifier under a denoiser record: the warning that nothing probes
# the denoiser is asserted once (pytest.warns below) and expected on every later run.
@pytest.mark.filterwarnings("ignore:RunSpec.denoiser describes a denoiser:UserWarning")
def test_the_denoiser_record_is_a_setting_absent_without_one(tmp_path):
    """Issue 28's denoiser identity goes into the settings record as ``denoiser``: absent
    without a denoiser (every earlier file's settings compare equal), and a resume or a
    merge with another denoiser is refused, naming the field."""
    import json

    from smoothmix.certification import merge_results

    plain = RunSpec(GaussianNoise(0.5), batch_size=50, progress=False)
    out = certify_dataset(net(), data(), plain, tmp_path / "plain.tsv", n0=10, n=100,
                          alpha=0.01)
    assert "denoiser" not in json.loads((tmp_path / "plain.tsv.json").read_text())["settings"]
    record = {"sha256": "ab" * 32, "settings": {"depth": 10, "width": 32}, "sigma": 0.5,
              "shape": (1, 8, 8)}
    spec = plain.replace(denoiser=record, max_idx=2)
    with pytest.warns(UserWarning, match="holds no smoothmix Denoised"):  # nothing probes D
        first = certify_dataset(net(), data(), spec, tmp_path / "d.tsv", n0=10, n=100,
                                alpha=0.01)
    settings = json.loads((tmp_path / "d.tsv.json").read_text())["settings"]
    assert settings["denoiser"] == {**record, "shape": [1, 8, 8]}  # as JSON reads it back
    # The same denoiser resumes (a tuple and the list it was stored as compare equal).
    certify_dataset(net(), data(), spec.replace(max_idx=-1), tmp_path / "d2.tsv", n0=10,
                    n=100, alpha=0.01)
    assert certify_dataset(net(), data(), spec, first, n0=10, n=100, alpha=0.01) == first
    other = spec.replace(denoiser={**record, "sha256": "cd" * 32})
    for rerun in (other, spec.replace(denoiser=None)):
        with pytest.raises(SmoothmixError, match="another run.*denoiser") as refused:
            certify_dataset(net(), data(), rerun, first, n0=10, n=100, alpha=0.01)
        assert "\n" not in str(refused.value)
    with pytest.raises(SmoothmixError, match="another run.*denoiser"):
        certify_dataset(net(), data(), other, out, n0=10, n=100, alpha=0.01)
    shards = [certify_dataset(net(), data(), s.replace(shard=(i, 2)), tmp_path / f"s{i}.tsv",
                              n0=10, n=100, alpha=0.01)
              for i, s in enumerate((spec.replace(max_idx=-1), other.replace(max_idx=-1)))]
    with pytest.raises(SmoothmixError, match="denoiser") as refused:
        merge_results(tmp_path / "m.tsv", shards)
    assert "\n" not in str(refused.value)


def test_the_denoiser_record_must_be_a_json_mapping():
    with pytest.raises(SmoothmixError, match="non-empty mapping"):
        RunSpec.of(0.5, denoiser="dncnn.pth")
    with pytest.raises(SmoothmixError, match="JSON values only"):
        RunSpec.of(0.5, denoiser={"model": nn.Identity()})
    with pytest.raises(TypeError, match="denoiser"):  # new in 0.5: only through a RunSpec
        as_spec(0.5, {"denoiser": {"sha256": "ab"}}, "certify_dataset")


def test_the_models_sigma_is_recorded_in_the_info_and_never_compared(tmp_path):
    # Issue 27 item 4: a run at another sigma than the model's is recorded beside the run's
    # sigma; as information only, so that a resume (of any release's file) does not need it.
    import json

    from smoothmix.analysis import read_run_info
    from smoothmix.cli.analyze import model_sigma_note

    out = tmp_path / "c.tsv"
    spec = RunSpec.of(0.25, batch_size=50, progress=False, max_idx=2, model_sigma=0.5)
    certify_dataset(net(), data(), spec, out, n0=10, n=100, alpha=0.01)
    record = json.loads((tmp_path / "c.tsv.json").read_text())
    assert record["info"]["model_sigma"] == 0.5 and "model_sigma" not in record["settings"]
    run = read_run_info(out)
    assert run is not None and (run.sigma, run.model_sigma) == (0.25, 0.5)
    assert model_sigma_note(out, run) == ("c.tsv: certified at sigma=0.25, its model was "
                                          "trained at sigma=0.5")
    # Extended without it (as by Python code that does not know it): the file resumes.
    certify_dataset(net(), data(), spec.replace(model_sigma=None, max_idx=4), out, n0=10,
                    n=100, alpha=0.01)
    assert len(out.read_text().splitlines()) == 5
    # Unknown (the default) is not recorded; the same sigma is recorded and not flagged.
    plain = certify_dataset(net(), data(1), RunSpec.of(0.5, progress=False),
                            tmp_path / "p.tsv", n0=10, n=100, alpha=0.01)
    assert "model_sigma" not in json.loads((tmp_path / "p.tsv.json").read_text())["info"]
    assert model_sigma_note(plain, read_run_info(plain)) is None
    same = certify_dataset(net(), data(1), RunSpec.of(0.5, progress=False, model_sigma=0.5),
                           tmp_path / "s.tsv", n0=10, n=100, alpha=0.01)
    assert model_sigma_note(same, read_run_info(same)) is None
    for bad in (0, -1.0, float("nan"), "0.5", True):
        with pytest.raises(SmoothmixError, match="model_sigma must be a positive number"):
            RunSpec.of(0.5, model_sigma=bad)
    with pytest.raises(TypeError, match="model_sigma"):  # no old-style keyword for it
        certify_dataset(net(), data(1), 0.5, tmp_path / "k.tsv", n0=10, n=100, alpha=0.01,
                        model_sigma=0.5)
