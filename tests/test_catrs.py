"""CAT-RS (docs/MATH.md §3.8): every term against a NumPy hand computation on a linear model with
fixed noise and fixed binomial draws; the per-example side data of the data layer; a few
real MNIST steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from smoothmix.data.datasets import TensorImageDataset
from smoothmix.data.loaders import (
    DeviceBatchLoader,
    DeviceDataLoader,
    attach_side_data,
    make_loader,
)
from smoothmix.errors import SmoothmixError
from smoothmix.methods import METHODS, create_method, method_options
from smoothmix.methods.catrs import catrs_noise_search

B, D, K, M, SIGMA = 6, 4, 3, 3, 0.5


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, K)).double().train()


def weights(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    lin = model[1]
    return lin.weight.detach().numpy(), lin.bias.detach().numpy()


def problem(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    noise = torch.randn(M, B, D, generator=g, dtype=torch.float64) * SIGMA
    # Soft targets with exact zeros (0 log 0 = 0) and a one-hot row.
    pi = torch.rand(B, K, generator=g, dtype=torch.float64)
    pi[0, 1] = 0.0
    pi[1] = torch.tensor([0.0, 0.0, 1.0])
    pi = pi / pi.sum(1, keepdim=True)
    return x, y, noise, pi


# ---- NumPy hand computation of docs/MATH.md §3.8 -------------------------------------------


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(t: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    safe = np.where(t > 0, t, 1.0)
    return np.where(t > 0, t * (np.log(safe) - log_q), 0.0).sum(-1)


def np_search(w, b, x, noise, pi, steps, eps):
    """Step 4, one row (copy i of image b) at a time, written from the formula."""
    m = noise.shape[0]
    out = noise.copy()
    for i in range(m):
        for j in range(x.shape[0]):
            d0 = noise[i, j]
            mu0, s0 = d0.mean(), np.sqrt((d0 ** 2).mean())
            d = d0.copy()
            for _ in range(steps):
                q = np.exp(np_log_softmax((x[j] + d) @ w.T + b))
                # d/dd of (1/M) KL(pi || softmax(W(x + d) + b)) = W^T (q - pi) / M
                g = w.T @ (q - pi[j]) / m
                d = d + (2 * eps / steps) * g / (np.linalg.norm(g) + 1e-8)
                shift = d - d0
                norm = np.linalg.norm(shift)
                if norm > eps:
                    shift = shift * eps / norm
                d = d0 + shift
                mu, s = d.mean(), np.sqrt((d ** 2).mean())
                d = mu0 + (d - mu) * s0 / s
            out[i, j] = d
    return out


def np_catrs(w, b, x, y, noise, pi, ks, lbd, steps, eps):
    """Returns (loss, L_low per image, L_high per image, mask, w per image)."""
    m = noise.shape[0]
    z0 = (x[None] + noise) @ w.T + b                      # (M, B, K)
    ce = -np.take_along_axis(np_log_softmax(z0), y[None, :, None], 2)[..., 0]   # (M, B)
    frac = (z0.argmax(-1) == y[None]).mean(0)
    k = np.maximum(ks, 1)                                 # forced minimum 1
    low = np.array([np.sort(ce[:, j])[: k[j]].sum() / m for j in range(x.shape[0])])  # / M
    delta = np_search(w, b, x, noise, pi, steps, eps)
    z1 = (x[None] + delta) @ w.T + b
    high = np_kl(pi[None], np_log_softmax(z1)).max(0)    # max over the copies
    mask = (k == m).astype(float)
    return (low + lbd * mask * high).mean(), low, high, mask, frac


class Fixed:
    """Fix the method's noise and binomial draws; record the binomial's arguments."""

    def __init__(self, method, noise, ks):
        self.calls = []
        method._noise = lambda x, m: noise.clone()

        def binomial(total, probs):
            self.calls.append((total, probs.clone()))
            return torch.as_tensor(ks, dtype=torch.long)

        method._binomial = binomial


# ---- the terms ----------------------------------------------------------------------------


@pytest.mark.parametrize("steps, eps", [(1, 0.7), (3, 0.4), (2, 5.0)])
def test_noise_search_matches_hand_computation(steps, eps):
    # T = 1: one step of 2 eps always leaves the ball (projection active); T = 3: the
    # first step stays inside; eps = 5: projection never active.
    model = linear_model()
    x, _, noise, pi = problem()
    delta = catrs_noise_search(model, x, noise, pi, steps, eps)
    w, b = weights(model)
    expected = np_search(w, b, x.numpy(), noise.numpy(), pi.numpy(), steps, eps)
    np.testing.assert_allclose(delta.numpy(), expected, rtol=1e-9, atol=1e-10)
    # Re-standardised: every row keeps its original entry mean exactly. (Its uncentred RMS
    # only approximately: mu0 + (d - mu) s0 / s has RMS^2 = mu0^2 + var(d) s0^2 / s^2,
    # which is s0^2 only when the means are 0 -- the reference's formula, kept as is.)
    np.testing.assert_allclose(delta.mean(-1), noise.mean(-1), atol=1e-12)
    assert not torch.equal(delta, noise)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_noise_search_normalises_each_row_on_its_own():
    # One image whose copies see gradients of very different size: with per-row
    # normalisation each row moves by the full step before projection. Checked on the
    # shift before re-standardisation by a search with eps large and T = 1 (no projection):
    # the re-standardisation is an affine map per row, so compare against the hand
    # computation with rows scaled 1000x apart.
    model = linear_model()
    x, _, noise, pi = problem()
    noise = noise.clone()
    noise[0] *= 1e-3
    delta = catrs_noise_search(model, x, noise, pi, 1, 10.0)
    w, b = weights(model)
    expected = np_search(w, b, x.numpy(), noise.numpy(), pi.numpy(), 1, 10.0)
    np.testing.assert_allclose(delta.numpy(), expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("ks", [[0, 1, 2, 3, 3, 0], [3, 3, 3, 3, 3, 3], [1, 1, 1, 1, 1, 1]])
@pytest.mark.parametrize("confidence_mask", [0, 1])
def test_loss_matches_hand_computation(ks, confidence_mask):
    model = linear_model()
    x, y, noise, pi = problem()
    method = create_method("catrs", SIGMA, K, num_noise=M, num_steps=2, epsilon=0.5, lbd=1.7,
                           confidence_mask=confidence_mask)
    fixed = Fixed(method, noise, ks)
    out = method(model, x, y, 0, soft_target=pi)
    w, b = weights(model)
    loss, low, high, mask, frac = np_catrs(w, b, x.numpy(), y.numpy(), noise.numpy(),
                                           pi.numpy(), np.array(ks), 1.7, 2, 0.5)
    assert out.loss.item() == pytest.approx(loss, rel=1e-10)
    assert out.metrics["loss_low"].item() == pytest.approx(low.mean(), rel=1e-10)
    assert out.metrics["loss_high"].item() == pytest.approx(high.mean(), rel=1e-10)
    assert out.metrics["mask_fraction"].item() == pytest.approx(mask.mean())
    # K ~ Binomial(M, w): w is the copies' accuracy, or pi[y] with the confidence mask.
    (total, probs), = fixed.calls
    assert total == M
    expected_w = pi.numpy()[np.arange(B), y.numpy()] if confidence_mask else frac
    np.testing.assert_allclose(probs.numpy(), expected_w, rtol=1e-12)


def test_low_term_divides_by_m_not_k():
    model = linear_model()
    x, y, noise, pi = problem()
    method = create_method("catrs", SIGMA, K, num_noise=M, num_steps=1, lbd=0.0)
    Fixed(method, noise, [1] * B)
    out = method(model, x, y, 0, soft_target=pi)
    w, b = weights(model)
    z0 = (x.numpy()[None] + noise.numpy()) @ w.T + b
    ce = -np.take_along_axis(np_log_softmax(z0), y.numpy()[None, :, None], 2)[..., 0]
    assert out.loss.item() == pytest.approx(ce.min(0).mean() / M, rel=1e-10)


def test_high_term_only_where_k_equals_m_and_no_gradient_into_targets():
    model = linear_model()
    x, y, noise, pi = problem()
    method = create_method("catrs", SIGMA, K, num_noise=M, num_steps=1)
    Fixed(method, noise, [M - 1] * B)  # no K = M: the mask is empty
    pi = pi.clone().requires_grad_(True)
    out = method(model, x, y, 0, soft_target=pi)
    assert out.metrics["mask_fraction"].item() == 0.0
    assert out.loss.item() == pytest.approx(out.metrics["loss_low"].item(), rel=1e-12)
    out.loss.backward()
    assert pi.grad is None
    assert all(p.grad is not None for p in model.parameters())


def test_real_binomial_draw_is_forced_to_at_least_one():
    method = create_method("catrs", SIGMA, K, num_noise=4)
    k = method._binomial(4, torch.zeros(1000, dtype=torch.float64))
    assert k.dtype == torch.long and k.eq(0).all()  # the raw draw; __call__ clamps it
    torch.manual_seed(0)
    k = method._binomial(4, torch.full((20000,), 0.5, dtype=torch.float64))
    assert abs(k.float().mean().item() - 2.0) < 0.05 and k.max().item() <= 4


def test_epsilon_doubles_from_the_given_epoch():
    method = create_method("catrs", SIGMA, K, epsilon=0.5, epsilon_double_epoch=80)
    assert [method.current_epsilon(e) for e in (0, 79, 80, 89)] == [0.5, 0.5, 1.0, 1.0]
    assert create_method("catrs", SIGMA, K).current_epsilon(10**6) == 1.0
    seen = []
    original = catrs_noise_search

    import smoothmix.methods.catrs as catrs_module

    def spy(model, x, noise, target, steps, eps):
        seen.append(eps)
        return original(model, x, noise, target, steps, eps)

    catrs_module.catrs_noise_search, saved = spy, catrs_module.catrs_noise_search
    try:
        x, y, _, pi = problem()
        for epoch in (0, 80):
            method(linear_model(), x, y, epoch, soft_target=pi)
    finally:
        catrs_module.catrs_noise_search = saved
    assert seen == [0.5, 1.0]


def test_published_defaults_and_bad_options():
    opts = method_options("catrs")
    assert {k: v.default for k, v in opts.items()} == {
        "num_noise": 4, "num_steps": 4, "epsilon": 1.0, "lbd": 1.0, "confidence_mask": 0,
        "epsilon_double_epoch": None}
    assert METHODS["catrs"].side_data == ("soft_target",)
    for bad, text in [({"num_noise": 0}, "num_noise must be at least 1"),
                      ({"epsilon": 0.0}, "epsilon must be positive"),
                      ({"lbd": -1.0}, "lbd must be non-negative"),
                      ({"confidence_mask": 2}, "confidence_mask must be one of 0, 1"),
                      ({"eta": 1.0}, "unknown option eta")]:
        with pytest.raises(SmoothmixError, match=text):
            create_method("catrs", SIGMA, K, **bad)


def test_missing_or_misshapen_targets_are_one_line_errors():
    x, y, _, pi = problem()
    method = create_method("catrs", SIGMA, K, num_noise=2, num_steps=1)
    with pytest.raises(SmoothmixError, match="needs the per-example soft targets"):
        method(linear_model(), x, y, 0)
    with pytest.raises(SmoothmixError, match="soft targets must be batch x 3"):
        method(linear_model(), x, y, 0, soft_target=pi[:, :2])


def test_train_mode_no_stray_gradients_and_bfloat16_autocast():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16, K)).train()
    x, y = torch.rand(B, 1, 4, 4), torch.randint(0, K, (B,))
    pi = torch.softmax(torch.randn(B, K), -1)
    method = create_method("catrs", SIGMA, K, num_noise=2, num_steps=2)
    out = method(model, x, y, 0, soft_target=pi)
    assert model.training and all(p.requires_grad and p.grad is None
                                  for p in model.parameters())
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(model, x, y, 0, soft_target=pi)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


@pytest.mark.slow
def test_a_few_real_mnist_steps_decrease_a_finite_loss():
    from smoothmix.data import load_dataset
    from smoothmix.models import create_model

    data = load_dataset("mnist", "train").subset(16)
    x = (data.images.float() / 255).contiguous(memory_format=torch.channels_last)
    y = data.labels
    pi = torch.full((16, 10), 0.02).scatter_(1, y[:, None], 0.82)  # a confident teacher
    torch.manual_seed(0)
    model = create_model("lenet").to(memory_format=torch.channels_last).train()
    method = create_method("catrs", 0.25, 10, num_noise=2, num_steps=1, lbd=1.0)
    # K = M for every image: both terms always on. (With real draws the objective itself
    # moves as the model improves: more images reach K = M and gain the L_high term.)
    method._binomial = lambda total, probs: torch.full(probs.shape, total, dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(6):
        out = method(model, x, y, 0, soft_target=pi)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses


# ---- per-example side data in the data layer ----------------------------------------------


def indexed_data(n: int = 37) -> TensorImageDataset:
    # Image i is filled with i, so a batch's images say which examples it holds.
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return TensorImageDataset(images, torch.arange(n) % 3, 3, "indexed")


def check_side_rows(batches, table):
    seen = []
    for x, y, side in batches:
        idx = (x[:, 0, 0, 0] * 255).round().long()
        assert torch.equal(side["soft_target"], table[idx])
        assert torch.equal(y, idx % 3)
        seen += idx.tolist()
    return seen


@pytest.mark.parametrize("world", [1, 3])
def test_device_batch_loader_hands_over_side_rows_by_index(world):
    data = indexed_data()
    table = torch.randn(len(data), 3)
    with_side = attach_side_data(data, soft_target=table)
    assert not hasattr(data, "side_data")  # the original dataset is left alone
    seen = []
    for rank in range(world):
        loader = DeviceBatchLoader(with_side, 5, "cpu", shuffle=True, seed=3, rank=rank,
                                   world_size=world, side=("soft_target",))
        loader.set_epoch(2)
        seen += check_side_rows(loader, table)
    assert set(seen) == set(range(len(data)))
    # Same order again after a "resume" (a new loader set to the same epoch).
    again = DeviceBatchLoader(with_side, 5, "cpu", shuffle=True, seed=3, rank=world - 1,
                              world_size=world, side=("soft_target",))
    again.set_epoch(2)
    assert [b[2]["soft_target"].tolist() for b in again] == \
        [b[2]["soft_target"].tolist() for b in loader]
    # Without side names the loader yields (x, y) as before.
    plain = make_loader(with_side, 5, "cpu", train=True)
    assert all(len(batch) == 2 for batch in plain)


def test_dataloader_path_carries_indices_for_side_rows():
    class Plain(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            return self.inner[i]

    data = Plain(indexed_data())
    table = torch.randn(len(data), 3)
    loader = DeviceDataLoader(attach_side_data(data, soft_target=table), 4, "cpu",
                              shuffle=True, seed=1, workers=0, side=("soft_target",))
    assert sorted(check_side_rows(loader, table)) == list(range(len(data)))


def test_missing_or_wrong_size_side_data_is_a_one_line_error():
    data = indexed_data()
    with pytest.raises(SmoothmixError, match="needs per-example 'soft_target' data"):
        make_loader(data, 4, "cpu", train=True, side=("soft_target",))
    with pytest.raises(SmoothmixError, match="has 5 rows for a dataset of 37 examples"):
        attach_side_data(data, soft_target=torch.zeros(5, 3))
