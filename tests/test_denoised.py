"""Denoised smoothing (issue 28): the base classifier f∘D through every dataset entry point.

Soundness with a ground truth: an affine denoiser D(z) = Az + b with ||A|| > 1 in front of
the linear classifier f(u) = 1[w.u + c > 0]. Then f(D(x + δ)) = 1[m + (Aᵀw).δ > 0] with
m = w.(Ax + b) + c, so p_1 = Φ(m / (σ ||Aᵀw||)) exactly, the smoothed classifier is f∘D
itself (linear in x with weight Aᵀw), and its true robust radius at x is m / ||Aᵀw||. A
mutant that adds the noise after D, f(D(x) + δ), has p_1 = Φ(m / (σ ||w||)) instead and, since
||Aᵀw|| > ||w|| here, certifies radii beyond the true one: the same harness catches it.
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import Linear2, exact_false_certification_rate
from scipy.stats import binomtest, norm
from torch import nn

from smoothmix.certification import (
    certify_dataset,
    decide_dataset,
    merge_results,
    predict_dataset,
)
from smoothmix.checkpoint import file_sha256, save_checkpoint
from smoothmix.cli import main
from smoothmix.core import Smooth
from smoothmix.data import TensorImageDataset
from smoothmix.denoisers import (
    DENOISERS,
    PROBE_ROWS,
    Denoised,
    IdentityDenoiser,
    load_denoiser,
    module_record,
)
from smoothmix.errors import SmoothmixError
from smoothmix.models import create_model
from smoothmix.run import RunSpec

W = torch.tensor([3.0, -4.0])  # Linear2's weight, ||w|| = 5
A = torch.tensor([[1.5, 0.5], [-0.5, 2.0]])  # ||A|| > 1; ||Aᵀw|| = 9.19 > ||w||
B = torch.tensor([0.1, -0.2])
X = torch.tensor([0.2, 0.1]).view(1, 1, 2)
SIGMA = 0.5


class Affine(nn.Module):
    """D(z) = Az + b on 1x1x2 images."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("a", A.clone())
        self.register_buffer("b", B.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # Elementwise, not a matmul: a 2x2 product through BLAS costs milliseconds here.
        return ((z.flatten(1).unsqueeze(1) * self.a).sum(-1) + self.b).view_as(z)


class NoiseAfterD(nn.Module):
    """The mutant: at the point x0 it votes with f(D(x0) + δ) instead of f(D(x0 + δ))."""

    def __init__(self, classifier: nn.Module, denoiser: nn.Module, x0: torch.Tensor) -> None:
        super().__init__()
        self.classifier, self.denoiser, self.x0 = classifier, denoiser, x0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        clean = self.denoiser(self.x0.unsqueeze(0))
        return self.classifier(clean + (z - self.x0))


def affine_case(p_a: float) -> tuple[Linear2, float]:
    """The classifier whose f∘D has top-class probability ``p_a`` at X; the true radius."""
    norm_atw = float((A.T @ W).norm())
    m = SIGMA * norm_atw * norm.ppf(p_a)  # w.(AX + b) + c
    c = m - float(W @ (A @ X.flatten() + B))
    return Linear2(c), m / norm_atw


def rows_of(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"), strict=True)) for line in lines[1:]]


def without_time(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "time"} for row in rows_of(path)]


def settings_of(path: Path) -> dict:
    return json.loads(Path(f"{path}.json").read_text())["settings"]


def copies(x: torch.Tensor, label: int, count: int) -> list[tuple[torch.Tensor, int]]:
    """``count`` examples of one image: each idx draws its own (seed, idx) noise stream."""
    return [(x, label)] * count


def false_certifications(model: nn.Module, true_radius: float, tmp_path: Path, name: str,
                         trials: int, n0: int = 11, n: int = 200, alpha: float = 0.1
                         ) -> tuple[int, list[dict[str, str]]]:
    """CERTIFY at X ``trials`` times through certify_dataset; the false certificates."""
    spec = RunSpec.of(SIGMA, batch_size=n0 + n, num_classes=2, progress=False)
    out = certify_dataset(model, copies(X, 1, trials), spec, tmp_path / name, n0=n0, n=n,
                          alpha=alpha)
    rows = rows_of(out)
    bad = sum(1 for r in rows if (r["predict"] == "0")
              or (r["predict"] == "1" and float(r["radius"]) > true_radius * (1 + 1e-9)))
    return bad, rows


def full_estimations(rows: list[dict[str, str]], samples: int) -> tuple[int, int]:
    """Votes for class 1 and draws, over the rows that selected 1 and drew every sample."""
    full = [r for r in rows if r["selected"] == "1" and int(r["samples"]) == samples]
    return sum(int(r["n_label"]) for r in full), (samples - 11) * len(full)


# --- soundness against the closed form ------------------------------------------------------


@pytest.mark.parametrize("trials", [pytest.param(3000, marks=pytest.mark.slow), 800])
def test_affine_denoiser_false_certification_rate_and_the_mutant(tmp_path, trials):
    p_a, n0, n, alpha = 0.8, 11, 200, 0.1
    classifier, true_radius = affine_case(p_a)
    q = exact_false_certification_rate(p_a, n0, n, alpha)
    assert 0.02 < q <= alpha  # false certificates do happen: the test has power
    model = Denoised(classifier, Affine(), module_record(Affine(), sigma=SIGMA))
    bad, rows = false_certifications(model, true_radius, tmp_path, "fd.tsv", trials)
    assert binomtest(bad, trials, q).pvalue > 1e-3, (bad, trials, q)
    assert binomtest(bad, trials, alpha, alternative="greater").pvalue > 1e-3
    # The estimation's votes for class 1 follow p_A = Φ(m / (σ ||Aᵀw||)) exactly (rows that
    # selected class 1 and drew all n; early abstain stops the others).
    votes, draws = full_estimations(rows, n0 + n)
    assert binomtest(votes, draws, p_a).pvalue > 1e-3
    # The mutant (noise added after D) fails the same harness.
    mutant = NoiseAfterD(classifier, Affine(), X)
    bad_mutant, rows = false_certifications(mutant, true_radius, tmp_path, "mut.tsv", trials)
    assert binomtest(bad_mutant, trials, alpha, alternative="greater").pvalue < 1e-6
    votes, draws = full_estimations(rows, n0 + n)
    assert binomtest(votes, draws, p_a).pvalue < 1e-6
    p_mutant = norm.cdf(norm.ppf(p_a) * float((A.T @ W).norm()) / 5.0)
    assert binomtest(votes, draws, p_mutant).pvalue > 1e-3  # what it measures instead


def test_affine_denoiser_radius_approaches_the_closed_form(tmp_path):
    classifier, true_radius = affine_case(0.9)
    model = Denoised(classifier, Affine())
    for bound in ("cohen", "two-sided"):
        spec = RunSpec.of(SIGMA, batch_size=20_000, num_classes=2, progress=False)
        out = certify_dataset(model, copies(X, 1, 3), spec, tmp_path / f"{bound}.tsv",
                              n0=100, n=100_000, alpha=0.001, bound=bound)
        radii = [float(r["radius"]) for r in rows_of(out)]
        assert all(true_radius - 0.03 * SIGMA < r <= true_radius for r in radii), radii
    mutant = NoiseAfterD(classifier, Affine(), X)
    out = certify_dataset(mutant, copies(X, 1, 3), spec, tmp_path / "mutant.tsv", n0=100,
                          n=100_000, alpha=0.001)
    assert all(float(r["radius"]) > 1.5 * true_radius for r in rows_of(out))


# --- the identity denoiser: exactly the classifier's rows ---------------------------------------


def small_images(count: int = 6, seed: int = 0) -> TensorImageDataset:
    """uint8 images (on the 8-bit grid) of three classes told apart by brightness."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    images = (labels.view(-1, 1, 1, 1) * 80 + 30
              + torch.randint(0, 40, (count, 1, 6, 6), generator=g)).to(torch.uint8)
    return TensorImageDataset(images, labels, 3, "small")


def small_classifier() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.linspace(-1, 1, 36).repeat(3, 1) * torch.tensor([[-2.0],
                                                                                   [0.0],
                                                                                   [2.0]]))
        net[1].bias.zero_()
    return net.eval()


@pytest.mark.parametrize("grid, bound", [(None, "cohen"), (255, "cohen"), (None, "two-sided")])
def test_identity_denoiser_gives_the_classifier_rows(tmp_path, grid, bound):
    data, net = small_images(), small_classifier()
    spec = RunSpec.of(0.25, grid=grid, batch_size=64, progress=False, seed=3)
    kw = dict(n0=20, n=300, alpha=0.01, bound=bound)
    alone = certify_dataset(net, data, spec, tmp_path / "alone.tsv", **kw)
    denoised = certify_dataset(Denoised(net, IdentityDenoiser()), data, spec,
                               tmp_path / "den.tsv", **kw)
    assert without_time(alone) == without_time(denoised)
    assert {r["status"] for r in rows_of(alone)} >= {"certified"}
    record = settings_of(denoised).pop("denoiser")
    assert record["kind"] == "IdentityDenoiser" and record["sigma"] is None
    assert settings_of(alone) == {k: v for k, v in settings_of(denoised).items()
                                  if k != "denoiser"}


def test_identity_denoiser_predict_and_decide_rows(tmp_path):
    data, net = small_images(), small_classifier()
    spec = RunSpec.of(0.25, batch_size=64, progress=False)
    den = Denoised(net, IdentityDenoiser())
    for name, run in (("p", lambda m, o: predict_dataset(m, data, spec, o, n=200, alpha=0.01)),
                      ("d", lambda m, o: decide_dataset(m, data, spec, o, radii=[0.1, 0.3],
                                                        n=400, alpha=0.01))):
        alone = run(net, tmp_path / f"{name}-alone.tsv")
        assert without_time(alone) == without_time(run(den, tmp_path / f"{name}-den.tsv"))


def test_attack_runs_through_the_denoiser(tmp_path):
    from smoothmix.certification import attack_dataset

    data, net = small_images(3), small_classifier()
    spec = RunSpec.of(0.25, batch_size=64, progress=False)
    kw = dict(epsilon=0.3, num_steps=2, num_noise=8, n=100, alpha=0.01)
    alone = attack_dataset(net, data, spec, tmp_path / "a.tsv", **kw)
    den = attack_dataset(Denoised(net, IdentityDenoiser()), data, spec, tmp_path / "d.tsv", **kw)
    assert without_time(alone) == without_time(den)
    assert "denoiser" in settings_of(den)


# --- what the guarantee needs from D: each a one-line error, nothing written -----------------


class Cropping(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., 1:, :]


class Coupled(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z - z.mean(0, keepdim=True)  # batch statistics


class Random(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + 0.01 * torch.randn_like(z)  # torch's global RNG


@pytest.mark.parametrize("denoiser, message", [
    (Cropping(), r"denoiser returned \(4, 1, 5, 6\) for input \(4, 1, 6, 6\)"),
    (Coupled(), "couples the images of a batch"),
    (Random(), "not deterministic in eval mode"),
])
def test_unsound_denoisers_are_refused_before_anything_is_written(tmp_path, denoiser, message):
    data, net = small_images(), small_classifier()
    spec = RunSpec.of(0.25, batch_size=64, progress=False)
    out = tmp_path / "bad.tsv"
    with pytest.raises(SmoothmixError, match=message) as refused:
        certify_dataset(Denoised(net, denoiser), data, spec, out, n0=10, n=100, alpha=0.01)
    assert "\n" not in str(refused.value)
    assert not out.exists() and not Path(f"{out}.json").exists()
    # Used directly, the probe runs on the first batch instead.
    with pytest.raises(SmoothmixError, match=message):
        Smooth(Denoised(net, denoiser), 3, 0.25).predict(data[0][0], 100, 0.01, 50)


def test_a_first_batch_too_small_to_show_a_coupling_is_not_the_probe():
    # One row per forward: batch and row-by-row agree trivially, so the probe must not be
    # spent on it (before the fix it was, and later blocks of 50 ran the coupled D).
    net = small_classifier()
    with pytest.raises(SmoothmixError, match="couples the images of a batch"):
        Smooth(Denoised(net, Coupled()), 3, 0.25).predict(small_images()[0][0], 20, 0.1, 1)


def test_a_wrapped_denoised_model_still_records_checks_and_probes_its_denoiser(tmp_path):
    data, net = small_images(), small_classifier()
    spec = RunSpec.of(0.25, batch_size=64, progress=False)
    record = module_record(IdentityDenoiser(), sigma=0.25)
    out = certify_dataset(nn.Sequential(Denoised(net, IdentityDenoiser(), record)), data, spec,
                          tmp_path / "c.tsv", n0=10, n=100, alpha=0.01)
    assert settings_of(out)["denoiser"] == record  # so a resume with another D is refused
    with pytest.raises(SmoothmixError, match="built for sigma=0.25"):
        certify_dataset(nn.Sequential(Denoised(net, IdentityDenoiser(), record)), data,
                        RunSpec.of(0.5, batch_size=64, progress=False), tmp_path / "d.tsv",
                        n0=10, n=100, alpha=0.01)
    bad = tmp_path / "bad.tsv"
    with pytest.raises(SmoothmixError, match="couples the images"):
        certify_dataset(nn.Sequential(Denoised(net, Coupled())), data, spec, bad, n0=10,
                        n=100, alpha=0.01)
    assert not bad.exists()  # probed before anything is written, as unwrapped


def test_a_record_sigma_that_is_not_a_number_does_not_skip_the_sigma_check(tmp_path):
    record = {"kind": "dncnn", "identity": {"sha256": "a"}, "settings": {}, "sigma": "0.5"}
    spec = RunSpec.of(0.25, batch_size=64, progress=False, denoiser=record)
    out = tmp_path / "c.tsv"
    with (pytest.raises(SmoothmixError, match="sigma must be a number >= 0 or None, got '0.5'"),
          pytest.warns(UserWarning, match="holds no smoothmix Denoised")):
        certify_dataset(small_classifier(), small_images(), spec, out, n0=10, n=100,
                        alpha=0.01)
    assert not out.exists()


def test_the_denoiser_stays_in_eval_mode():
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1))
    model = Denoised(small_classifier(), bn)
    model.train()
    assert model.training and model.classifier.training and not bn.training
    bn.train()  # switched behind Denoised's back: forward puts it back
    model(torch.rand(5, 1, 6, 6))
    assert not bn.training
    model.probe(torch.rand(1, 6, 6), 0.25)  # eval-mode batch norm is per sample


class Counting(nn.Module):
    """The identity, noting the rows of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(z))
        return z


