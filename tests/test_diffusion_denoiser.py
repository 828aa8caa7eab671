"""One-shot diffusion denoising (issue 28, item 3): the t* rule, the [-1, 1] scaling and x̂₀
for each prediction type against closed forms; loading from folders, checkpoints and the
hub (offline: nothing here may open a connection); the ddpm training method."""

from __future__ import annotations

import json
import math
import socket
import sys

import pytest
import torch
from torch import nn

from smoothmix.denoisers import DENOISERS
from smoothmix.denoisers import diffusion_sources as sources
from smoothmix.denoisers.diffusion import (
    DiffusionDenoiser,
    alpha_bar_target,
    load,
    one_shot_timestep,
    sigma_of_alpha_bar,
)
from smoothmix.errors import SmoothmixError

diffusers = pytest.importorskip("diffusers")  # in the dev extra: never skipped in CI


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails at once (a live one would hang here)."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def tiny_unet(channels: int = 1, out_channels: int | None = None, size: int = 8):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=out_channels or channels,
        layers_per_block=1, block_out_channels=(4, 8), norm_num_groups=2,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)


def save_model(folder, unet=None, **scheduler):
    (unet or tiny_unet()).save_pretrained(folder)
    diffusers.DDPMScheduler(**scheduler).save_pretrained(folder)
    return folder


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- the t* rule


def test_alpha_bar_target_closed_form_and_the_common_mistake():
    for sigma, expected in ((0.25, 0.8), (0.5, 0.5), (1.0, 0.2)):
        assert alpha_bar_target(sigma) == pytest.approx(expected, abs=1e-15)
        assert sigma_of_alpha_bar(expected) == pytest.approx(sigma, abs=1e-15)
    # √(1 - ᾱ) = 2σ would give ᾱ = 1 - 4σ² = 0.75 at σ = 0.25 (and 0 at σ = 0.5).
    assert alpha_bar_target(0.25) != pytest.approx(1 - 4 * 0.25 ** 2)


def test_nearest_step_of_the_schedule_and_the_sigma_it_achieves():
    table = diffusers.DDPMScheduler().alphas_cumprod.double()
    for sigma in (0.12, 0.25, 0.5, 1.0):
        shot = one_shot_timestep(table, sigma)
        target = 1 / (1 + 4 * sigma ** 2)
        assert shot.timestep == int((table - target).abs().argmin())
        assert shot.alpha_bar == pytest.approx(float(table[shot.timestep]))
        assert shot.sigma_achieved == pytest.approx(
            0.5 * math.sqrt((1 - shot.alpha_bar) / shot.alpha_bar))
        assert shot.sigma_achieved == pytest.approx(sigma, rel=0.02)
        assert shot.num_train_timesteps == 1000
    assert one_shot_timestep(table, 0.5, timestep=7).timestep == 7


@pytest.mark.parametrize("steps, sigma", [(1000, 1e-3), (50, 1.0)])
def test_sigma_outside_the_schedule_is_one_line(steps, sigma):
    # σ_0 = ½√(β_0/(1-β_0)) ≈ 0.005; 50 steps of the linear schedule reach only σ ≈ 0.1
    table = diffusers.DDPMScheduler().alphas_cumprod[:steps]
    with pytest.raises(SmoothmixError, match="outside the diffusion schedule's range") as e:
        one_shot_timestep(table, sigma)
    one_line(e)
    with pytest.raises(SmoothmixError, match="timestep must be"):
        one_shot_timestep(table, 0.5, timestep=1000)


# ------------------------------------------------ x̂₀ for each prediction type, exactly


class Oracle(nn.Module):
    """A UNet that knows the clean images and the noise: it returns the exact ε, v or x₀ of
    x_t = √ᾱ x₀ + √(1-ᾱ) ε (model space), or that with a variance half appended."""

    def __init__(self, clean, delta, alpha_bar, kind, learned_variance=False):
        super().__init__()
        self.x0, self.alpha_bar, self.kind = 2 * clean - 1, alpha_bar, kind
        # the std-2σ model-space noise 2δ is √(1-ᾱ) ε at the matching ᾱ
        self.eps = 2 * delta * math.sqrt(alpha_bar / (1 - alpha_bar))
        self.learned_variance = learned_variance
        self.calls = []

    def forward(self, x_t, t):
        self.calls.append((x_t.clone(), t.clone()))
        a = self.alpha_bar
        out = {"epsilon": self.eps, "sample": self.x0,
               "v_prediction": math.sqrt(a) * self.eps - math.sqrt(1 - a) * self.x0}[self.kind]
        return torch.cat([out, torch.full_like(out, 9.0)], 1) if self.learned_variance else out


