"""Training methods (docs/MATH.md §3): each loss against a hand computation of its formula with
fixed noise, the warm-ups, option validation, DDP/autocast, and a few real MNIST steps."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm as normal
from torch import nn

import smoothmix.methods.smoothadv as smoothadv_module
from smoothmix.errors import SmoothmixError
from smoothmix.methods import METHODS, create_method, method_options
from smoothmix.methods.attacks import pgd_attack, smoothmix_search
from smoothmix.methods.base import forward_groups
from smoothmix.models import create_model

B, K, SIGMA = 8, 5, 0.5


def tiny_model(seed: int = 0, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.Tanh(), nn.Linear(10, K)).double()
    with torch.no_grad():
        model[3].weight.mul_(scale)
    return model.train()


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    return x, y


def fix_noise(method, m: int, seed: int = 2):
    """Replace the method's noise draw by a fixed tensor (returned for the hand formula)."""
    g = torch.Generator().manual_seed(seed)
    noise = SIGMA * torch.randn(m, B, 1, 4, 4, generator=g, dtype=torch.float64)
    method.noise_draws = 0

    def draw(x, count):
        method.noise_draws += 1
        return noise[:count]

    method._noise = draw
    return noise


def grads(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)


def assert_same_loss_and_grads(model, got, expected):
    assert got.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    for a, b in zip(grads(model, got), grads(model, expected), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def grads_differ(model, a, b) -> bool:
    return any(not torch.allclose(u, v, rtol=1e-6, atol=1e-9)
               for u, v in zip(grads(model, a), grads(model, b), strict=True))


# ---- losses against their formulas -----------------------------------------------------


def test_gaussian_loss():
    model, (x, y) = tiny_model(), data()
    method = create_method("gaussian", SIGMA, K)
    noise = fix_noise(method, 1)
    out = method(model, x, y, 0)
    assert_same_loss_and_grads(model, out.loss, F.cross_entropy(model(x + noise[0]), y))
    expected_acc = (model(x + noise[0]).argmax(1) == y).double().mean()
    assert out.metrics["acc"].item() == pytest.approx(expected_acc.item())


def test_stability_soft_cross_entropy_keeps_the_clean_target_differentiable():
    model, (x, y) = tiny_model(), data()
    method = create_method("stability", SIGMA, K, lbd=2.0)
    noise = fix_noise(method, 1)
    out = method(model, x, y, 0)
    clean, noisy = model(x), model(x + noise[0])

    def formula(target):
        soft = torch.stack([-(target[b] * torch.log_softmax(noisy[b], 0)).sum()
                            for b in range(B)]).mean()
        return F.cross_entropy(clean, y) + 2.0 * soft

    expected = formula(F.softmax(clean, 1))
    assert_same_loss_and_grads(model, out.loss, expected)
    assert grads_differ(model, expected, formula(F.softmax(clean, 1).detach()))


def test_consistency_loss_kl_and_entropy_terms():
    model, (x, y) = tiny_model(), data()
    method = create_method("consistency", SIGMA, K, num_noise=3, lbd=7.0, eta=0.5)
    noise = fix_noise(method, 3)
    out = method(model, x, y, 0)
    logits = [model(x + noise[i]) for i in range(3)]
    probs = [F.softmax(z, 1) for z in logits]
    p_bar = sum(probs) / 3
    ce = sum(F.cross_entropy(z, y) for z in logits) / 3
    kl = sum((p_bar * (p_bar.log() - F.log_softmax(z, 1))).sum(1).mean() for z in logits) / 3
    entropy = -(p_bar * p_bar.clamp(min=1e-20).log()).sum(1).mean()
    assert_same_loss_and_grads(model, out.loss, ce + 7.0 * kl + 0.5 * entropy)
    assert out.metrics["loss_kl"].item() == pytest.approx(kl.item(), rel=1e-9)
    assert out.metrics["loss_entropy"].item() == pytest.approx(entropy.item(), rel=1e-9)


def macer_formula(model, x, y, noise, beta, gamma, lbd):
    """docs/MATH.md §3.4 example by example, with scipy's normal quantile."""
    cl, rl, kept = [], [], []
    for b in range(B):
        z = torch.stack([model((x[b] + noise[j, b]).unsqueeze(0))[0] for j in range(len(noise))])
        cl.append(-torch.log(F.softmax(z, 1)[:, y[b]].mean() + 1e-10))
        p = F.softmax(beta * z, 1).mean(0)
        top, idx = p.topk(2)
        gap = normal.ppf(top[0].item()) - normal.ppf(top[1].item())
        keep = idx[0].item() == y[b].item() and math.isfinite(gap) and 0 <= gap <= gamma
        kept.append(keep)
        if keep:
            icdf = torch.special.ndtri  # differentiable; its value is checked against scipy
            assert icdf(top[0]).item() - icdf(top[1]).item() == pytest.approx(gap, rel=1e-7)
            rl.append(SIGMA / 2 * (gamma - icdf(top[0]) + icdf(top[1])))
    rl_sum = sum(rl) if rl else torch.zeros((), dtype=torch.float64)
    return (sum(cl) + lbd * rl_sum) / B, kept


def test_macer_hinge_and_mask():
    model, (x, y) = tiny_model(scale=3.0), data()
    k, beta = 6, 2.0
    probe = create_method("macer", SIGMA, K, num_noise=k)
    noise = fix_noise(probe, k)
    with torch.no_grad():  # make half of the examples correct, then put gamma mid-way
        z = model((x.unsqueeze(0) + noise).flatten(0, 1)).view(k, B, K)
        p = F.softmax(beta * z, -1).mean(0)
        y = torch.where(torch.arange(B) % 2 == 0, p.argmax(1), y)
        top = p.topk(2).values
        gaps = normal.ppf(top[:, 0].numpy()) - normal.ppf(top[:, 1].numpy())
    correct_gaps = sorted(gaps[(p.argmax(1) == y).numpy()])
    gamma = float((correct_gaps[0] + correct_gaps[-1]) / 2)
    method = create_method("macer", SIGMA, K, num_noise=k, beta=beta, gamma=gamma, lbd=3.0)
    method._noise = probe._noise
    out = method(model, x, y, 0)
    expected, kept = macer_formula(model, x, y, noise, beta, gamma, 3.0)
    assert 0 < sum(kept) < (p.argmax(1) == y).sum().item()  # hinge drops some correct ones
    assert_same_loss_and_grads(model, out.loss, expected)
    assert out.metrics["rl_fraction"].item() == pytest.approx(sum(kept) / B)

    deferred = create_method("macer", SIGMA, K, num_noise=k, beta=beta, gamma=gamma, lbd=3.0,
                             deferred_epochs=5)
    deferred._noise = probe._noise
    cl_only, _ = macer_formula(model, x, y, noise, beta, gamma, 0.0)
    assert deferred(model, x, y, 4).loss.item() == pytest.approx(cl_only.item(), rel=1e-9)
    assert deferred(model, x, y, 5).loss.item() == pytest.approx(expected.item(), rel=1e-9)


def test_macer_is_finite_when_the_softmax_saturates():
    model, (x, y) = tiny_model(scale=1e4), data()  # p1 = 1 exactly: Phi^-1 = inf, dropped
    method = create_method("macer", SIGMA, K, num_noise=4)
    fix_noise(method, 4)
    y = model(x).argmax(1)
    out = method(model, x, y, 0)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_smoothadv_multi_noise_loss_and_epsilon_warmup(monkeypatch):
    model, (x, y) = tiny_model(), data()
    method = create_method("smoothadv", SIGMA, K, num_noise=3, num_steps=2, epsilon=0.8,
                           warmup=10)
    noise = fix_noise(method, 3)
    out = method(model, x, y, 4)
    x_adv = pgd_attack(model, x, y, noise, 0.8 * 0.5, 2)
    expected = sum(F.cross_entropy(model(x_adv + noise[i]), y) for i in range(3)) / 3
    assert_same_loss_and_grads(model, out.loss, expected)
    assert method.noise_draws == 1  # one draw shared by the attack and the loss

    seen = []
    monkeypatch.setattr(smoothadv_module, "pgd_attack",
                        lambda m, x, y, n, eps, steps: seen.append(("pgd", eps)) or x)
    monkeypatch.setattr(smoothadv_module, "ddn_attack",
                        lambda m, x, y, n, eps, steps, init_norm: seen.append(("ddn", eps))
                        or x)
    epochs = (0, 3, 8, 9, 10, 30)
    for epoch in epochs:
        method(model, x, y, epoch)
    assert seen == [("pgd", pytest.approx(0.8 * min(1, (e + 1) / 10))) for e in epochs]
    seen.clear()
    create_method("smoothadv", SIGMA, K, attack="ddn", epsilon=0.5, warmup=0)(model, x, y, 0)
    assert seen == [("ddn", 0.5)]


def smoothmix_formula(model, x, y, noise, lam, *, steps, alpha, eta, mix_step, w,
                      detach_target=False):
    """docs/MATH.md §3.6 written out with one forward per noise draw (as in the reference)."""
    m = len(noise)
    path = smoothmix_search(model, x, y, noise, steps, alpha)
    x0 = x
    if mix_step == 1:
        delta = path[1] - x
        dist = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        x0 = x + delta * torch.clamp(w * alpha / dist, max=1.0)
    logits0 = [model(x0 + noise[i]) for i in range(m)]
    loss_nat = sum(F.cross_entropy(z, y) for z in logits0) / m
    smoothed = sum(F.softmax(z, 1) for z in logits0) / m
    lam4, lam2 = lam.view(-1, 1, 1, 1), lam.view(-1, 1)
    x_mix = (1 - lam4) * x0 + lam4 * path[-1]
    y_mix = (1 - lam2) * smoothed + lam2 * torch.full((B, K), 1.0 / K, dtype=torch.float64)
    if detach_target:
        y_mix = y_mix.detach()
    mask = (smoothed.argmax(1) == y).double()
    kl = [(y_mix * (y_mix.log() - F.log_softmax(model(x_mix + noise[i]), 1))).sum(1)
          for i in range(m)]
    loss_mix = sum((mask * k).mean() for k in kl) / m
    return loss_nat + eta * w * loss_mix, mask, x0


@pytest.mark.parametrize("mix_step", [0, 1])
def test_smoothmix_loss_matches_formula(mix_step):
    model, (x, y) = tiny_model(scale=4.0), data()
    method = create_method("smoothmix", SIGMA, K, num_noise=3, num_steps=3, step_size=0.7,
                           eta=5.0, mix_step=mix_step, warmup=10)
    noise = fix_noise(method, 3)
    lam = torch.rand(B, generator=torch.Generator().manual_seed(3), dtype=torch.float64) / 2
    method._mix_lambda = lambda x: lam
    with torch.no_grad():  # half of the examples right under the smoothed classifier
        smoothed = F.softmax(model((x.unsqueeze(0) + noise).flatten(0, 1)), 1).view(3, B, K)
        y = torch.where(torch.arange(B) % 2 == 0, smoothed.mean(0).argmax(1), y)
    for epoch, w in ((0, 0.1), (4, 0.5), (12, 1.0)):
        out = method(model, x, y, epoch)
        expected, mask, _ = smoothmix_formula(model, x, y, noise, lam, steps=3, alpha=0.7,
                                              eta=5.0, mix_step=mix_step, w=w)
        assert 0 < mask.sum() < B
        assert_same_loss_and_grads(model, out.loss, expected)
        assert out.metrics["loss"].item() == pytest.approx(
            out.metrics["loss_nat"].item() + 5.0 * w * out.metrics["loss_mix"].item(), rel=1e-9)
        assert out.metrics["mix_fraction"].item() == pytest.approx(mask.mean().item())
    assert method.noise_draws == 3  # once per batch, shared by search and both losses
    detached, _, _ = smoothmix_formula(model, x, y, noise, lam, steps=3, alpha=0.7, eta=5.0,
                                       mix_step=mix_step, w=1.0, detach_target=True)
    assert grads_differ(model, out.loss, detached)  # y_mix is NOT detached


def test_shared_first_forward_is_used_only_where_it_changes_nothing():
    method = create_method("smoothmix", SIGMA, K, num_noise=2, num_steps=2)
    assert method.shares_first_forward(tiny_model())
    assert method.shares_first_forward(create_model("lenet"))
    for model in (nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, K)),
                  nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten()),
                  Recorder(tiny_model())):  # unknown module: might read self.training
        assert not method.shares_first_forward(model)
    one_step = create_method("smoothmix", SIGMA, K, num_noise=2, num_steps=2, mix_step=1)
    assert not one_step.shares_first_forward(tiny_model())


