"""The attacks on the smoothed soft classifier (docs/MATH.md §3.3, §3.6), against independent
transcriptions of the reference loops (one forward per noise draw, in eval mode)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothmix.methods.attacks import (
    ddn_attack,
    frozen_eval,
    pgd_attack,
    smoothed_nll,
    smoothmix_search,
)

B, M, K = 6, 3, 4


def tiny_model(seed: int = 0) -> nn.Module:
    """A float64 MLP with dropout, so that running an attack in train mode would change
    its gradients (the reference computations below run in eval mode)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Dropout(0.5),
                          nn.Linear(12, K)).double()
    return model.train()


def batch(seed: int = 1, value: float | None = None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 1, 4, 4, generator=g, dtype=torch.float64)
    if value is not None:
        x = torch.full_like(x, value)
    y = torch.randint(0, K, (B,), generator=g)
    noise = 0.5 * torch.randn(M, B, 1, 4, 4, generator=g, dtype=torch.float64)
    return x, y, noise


def reference_grad(model, x, y, noise):
    """dJ/dx with a Python loop over the noise draws, as in the public code."""
    was = model.training
    model.eval()
    x = x.clone().requires_grad_(True)
    avg = sum(F.softmax(model(x + n), dim=1) for n in noise) / len(noise)
    loss = F.nll_loss(torch.log(avg.clamp(min=1e-20)), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, [x], allow_unused=True)
    model.train(was)
    return grad


def unit(g):
    return g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-8)


def norms(t):
    return t.flatten(1).norm(dim=1)


def test_smoothed_nll_matches_hand_computation():
    model = tiny_model().eval()
    x, y, noise = batch()
    got = smoothed_nll(model, x, y, noise)
    for b in range(B):
        probs = [F.softmax(model((x[b] + noise[i, b]).unsqueeze(0)), 1)[0, y[b]] for i in range(M)]
        expected = -torch.log(torch.stack(probs).mean())
        assert got[b].item() == pytest.approx(expected.item(), rel=1e-10)


def test_smoothmix_search_matches_reference_loop_and_clamps():
    model = tiny_model()
    x, y, noise = batch()
    path = smoothmix_search(model, x, y, noise, num_steps=4, step_size=1.5)
    assert len(path) == 5 and torch.equal(path[0], x)
    expected = x
    for t in range(4):
        expected = (expected + 1.5 * unit(reference_grad(model, expected, y, noise))).clamp(0, 1)
        torch.testing.assert_close(path[t + 1], expected, rtol=1e-9, atol=1e-9)
    assert all(p.min() >= 0 and p.max() <= 1 for p in path)
    assert not torch.equal(path[-1], x)


def test_smoothmix_steps_have_length_alpha_before_the_clamp():
    # Far from the [0, 1] boundary the clamp is inactive: every step is exactly alpha long.
    model = tiny_model()
    x, y, noise = batch(value=0.5)
    alpha, steps = 0.05, 3
    path = smoothmix_search(model, x, y, noise, num_steps=steps, step_size=alpha)
    for before, after in zip(path, path[1:], strict=False):
        torch.testing.assert_close(norms(after - before), torch.full((B,), alpha,
                                   dtype=torch.float64), rtol=1e-6, atol=0)
    assert (norms(path[-1] - x) <= steps * alpha + 1e-12).all()
    # ...and the path is not a straight line in general (the gradient is recomputed).
    assert (norms(path[-1] - x) < steps * alpha - 1e-6).any()


def test_smoothmix_search_max_norm_projection():
    model = tiny_model()
    x, y, noise = batch()
    path = smoothmix_search(model, x, y, noise, num_steps=5, step_size=1.0, max_norm=1.2)
    expected = x
    for t in range(5):  # the reference: renorm the perturbation, then clamp
        step = expected + unit(reference_grad(model, expected, y, noise))
        expected = (x + (step - x).renorm(p=2, dim=0, maxnorm=1.2)).clamp(0, 1)
        torch.testing.assert_close(path[t + 1], expected, rtol=1e-6, atol=1e-6)
    for p in path:
        assert (norms(p - x) <= 1.2 + 1e-9).all()
        assert p.min() >= 0 and p.max() <= 1
    assert (norms(path[-1] - x) > 1.1).any()


