"""The CUDA tier (issue 12): the GPU code paths, each test written once for every device.

Every test takes a ``device``: the ``cpu`` variant runs everywhere, so the test code itself
is proven on a CPU-only machine; the ``cuda`` variant carries ``@pytest.mark.cuda`` and is
skipped, with its reason in the summary (``pytest -rs``), where no GPU is present. Run the
tier alone with ``pytest -m cuda`` (``scripts/gpu-check`` runs this whole file on the GPU).

Written on a machine without a GPU: the ``cuda`` variants have not yet been run on one.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from smoothmix.checkpoint import load_checkpoint, load_model
from smoothmix.core import FUTILITY_CHECKS, Smooth, certified_radius, clopper_pearson_lower
from smoothmix.data import DeviceBatchLoader, load_dataset
from smoothmix.data.datasets import TensorImageDataset
from smoothmix.methods import METHODS, StepOutput, create_method
from smoothmix.models import create_model
from smoothmix.training import TrainConfig, fit
from smoothmix.training.graphs import StepGraph

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device on this machine (scripts/gpu-check runs this tier on a GPU)"
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA,
                                                                     reason=NO_CUDA)]),
]


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 off while a test runs, so that CUDA float32 results can be compared with the
    CPU's at float32 tolerances (TF32 keeps 10 mantissa bits)."""
    if not HAS_CUDA:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def mnist():
    data = load_dataset("mnist", "train")
    return data.subset(64)


def mnist_batch(mnist, device, n=8):
    x = mnist.images[:n].float().div(255).to(device)
    return x.contiguous(memory_format=torch.channels_last), mnist.labels[:n].to(device)


# ---- every method: a bf16 autocast training step ------------------------------------------

# Small but complete settings per method; a new method must be added here.
AMP_OPTIONS = {
    "gaussian": {},
    "stability": {},
    "smoothadv": {"num_noise": 2, "num_steps": 2},
    "smoothadv-ddn": {"num_noise": 2, "num_steps": 2, "attack": "ddn"},
    "macer": {"num_noise": 4},
    "consistency": {},
    "smoothmix": {"num_noise": 2, "num_steps": 2},
    "smoothmix-one-step": {"num_noise": 2, "num_steps": 2, "mix_step": 1},
    "catrs": {"num_noise": 2, "num_steps": 2},
    "plain": {},
}


def amp_step(name, options, model, x, y, device, num_classes):
    """One bf16-autocast step of method ``name``; returns the loss after checking that the
    forwards really ran in bfloat16 and that the loss and every gradient are finite."""
    method = create_method(name.split("-")[0], 0.5, num_classes, **options)
    side = {}
    if "soft_target" in getattr(method, "side_data", ()):
        side["soft_target"] = torch.randn(len(y), num_classes, device=device).softmax(-1)
    dtypes = []
    hook = model.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = method(model, x, y, 20, **side)
    finally:
        hook.remove()
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    assert dtypes and set(dtypes) == {torch.bfloat16}, (name, dtypes)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss), name
    assert all(torch.isfinite(v).all() for v in out.metrics.values()), name
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert any(g.abs().sum() > 0 for g in grads), name
    assert model.training, name
    return out.loss


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_every_method_trains_under_bf16_autocast(device, mnist):
    device = torch.device(device)
    covered = {name.split("-")[0] for name in AMP_OPTIONS}
    # The denoiser methods (a DnCNN and a frozen classifier; ddpm) run under bf16 in their
    # own test files.
    classifiers = {name for name, cls in METHODS.items() if cls.trains == "classifier"}
    assert covered == classifiers, "add the new method to AMP_OPTIONS"
    x, y = mnist_batch(mnist, device)
    for name, options in AMP_OPTIONS.items():
        torch.manual_seed(0)
        model = create_model("lenet").to(device).to(memory_format=torch.channels_last).train()
        amp_step(name, options, model, x, y, device, 10)
    # Batch norm under autocast (the CIFAR ResNets): SmoothMix, the costliest step.
    torch.manual_seed(0)
    resnet = create_model("cifar_resnet20").to(device).to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    amp_step("smoothmix", AMP_OPTIONS["smoothmix"], resnet.train(), x, y[:4], device, 10)