@pytest.mark.parametrize("arch, max_norm", [("tiny", None), ("tiny", 0.8), ("lenet", None)])
def test_shared_first_forward_equals_the_two_forward_step(arch, max_norm, mnist_batches):
    """Same loss, metrics and parameter gradients with and without the shared forward: on
    the float64 tiny model (tight) and on LeNet with real MNIST in float32."""
    if arch == "tiny":
        cases = [(lambda: tiny_model(scale=4.0), *data(), 1e-9)]
    else:
        cases = [(lambda: create_model("lenet"), *mnist_batches[0], 1e-5)]
    for make, x, y, tol in cases:
        results = []
        for shared in (True, False):
            torch.manual_seed(4)
            model = make()
            method = create_method("smoothmix", SIGMA, K if arch == "tiny" else 10, num_noise=3,
                                   num_steps=3, step_size=0.7, eta=5.0, max_norm=max_norm)
            assert method.shares_first_forward(model)
            if not shared:
                method.shares_first_forward = lambda model: False
            torch.manual_seed(5)
            out = method(model, x, y, 12)
            results.append((out, grads(model, out.loss)))
        (a, grads_a), (b, grads_b) = results
        assert 0 < a.metrics["mix_fraction"].item()
        for key in a.metrics:
            torch.testing.assert_close(a.metrics[key], b.metrics[key], rtol=tol, atol=tol)
        for ga, gb in zip(grads_a, grads_b, strict=True):
            torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)


