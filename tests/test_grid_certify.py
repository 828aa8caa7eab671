"""The sound 8-bit grid mode (docs/grid.md, docs/MATH.md §2.2) through the real Smooth, the
dataset runners and the CLI: the bit-reading counterexample in both modes, rejections
counted conservatively, and the grid setting of result files (recorded, resumed, refused)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from smoothmix.certification import (
    attack_dataset,
    certify_dataset,
    decide_dataset,
    predict_dataset,
)
from smoothmix.cli import main
from smoothmix.core import ABSTAIN, Smooth, radius_from_counts
from smoothmix.errors import SmoothmixError
from smoothmix.grid import UNIT_BITS, GridNoise
from smoothmix.noise import GridGaussianNoise
from smoothmix.run import RunSpec

UNITS = 1 << UNIT_BITS
SIGMA = 0.25
X0 = torch.zeros(1, 28, 28)
X1 = torch.full((1, 28, 28), 3 / 255)  # every pixel 3/255: l2 distance 3 * 28 / 255 = 0.329


class BitReader(nn.Module):
    """docs/MATH.md §2.2's base classifier: class 1 if most coordinates with |z_i| < 2^-9
    are exact multiples of 2^-30, else class 0 (one-hot logits).

    ``grid``: also check, on every batch, that the inputs are grid values fl(k/255) and
    that the vote is [some k_i = 0] (the only grid value below 2^-9 is 0.0, a multiple of
    2^-30), i.e. that on the grid this classifier is the deterministic h of the sums."""

    def __init__(self, grid: GridNoise | None = None) -> None:
        super().__init__()
        self.grid = grid
        self.rows = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(len(z), -1)
        near = flat.abs() < 2**-9
        exact = near & (torch.frac(flat.double() * 2**30) == 0)
        votes = (2 * exact.sum(1) > near.sum(1)).long()
        if self.grid is not None:
            k = (flat.double() * 255).round().long()
            assert torch.equal(flat.view(torch.int32), self.grid.decode(k).view(torch.int32))
            assert torch.equal(votes, (k == 0).any(1).long())
        self.rows += len(z)
        return nn.functional.one_hot(votes, 2).to(z.dtype)


def p_one_on_grid(noise: GridNoise, a: int, pixels: int = 784) -> float:
    """P(h = 1) for h = [some k_i = 0] at the grid image with every code a: each pixel
    lands on k = 0 with the sampler's mass of j = -a (rejections are below 1e-12)."""
    return 1 - (1 - noise.masses[noise.radius - a].item() / UNITS) ** pixels


# -- the bit-reading counterexample ---------------------------------------------------------


def test_float_noise_certifies_a_ball_that_predict_contradicts_inside():
    """The flaw the grid mode exists for (documented, not a bug of smoothmix): with float32
    noise, CERTIFY at x0 = 0 certifies class 0 at a radius beyond 0.329, yet PREDICT at x1
    (0.329 away) answers class 1 - the certificate is false for this classifier."""
    smooth = Smooth(BitReader(), 2, SIGMA)
    g = torch.Generator().manual_seed(0)
    cert = smooth.certificate(X0, 100, 2000, 0.001, 1000, g)
    assert abs(float((X1 - X0).norm()) - 0.329) < 1e-3
    assert cert.prediction == 0 and cert.radius > 0.329
    assert smooth.predict(X1, 1000, 0.001, 1000, g) == 1  # inside the certified ball
    counts = smooth.votes(X1, 1000, 1000, g).counts
    assert counts[1] > 950  # not a near tie: x1 votes 1 almost always