def test_the_probe_runs_once_per_run_not_per_block(tmp_path):
    data, net, counting = small_images(), small_classifier(), Counting()
    spec = RunSpec.of(0.25, batch_size=64, progress=False)
    certify_dataset(Denoised(net, counting), data, spec, tmp_path / "c.tsv", n0=10, n=100,
                    alpha=0.01)
    probe, blocks = counting.calls[:6], counting.calls[6:]
    assert probe == [PROBE_ROWS, PROBE_ROWS, 1, 1, 1, 1]  # batch, again, each row alone
    # Then only blocks: the n0 selection (10) and the estimation's 64 + 36 (early abstain
    # may stop an estimation after its first block).
    assert set(blocks) == {10, 36, 64} and blocks.count(10) == len(data)


# --- the record: resume, merge and sigma ----------------------------------------------------


def test_resume_and_merge_with_another_denoiser_are_refused(tmp_path):
    data, net = small_images(), small_classifier()
    spec = RunSpec.of(0.25, batch_size=64, progress=False)
    kw = dict(n0=10, n=100, alpha=0.01)
    first = Denoised(net, IdentityDenoiser(), {"kind": "identity", "identity": {"sha256": "a"},
                                               "settings": {}, "sigma": 0.25})
    other = Denoised(net, IdentityDenoiser(), {**first.record, "identity": {"sha256": "b"}})
    out = certify_dataset(first, data, spec, tmp_path / "c.tsv", **kw)
    before = out.read_text()
    for model in (other, net):
        with pytest.raises(SmoothmixError, match="another run.*denoiser") as refused:
            certify_dataset(model, data, spec, out, **kw)
        assert "\n" not in str(refused.value)
    assert out.read_text() == before
    assert certify_dataset(first, data, spec, out, **kw) == out  # the same one resumes
    shards = [certify_dataset(m, data, spec.replace(shard=(i, 2)),
                              tmp_path / f"s{i}.tsv", **kw)
              for i, m in enumerate((first, other))]
    with pytest.raises(SmoothmixError, match="denoiser") as refused:
        merge_results(tmp_path / "m.tsv", shards)
    assert "\n" not in str(refused.value) and not (tmp_path / "m.tsv").exists()


