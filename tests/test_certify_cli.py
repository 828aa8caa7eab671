"""`smoothmix certify / predict / merge / analyze` end to end on the embedded MNIST.

Includes the two process-level guarantees: a run killed with SIGKILL and rerun equals an
uninterrupted run, and a 2-process gloo torchrun run equals the single-process run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from smoothmix.certification import merge_results
from smoothmix.checkpoint import save_checkpoint
from smoothmix.cli import main
from smoothmix.errors import SmoothmixError
from smoothmix.models import create_model

FAST = ["--n0", "10", "--n", "100", "--alpha", "0.01", "--noise-batch", "100", "--no-progress"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    paths = {}
    for name, arch, norm in (("lenet", "lenet", "mnist"), ("resnet", "cifar_resnet20", "cifar10")):
        model = create_model(arch)
        paths[name] = root / f"{name}.pth"
        save_checkpoint(paths[name], {"arch": arch, "state_dict": model.state_dict(),
                                      "num_classes": 10, "normalization": norm, "epoch": 1})
    mismatched = root / "mismatched.pth"
    save_checkpoint(mismatched, {"arch": "lenet", "normalization": "mnist",
                                 "state_dict": create_model("cifar_resnet20").state_dict()})
    paths["mismatched"] = mismatched
    corrupt = root / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all" * 100)
    paths["corrupt"] = corrupt
    return paths


def data_rows(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    at = lines[0].split("\t").index("time")  # without the time column
    return [(f := line.split("\t"))[:at] + f[at + 1:] for line in lines[1:]]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_certify_predict_and_analyze(tmp_path, ckpts, capsys):
    out = tmp_path / "c.tsv"
    assert main(["certify", str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25",
                 "--max", "6", "--skip", "2", *FAST, "--out", str(out)]) == 0
    rows = data_rows(out)
    assert [r[0] for r in rows] == ["0", "2", "4"]
    # MNIST test labels of idx 0, 2, 4 are 7, 1, 4.
    assert [r[1] for r in rows] == ["7", "1", "4"]
    pred = tmp_path / "p.tsv"
    assert main(["predict", str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25",
                 "--n", "100", "--alpha", "0.01", "--max", "3", "--no-progress",
                 "--out", str(pred)]) == 0
    assert pred.read_text().splitlines()[0] == "idx\tlabel\tpredict\tcorrect\ttime"
    capsys.readouterr()
    assert main(["analyze", str(out), str(out), "--radii", "0,0.1", "--format", "csv",
                 "--labels", "a,b"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "name,sigma,N,alpha,images,selected,set,radius_cap,ACR,r=0,r=0.1"
    assert table[1].startswith("a,0.25,100,0.01,3,3,A,") and table[2].startswith("b,0.25,")


def test_skip_wrong_flag_reaches_the_file(tmp_path, ckpts):
    # An untrained LeNet: its selections are mostly wrong, so rows are skipped or not at
    # random; every row either is skipped or equals the full run's.
    common = [str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25", "--max", "8",
              *FAST]
    full, fast = tmp_path / "full.tsv", tmp_path / "fast.tsv"
    assert main(["certify", *common, "--out", str(full)]) == 0
    assert main(["certify", *common, "--skip-wrong", "--out", str(fast)]) == 0
    pairs = list(zip(data_rows(full), data_rows(fast), strict=True))
    assert any(b[6] == "skipped" for _, b in pairs)
    for a, b in pairs:
        assert a == b if b[6] != "skipped" else (b[2:6] == ["-1", "0.0", "0", "10"]
                                                  and a[4] == "0")


def test_radius_mode_writes_decisions_and_resumes(tmp_path, ckpts):
    out = tmp_path / "r.tsv"
    argv = ["certify", str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25",
            "--max-idx", "4", "--radii", "0.1,0.2", "--sequence", "union", "--no-label",
            "--n0", "10", "--num-samples", "300", "--alpha", "0.01", "--noise-batch", "100",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "idx\tlabel\ttested\tat_radius\tdecision\tcertified_correct\tsamples\ttime"
    rows = [line.split("\t") for line in lines[1:]]
    assert sorted((int(r[0]), float(r[3])) for r in rows) == [
        (i, r) for i in range(4) for r in (0.1, 0.2)]
    assert all(r[4] in ("certified", "not-certified", "undecided") for r in rows)
    assert all(10 < int(r[6]) <= 310 for r in rows)
    meta = json.loads((tmp_path / "r.tsv.json").read_text())
    assert meta["kind"] == "decide" and meta["settings"]["radii"] == [0.1, 0.2]
    before = out.read_bytes()
    assert main(argv) == 0 and out.read_bytes() == before  # complete: a rerun is a no-op


@pytest.mark.parametrize("extra, message", [
    (["--radii", "0.5", "--skip-wrong"], "--skip-wrong applies to CERTIFY"),
    (["--no-label"], "need --radii"),
])
def test_radius_mode_refuses_what_it_does_not_do(tmp_path, ckpts, capsys, extra, message):
    argv = ["certify", str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25", *FAST,
            *extra, "--out", str(tmp_path / "x.tsv")]
    assert message in _error(capsys, argv)


def test_radius_shards_merge_to_a_single_run(tmp_path, ckpts, capsys):
    common = [str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25", "--max", "5",
              *FAST, "--radii", "0.1,0.2"]
    assert main(["certify", *common, "--out", str(tmp_path / "all.tsv")]) == 0
    for i in range(2):
        assert main(["certify", *common, "--shard", f"{i}/2",
                     "--out", str(tmp_path / f"s{i}.tsv")]) == 0
    # An example must come with all its rows (one per radius).
    cut = tmp_path / "cut.tsv"
    cut.write_text("".join((tmp_path / "s0.tsv").read_text().splitlines(keepends=True)[:-1]))
    (tmp_path / "cut.tsv.json").write_text((tmp_path / "s0.tsv.json").read_text())
    with pytest.raises(SmoothmixError, match="has 1 rows, not 2"):
        merge_results(tmp_path / "bad.tsv", [cut, tmp_path / "s1.tsv"])
    assert main(["merge", str(tmp_path / "m.tsv"), str(tmp_path / "s1.tsv"),
                 str(tmp_path / "s0.tsv")]) == 0
    assert data_rows(tmp_path / "m.tsv") == data_rows(tmp_path / "all.tsv")


# The spellings deprecated in 0.4/0.5 and removed in 0.6 (CHANGELOG.md): each is now a usage
# error, exit 2, on one line that names its replacement, before anything is read or written.
@pytest.mark.parametrize("argv, old, new", [
    (["certify", "m.pth", "--dataset", "mnist", "--radius", "0.1,0.2"], "--radius", "--radii"),
    # One meaning per flag name: --batch is images per optimiser step in train.
    (["certify", "m.pth", "--dataset", "mnist", "--batch", "50"], "--batch", "--noise-batch"),
    (["predict", "m.pth", "--batch=50"], "--batch", "--noise-batch"),
    (["attack", "m.pth", "--epsilon", "0.5", "--batch", "50"], "--batch", "--noise-batch"),
    (["targets", "m.pth", "--dataset", "mnist", "--batch", "50"], "--batch", "--noise-batch"),
])
def test_removed_spellings_are_one_line_errors_naming_the_new_one(tmp_path, capsys, argv, old,
                                                                  new):
    out = tmp_path / ("out.npz" if argv[0] == "targets" else "out.tsv")
    with pytest.raises(SystemExit) as excinfo:
        main([*argv, "--out", str(out)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"smoothmix {argv[0]}: error: unrecognized arguments: "
                   f"{' '.join(argv[argv.index(old) if old in argv else -1:])} ({old} is now "
                   f"{new}; the old spelling was removed in 0.6) (see smoothmix {argv[0]} "
                   "--help)")
    assert list(tmp_path.iterdir()) == []


def test_the_removed_targets_merge_command_names_merge(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["targets-merge", str(tmp_path / "t.npz"), str(tmp_path / "t.rank0of2.npz")])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("smoothmix: error: ")
    assert "invalid choice: 'targets-merge'" in err
    assert "(targets-merge is now merge; the old spelling was removed in 0.6)" in err
    assert list(tmp_path.iterdir()) == []


def test_a_removed_spelling_beside_a_missing_option_is_named_too(capsys):
    # argparse stops at the missing --out before it lists the unknown flags.
    with pytest.raises(SystemExit):
        main(["certify", "m.pth", "--radius", "0.1"])
    assert "(did you mean --radii for --radius?)" in capsys.readouterr().err


def test_shard_jobs_and_merge_equal_a_single_run(tmp_path, ckpts):
    common = [str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.5", "--max", "7", *FAST]
    assert main(["certify", *common, "--out", str(tmp_path / "all.tsv")]) == 0
    for i in range(2):
        assert main(["certify", *common, "--shard", f"{i}/2",
                     "--out", str(tmp_path / f"s{i}.tsv")]) == 0
    assert main(["merge", str(tmp_path / "m.tsv"), str(tmp_path / "s1.tsv"),
                 str(tmp_path / "s0.tsv")]) == 0
    assert data_rows(tmp_path / "m.tsv") == data_rows(tmp_path / "all.tsv")


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, ckpts):
    args = ["certify", str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25",
            "--n0", "10", "--N", "1500", "--alpha", "0.001", "--noise-batch", "500", "--max", "12",
            "--no-progress"]
    out = tmp_path / "killed.tsv"
    cmd = [sys.executable, "-m", "smoothmix", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 3:  # header + 2 rows
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(data_rows(out))
    assert 2 <= written < 12
    rerun = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert main([*args, "--out", str(tmp_path / "whole.tsv")]) == 0
    rows = data_rows(out)
    assert rows == data_rows(tmp_path / "whole.tsv")
    assert [int(r[0]) for r in rows] == list(range(12))


@pytest.mark.slow
def test_torchrun_two_gloo_processes_equal_the_single_process_run(tmp_path, ckpts):
    # The spellings --max-idx, --num-samples and --noise-batch need no `--` after `-m smoothmix`.
    common = [str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25", "--max-idx", "9",
              "--device", "cpu", "--n0", "10", "--num-samples", "100", "--alpha", "0.01",
              "--noise-batch", "100", "--no-progress"]
    out = tmp_path / "dist.tsv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", "-m", "smoothmix", "certify", *common, "--out", str(out)]
    result = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = [str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25", "--max", "9",
              "--device", "cpu", *FAST]  # the old spellings, outside torchrun
    assert main(["certify", *single, "--out", str(tmp_path / "single.tsv")]) == 0
    rows = data_rows(out)
    assert [int(r[0]) for r in rows] == list(range(9))
    assert rows == data_rows(tmp_path / "single.tsv")
    assert (tmp_path / "dist.rank1of2.tsv").exists()


@pytest.mark.slow
def test_torchrun_two_gloo_processes_decide_like_one_process(tmp_path, ckpts):
    # --radii runs shard under torchrun too: rank 0 merges, an image's rows stay together.
    common = [str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25", "--max-idx", "7",
              "--device", "cpu", "--radii", "0.1,0.3", "--num-samples", "200", "--alpha",
              "0.01", "--noise-batch", "100", "--no-progress"]
    out = tmp_path / "dist.tsv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", "-m", "smoothmix", "certify", *common, "--out", str(out)]
    result = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert main(["certify", *common, "--out", str(tmp_path / "single.tsv")]) == 0
    rows = data_rows(out)
    assert [(int(r[0]), r[3]) for r in rows] == [(i, r) for i in range(7) for r in ("0.1", "0.3")]
    # The pool writes images as they finish; the merge sorts by idx. Row for row (time
    # aside), the ranks computed what the single process did.
    assert rows == sorted(data_rows(tmp_path / "single.tsv"), key=lambda r: (int(r[0]), r[3]))
    assert (tmp_path / "dist.rank1of2.tsv").exists()


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sigma", "0"], "sigma must be a positive number"),
        (["--sigma", "-0.5"], "sigma must be a positive number"),
        (["--sigma", "inf"], "sigma must be a positive number"),
        (["--sigma", "64"], "not 0..255"),
        (["--alpha", "0"], "alpha must lie in (0, 1)"),
        (["--alpha", "1.5"], "alpha must lie in (0, 1)"),
        (["--n0", "0"], "n0 must be an integer >= 1"),
        (["--n", "0"], "n=0 can never certify"),
        (["--n", "5", "--alpha", "0.001"], "n=5 can never certify at alpha=0.001: use n >= 10"),
        (["--noise-batch", "0"], "batch_size must be an integer >= 1"),
        (["--shard", "2/2"], "0 <= I < K"),
        (["--skip", "0"], "skip must be >= 1, got 0"),
        (["--max", "0"], "max_idx (--max) must be -1 (all) or an integer >= 1, got 0"),
        (["--max", "-2"], "max_idx (--max) must be -1 (all) or an integer >= 1, got -2"),
    ],
)
def test_bad_numbers_exit_2_with_one_line(tmp_path, ckpts, capsys, extra, message):
    argv = ["certify", str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25", *FAST,
            "--out", str(tmp_path / "c.tsv"), *extra]
    assert message in _error(capsys, argv)
    assert not (tmp_path / "c.tsv").exists()


def test_a_bad_selection_without_sigma_fails_before_the_dataset_loads(tmp_path, capsys,
                                                                      monkeypatch):
    # The RunSpec checks --skip/--max once; without --sigma (the checkpoint's) it is built as
    # soon as the checkpoint is read, before the (slow) dataset loading.
    ckpt = tmp_path / "g.pth"
    save_checkpoint(ckpt, {"arch": "lenet", "state_dict": create_model("lenet").state_dict(),
                           "num_classes": 10, "normalization": "mnist", "sigma": 0.25,
                           "epoch": 1})
    import smoothmix.data

    def never(*args, **kwargs):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr(smoothmix.data, "load_dataset", never)
    for extra, message in ((["--skip", "0"], "skip must be >= 1, got 0"),
                           (["--max", "0"], "max_idx (--max) must be -1 (all)")):
        argv = ["certify", str(ckpt), "--dataset", "mnist", *FAST, "--out",
                str(tmp_path / "c.tsv"), *extra]
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()  # the sigma taken, then the error
        assert len(err) == 2 and "Traceback" not in err[-1] and message in err[-1], err


def test_bad_files_exit_2_with_one_line(tmp_path, ckpts, capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHMIX_DATA", raising=False)
    out = str(tmp_path / "c.tsv")

    def certify(ckpt, *extra):
        return _error(capsys, ["certify", str(ckpt), "--dataset", "mnist", "--sigma", "0.25",
                               *FAST, "--max", "2", "--out", out, *extra])

    assert "does not exist" in certify(tmp_path / "missing.pth")
    assert "corrupt.pth" in certify(ckpts["corrupt"])
    assert "lenet" in certify(ckpts["mismatched"])
    assert ("is a cifar_resnet20 model for cifar10 images (3x32x32), but mnist images are "
            "1x28x28; use --dataset cifar10") in certify(ckpts["resnet"])
    # An MNIST model asked for CIFAR-10 says so before looking for CIFAR-10's files.
    err = _error(capsys, ["certify", str(ckpts["lenet"]), "--dataset", "cifar10", "--sigma",
                          "0.25", *FAST, "--out", out])
    assert "is a lenet model for mnist images" in err and "CIFAR-10" not in err
    err = _error(capsys, ["certify", str(ckpts["resnet"]), "--dataset", "cifar10", "--sigma",
                          "0.25", *FAST, "--out", out])
    assert "CIFAR-10" in err and "--data-dir" in err
    # An output file that belongs to another run.
    assert main(["certify", str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.5", *FAST,
                 "--max", "2", "--out", out]) == 0
    assert "sigma: 0.5 in the file vs 0.25 now" in certify(ckpts["lenet"])
    assert "use n >= 11" in _error(capsys, ["predict", str(ckpts["lenet"]), "--dataset",
                                            "mnist", "--sigma", "0.25", "--n", "10",
                                            "--out", out])
    assert "does not exist" in _error(capsys, ["merge", out, str(tmp_path / "nope.tsv")])
    assert "does not exist" in _error(capsys, ["analyze", str(tmp_path / "nope.tsv")])


@pytest.mark.slow
def test_bad_input_in_a_real_process_has_no_traceback(tmp_path, ckpts):
    result = subprocess.run(
        [sys.executable, "-m", "smoothmix", "certify", str(ckpts["corrupt"]), "--dataset",
         "mnist", "--sigma", "0.25", "--out", str(tmp_path / "c.tsv")],
        env=clean_env(), capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("smoothmix certify: error:")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def near_tie_lenet(tmp_path_factory) -> Path:
    """A LeNet trained briefly on MNIST whose class rows of the last layer are then made
    almost equal (each a shared row plus 1e-5 of its own): its logits differ in the last
    bits, so any change in how the forward rounds (layout, chunk, threads) flips votes."""
    from smoothmix.data import load_dataset

    train = load_dataset("mnist", "train")
    x = train.images[:2000].float().div(255)
    y = train.labels[:2000]
    torch.manual_seed(0)
    model = create_model("lenet")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(60):
        batch = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = torch.nn.functional.cross_entropy(model(x[batch] + 0.5 * torch.randn_like(x[batch])),
                                                 y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fc2 = model[1].fc2
        fc2.weight.copy_(fc2.weight[:1] * 10 + fc2.weight * 1e-5)
        fc2.bias.copy_(fc2.bias * 1e-5)
    path = tmp_path_factory.mktemp("tie") / "tie.pth"
    save_checkpoint(path, {"arch": "lenet", "state_dict": model.state_dict(),
                           "num_classes": 10, "normalization": "mnist", "epoch": 1})
    return path


@pytest.mark.slow
def test_separate_shard_processes_merge_bit_for_bit_on_near_ties(tmp_path, near_tie_lenet):
    # Same machine, same CPU device, separate processes: the chunk, layout and precision
    # come from one rule (never a timing), so each row, radius included, is reproduced.
    common = [str(near_tie_lenet), "--dataset", "mnist", "--sigma", "0.5", "--max", "10",
              "--n0", "20", "--n", "2000", "--alpha", "0.01", "--noise-batch", "1000",
              "--no-progress"]

    def run(*extra: str) -> None:
        cmd = [sys.executable, "-m", "smoothmix", "certify", *common, *extra]
        result = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]

    run("--out", str(tmp_path / "all.tsv"))
    for i in range(2):
        run("--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}.tsv"))
    assert main(["merge", str(tmp_path / "m.tsv"), str(tmp_path / "s0.tsv"),
                 str(tmp_path / "s1.tsv")]) == 0
    merged, single = data_rows(tmp_path / "m.tsv"), data_rows(tmp_path / "all.tsv")
    assert merged == single  # radii compared as written: repr, full precision
    assert len({r[2] for r in single}) > 1 and any(r[7] != "0" and r[8] != "0" for r in single)
    # The ties are real: the same noise (1 channel: both layouts lay it out alike) through
    # the contiguous layout flips votes, so a merge of shards run differently is refused.
    run("--layout", "contiguous", "--out", str(tmp_path / "nchw.tsv"))
    nchw = data_rows(tmp_path / "nchw.tsv")
    assert [r[7:9] for r in nchw] != [r[7:9] for r in single]
    run("--layout", "contiguous", "--shard", "1/2", "--out", str(tmp_path / "t1.tsv"))
    assert "layout" in _merge_error(tmp_path, "s0.tsv", "t1.tsv")


def _merge_error(tmp_path: Path, *names: str) -> str:
    result = subprocess.run([sys.executable, "-m", "smoothmix", "merge",
                             str(tmp_path / "bad.tsv"), *(str(tmp_path / n) for n in names)],
                            env=clean_env(), capture_output=True, text=True)
    assert result.returncode == 2 and not (tmp_path / "bad.tsv").exists()
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_dataset_and_sigma_default_to_the_checkpoints_and_the_run_ends_with_a_summary(
        tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pth"
    save_checkpoint(ckpt, {"arch": "lenet", "state_dict": create_model("lenet").state_dict(),
                           "num_classes": 10, "normalization": "mnist", "epoch": 1,
                           "sigma": 0.5})
    out = tmp_path / "c.tsv"
    argv = ["certify", str(ckpt), *FAST, "--max", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "--dataset mnist and --sigma 0.5 from the checkpoint" in printed.err
    assert "| ACR |" in printed.out and "r = 0.25" in printed.out
    record = json.loads(out.with_name("c.tsv.json").read_text())
    assert record["settings"]["sigma"] == 0.5
    # The model's sigma is information, not a setting a resume compares.
    assert record["info"]["model_sigma"] == 0.5 and "model_sigma" not in record["settings"]
    assert "certified at sigma" not in printed.out
    assert main(argv) == 0  # a rerun of a finished file says so
    assert "already complete: nothing to do" in capsys.readouterr().out
    # Another sigma than the model's is allowed, and warned about: before the run, below
    # the summary, and in the result file's info.
    assert main([*argv[:-1], str(tmp_path / "d.tsv"), "--sigma", "0.25"]) == 0
    printed = capsys.readouterr()
    assert "warning: certifying at sigma=0.25 a model trained at sigma=0.5" in printed.err
    assert printed.out.rstrip().splitlines()[-1] == \
        "warning: d.tsv: certified at sigma=0.25, its model was trained at sigma=0.5"
    record = json.loads((tmp_path / "d.tsv.json").read_text())
    assert (record["settings"]["sigma"], record["info"]["model_sigma"]) == (0.25, 0.5)
    assert main(["analyze", str(out), str(tmp_path / "d.tsv")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert notes == ["smoothmix analyze: note: d.tsv: certified at sigma=0.25, its model was "
                     "trained at sigma=0.5"]
    # A checkpoint that does not record sigma (the reference code's) needs --sigma.
    ref = tmp_path / "ref.pth"
    save_checkpoint(ref, {"arch": "lenet", "state_dict": create_model("lenet").state_dict()})
    assert "does not record the sigma it was trained at" in _error(
        capsys, ["certify", str(ref), *FAST, "--max", "2", "--out", str(tmp_path / "r.tsv")])


def test_a_larger_max_extends_the_file_and_a_smaller_one_is_refused(tmp_path, ckpts, capsys):
    # Issue 27 item 5: `--max 7` after `--max 5`, everything else unchanged.
    common = ["certify", str(ckpts["lenet"]), "--dataset", "mnist", "--sigma", "0.25", *FAST]
    out, whole = tmp_path / "c.tsv", tmp_path / "whole.tsv"
    assert main([*common, "--max", "5", "--out", str(out)]) == 0
    assert main([*common, "--max", "7", "--out", str(out)]) == 0
    assert "already complete" not in capsys.readouterr().out
    assert main([*common, "--max", "7", "--out", str(whole)]) == 0
    assert data_rows(out) == data_rows(whole)
    assert "smaller max_idx (--max) than the file's" in _error(
        capsys, [*common, "--max", "3", "--out", str(out)])