def test_grid_noise_removes_the_contradiction():
    """Grid mode: the bit reader sees only fl(k/255), and the only such value below 2^-9 is
    0.0, so it votes [some k_i = 0] (checked on every batch). That is a function of the
    integer sums, and its smoothed law is 1 - (1 - P(j = -a))^784: 0.9926 at x0 (a = 0) and
    0.9925 at x1 (a = 3). Both points vote class 1 at these frequencies, CERTIFY at x0
    certifies class 1 with a radius beyond 0.329, and PREDICT at x1 agrees."""
    smooth = Smooth(BitReader(), 2, SIGMA, grid=255)
    assert isinstance(smooth.noise, GridGaussianNoise)
    sampler = smooth.base_classifier.grid = smooth.noise.sampler
    p0, p1 = p_one_on_grid(sampler, 0), p_one_on_grid(sampler, 3)
    assert 0.992 < p1 < p0 < 0.993 and p0 - p1 < 2e-4
    g = torch.Generator().manual_seed(0)
    count = 2000
    for x, p in ((X0, p0), (X1, p1)):
        votes = smooth.votes(x, count, 1000, g)
        assert votes.drawn == count and int(votes.rejected) == 0  # no rejection (4e-13 each)
        sd = math.sqrt(p * (1 - p) / count)
        assert abs(int(votes.counts[1]) / count - p) < 4.5 * sd
    cert = smooth.certificate(X0, 100, 2000, 0.001, 1000, g)
    assert cert.prediction == 1 and cert.radius >= 0.329
    # The contradiction of the float mode is impossible here: x1 is in the ball, and
    # PREDICT there returns the certified class.
    assert smooth.predict(X1, 1000, 0.001, 1000, g) == cert.prediction
    # Cohen's bound from x0 at distance 0.329 holds for the true law at x1.
    assert p1 >= norm.cdf(norm.ppf(p0) - 0.329 / SIGMA)
    assert smooth.base_classifier.rows == 2 * count + 100 + 2000 + 1000  # all went through f


# -- rejections ---------------------------------------------------------------------------


class RecordingNoise(GridNoise):
    """A grid sampler over a given integer law that keeps what it drew: (images, rejected)
    per call, so a test can count the votes Smooth should have made."""

    log: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def with_law(cls, shares: list[float]) -> RecordingNoise:
        noise = cls._from_masses([int(s * UNITS) for s in shares])
        noise.log = []
        return noise

    def sample(self, codes, count, generator=None, out=None):
        images, rejected = super().sample(codes, count, generator, out)
        self.log.append((images.clone(), rejected.clone()))
        return images, rejected