def test_a_denoiser_for_another_sigma_is_refused_unless_allowed(tmp_path):
    data, net = small_images(), small_classifier()
    model = Denoised(net, IdentityDenoiser(), module_record(IdentityDenoiser(), sigma=0.5))
    spec = RunSpec.of(0.25, batch_size=64, progress=False)
    out = tmp_path / "c.tsv"
    with pytest.raises(SmoothmixError, match=r"built for sigma=0.5, not the run's "
                       r"sigma=0.25.*allow-denoiser-sigma-mismatch") as refused:
        certify_dataset(model, data, spec, out, n0=10, n=100, alpha=0.01)
    assert "\n" not in str(refused.value) and not out.exists()
    with (pytest.raises(SmoothmixError, match="built for sigma"),  # a spec's record too
          pytest.warns(UserWarning, match="holds no smoothmix Denoised")):
        certify_dataset(net, data, spec.replace(denoiser=model.record), out, n0=10, n=100,
                        alpha=0.01)
    allowed = spec.replace(allow_denoiser_sigma_mismatch=True)
    certify_dataset(model, data, allowed, out, n0=10, n=100, alpha=0.01)
    assert settings_of(out)["denoiser"]["sigma"] == 0.5 and settings_of(out)["sigma"] == 0.25
    with pytest.raises(SmoothmixError, match="is not the model's denoiser"):
        certify_dataset(model, data, allowed.replace(denoiser={**model.record, "sigma": 0.25}),
                        tmp_path / "x.tsv", n0=10, n=100, alpha=0.01)