# ---- channels_last + fused SGD --------------------------------------------------------------


def sgd(params, fused):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4, fused=fused,
                           foreach=None if fused else False)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_fused_sgd_steps_equal_the_plain_steps(device, mnist):
    """Two SmoothMix steps: channels_last model and inputs with the fused SGD kernel
    against a contiguous model with the per-parameter SGD loop, from the same weights."""
    device = torch.device(device)
    torch.manual_seed(0)
    plain = create_model("lenet").to(device).train()
    fast = create_model("lenet").to(device)
    fast.load_state_dict(plain.state_dict())
    fast = fast.to(memory_format=torch.channels_last).train()
    assert fast[1].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    initial = [p.detach().clone() for p in plain.parameters()]
    optimizers = {"plain": sgd(plain.parameters(), False), "fast": sgd(fast.parameters(), True)}
    method = create_method("smoothmix", 0.5, 10, num_noise=2, num_steps=2)
    x, y = mnist_batch(mnist, device)
    for step in range(2):
        for name, model in (("plain", plain), ("fast", fast)):
            inputs = x if name == "fast" else x.contiguous()
            torch.manual_seed(step)
            out = method(model, inputs, y, 20)
            optimizers[name].zero_grad(set_to_none=True)
            out.loss.backward()
            optimizers[name].step()
    for a, b, a0 in zip(plain.parameters(), fast.parameters(), initial, strict=True):
        assert not torch.equal(a, a0)  # the steps moved every parameter
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_fit_uses_fused_sgd_exactly_on_cuda(device, mnist, tmp_path):
    path = fit_lenet(mnist, device, tmp_path / "run", epochs=1)
    group = load_checkpoint(path)["optimizer"]["param_groups"][0]
    assert bool(group.get("fused")) == (device == "cuda")


def fit_lenet(mnist, device, outdir, epochs, resume=False):
    torch.manual_seed(0)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=0.01, device=device, seed=1,
                         progress=False, workers=0)
    return fit(create_model("lenet"), create_method("gaussian", 0.5, 10), mnist, None, config,
               outdir, resume=resume,
               metadata={"arch": "lenet", "normalization": "mnist", "num_classes": 10})


# ---- the GPU-resident loader against the CPU one --------------------------------------------


def crop_flip_candidates(image, padding):
    """All (top, left, flip) crops of one C x H x W image from its zero-padded copy."""
    c, h, w = image.shape
    padded = F.pad(image, (padding,) * 4)
    out = {}
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top:top + h, left:left + w]
            out[(top, left, False)] = crop
            out[(top, left, True)] = crop.flip(-1)
    return out


def recover_crop_flip(loader, images):
    """Per example of an epoch (in order): its index and the (top, left, flip) that turned
    it into the loader's output (exactly one of the candidates matches)."""
    seen = []
    for x, y in loader:
        assert x.dtype == torch.float32 and x.device.type == loader.device.type
        for out, index in zip(x.cpu(), y.cpu().tolist(), strict=True):
            matches = [key for key, crop in crop_flip_candidates(images[index], 4).items()
                       if torch.equal(crop.float().div(255), out)]
            assert len(matches) == 1, (index, matches)
            seen.append((index, matches[0]))
    return seen