@pytest.mark.parametrize("learned_variance", [False, True])
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_one_shot_recovers_the_clean_image_for_each_prediction_type(kind, learned_variance):
    # A schedule holding ᾱ* = 0.5 exactly (σ = 0.5), so the σ achieved is σ.
    table = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    clean = torch.rand(3, 1, 6, 6, generator=gen, dtype=torch.float64)
    delta = 0.5 * torch.randn(3, 1, 6, 6, generator=gen, dtype=torch.float64)
    unet = Oracle(clean, delta, 0.5, kind, learned_variance)
    denoiser = DiffusionDenoiser(unet, table, 0.5, prediction_type=kind, channels=1, clip=False)
    assert (denoiser.one_shot.timestep, denoiser.one_shot.sigma_achieved) == (2, 0.5)
    out = denoiser(clean + delta)
    torch.testing.assert_close(out, clean, rtol=0, atol=1e-12)
    x_t, t = unet.calls[0]
    torch.testing.assert_close(x_t, math.sqrt(0.5) * (2 * (clean + delta) - 1), rtol=0,
                               atol=1e-15)
    assert t.tolist() == [2, 2, 2]


def test_clipping_is_a_setting():
    table = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    x = torch.tensor([[[[-0.5, 0.5, 1.7]]]], dtype=torch.float64)

    def sample(x_t, t):
        return x_t / math.sqrt(0.5)  # x̂₀ = the model-space input: D(x) = x unclipped

    unet = nn.Module()
    unet.forward = sample  # type: ignore[method-assign]
    clipped = DiffusionDenoiser(unet, table, 0.5, prediction_type="sample", channels=1)
    raw = DiffusionDenoiser(unet, table, 0.5, prediction_type="sample", channels=1, clip=False)
    assert clipped(x).flatten().tolist() == [0.0, 0.5, 1.0]
    torch.testing.assert_close(raw(x), x)


class Pointwise(nn.Module):
    """ε̂ = 0.3 x_t + 0.1 pixel by pixel (records its inputs)."""

    def __init__(self, channels=1):
        super().__init__()
        self.channels, self.calls = channels, []

    def forward(self, x_t, t):
        assert x_t.shape[1] == self.channels
        self.calls.append(x_t.clone())
        return 0.3 * x_t + 0.1


def expected_pointwise(x, alpha_bar):
    x_t = math.sqrt(alpha_bar) * (2 * x - 1)
    x0 = (x_t - math.sqrt(1 - alpha_bar) * (0.3 * x_t + 0.1)) / math.sqrt(alpha_bar)
    return ((x0 + 1) / 2).clamp(0, 1)


def test_padding_to_the_model_size_and_cropping_back():
    table = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    unet = Pointwise()
    denoiser = DiffusionDenoiser(unet, table, 0.5, channels=1, sample_size=32)
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    out = denoiser(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected_pointwise(x, 0.5))
    seen = unet.calls[0]
    assert seen.shape == (2, 1, 32, 32)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(seen[..., border] == -math.sqrt(0.5))  # black, noise-free padding
    with pytest.raises(SmoothmixError, match="larger than the diffusion model's") as e:
        denoiser(torch.rand(1, 1, 33, 32))
    one_line(e)


def test_grayscale_and_rgb_inputs_to_models_of_the_other_kind():
    table = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    rgb = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    gray_model = DiffusionDenoiser(Pointwise(1), table, 0.5, channels=1)
    torch.testing.assert_close(gray_model(rgb), expected_pointwise(rgb, 0.5))
    rgb_model = DiffusionDenoiser(Pointwise(3), table, 0.5, channels=3)
    gray = rgb[:, :1]
    torch.testing.assert_close(rgb_model(gray), expected_pointwise(gray, 0.5))
    with pytest.raises(SmoothmixError, match="3-channel images"):
        rgb_model(torch.rand(1, 2, 8, 8))