def test_attack_runs_in_eval_mode_without_parameter_gradients_and_restores_state():
    model = tiny_model()
    frozen = model[1].bias
    frozen.requires_grad_(False)
    seen = []
    model[1].register_forward_pre_hook(lambda mod, inp: seen.append(
        (mod.training, any(p.requires_grad for p in model.parameters()))))
    x, y, noise = batch()
    for attack in (lambda: smoothmix_search(model, x, y, noise, 2, 0.5),
                   lambda: pgd_attack(model, x, y, noise, 0.5, 2),
                   lambda: ddn_attack(model, x, y, noise, 0.5, 2)):
        seen.clear()
        attack()
        assert seen and all(state == (False, False) for state in seen)
        assert model.training
        assert all(p.grad is None for p in model.parameters())
        assert not frozen.requires_grad
        assert all(p.requires_grad for n, p in model.named_parameters() if n != "1.bias")


def test_frozen_eval_restores_state_after_an_error():
    model = tiny_model()
    with pytest.raises(RuntimeError), frozen_eval(model):
        raise RuntimeError("boom")
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_pgd_matches_reference_and_stays_in_the_ball():
    model = tiny_model()
    x, y, noise = batch()
    eps, steps = 0.8, 4
    got = pgd_attack(model, x, y, noise, eps, steps)
    expected = x
    for _ in range(steps):
        step = expected + 2 * eps / steps * unit(reference_grad(model, expected, y, noise))
        delta = step.clamp(0, 1) - x
        expected = x + delta.renorm(p=2, dim=0, maxnorm=eps)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert (norms(got - x) <= eps + 1e-9).all()
    assert got.min() >= 0 and got.max() <= 1


def test_pgd_takes_a_random_step_where_the_gradient_vanishes():
    model = tiny_model()
    with torch.no_grad():
        model[1].weight.zero_()  # constant logits: dJ/dx is exactly 0
    x, y, noise = batch(value=0.5)
    got = pgd_attack(model, x, y, noise, epsilon=0.1, num_steps=1)
    # one step of length 2*eps along a random direction, projected back onto the sphere
    torch.testing.assert_close(norms(got - x), torch.full((B,), 0.1, dtype=torch.float64))


def test_pgds_random_direction_comes_from_the_callers_generator():
    model = tiny_model()
    with torch.no_grad():
        model[1].weight.zero_()  # constant logits: only the random direction moves x
    x, y, noise = batch(value=0.5)
    runs = []
    for global_seed, seed in ((1, 7), (2, 7), (1, 8)):
        torch.manual_seed(global_seed)
        runs.append(pgd_attack(model, x, y, noise, 0.1, 2,
                               generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(runs[0], runs[1])  # the global RNG does not matter
    assert not torch.equal(runs[0], runs[2])  # the generator does
    assert (norms(runs[0] - x) > 0).all()


@pytest.mark.parametrize("attack", [pgd_attack, ddn_attack])
def test_attacks_with_a_generator_leave_the_global_rng_alone(attack):
    """Both attacks draw their fallback direction from the caller's generator, so a caller
    that passes one (reproducible per-example streams) keeps torch's global RNG untouched."""
    model = tiny_model()
    x, y, noise = batch()
    torch.manual_seed(3)
    before = torch.get_rng_state()
    attack(model, x, y, noise, 0.3, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), before)
    attack(model, x, y, noise, 0.3, 2)  # without one, the global RNG supplies it
    assert not torch.equal(torch.get_rng_state(), before)


def test_ddn_stays_in_the_ball_and_finds_adversaries_of_a_weak_model():
    model = tiny_model()
    x, y, noise = batch()
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    model.train()
    y = pred  # attack the model's own clean predictions
    got = ddn_attack(model, x, y, noise, 0.3, num_steps=20)
    assert (norms(got - x) <= 0.3 + 1e-9).all()
    # A radius beyond any perturbation of a 4x4 image: the projection is inactive.
    eps = 4.0
    got = ddn_attack(model, x, y, noise, eps, num_steps=20)
    assert got.min() >= 0 and got.max() <= 1
    moved = norms(got - x) > 0
    assert moved.any()
    with torch.no_grad():
        model.eval()
        logits = model((got.unsqueeze(0) + noise).flatten(0, 1)).view(M, B, K)
        model.train()
    votes = F.one_hot(logits.argmax(-1), K).sum(0).argmax(-1)
    # where DDN moved, the majority vote of the noise copies is (mostly) wrong; quantisation
    # may undo a borderline success, so require most, not all.
    assert (votes[moved] != y[moved]).float().mean() >= 0.5


def test_attacks_work_under_bfloat16_autocast():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, K))
    x, y, noise = batch()
    x, noise = x.float(), noise.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        path = smoothmix_search(model, x, y, noise, 2, 0.5)
        adv = pgd_attack(model, x, y, noise, 0.5, 2)
    assert path[-1].dtype == torch.float32 and torch.isfinite(path[-1]).all()
    assert (norms(adv - x) <= 0.5 + 1e-5).all()