@pytest.mark.parametrize("device", DEVICES)
def test_device_loader_crop_flip_matches_the_cpu_loader(device):
    """Same seed on CPU and on the device: the same examples in the same order, each the
    exact crop/flip of its source image, the same number of batches; offsets and flips
    spread evenly on both. (A CUDA generator and a CPU generator with the same seed give
    different streams, so the drawn offsets themselves are not compared.)"""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (48, 3, 8, 8), generator=g, dtype=torch.uint8)
    dataset = TensorImageDataset(images, torch.arange(48), 48, "random", augment=True)
    loaders = {d: DeviceBatchLoader(dataset, 16, d, shuffle=True, augment=True, seed=3)
               for d in ("cpu", device)}
    draws = {d: [] for d in loaders}
    for epoch in range(4):
        per_device = {}
        for d, loader in loaders.items():
            loader.set_epoch(epoch)
            per_device[d] = recover_crop_flip(loader, images)
            assert recover_crop_flip(loader, images) == per_device[d]  # reproducible
            draws[d] += [params for _, params in per_device[d]]
        orders = [[index for index, _ in seen] for seen in per_device.values()]
        assert orders[0] == orders[-1] and sorted(orders[0]) == list(range(48))
    for d, params in draws.items():  # 192 draws per device
        assert {top for top, _, _ in params} == set(range(9)), d
        assert {left for _, left, _ in params} == set(range(9)), d
        flips = sum(flip for _, _, flip in params) / len(params)
        assert 0.35 < flips < 0.65, (d, flips)  # mean 0.5, sd 0.036


# ---- Smooth on a linear classifier with a closed-form radius --------------------------------