# ------------------------------------------------------------- real (tiny) DDPMs


def by_hand(unet, x, t, alpha_bar, kind="epsilon"):
    """x̂ from the UNet's raw output, written out."""
    with torch.no_grad():
        x_t = math.sqrt(alpha_bar) * (2 * x - 1)
        out = unet(x_t, torch.full((len(x),), t)).sample[:, :x.shape[1]]
    a = alpha_bar
    x0 = {"epsilon": (x_t - math.sqrt(1 - a) * out) / math.sqrt(a),
          "v_prediction": math.sqrt(a) * x_t - math.sqrt(1 - a) * out,
          "sample": out}[kind]
    return ((x0 + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_a_saved_unet_folder_loads_by_path(tmp_path, kind):
    unet = tiny_unet()
    folder = save_model(tmp_path / "m", unet, prediction_type=kind)
    denoiser, record = load(str(folder), sigma=0.5)
    x = torch.rand(4, 1, 8, 8)
    out = denoiser(x)
    assert out.shape == x.shape and not denoiser.training
    shot = record["one_shot"]
    torch.testing.assert_close(out, by_hand(unet, x, shot["timestep"], shot["alpha_bar"], kind))
    assert torch.equal(out, denoiser(x))  # deterministic
    assert record["kind"] == "diffusion" and record["sigma"] == 0.5
    assert record["settings"] == {"clip": True, "timestep": None}
    assert shot["prediction_type"] == kind and shot["learned_variance"] is False
    assert shot["sigma_achieved"] == pytest.approx(0.5, rel=0.02)
    assert set(record["identity"]) == {"folder_sha256"}
    assert record == load(str(folder), sigma=0.5)[1]
    assert json.loads(json.dumps(record)) == record  # JSON values only


def test_per_sample_no_coupling_across_the_batch(tmp_path):
    denoiser, _ = load(str(save_model(tmp_path / "m")), sigma=0.25)
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(denoiser(x)[2:3], denoiser(x[2:3]))


def test_a_pipeline_folder_with_learned_variance_loads(tmp_path):
    unet = tiny_unet(out_channels=2)
    scheduler = diffusers.DDPMScheduler(variance_type="learned_range")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "p")
    denoiser, record = load(str(tmp_path / "p"), sigma=0.25, clip=False)
    x = torch.rand(2, 1, 8, 8)
    shot = record["one_shot"]
    assert shot["learned_variance"] is True
    with torch.no_grad():
        x_t = math.sqrt(shot["alpha_bar"]) * (2 * x - 1)
        eps = unet(x_t, torch.full((2,), shot["timestep"])).sample[:, :1]
    x0 = (x_t - math.sqrt(1 - shot["alpha_bar"]) * eps) / math.sqrt(shot["alpha_bar"])
    torch.testing.assert_close(denoiser(x), (x0 + 1) / 2)


def test_the_folder_hash_follows_weights_and_config(tmp_path):
    a = save_model(tmp_path / "a")
    b = save_model(tmp_path / "b")
    assert sources.folder_sha256(a) == sources.folder_sha256(b)
    (tmp_path / "a" / "README.md").write_text("not part of the model")
    assert sources.folder_sha256(a) == sources.folder_sha256(b)
    c = save_model(tmp_path / "c", beta_end=0.03)
    assert sources.folder_sha256(c) != sources.folder_sha256(a)


def test_bad_sources_and_settings_are_one_line(tmp_path):
    folder = save_model(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    cases = [(str(tmp_path / "missing"), {}, "does not exist"),
             (str(tmp_path / "empty"), {}, "not a diffusers model folder"),
             (str(folder), {"bogus": 1}, "unknown diffusion denoiser setting bogus"),
             (str(folder), {"clip": "yes"}, "clip must be true or false")]
    for source, settings, message in cases:
        with pytest.raises(SmoothmixError, match=message) as e:
            load(source, sigma=0.5, **settings)
        one_line(e)
    (folder / "scheduler_config.json").unlink()
    with pytest.raises(SmoothmixError, match="no scheduler_config.json"):
        load(str(folder), sigma=0.5)
    with pytest.raises(SmoothmixError, match="outside the diffusion schedule"):
        load(str(save_model(tmp_path / "n")), sigma=1e-3)


def test_a_hub_id_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SmoothmixError, match="cannot fetch hub:google/ddpm-cifar10-32") as e:
        load("hub:google/ddpm-cifar10-32", sigma=0.25)
    assert "offline" in one_line(e)
    with pytest.raises(SmoothmixError, match="hub:OWNER/NAME"):
        load("hub:a/b/c", sigma=0.25)


def test_a_cached_hub_model_loads_offline_with_its_revision(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    repo = cache / "models--owner--tiny-ddpm"
    commit = "0123456789abcdef0123456789abcdef01234567"
    save_model(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    denoiser, record = load("hub:owner/tiny-ddpm", sigma=0.5)
    assert record["identity"] == {"model_id": "owner/tiny-ddpm", "revision": commit}
    assert denoiser(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def test_the_standard_gpu_route_offline(tmp_path, monkeypatch):
    # google/ddpm-cifar10-32's layout and scheduler config (DDPMPipeline: unet/, scheduler/),
    # with a tiny UNet of the same class, served from the local hub cache.
    cache = tmp_path / "cache"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    repo = cache / "models--google--ddpm-cifar10-32"
    commit = "f" * 40
    snapshot = repo / "snapshots" / commit
    diffusers.DDPMPipeline(unet=tiny_unet(channels=3, size=32),
                           scheduler=diffusers.DDPMScheduler()).save_pretrained(snapshot)
    (snapshot / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
        "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
        "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_large"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for sigma, t in ((0.25, 144), (0.5, 258), (1.0, 396)):  # the t* the math doc quotes
        denoiser, record = load("hub:google/ddpm-cifar10-32", sigma=sigma)
        assert record["one_shot"]["timestep"] == t
        assert record["one_shot"]["prediction_type"] == "epsilon"
    assert record["identity"] == {"model_id": "google/ddpm-cifar10-32", "revision": commit}
    x = torch.rand(2, 3, 32, 32)
    assert denoiser(x).shape == x.shape


def test_missing_diffusers_is_one_line(tmp_path, monkeypatch):
    folder = save_model(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    for source in (str(folder), "hub:google/ddpm-cifar10-32"):
        with pytest.raises(SmoothmixError, match=r'pip install "smoothmix\[diffusion\]"') as e:
            load(source, sigma=0.5)
        one_line(e)
    with pytest.raises(SmoothmixError, match=r"smoothmix\[diffusion\]"):
        DENOISERS.get("ddpm-unet")()


# --------------------------------------------- ddpm-unet, its checkpoints, the method


def small_ddpm():
    torch.manual_seed(0)
    return DENOISERS.get("ddpm-unet")(sample_size=8, block_out_channels=[4, 8],
                                      norm_num_groups=2)


def test_a_smoothmix_checkpoint_of_ddpm_unet_is_a_diffusion_denoiser(tmp_path):
    from smoothmix.checkpoint import Checkpoint, save_checkpoint

    net = small_ddpm()
    settings = {"sample_size": 8, "block_out_channels": [4, 8], "norm_num_groups": 2}
    wrapped = {f"1.{k}": v for k, v in net.state_dict().items()}  # as in Sequential(N, net)
    save_checkpoint(tmp_path / "checkpoint.pth.tar",
                    Checkpoint(arch="ddpm-unet", arch_kwargs=settings, state_dict=wrapped))
    denoiser, record = load(str(tmp_path), sigma=0.5)
    x = torch.rand(3, 1, 6, 6)
    torch.testing.assert_close(denoiser(x), net.one_shot(0.5)(x))
    assert record["identity"]["arch"] == "ddpm-unet"
    assert len(record["identity"]["checkpoint_sha256"]) == 64
    assert record["one_shot"]["sample_size"] == [8, 8]


def test_load_denoiser_routes_a_ddpm_unet_checkpoint_to_the_one_shot_denoiser(tmp_path):
    """`--denoiser CHECKPOINT` of a noise predictor: the kind's registered loader turns it
    into the one-shot denoiser at the run's sigma, as a folder or as the file itself."""
    from smoothmix.checkpoint import Checkpoint, save_checkpoint
    from smoothmix.denoisers import load_denoiser

    net = small_ddpm()
    settings = {"sample_size": 8, "block_out_channels": [4, 8], "norm_num_groups": 2}
    save_checkpoint(tmp_path / "checkpoint.pth.tar",
                    Checkpoint(arch="ddpm-unet", arch_kwargs=settings,
                               state_dict=net.state_dict()))
    x = torch.rand(2, 1, 6, 6)
    for source in (tmp_path, tmp_path / "checkpoint.pth.tar"):
        denoiser, record = load_denoiser(source, sigma=0.5)
        torch.testing.assert_close(denoiser(x), net.one_shot(0.5)(x))
        assert record["sigma"] == 0.5 and record["identity"]["arch"] == "ddpm-unet"


def test_the_ddpm_method_loss_and_gradient(tmp_path):
    from smoothmix.methods import create_method

    net = small_ddpm()
    method = create_method("ddpm", sigma=0.5, num_classes=10)
    assert method.trains == "denoiser"
    x, y = torch.rand(2, 1, 6, 6), torch.tensor([3, 4])
    t, eps = torch.tensor([10, 700]), torch.randn(2, 1, 8, 8)
    method._timesteps = lambda n, steps, device: t
    method._epsilon = lambda x0: eps
    out = method(net, x, y, 0)
    # by hand: pad with black (-1), noise only on the 6x6 image, MSE over its pixels
    x0 = torch.full((2, 1, 8, 8), -1.0)
    x0[..., 1:7, 1:7] = 2 * x - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 1:7, 1:7] = 1
    a = net.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        pred = net(a.sqrt() * x0 + (1 - a).sqrt() * eps * mask, t)
    expected = ((pred - eps * mask) ** 2 * mask).sum() / (36 * 2)
    torch.testing.assert_close(out.loss.detach(), expected)
    out.loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(SmoothmixError, match="trains a DDPM denoiser"):
        method(nn.Linear(2, 2), x, y, 0)


def test_the_ddpm_monitor_is_deterministic():
    from smoothmix.methods import create_method

    net = small_ddpm()
    method = create_method("ddpm", sigma=0.5, num_classes=10)
    x = torch.rand(4, 1, 6, 6)

    def sums():  # the loop's contract: sums over the batch, draws from its generator
        gen = torch.Generator().manual_seed(3)
        return {k: float(v) for k, v in
                method.monitor(net, x, torch.zeros(4, dtype=torch.long), gen).items()}

    first = sums()
    assert set(first) == {"eps_mse", "psnr"} and all(math.isfinite(v) for v in first.values())
    assert first == sums()


def test_the_mnist_ddpm_preset():
    from smoothmix.methods import create_method
    from smoothmix.training.presets import PRESETS

    preset = PRESETS["mnist-ddpm-0.50"]
    create_method(preset.method, preset.sigma, 10, **preset.options)
    recipe = preset.recipe()
    assert (recipe.epochs, recipe.batch_size, recipe.weight_decay) == (5, 256, 0.0)
    assert (preset.arch, preset.method, preset.dataset) == ("ddpm-unet", "ddpm", "mnist")
    net = DENOISERS.get(preset.arch)()
    assert sum(p.numel() for p in net.parameters()) <= 2_000_000


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU")])]


@pytest.mark.parametrize("device", DEVICES)
def test_denoiser_and_method_on_a_device_match_the_cpu(device):
    from smoothmix.methods import create_method

    net = small_ddpm()
    x = torch.rand(3, 1, 6, 6)
    expected = net.one_shot(0.5)(x)
    moved = net.to(device)
    torch.testing.assert_close(moved.one_shot(0.5)(x.to(device)).cpu(), expected,
                               rtol=1e-4, atol=1e-4)
    method = create_method("ddpm", sigma=0.5, num_classes=10)
    y = torch.zeros(3, dtype=torch.long, device=device)
    out = method(moved, x.to(device), y, 0)
    assert out.loss.device.type == device and torch.isfinite(out.loss)
    gen = torch.Generator(device=device).manual_seed(0)
    assert set(method.monitor(moved, x.to(device), y, gen)) == {"eps_mse", "psnr"}


def test_the_mnist_ddpm_preset_trains_through_the_loop(tmp_path):
    """`smoothmix train --preset mnist-ddpm-0.50` end to end (a few images): the loop builds
    the ddpm-unet by --arch, checks it through the method's probe_output, logs the method's
    monitor (ε-MSE, one-shot PSNR), and the checkpoint loads as the one-shot denoiser."""
    from smoothmix.denoisers import load_denoiser
    from smoothmix.training import train

    out = tmp_path / "ddpm"
    train(out, preset="mnist-ddpm-0.50", epochs=1, train_subset=64, test_subset=32,
          batch_size=32, progress=False)
    log = (out / "log.csv").read_text().splitlines()
    assert log[0].split(",")[3:5] == ["test_eps_mse", "test_psnr"]
    denoiser, record = load_denoiser(out, sigma=0.5)
    x = torch.rand(2, 1, 28, 28)
    assert denoiser(x).shape == x.shape and record["identity"]["arch"] == "ddpm-unet"


@pytest.mark.slow
def test_a_few_ddpm_steps_on_mnist_make_a_denoiser_that_beats_the_noisy_input(tmp_path):
    # The whole route by hand (until the loop trains denoiser kinds by --arch): build the
    # kind, train with the method, save a smoothmix checkpoint, load it as the denoiser.
    from smoothmix.checkpoint import Checkpoint, save_checkpoint
    from smoothmix.data import load_dataset
    from smoothmix.methods import create_method

    torch.manual_seed(0)
    settings = {"block_out_channels": [8, 16], "norm_num_groups": 4}
    net = DENOISERS.get("ddpm-unet")(**settings)
    images = load_dataset("mnist", "train").images[:640].float() / 255
    method = create_method("ddpm", sigma=0.5, num_classes=10)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for step in range(20):
        x = images[step * 32:(step + 1) * 32]
        out = method(net, x, torch.zeros(len(x), dtype=torch.long), 0)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    save_checkpoint(tmp_path / "ddpm.pth.tar", Checkpoint(
        arch="ddpm-unet", arch_kwargs=settings, state_dict=net.state_dict()))
    denoiser, record = load(str(tmp_path / "ddpm.pth.tar"), sigma=0.5)
    x = images[-64:]
    noisy = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        denoised_mse = (denoiser(noisy) - x).square().mean()
    assert denoised_mse < 0.5 * (noisy.clamp(0, 1) - x).square().mean()
    assert record["one_shot"]["timestep"] == 258


def test_a_diffusion_denoiser_without_the_runs_sigma_is_one_line(tmp_path):
    """A DDPM serves every sigma: without one (certify with --denoiser and no --sigma) it
    says so in one line instead of a sigma check's "got None"."""
    from smoothmix.checkpoint import Checkpoint, save_checkpoint
    from smoothmix.denoisers import load_denoiser

    net = small_ddpm()
    settings = {"sample_size": 8, "block_out_channels": [4, 8], "norm_num_groups": 2}
    save_checkpoint(tmp_path / "checkpoint.pth.tar",
                    Checkpoint(arch="ddpm-unet", arch_kwargs=settings,
                               state_dict=net.state_dict()))
    with pytest.raises(SmoothmixError, match="serves every noise level") as err:
        load_denoiser(tmp_path)
    assert "\n" not in str(err.value)


def test_a_one_shot_denoiser_wrapped_in_python_records_its_sigma_and_settings():
    """Denoised(f, net.one_shot(σ)) without a record: the record carries σ (so a run at
    another σ is refused) and t*/clip (so a resume with another clip is refused)."""
    from torch import nn

    from smoothmix.denoisers import Denoised

    net = small_ddpm()
    model = Denoised(nn.Flatten(), net.one_shot(0.5, clip=False))
    assert model.record["sigma"] == 0.5
    assert model.record["settings"]["clip"] is False
    assert model.record["settings"]["one_shot"]["timestep"] == one_shot_timestep(
        net.alphas_cumprod, 0.5).timestep
    other = Denoised(nn.Flatten(), net.one_shot(0.5, clip=True))
    assert other.record != model.record