class Threshold(nn.Module):
    """Class 0 below 0.5 / 255 (the code 0), class 1 above: one pixel, one-hot logits."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot((z.reshape(len(z), -1)[:, 0] > 0.5 / 255).long(),
                                     2).float()


def recorded_votes(noise: RecordingNoise, skip_rows: int) -> tuple[int, int, int]:
    """(class 0, class 1, rejected) among the recorded draws after the first ``skip_rows``
    rows (the n0 selection)."""
    images = torch.cat([i for i, _ in noise.log])[skip_rows:].reshape(-1)
    rejected = torch.cat([r for _, r in noise.log])[skip_rows:]
    ones = (images > 0.5 / 255) & ~rejected
    zeros = ~ones & ~rejected
    return int(zeros.sum()), int(ones.sum()), int(rejected.sum())


@pytest.mark.parametrize("bound", ["cohen", "two-sided"])
def test_certify_counts_rejections_against_the_class_and_for_the_runner_up(bound):
    """One pixel at code 0 whose noise is j = 0 (85 %), j = +1 (5 %) or rejected (10 %):
    class 0, class 1, no vote. n_A must exclude the rejected draws (n nominal) and n_B must
    include them, so that the two-sided bound on the runner-up stays an upper bound."""
    smooth = Smooth(Threshold(), 2, SIGMA, grid=255)
    smooth.noise = GridGaussianNoise.wrap(noise := RecordingNoise.with_law([0.0, 0.85, 0.05]),
                                          SIGMA)
    assert noise.rejected_units == UNITS - int(0.85 * UNITS) - int(0.05 * UNITS)
    n0, n, alpha = 100, 2000, 0.001
    cert = smooth.certificate(torch.zeros(1, 1, 1), n0, n, alpha, 500,
                              torch.Generator().manual_seed(1), bound=bound)
    zeros, ones, rejected = recorded_votes(noise, n0)
    assert zeros + ones + rejected == n
    assert 140 < rejected < 260 and 60 < ones < 140  # 10 % +- 4.5 sd, 5 % +- 4.5 sd
    assert cert.prediction == 0 and cert.status == "certified"
    assert (cert.n_a, cert.n_b) == (zeros, ones + rejected)
    assert cert.radius == radius_from_counts(zeros, ones + rejected, n, alpha, SIGMA, bound)
    if bound == "two-sided":  # ignoring the rejections would have certified more
        assert cert.radius < radius_from_counts(zeros, ones, n, alpha, SIGMA, bound)
    else:  # Cohen's bound uses n_A out of the nominal n, not out of the votes cast
        assert cert.radius < radius_from_counts(zeros, 0, zeros + ones, alpha, SIGMA, bound)


def test_predict_counts_rejections_for_the_runner_up():
    """j = 0 (50 %), j = +1 (5 %), rejected (45 %): 500 votes for class 0 against 50 for
    class 1 would be a clear PREDICT, but with the rejections on the runner-up's side it is
    a tie, and PREDICT must abstain."""
    smooth = Smooth(Threshold(), 2, SIGMA, grid=255)
    smooth.noise = GridGaussianNoise.wrap(noise := RecordingNoise.with_law([0.0, 0.5, 0.05]),
                                          SIGMA)
    n, alpha = 1000, 0.001
    assert smooth.predict(torch.zeros(1, 1, 1), n, alpha, 250,
                          torch.Generator().manual_seed(2)) == ABSTAIN
    zeros, ones, rejected = recorded_votes(noise, 0)
    assert zeros + ones + rejected == n and zeros > ones
    assert binomtest(zeros, zeros + ones + rejected, 0.5).pvalue > alpha  # what PREDICT ran
    assert binomtest(zeros, zeros + ones, 0.5).pvalue < 1e-50  # without the rejections
    # With few rejections the same classifier predicts class 0.
    smooth.noise = GridGaussianNoise.wrap(RecordingNoise.with_law([0.0, 0.9, 0.05]), SIGMA)
    assert smooth.predict(torch.zeros(1, 1, 1), n, alpha, 250,
                          torch.Generator().manual_seed(2)) == 0


def test_decide_pool_counts_rejections_as_failures():
    """--radius's pool: a rejected draw is a failure for the class tested. Half the draws
    rejected, the other half class 0: the test sees p = 1/2, below p0 = Phi(r/sigma) at
    r = 0.1 and 0.2 (0.66, 0.79), so it must give up at both (ignoring rejections, p = 1
    would certify both at once)."""
    from smoothmix.sequences import PoolItem, make_procedure, run_pool

    noise = RecordingNoise.with_law([0.0, 0.5, 0.0])
    procedure = make_procedure("kt", [0.1, 0.2], SIGMA, 0.001, 2000, 0, 0)
    done = []
    item = PoolItem("x", torch.zeros(1, 1, 1), torch.Generator().manual_seed(3), procedure,
                    noise)
    run_pool(Threshold(), [item], SIGMA, 2, 256, done.append)
    assert done and procedure.decisions == ["not-certified", "not-certified"]
    rejected = torch.cat([r for _, r in noise.log])[: procedure.n]
    assert procedure.a == procedure.n - int(rejected.sum()) and 0 < procedure.a < procedure.n


# -- dataset runners and CLI on real MNIST ------------------------------------------------

CERTIFY = dict(n0=20, n=300, alpha=0.001)  # certify_dataset's own arguments


def spec(grid: int | None = None, **fields: object) -> RunSpec:
    """A run at SIGMA (on the 8-bit grid with ``grid=255``), 300 noisy copies per block
    unless ``fields`` say otherwise, without a progress bar."""
    return RunSpec.of(SIGMA, grid=grid, **{"batch_size": 300, "progress": False, **fields})


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> tuple[nn.Module, object, Path]:
    """A LeNet trained for a few seconds under sigma = 0.25 noise on MNIST test images
    1000-4999 (evaluated below 1000), the test set, and the model saved as a checkpoint."""
    from smoothmix.checkpoint import save_checkpoint
    from smoothmix.data import load_dataset
    from smoothmix.models import create_model

    test = load_dataset("mnist", "test")
    x = test.images[1000:5000].float().div(255)
    y = test.labels[1000:5000]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small net trains faster on one thread than on two shared
    try:
        torch.manual_seed(0)
        net = create_model("lenet")
        opt = torch.optim.Adam(net.parameters(), lr=0.003)
        for _ in range(80):
            batch = torch.randint(0, len(x), (64,))
            noisy = x[batch] + SIGMA * torch.randn_like(x[batch])
            loss = nn.functional.cross_entropy(net(noisy), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    ckpt = tmp_path_factory.mktemp("grid-ckpt") / "lenet.pth"
    save_checkpoint(ckpt, {"arch": "lenet", "state_dict": net.state_dict(), "num_classes": 10,
                           "normalization": "mnist", "epoch": 80, "sigma": SIGMA})
    return net, test, ckpt


def data_rows(path: Path) -> list[list[str]]:
    """Rows without the time column."""
    lines = path.read_text().splitlines()
    at = lines[0].split("\t").index("time")
    return [(f := line.split("\t"))[:at] + f[at + 1:] for line in lines[1:]]


def settings(path: Path) -> dict:
    return json.loads(Path(f"{path}.json").read_text())["settings"]


def snapshot(path: Path) -> tuple[bytes, bytes]:
    return path.read_bytes(), Path(f"{path}.json").read_bytes()


class Shifted:
    """A dataset whose images are moved off the grid: every pixel by +0.001 and pixel
    (0, 14, 14) by +0.0019 (0.48 grid steps, the worst)."""

    def __init__(self, base) -> None:
        self.base, self.num_classes = base, base.num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, label = self.base[i]
        x = x + 0.001
        x[0, 14, 14] += 0.0009
        return x, label


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.slow
def test_certify_dataset_records_grid_and_resume_refuses_the_other_mode(tmp_path, mnist):
    from smoothmix.certification import example_seed

    net, test, _ = mnist
    grid = certify_dataset(net, test, spec(255, max_idx=6), tmp_path / "grid.tsv", **CERTIFY)
    float_ = certify_dataset(net, test, spec(max_idx=6), tmp_path / "float.tsv", **CERTIFY)
    assert settings(grid)["grid"] == 255 and "grid" not in settings(float_)
    rows = data_rows(grid)
    assert [int(r[0]) for r in rows] == list(range(6))
    certified = [r for r in rows if r[6] == "certified"]
    assert sum(int(r[4]) for r in rows) >= 4  # a trained model: most right and certified
    assert all(float(r[3]) > 0 for r in certified)
    # The row is Smooth(..., grid=255)'s certificate with the example's generator.
    smooth = Smooth(net, 10, SIGMA, grid=255)
    expect = smooth.certificate(test[2][0], 20, 300, 0.001, 300,
                                torch.Generator().manual_seed(example_seed(0, 2)),
                                label=int(test[2][1]), skip_wrong=False)
    assert (int(rows[2][2]), float(rows[2][3]), int(rows[2][5]), rows[2][6], int(rows[2][7]),
            int(rows[2][8]), int(rows[2][10]), int(rows[2][11])) == tuple(expect)
    # Resuming in the other mode is refused on one line naming grid; both files unchanged.
    for path, other in ((grid, None), (float_, 255)):
        before = snapshot(path)
        with pytest.raises(SmoothmixError, match="grid") as excinfo:
            certify_dataset(net, test, spec(other, max_idx=6), path, **CERTIFY)
        one_line_error(excinfo)
        assert snapshot(path) == before
    # A grid run cut short resumes in grid mode to the same rows.
    lines = grid.read_text().splitlines(keepends=True)
    grid.write_text("".join(lines[:4]))
    certify_dataset(net, test, spec(255, max_idx=6), grid, **CERTIFY)
    assert data_rows(grid) == rows


def test_inputs_off_the_grid_are_refused_before_any_write(tmp_path, mnist):
    net, test, _ = mnist
    shifted = Shifted(test)
    worst = f"{float(shifted[0][0][0, 14, 14]):.5g}"
    runs = {
        "certify": lambda ds, out: certify_dataset(net, ds, spec(255, max_idx=2), out,
                                                   **CERTIFY),
        "predict": lambda ds, out: predict_dataset(net, ds, spec(255, batch_size=100, max_idx=2),
                                                   out, n=100, alpha=0.001),
        "attack": lambda ds, out: attack_dataset(net, ds, spec(255, batch_size=100, max_idx=2),
                                                 out, epsilon=0.25, num_steps=2, num_noise=8,
                                                 n=100),
        "decide": lambda ds, out: decide_dataset(net, ds, spec(255, batch_size=100, max_idx=2),
                                                 out, radii=[0.25], n=200),
    }
    for kind, run in runs.items():
        out = tmp_path / f"{kind}.tsv"
        with pytest.raises(SmoothmixError, match="not on the 8-bit grid") as excinfo:
            run(shifted, out)
        message = one_line_error(excinfo)
        assert f"pixel value {worst} is 0.0019 off" in message, message
        assert not out.exists() and not Path(f"{out}.json").exists(), kind
    # A file of the same run left half done is not touched either.
    out = runs["certify"](test, tmp_path / "resume.tsv")
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]))
    before = snapshot(out)
    with pytest.raises(SmoothmixError, match="not on the 8-bit grid"):
        runs["certify"](shifted, out)
    assert snapshot(out) == before


@pytest.mark.slow
def test_predict_attack_and_decide_run_on_the_grid(tmp_path, mnist):
    net, test, _ = mnist
    pred = {g: predict_dataset(net, test, spec(g, max_idx=4), tmp_path / f"p{g}.tsv", n=300,
                               alpha=0.001) for g in (None, 255)}
    assert settings(pred[255])["grid"] == 255
    grid_rows, float_rows = data_rows(pred[255]), data_rows(pred[None])
    assert sum(int(r[3]) for r in grid_rows) >= 3
    # Same model, same sigma: the two samplers' PREDICTs agree on (nearly) every image.
    assert sum(a[2] == b[2] for a, b in zip(grid_rows, float_rows, strict=True)) >= 3

    epsilon = 0.5
    attack = attack_dataset(net, test, spec(255, max_idx=4), tmp_path / "a.tsv",
                            epsilon=epsilon, num_steps=3, num_noise=16, n=200, alpha=0.001)
    assert settings(attack)["grid"] == 255
    for row in data_rows(attack):
        distance = float(row[5])
        # The attacked point was rounded to the grid: its offset from x is an integer
        # vector over 255, so 255^2 d^2 is an integer, and rounding moved it by at most
        # half a step per pixel.
        steps = 255**2 * distance**2
        assert abs(steps - round(steps)) < 0.02 * max(1.0, steps / 1000), row
        assert 0 < distance <= epsilon + 0.5 * 28 / 255
        assert row[6] in ("kept", "abstained", "changed")
    # The attacked point itself, recomputed: the distance is that of the rounded point.
    from smoothmix.certification import example_seed
    from smoothmix.empirical import attack_and_predict

    smooth = Smooth(net, 10, SIGMA, grid=255)
    x, label = test[0]
    g = torch.Generator().manual_seed(example_seed(0, 0))
    clean, adv, distance = attack_and_predict(smooth, x, label, epsilon, 3, 16, 200, 0.001,
                                              300, g)
    assert data_rows(attack)[0][2:6] == [str(clean), str(int(clean == label)), str(adv),
                                         repr(distance)]

    radii = [0.25, 0.5]
    decide = decide_dataset(net, test, spec(255, batch_size=500, max_idx=4), tmp_path / "d.tsv",
                            radii=radii, n=1000, alpha=0.001)
    assert settings(decide)["grid"] == 255
    rows = data_rows(decide)
    assert [(int(r[0]), float(r[3])) for r in rows] == [(i, r) for i in range(4) for r in radii]
    assert all(r[4] in ("certified", "not-certified", "undecided") for r in rows)
    assert all(int(r[5]) == (r[4] == "certified" and r[1] == r[2]) for r in rows)
    assert sum(int(r[5]) for r in rows if float(r[3]) == 0.25) >= 3
    assert all(0 < int(r[6]) <= 1000 for r in rows)
    before = snapshot(decide)
    with pytest.raises(SmoothmixError, match="grid"):  # resume in the other mode: refused
        decide_dataset(net, test, spec(batch_size=500, max_idx=4), decide, radii=radii,
                       n=1000, alpha=0.001)
    assert snapshot(decide) == before


@pytest.mark.slow
def test_cli_grid_end_to_end_and_analyze_warns_about_mixed_noise(tmp_path, mnist, capsys):
    from smoothmix.analysis import compare_results, read_results
    from smoothmix.checkpoint import load_model

    _, test, ckpt = mnist
    fast = ["--n0", "20", "--n", "300", "--alpha", "0.001", "--noise-batch", "300", "--max", "4",
            "--no-progress"]
    base = ["certify", str(ckpt), "--dataset", "mnist", "--sigma", str(SIGMA), *fast]
    grid, float_ = tmp_path / "grid.tsv", tmp_path / "float.tsv"
    assert main([*base, "--grid", "255", "--out", str(grid)]) == 0
    assert main([*base, "--out", str(float_)]) == 0
    assert settings(grid)["grid"] == 255 and "grid" not in settings(float_)
    assert settings(grid)["dataset"] == "mnist"
    # The CLI's rows are certify_dataset's with grid=255 on the checkpoint's model.
    model, _ = load_model(ckpt)
    api = certify_dataset(model, test,
                          spec(255, max_idx=4, identity={"dataset": "mnist", "split": "test"}),
                          tmp_path / "api.tsv", **CERTIFY)
    assert data_rows(grid) == data_rows(api)
    # Resuming without --grid: one line, exit 2, the file unchanged.
    before = snapshot(grid)
    capsys.readouterr()
    assert main([*base, "--out", str(grid)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "grid: 255 in the file vs None now" in err
    assert snapshot(grid) == before
    # Only 255 levels are offered.
    with pytest.raises(SystemExit) as excinfo:
        main([*base, "--grid", "7", "--out", str(tmp_path / "seven.tsv")])
    assert excinfo.value.code == 2
    assert "--grid" in capsys.readouterr().err
    assert not (tmp_path / "seven.tsv").exists()
    # predict and --radii take --grid too.
    pred = tmp_path / "p.tsv"
    assert main(["predict", str(ckpt), "--dataset", "mnist", "--sigma", str(SIGMA), "--n",
                 "300", "--max", "3", "--no-progress", "--grid", "255", "--out",
                 str(pred)]) == 0
    assert settings(pred)["grid"] == 255
    dec = tmp_path / "d.tsv"
    assert main([*base, "--radii", "0.25", "--grid", "255", "--out", str(dec)]) == 0
    assert settings(dec)["grid"] == 255 and len(data_rows(dec)) == 4
    # analyze: the noise column, and a warning when grid and float files are compared.
    a, b = read_results(grid), read_results(float_)
    assert (a.run.noise, b.run.noise) == ("grid255", "gaussian")
    warnings = compare_results([a, b], ["grid", "float"]).warnings
    assert [w for w in warnings if "noise" in w] == [
        "the files differ in noise (float or sound 8-bit grid): grid grid255, float gaussian"]
    assert compare_results([a, read_results(api)]).num_groups == 1
    assert compare_results([a, b]).num_groups == 2
    capsys.readouterr()
    assert main(["analyze", str(grid), str(float_), "--format", "csv"]) == 0
    assert "differ in noise" in capsys.readouterr().err


def test_the_folder_loaders_keep_images_on_the_grid(tmp_path):
    """ImageNet's and the image folder's transforms (resize, crop, flip) act on PIL uint8
    images before ToTensor, so images of several sizes still land exactly on k/255: --grid
    takes them (it refused them before 0.6, wrongly)."""
    import numpy as np
    from PIL import Image

    from smoothmix.data import dataset_defaults, load_dataset

    rng = np.random.default_rng(0)
    for root, split in ((tmp_path / "imagenet", "train"), (tmp_path / "imagenet", "val"),
                        (tmp_path / "folder", "train"), (tmp_path / "folder", "test")):
        for c, (h, w) in (("a", (300, 260)), ("b", (233, 301))):
            (root / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / split / c / "0.png")
    noise = GridNoise(0.5)
    for name, root in (("imagenet", tmp_path), ("imagefolder", tmp_path / "folder")):
        assert dataset_defaults(name).on_grid
        for split in ("train", "test"):
            data = load_dataset(name, split, root)
            for k in range(len(data)):
                noise.to_codes(data[k][0])  # raises off the grid


def test_grid_early_refusal_follows_the_registered_on_grid_flag(tmp_path, capsys, monkeypatch):
    """A user's dataset is refused before loading only when registered off the grid; one of
    unknown kind (on_grid=None) passes the early check, left to the check of each image."""
    import smoothmix.data
    from smoothmix.cli.certify import _check_grid_dataset
    from smoothmix.data import dataset_defaults, register_dataset

    monkeypatch.setattr(smoothmix.data, "_DATASETS", smoothmix.data._DATASETS.copy())

    def loader(split, data_dir):
        raise AssertionError("never loaded by the early check")

    register_dataset("user-float", loader, on_grid=False)
    register_dataset("user-unknown", loader)
    assert dataset_defaults("mnist").on_grid and dataset_defaults("cifar10").on_grid
    assert dataset_defaults("user-unknown").on_grid is None
    _check_grid_dataset(argparse.Namespace(dataset="user-unknown", grid=255))
    capsys.readouterr()
    assert main(["certify", "missing.pth", "--dataset", "user-float", "--sigma", "0.5",
                 "--grid", "255", "--out", str(tmp_path / "g.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["smoothmix certify: error: --grid needs inputs on the 8-bit grid; dataset "
                   "user-float is registered with on_grid=False (its images go through float "
                   "transforms), so they are not"]