def test_bad_records_are_one_line_errors():
    with pytest.raises(SmoothmixError, match="lacks identity, settings, sigma"):
        Denoised(small_classifier(), IdentityDenoiser(), {"kind": "x"})
    with pytest.raises(SmoothmixError, match="sigma must be a number"):
        Denoised(small_classifier(), IdentityDenoiser(), {"kind": "x", "identity": {},
                                                          "settings": {}, "sigma": "0.5"})
    with pytest.raises(SmoothmixError, match="must be a torch.nn.Module"):
        Denoised(small_classifier(), lambda z: z)  # type: ignore[arg-type]
    assert module_record(Affine())["identity"] != module_record(IdentityDenoiser())["identity"]


# --- load_denoiser: checkpoints, diffusion folders and hub ids -------------------------------


class TinyConv(nn.Module):
    """A denoiser kind registered by the test: one 3x3 convolution, near the identity."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 1, 1] = 0.9
            self.conv.bias.fill_(0.05)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(z)


@pytest.fixture
def tiny_kind():
    DENOISERS.register("test-tiny-conv", TinyConv, overwrite=True)
    yield "test-tiny-conv"
    DENOISERS._entries.pop("test-tiny-conv", None)
    DENOISERS._metadata.pop("test-tiny-conv", None)


def save_denoiser(path: Path, sigma: float, bias: float = 0.05) -> Path:
    module = TinyConv()
    with torch.no_grad():
        module.conv.bias.fill_(bias)
    save_checkpoint(path, {"arch": "test-tiny-conv", "arch_kwargs": {"channels": 1},
                           "sigma": sigma, "state_dict": module.state_dict(), "epoch": 1})
    return path


def test_load_denoiser_from_a_checkpoint(tmp_path, tiny_kind):
    path = save_denoiser(tmp_path / "d.pth", 0.5)
    module, record = load_denoiser(path)
    assert isinstance(module, TinyConv) and not module.training
    assert record == {"kind": tiny_kind, "identity": {"sha256": file_sha256(path)},
                      "settings": {"channels": 1}, "sigma": 0.5}
    lenet = tmp_path / "lenet.pth"
    save_checkpoint(lenet, {"arch": "lenet", "state_dict": create_model("lenet").state_dict()})
    with pytest.raises(SmoothmixError, match="is a classifier checkpoint.*test-tiny-conv"):
        load_denoiser(lenet)
    with pytest.raises(SmoothmixError, match="apply to diffusion denoisers"):
        load_denoiser(path, clip=True)
    save_checkpoint(tmp_path / "bad.pth", {"arch": tiny_kind, "arch_kwargs": {"channels": 2},
                                           "sigma": 0.5, "state_dict": TinyConv().state_dict()})
    with pytest.raises(SmoothmixError, match="does not fit denoiser 'test-tiny-conv'") as bad:
        load_denoiser(tmp_path / "bad.pth")
    assert "\n" not in str(bad.value)
    save_checkpoint(tmp_path / "odd.pth", {"arch": "no-such-kind", "state_dict": {}})
    with pytest.raises(SmoothmixError, match="unknown denoiser 'no-such-kind'"):
        load_denoiser(tmp_path / "odd.pth")


def test_folders_and_hub_ids_go_to_the_diffusion_loader(tmp_path, monkeypatch):
    calls = []

    def load(source, *, sigma=None, **settings):
        calls.append((source, sigma, settings))
        return IdentityDenoiser().train(), {"kind": "ddpm", "identity": {"model_id": "m",
                                            "revision": "r"}, "settings": settings,
                                            "sigma": sigma}

    fake = types.ModuleType("smoothmix.denoisers.diffusion")
    fake.load = load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "smoothmix.denoisers.diffusion", fake)
    module, record = load_denoiser("hub:google/ddpm-cifar10-32", sigma=0.5, clip=True)
    assert not module.training and record["identity"] == {"model_id": "m", "revision": "r"}
    load_denoiser(tmp_path, sigma=0.25)  # a folder without a smoothmix checkpoint
    assert calls == [("hub:google/ddpm-cifar10-32", 0.5, {"clip": True}),
                     (str(tmp_path), 0.25, {})]
    monkeypatch.setitem(sys.modules, "smoothmix.denoisers.diffusion", None)  # not installed
    with pytest.raises(SmoothmixError, match="cannot load the diffusion denoiser hub:x"):
        load_denoiser("hub:x", sigma=0.5)


# --- the command line --------------------------------------------------------------------------

FAST = ["--dataset", "mnist", "--n0", "10", "--n", "100", "--alpha", "0.01", "--noise-batch",
        "100", "--no-progress", "--max", "2"]


def test_cli_certify_with_a_denoiser(tmp_path, tiny_kind, capsys):
    torch.manual_seed(0)
    classifier = tmp_path / "lenet.pth"
    save_checkpoint(classifier, {"arch": "lenet", "state_dict": create_model("lenet").state_dict(),
                                 "num_classes": 10, "normalization": "mnist", "epoch": 1,
                                 "sigma": 0.25})
    den = save_denoiser(tmp_path / "d.pth", 0.5)
    out = tmp_path / "c.tsv"
    assert main(["certify", str(classifier), "--denoiser", str(den), *FAST,
                 "--out", str(out)]) == 0
    assert "--sigma 0.5 from the denoiser" in capsys.readouterr().err
    settings = settings_of(out)
    assert settings["sigma"] == 0.5
    assert settings["denoiser"] == {"kind": tiny_kind, "identity": {"sha256": file_sha256(den)},
                                    "settings": {"channels": 1}, "sigma": 0.5}
    before = out.read_text()
    other = save_denoiser(tmp_path / "other.pth", 0.5, bias=0.1)
    for extra in (["--denoiser", str(other)], [], ["--denoiser", str(den), "--sigma", "0.25"]):
        assert main(["certify", str(classifier), *extra, *FAST, "--out", str(out)]) == 2
        errors = [e for e in capsys.readouterr().err.splitlines() if "error" in e]
        assert len(errors) == 1 and "denoiser" in errors[0], errors
    assert out.read_text() == before
    radii = tmp_path / "r.tsv"
    assert main(["certify", str(classifier), "--denoiser", str(den), "--sigma", "0.25",
                 "--allow-denoiser-sigma-mismatch", "--radii", "0.1", *FAST,
                 "--out", str(radii)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    assert "denoiser" in capsys.readouterr().out
    assert main(["analyze", str(radii)]) == 0
    assert f"denoiser {tiny_kind}" in capsys.readouterr().err
    assert main(["certify", str(classifier), "--allow-denoiser-sigma-mismatch", *FAST,
                 "--out", str(tmp_path / "x.tsv")]) == 2
    assert math.isfinite(float(rows_of(out)[0]["radius"]))


def test_a_submodule_of_the_denoiser_switched_to_training_is_put_back_in_eval():
    """D votes in eval mode even when a submodule was switched on its own (a dropout layer
    in training mode would make D random)."""
    inner = nn.Sequential(nn.Identity(), nn.Dropout(0.5))
    model = Denoised(nn.Flatten(), nn.Sequential(inner))
    inner[1].train()  # past Denoised.train(): only the submodule
    z = torch.ones(4, 1, 2, 2)
    assert torch.equal(model(z), model(z)) and not inner[1].training