class _FarIsWrong(nn.Module):
    """Class 0 within distance ``tau`` of ``centre``, class 1 beyond: an input is adversarial
    for label 0 exactly when its perturbation is longer than ``tau``."""

    def __init__(self, centre: torch.Tensor, tau: float) -> None:
        super().__init__()
        self.centre, self.tau = centre, tau

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        d = ((z - self.centre) ** 2).flatten(1).sum(1).add(1e-12).sqrt()
        return torch.stack([self.tau - d, d - self.tau], dim=1)


def test_smoothadv_ddn_starts_at_the_warmed_up_epsilon(monkeypatch):
    # docs/MATH.md §3.3: the reference training script sets the DDN init norm to epsilon_t every
    # epoch. Hand computation with x = 0.5 on 16 pixels (largest perturbation norm 2.0),
    # tau = 0.6, 4 steps: the norm starts at init_norm and grows by 1.05 per non-adversarial
    # step. Epoch 1 of epsilon 2.0 with a 10-epoch warm-up gives epsilon_t = 0.4: norms 0.42,
    # 0.441, 0.463 stay below tau, so no adversary is found and the attack returns x. The
    # old init norm of 1.0 reaches 1.05 > tau at the first step: an adversary, cut to 0.4.
    from smoothmix.methods import create_method
    from smoothmix.methods import smoothadv as smoothadv_module

    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.long)
    model = _FarIsWrong(x.clone(), tau=0.6)
    calls = []

    def spy(*args, **kwargs):
        out = ddn_attack(*args, **kwargs)
        calls.append((kwargs.get("init_norm"), args[4], out))
        return out

    monkeypatch.setattr(smoothadv_module, "ddn_attack", spy)
    method = create_method("smoothadv", 1e-9, 2, attack="ddn", epsilon=2.0, num_steps=4,
                           num_noise=1, warmup=10)
    method(model, x, y, epoch=1)
    init_norm, epsilon, x_adv = calls[-1]
    assert init_norm == pytest.approx(0.4) and epsilon == pytest.approx(0.4)
    assert torch.equal(x_adv, x)  # no adversary within the norms DDN visits from 0.4

    # Outside training the attack's own default (1.0) applies: an adversary at 1.05, cut
    # back to the 0.4-ball.
    noise = torch.zeros(1, 1, 1, 4, 4, dtype=torch.float64)
    got = ddn_attack(model, x, y, noise, 0.4, 4)
    assert (got - x).norm().item() == pytest.approx(0.4, abs=1e-6)

    # After the warm-up the attack starts at epsilon itself (capped at the largest norm).
    method(model, x, y, epoch=9)
    init_norm, epsilon, x_adv = calls[-1]
    assert init_norm == pytest.approx(2.0) and epsilon == pytest.approx(2.0)
    assert 0.6 < (x_adv - x).norm().item() <= 2.0 + 1e-9