class LinearBinary(nn.Module):
    """Logits (0, w.x + b): class 1 iff w.x + b > 0. Under N(0, sigma^2) noise,
    P(class 1) = Phi(d / sigma) with d = (w.x + b) / |w| the signed distance to the boundary,
    and the exact radius of the smoothed classifier is |d|."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone(), requires_grad=False)
        self.b = b

    def forward(self, x):
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], 1)


def linear_points(device):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1, 4, 4, generator=g)
    unit = w / w.norm()
    centre = torch.full((1, 4, 4), 0.5)
    model = LinearBinary(w, -(w.flatten() @ centre.flatten()).item()).to(device)
    # signed distances to the boundary (class 1 positive)
    distances = {"close": 0.25, "far": 1.0, "class0": -0.5, "boundary": 0.0}
    points = {k: (centre + d * unit).to(device) for k, d in distances.items()}
    return model, points, distances


def radius_range(p, n, alpha, sigma, sds=5.0):
    """Radii that CERTIFY returns with n_A within ``sds`` standard deviations of n p."""
    sd = math.sqrt(n * p * (1 - p))
    lo, hi = max(0, math.floor(n * p - sds * sd)), min(n, math.ceil(n * p + sds * sd))
    bound = [clopper_pearson_lower(k, n, alpha) for k in (lo, hi)]
    return [certified_radius(b, sigma) if b >= 0.5 else 0.0 for b in bound]


def run_smooth(device, seed):
    model, points, distances = linear_points(device)
    smooth = Smooth(model, 2, 0.5)
    results = {}
    for name, x in points.items():
        gen = torch.Generator(device=device).manual_seed(seed)
        certified = smooth.certify(x, 100, 10_000, 0.001, 1000, generator=gen)
        predicted = smooth.predict(x, 1000, 0.001, 500, generator=gen)
        results[name] = certified, predicted
    return results, distances


@pytest.mark.parametrize("device", DEVICES)
def test_smooth_on_a_linear_classifier_agrees_with_the_closed_form_and_the_cpu(device):
    sigma, n, alpha = 0.5, 10_000, 0.001
    ours, distances = run_smooth(device, seed=11)
    cpu, _ = run_smooth("cpu", seed=12)  # another stream: agreement within MC tolerance
    for name, d in distances.items():
        (c, radius), predicted = ours[name]
        (c_cpu, radius_cpu), predicted_cpu = cpu[name]
        assert (c, predicted) == (c_cpu, predicted_cpu), name  # same decisions
        if d == 0:  # p = 1/2: certify and predict abstain (each errs w.p. <= alpha)
            assert (c, radius, predicted) == (-1, 0.0, -1)
            continue
        expected = int(d > 0)
        assert c == predicted == expected, name
        assert radius <= abs(d), name  # sound: never beyond the exact radius
        lo, hi = radius_range(norm.cdf(abs(d) / sigma), n, alpha, sigma)
        assert lo <= radius <= hi and lo <= radius_cpu <= hi, (name, lo, radius, hi)


class HostReads:
    """Counts reads of tensor values into Python (int(t), t.item(), t.tolist(), ...): each
    is a host sync on CUDA. Works on every device, so the CPU variant checks the same thing."""

    NAMES = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__", "numpy")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def wrapper(t, *args, **kwargs):
            self.count += 1
            return original(t, *args, **kwargs)
        return wrapper


@contextlib.contextmanager
def cuda_syncs(device):
    """Counts synchronising CUDA calls (torch's sync debug mode) inside the block."""
    seen = []
    if device.type != "cuda":
        yield seen
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield seen
        finally:
            torch.cuda.set_sync_debug_mode(0)
    seen += [w for w in caught if "synchroniz" in str(w.message)]


@pytest.mark.parametrize("early_abstain", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_certify_reads_the_device_a_fixed_number_of_times_not_per_batch(device, early_abstain,
                                                                         monkeypatch):
    device = torch.device(device)
    model, points, _ = linear_points(device)
    smooth = Smooth(model, 2, 0.5)
    x = points["far"]
    smooth.certify(x, 100, 1000, 0.001, 1000)  # warm-up (allocator, kernels)
    reads, syncs = {}, {}
    # Early abstain reads the watched count at most FUTILITY_CHECKS times per run, at fixed
    # fractions of its range: both runs below have blocks at every check point.
    for batches in (20, 60):
        counter = HostReads(monkeypatch)
        with cuda_syncs(device) as seen:
            smooth.certificate(x, 100, 1000 * batches, 0.001, 1000,
                               early_abstain=early_abstain)
        reads[batches], syncs[batches] = counter.count, len(seen)
        monkeypatch.undo()
    # 4 for the counts, 2 for the image check (its range, once per vote count: selection
    # and estimation).
    assert reads[20] == reads[60] <= 6 + (FUTILITY_CHECKS if early_abstain else 0), reads
    assert syncs[20] == syncs[60], syncs


# ---- one-process DDP (NCCL on CUDA, gloo on CPU) ---------------------------------------------

DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from smoothmix.methods import create_method
    from smoothmix.models import create_model
    device = torch.device(sys.argv[2])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method="file://" + sys.argv[1], rank=0,
                                world_size=1, device_id=device)
    else:
        dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0,
                                world_size=1)
    backend = dist.get_backend()
    x = torch.rand(8, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (8,), device=device)
    torch.manual_seed(0)
    net, plain = create_model("lenet").to(device), create_model("lenet").to(device)
    plain.load_state_dict(net.state_dict())
    ddp = DDP(net, device_ids=[device.index or 0] if device.type == "cuda" else None)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (ddp, plain)]
    for name, options in (("gaussian", {}), ("smoothmix", {"num_noise": 2, "num_steps": 2})):
        for step in range(2):
            for model, opt in zip((ddp, plain), optimizers):
                method = create_method(name, 0.5, 10, **options)
                torch.manual_seed(step)
                opt.zero_grad()
                loss = method(model, x, y, 3).loss
                loss.backward()
                assert torch.isfinite(loss)
                opt.step()
            diff = max((a - b).abs().max().item()
                       for a, b in zip(net.parameters(), plain.parameters()))
            assert diff < 1e-5, (name, step, diff)
    dist.destroy_process_group()
    print("ok", backend)