class Recorder(nn.Module):
    """Records the inputs of train-mode forwards (the loss forwards, not the attack's)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x):
        if self.training:
            self.inputs.append(x.detach())
        return self.net(x)


def test_one_step_anchor_lies_within_w_alpha_of_x():
    x, y = data()
    alpha, m = 1.0, 2
    for epoch in range(12):
        model = Recorder(tiny_model())
        method = create_method("smoothmix", SIGMA, K, num_noise=m, num_steps=2,
                               step_size=alpha, mix_step=1, warmup=10)
        noise = fix_noise(method, m)
        method(model, x, y, epoch)
        x0_copies = model.inputs[0][: m * B].view(m, B, 1, 4, 4) - noise
        torch.testing.assert_close(x0_copies[0], x0_copies[1])
        dist = (x0_copies[0] - x).flatten(1).norm(dim=1)
        w = min(1.0, (epoch + 1) / 10)
        assert (dist <= w * alpha + 1e-9).all()
        one_step = (smoothmix_search(model.net, x, y, noise, 1, alpha)[1] - x).flatten(1)
        torch.testing.assert_close(dist, one_step.norm(dim=1).clamp(max=w * alpha))


def test_mix_step_zero_anchor_is_the_clean_input():
    x, y = data()
    model = Recorder(tiny_model())
    method = create_method("smoothmix", SIGMA, K, num_noise=2, num_steps=2, mix_step=0)
    noise = fix_noise(method, 2)
    method(model, x, y, 3)
    torch.testing.assert_close(model.inputs[0][: 2 * B].view(2, B, 1, 4, 4) - noise,
                               x.expand(2, *x.shape))


# ---- state, devices, precision -----------------------------------------------------------


def all_methods(**small):
    opts = {"smoothmix": dict(num_noise=2, num_steps=2), "smoothadv": dict(num_noise=2,
            num_steps=2), "macer": dict(num_noise=4), "consistency": {}, "gaussian": {},
            "stability": {}, "plain": {}}
    # Methods that need per-example side data (CAT-RS) are checked in their own test file,
    # the denoiser methods (trains = "denoiser") in theirs.
    plain = {name for name, cls in METHODS.items()
             if not cls.side_data and cls.trains == "classifier"}
    assert set(opts) == plain
    return [(name, create_method(name, SIGMA, K, **opts[name])) for name in sorted(plain)]


@pytest.mark.parametrize("attack", ["pgd", "ddn"])
def test_every_method_leaves_the_model_in_train_mode_without_stray_gradients(attack):
    x, y = data()
    for name, method in all_methods():
        if name == "smoothadv":
            method = create_method(name, SIGMA, K, num_noise=2, num_steps=2, attack=attack)
        model = tiny_model()
        out = method(model, x, y, 0)
        assert model.training, name
        assert all(p.requires_grad and p.grad is None for p in model.parameters()), name
        assert out.loss.dim() == 0 and out.loss.requires_grad
        assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values()), name
        assert 0 <= out.metrics["acc"].item() <= 1


def conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, K)).train()


def test_every_method_runs_under_bfloat16_autocast():
    x, y = data()
    x = x.float()
    for name, method in all_methods():
        model = conv_model()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = method(model, x, y, 20)
        out.loss.backward()
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss), name
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), name


def test_loss_forwards_are_joint_only_where_that_changes_nothing():
    calls = []

    def record(mod, inp):
        calls.append((mod.training, len(inp[0])))

    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, K))
    # The x0 and x_mix copies would share batch statistics in one joint forward.
    batch_norm = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(),
                               nn.Linear(12, K))
    x, y = data()
    x = x.float()
    method = create_method("smoothmix", SIGMA, K, num_noise=2, num_steps=1)
    # plain: the search's first forward is shared with L_nat (shares_first_forward)
    for model, expected in ((plain, [(True, 2 * B), (True, 2 * B)]),
                            (batch_norm, [(False, 2 * B), (True, 2 * B), (True, 2 * B)])):
        model.register_forward_pre_hook(record)
        calls.clear()
        method(model, x, y, 0)
        assert calls == expected

    # the joint forward of the accelerator path gives the same logits as separate ones
    groups = [torch.rand(3, 1, 4, 4), torch.rand(5, 1, 4, 4)]
    calls.clear()
    joint = forward_groups(plain, groups, joint=True)
    assert calls == [(True, 8)]
    for a, b in zip(joint, forward_groups(plain, groups, joint=False), strict=True):
        torch.testing.assert_close(a, b)
    calls.clear()
    forward_groups(batch_norm, groups, joint=True)  # batch norm in train mode: never joint
    assert calls == [(True, 3), (True, 5)]


@pytest.mark.slow
def test_ddp_wrapped_model_gets_the_same_gradients(tmp_path):
    # Single-process gloo group in a subprocess (keeps the test process free of global
    # process-group state): attack forwards bypass DDP, loss forwards go through it.
    script = textwrap.dedent("""
        import sys, torch, torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        from smoothmix.methods import create_method
        # A file store: no TCP port that a concurrent test could hold.
        dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0,
                                world_size=1)
        nn = torch.nn
        x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 5, (8,))
        def mlp():
            return nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
        def with_bn():  # batch norm: SmoothMix's two loss forwards stay separate
            return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(),
                                 nn.Linear(12, 5))
        for build in (mlp, with_bn):
            torch.manual_seed(0)
            net, plain = build(), build()
            plain.load_state_dict(net.state_dict())
            ddp = DDP(net)
            for name in ("smoothmix", "smoothadv", "consistency"):
                for step in range(2):
                    for model in (ddp, plain):
                        method = create_method(name, 0.5, 5, num_noise=2)
                        torch.manual_seed(step)
                        model.zero_grad()
                        method(model, x, y, 3).loss.backward()
                    diff = max((a.grad - b.grad).abs().max().item()
                               for a, b in zip(net.parameters(), plain.parameters()))
                    assert diff < 1e-5, (name, diff)
                    assert ddp.training and all(p.requires_grad for p in net.parameters())
            for a, b in zip(net.state_dict().values(), plain.state_dict().values()):
                assert torch.allclose(a.float(), b.float(), atol=1e-5)
        dist.destroy_process_group()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "store")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


# ---- options ---------------------------------------------------------------------------


def test_published_defaults_and_option_table():
    opts = {name: method_options(name) for name in METHODS}
    assert {k: v.default for k, v in opts["macer"].items()} == {
        "num_noise": 16, "lbd": 12.0, "beta": 16.0, "gamma": 8.0, "deferred_epochs": 0}
    assert opts["consistency"]["num_noise"].default == 2
    assert opts["consistency"]["eta"].default == 0.5
    assert opts["stability"]["lbd"].default == 2.0
    assert opts["smoothadv"]["epsilon"].default == 255 / 256
    assert opts["smoothadv"]["warmup"].default == 10
    assert opts["smoothadv"]["attack"].choices == ("pgd", "ddn")
    sm = opts["smoothmix"]
    assert (sm["step_size"].default, sm["mix_step"].default, sm["warmup"].default,
            sm["max_norm"].default) == (1.0, 0, 10, None)
    assert opts["gaussian"] == {}
    for table in opts.values():
        for info in table.values():
            assert info.help and info.type in (int, float, str)


@pytest.mark.parametrize("name, kwargs, message", [
    ("smoothmix", {"sigma": 0.0}, "sigma must be a positive number"),
    ("smoothmix", {"sigma": -0.5}, "sigma must be a positive number"),
    ("gaussian", {"sigma": float("nan")}, "sigma must be a positive number"),
    ("gaussian", {"sigma": 10}, "sigma must be in (0, 4], got 10"),  # checks.py
    ("smoothmix", {"num_noise": 0}, "num_noise must be at least 1"),
    ("macer", {"num_noise": 0}, "num_noise must be at least 1"),
    ("consistency", {"num_noise": 1}, "num_noise must be at least 2"),
    ("smoothmix", {"num_steps": 0}, "num_steps must be at least 1"),
    ("smoothadv", {"num_steps": 0}, "num_steps must be at least 1"),
    ("smoothmix", {"num_steps": 2.5}, "must be an integer"),
    ("smoothmix", {"step_size": 0}, "step_size must be positive"),
    ("smoothmix", {"mix_step": 2}, "mix_step must be one of 0, 1"),
    ("smoothmix", {"max_norm": -1.0}, "max_norm must be positive"),
    ("smoothmix", {"eta": "lots"}, "eta must be a finite number"),
    ("smoothadv", {"attack": "fgsm"}, "attack must be one of pgd, ddn"),
    ("smoothadv", {"epsilon": 0}, "epsilon must be positive"),
    ("macer", {"lbd": -1}, "lbd must be non-negative"),
    ("macer", {"deferred_epochs": True}, "must be a number"),
    ("gaussian", {"num_noise": 4}, "valid options: (none)"),
    ("stability", {"eta": 1.0}, "unknown option eta for method stability; valid options: lbd"),
    ("smoothmix", {"epsilon": 1.0, "lbd": 2.0},
     "unknown options epsilon, lbd for method smoothmix; valid options: eta, max_norm, "
     "mix_step, num_noise, num_steps, step_size, warmup"),
])
def test_bad_options_raise_one_line_errors(name, kwargs, message):
    kwargs = dict(kwargs)
    sigma = kwargs.pop("sigma", SIGMA)
    with pytest.raises(SmoothmixError) as info:
        create_method(name, sigma, K, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_num_classes_must_be_an_integer_of_at_least_two():
    assert create_method("gaussian", SIGMA, torch.tensor(10)).num_classes == 10
    for bad in (1, 2.5, True, "ten"):
        with pytest.raises(SmoothmixError, match="num_classes must be an integer >= 2"):
            create_method("gaussian", SIGMA, bad)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(SmoothmixError, match="unknown method 'mixup'; valid methods: .*macer"):
        create_method("mixup", SIGMA, K)
    with pytest.raises(SmoothmixError, match="unknown method"):
        method_options("mixup")


def test_options_are_coerced_and_none_means_default():
    method = create_method("smoothmix", 0.25, 10, num_noise=4.0, eta="5", max_norm=None,
                           num_steps=None)
    assert method.num_noise == 4 and isinstance(method.num_noise, int)
    assert method.eta == 5.0 and method.max_norm is None and method.num_steps == 4
    assert method.config()["eta"] == 5.0


def test_bad_batch_shape_is_a_clear_error():
    method = create_method("gaussian", SIGMA, K)
    x, y = data()
    with pytest.raises(SmoothmixError, match="N labels"):
        method(tiny_model(), x, y[:3], 0)
    with pytest.raises(SmoothmixError, match="floats in"):
        method(tiny_model(), (x * 255).to(torch.uint8), y, 0)


# ---- real MNIST --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_batches():
    from smoothmix.data import load_dataset

    data = load_dataset("mnist", "train")
    x = data.images[:768].float() / 255
    return list(zip(x.split(32), data.labels[:768].split(32), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [
    ("gaussian", {}),
    ("stability", {}),
    ("smoothadv", {"num_noise": 2, "num_steps": 2, "epsilon": 0.5}),
    ("macer", {"num_noise": 4, "lbd": 4.0}),
    ("consistency", {"lbd": 5.0}),
    ("smoothmix", {"num_noise": 2, "num_steps": 2, "eta": 5.0, "mix_step": 1}),
])
def test_training_on_mnist_decreases_the_loss(name, options, mnist_batches):
    from smoothmix.models import create_model

    torch.manual_seed(0)
    model = create_model("lenet").train()
    method = create_method(name, 0.25, 10, **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)  # quick, robust progress
    losses = []
    for x, y in mnist_batches:
        out = method(model, x, y, 20)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (name, losses)