""")


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_one_process_ddp_training_steps_equal_the_plain_steps(device, tmp_path):
    result = subprocess.run([sys.executable, "-c", DDP_SCRIPT, str(tmp_path / "store"), device],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "nccl" if device == "cuda" else "gloo"]


# ---- checkpoints across devices ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoint_saved_on_the_device_loads_on_cpu_and_back(device, mnist, tmp_path):
    path = fit_lenet(mnist, device, tmp_path / "run", epochs=1)
    ckpt = load_checkpoint(path)  # map_location cpu by default
    tensors = [*ckpt["state_dict"].values(),
               *(v for s in ckpt["optimizer"]["state"].values() for v in s.values()
                 if isinstance(v, torch.Tensor))]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    x, _ = mnist_batch(mnist, "cpu", n=8)
    on_cpu, _ = load_model(path, "cpu")
    on_device, _ = load_model(path, device)
    assert next(on_device.parameters()).device.type == device
    with torch.no_grad():
        torch.testing.assert_close(on_device(x.to(device)).cpu(), on_cpu(x),
                                   rtol=1e-4, atol=1e-5)
    # Training continues on the other device, and back again.
    for epochs, where in ((2, "cpu"), (3, device)):
        path = fit_lenet(mnist, where, tmp_path / "run", epochs=epochs, resume=True)
        assert load_checkpoint(path)["epoch"] == epochs


# ---- the replayable step (--cuda-graphs) ------------------------------------------------------


class FixedNoiseCE:
    """A deterministic method (fixed noise tensor): replayed and eager steps must agree."""

    def __init__(self, noise):
        self.noise = noise

    def __call__(self, model, x, y, epoch):
        logits = model(x + self.noise * (1 + epoch))  # epoch changes what is captured
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss, {"loss": loss.detach(),
                                 "acc": (logits.argmax(1) == y).float().mean()})


@pytest.mark.parametrize("device", DEVICES)
def test_replayable_step_equals_the_eager_step(device, mnist):
    """StepGraph (on CUDA: 3 eager warm-up steps, a capture per epoch, replays; on CPU: the
    same static-buffer step run eagerly) against the loop's plain step: the same losses and
    weights after 12 steps over 2 epochs."""
    device = torch.device(device)
    x_all = mnist.images[:48].float().div(255).to(device)
    batches = list(zip(x_all.split(8), mnist.labels[:48].to(device).split(8), strict=True))
    noise = 0.5 * torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    method = FixedNoiseCE(noise.to(device))
    torch.manual_seed(0)
    eager_model = create_model("lenet").to(device).train()
    graph_model = create_model("lenet").to(device)
    graph_model.load_state_dict(eager_model.state_dict())
    eager_opt = sgd(eager_model.parameters(), False)
    graph_opt = sgd(graph_model.parameters(), device.type == "cuda")
    stepper = StepGraph(graph_model.train(), method, graph_opt)
    for epoch in range(2):
        for x, y in batches:
            out = method(eager_model, x, y, epoch)
            eager_opt.zero_grad(set_to_none=True)
            out.loss.backward()
            eager_opt.step()
            values, keys = stepper.step(x, y, {}, epoch)
            assert keys == ["acc"]
            torch.testing.assert_close(values[0], out.loss.detach(), rtol=1e-4, atol=1e-5)
    if device.type == "cuda":
        assert stepper.graph is not None and stepper.graph_epoch == 1
        assert stepper.eager_steps == 3 and not stepper.capture_failed
    for a, b in zip(eager_model.parameters(), graph_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_fit_with_cuda_graphs_and_amp_trains_smoothmix_on_drop_last_batches(device, mnist,
                                                                             tmp_path):
    config = TrainConfig(epochs=2, batch_size=12, lr=0.01, device=device, seed=1,
                         progress=False, workers=0, cuda_graphs=True, precision="bf16")
    method = create_method("smoothmix", 0.5, 10, num_noise=2, num_steps=2, warmup=2)
    torch.manual_seed(0)
    # 64 images in steps of 12: the short last batch (4) must be dropped, or the fixed-shape
    # step refuses it
    path = fit(create_model("lenet"), method, mnist, None, config, tmp_path / "g",
               metadata={"arch": "lenet", "normalization": "mnist", "num_classes": 10})
    rows = (tmp_path / "g" / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and load_checkpoint(path)["epoch"] == 2
    header = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(header, row.split(","), strict=True))
        assert math.isfinite(float(values["train_loss"]))
        assert 0 <= float(values["train_mix_fraction"]) <= 1
