"""The sound 8-bit-grid sampler (docs/MATH.md §2.2, Voráček & Hein 2023): exact integer masses,
a network input that depends only on the integer sum, an exact fast lookup, and Cohen's
certificate holding on the grid where float32 noise lets a bit-reading classifier break it.

True masses are recomputed here independently of smoothmix.grid (mpmath's ncdf at the
half-integer boundaries at 50 digits, where the module differences erfc tails at 40).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mpmath import mp
from scipy.stats import chi2, norm

from smoothmix.errors import SmoothmixError
from smoothmix.grid import GridNoise

UNITS = 1 << 60


def true_units(sigma: float, levels: int, radius: int) -> tuple[list, object]:
    """2^60 P(j) for j = -radius..radius as mpf, and the tail mass beyond +-radius (both
    sides) in units of 2^-60."""
    with mp.workdps(50):
        s = mp.mpf(levels) * mp.mpf(sigma)
        cdf = [mp.ncdf((mp.mpf(j) + mp.mpf(0.5)) / s) for j in range(-radius - 1, radius + 1)]
        units = [mp.ldexp(cdf[i + 1] - cdf[i], 60) for i in range(2 * radius + 1)]
        tail = mp.ldexp(cdf[0] + (1 - cdf[-1]), 60)
    return units, tail


def mass_violations(thresholds: list[int], units: list) -> list[tuple[int, str]]:
    """Atoms whose mass (threshold difference) is above the true mass, or a unit or more
    below it: (atom index, which)."""
    bad = []
    previous = 0
    for i, (t, x) in enumerate(zip(thresholds, units, strict=True)):
        m = t - previous
        previous = t
        if m > x:
            bad.append((i, "above"))
        elif m + 1 <= x:  # integer against mpf: compared exactly (x - 1 would round)
            bad.append((i, "below"))
    return bad


@pytest.fixture(scope="module")
def noise() -> GridNoise:
    return GridNoise(0.25)


@pytest.fixture(scope="module")
def exact(noise):
    return true_units(noise.sigma, noise.levels, noise.radius)


# -- the integer law -----------------------------------------------------------------------


@pytest.mark.parametrize("sigma, levels", [(0.25, 255), (0.12, 255), (0.5, 15)])
def test_each_atom_is_floored_in_high_precision(sigma, levels, noise, exact):
    grid = noise if (sigma, levels) == (0.25, 255) else GridNoise(sigma, levels)
    units, tail = exact if grid is noise else true_units(sigma, levels, grid.radius)
    J = grid.radius
    assert grid.atoms.tolist() == list(range(-J, J + 1))
    assert len(grid.thresholds) == 2 * J + 1
    assert mass_violations(grid.thresholds.tolist(), units) == []
    assert grid.masses.tolist() == np.diff(grid.thresholds.numpy(), prepend=0).tolist()
    # J is the smallest radius with the Gaussian mass beyond it below 2^-60.
    assert tail < 1
    with mp.workdps(50):
        s = mp.mpf(levels) * mp.mpf(sigma)
        assert mp.ldexp(2 * mp.ncdf(-(J - mp.mpf(0.5)) / s), 60) >= 1
    # Total mass is exactly one: atoms plus rejection; the rejection covers the tails and
    # is at most one unit per atom more.
    assert grid.total + grid.rejected_units == UNITS
    assert tail <= grid.rejected_units and grid.rejected_units - (2 * J + 1) < tail
    assert grid.total == int(grid.thresholds[-1]) <= UNITS < 2**63


def test_mass_check_catches_flooring_the_cumulative_cdf(noise, exact):
    """Flooring Phi at each boundary instead of each atom lets atoms round *up*: the same
    check must see it."""
    units, _ = exact
    J = noise.radius
    with mp.workdps(50):
        s = mp.mpf(noise.levels) * mp.mpf(noise.sigma)
        floors = [int(mp.floor(mp.ldexp(mp.ncdf((mp.mpf(j) + mp.mpf(0.5)) / s), 60)))
                  for j in range(-J - 1, J + 1)]
    wrong = [f - floors[0] for f in floors[1:]]
    violations = mass_violations(wrong, units)
    assert violations and {kind for _, kind in violations} == {"above"}
    assert len(violations) > J // 4  # about every other atom overshoots by a fraction
    assert wrong[-1] > noise.total  # and the table claims more mass than the true law allows


def test_table_is_cached_and_arguments_are_checked():
    assert GridNoise(0.25)._table is GridNoise(0.25)._table
    assert GridNoise(0.25, 15)._table is not GridNoise(0.25)._table
    for sigma in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(SmoothmixError, match="sigma"):
            GridNoise(sigma)
    with pytest.raises(SmoothmixError, match="levels"):
        GridNoise(0.25, 0)


# -- the grid and the canonical map --------------------------------------------------------


def test_to_codes_accepts_8bit_images_and_names_the_worst_pixel(noise):
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    x = pixels.float().div(255)  # what the in-memory datasets and ToTensor produce
    assert torch.equal(noise.to_codes(x), pixels.long())
    assert torch.equal(noise.to_codes(x.double()), pixels.long())
    assert torch.equal(noise.snap(x + 1e-3 * torch.rand(x.shape) - 5e-4), x)
    assert torch.equal(noise.snap(torch.tensor([-0.2, 1.7])), torch.tensor([0.0, 1.0]))
    bad = x.clone()
    bad[0, 3, 4] = 128 / 255 + 1.2e-3
    bad[0, 5, 5] = 7 / 255 + 1e-5  # off too, but less
    with pytest.raises(SmoothmixError) as info:
        noise.to_codes(bad)
    message = str(info.value)
    assert "\n" not in message and "0.50316" in message and "0.0012 off" in message
    assert message.startswith("input is not on the 8-bit grid (k/255)")
    for value in (-0.1, 1.5, math.nan, math.inf):
        with pytest.raises(SmoothmixError, match="not on the 8-bit grid"):
            noise.to_codes(torch.tensor([0.0, value]))
    with pytest.raises(SmoothmixError, match="floating image"):
        noise.to_codes(pixels)
    normalised = (x - 0.1307) / 0.3081  # a float transform before the model: refused
    with pytest.raises(SmoothmixError, match="not on the"):
        noise.to_codes(normalised)


def test_network_input_depends_only_on_the_integer_sum(noise):
    """Exhaustive over codes a = 0..255 and atoms j = -J..J: the rendered float is
    fl((a + j) / 255) (float32 division, computed here by numpy), equal sums give bitwise
    equal floats, and distinct sums distinct floats (so the input determines a + j)."""
    J = noise.radius
    a = torch.arange(256)
    index = torch.arange(2 * J + 1).view(-1, 1).expand(-1, 256)  # row j + J, column a
    out = torch.empty(2 * J + 1, 256)
    noise._render(index.to(torch.int16), a.view(1, -1), out)
    k = (index - J) + a.view(1, -1)
    expected = np.arange(-J, 256 + J, dtype=np.float32) / np.float32(255)
    assert np.array_equal(out.numpy().view(np.int32),
                          expected[(k + J).numpy()].view(np.int32))
    bits = out.view(torch.int32).reshape(-1).long()
    low = torch.full((256 + 2 * J,), 2**40).scatter_reduce(0, (k + J).reshape(-1), bits, "amin")
    high = torch.full((256 + 2 * J,), -(2**40)).scatter_reduce(0, (k + J).reshape(-1), bits,
                                                               "amax")
    assert torch.equal(low, high)  # one float per integer sum
    assert len(torch.unique(low)) == 256 + 2 * J  # and one integer sum per float
    values = noise.values()
    assert torch.equal(values[J:J + 256], torch.arange(256, dtype=torch.uint8).float() / 255)
    assert values[-1] == 0 and torch.isfinite(values).all()


def test_samples_are_grid_values_of_the_integer_sums(noise):
    x = torch.randint(0, 256, (3, 8, 8), generator=torch.Generator().manual_seed(3)) / 255.0
    codes = noise.to_codes(x)
    images, rejected = noise.sample(codes, 200, torch.Generator().manual_seed(4))
    assert images.shape == (200, 3, 8, 8) and images.dtype == torch.float32
    assert rejected.shape == (200,) and not rejected.any()
    k = (images.double() * 255).round().long()
    assert (k - codes).abs().max() <= noise.radius
    assert torch.equal(images.view(torch.int32), noise.decode(k).view(torch.int32))


# -- the lookup ----------------------------------------------------------------------------


def _draws(noise: GridNoise, count: int, seed: int) -> torch.Tensor:
    """Random 60-bit draws plus every threshold and bucket edge near one, +-1."""
    u = torch.randint(0, UNITS, (count,), generator=torch.Generator().manual_seed(seed))
    t = noise.thresholds
    edges = (t >> 40) << 40
    special = torch.cat([t - 1, t, t + 1, edges - 1, edges, edges + (1 << 40) - 1,
                         torch.tensor([0, 1, UNITS - 2, UNITS - 1, noise.total - 1])])
    return torch.cat([u, special.clamp(0, UNITS - 1)])


@pytest.mark.parametrize("case", ["gaussian", "wide"])
def test_fast_lookup_equals_searchsorted(noise, case):
    if case == "wide":  # > 2^15 atoms: the int32 coarse table; and half the mass rejected
        noise = GridNoise._from_masses([1 << 43] * 65_537)
    u = _draws(noise, 200_000, 5)
    hi, lo = (u >> 29).to(torch.int32), u & ((1 << 29) - 1)
    asked = []

    def lo_bits(positions):
        asked.append(int((positions < 200_000).sum()))  # among the random draws
        return lo.index_select(0, positions)

    index, rejected_at = noise._resolve(hi, lo_bits)
    reference = noise.lookup(u)
    assert torch.equal(index.long(), reference)
    assert torch.equal(rejected_at, (reference == 2 * noise.radius + 1).nonzero().view(-1))
    if case == "gaussian":
        assert asked[0] < 0.002 * 200_000  # the low bits are rarely needed
        first = int((noise.masses > 0).nonzero()[0])  # the outermost atoms hold no unit
        assert reference.min() == first and reference.max() == 2 * noise.radius + 1
    else:
        assert noise._table.coarse.dtype == torch.int32


def test_rejected_samples_are_flagged():
    """Masses 1/8, 1/4, 1/8: half of each coordinate is rejected, so a 2-pixel sample is
    rejected with probability 3/4; accepted ones follow 1:2:1 around the code."""
    grid = GridNoise._from_masses([1 << 57, 1 << 58, 1 << 57])
    codes = torch.tensor([[10, 200]])
    for fast in (True, False):
        grid._fast_cpu = fast
        images, rejected = grid.sample(codes, 4000, torch.Generator().manual_seed(6))
        assert torch.isfinite(images).all()
        assert abs(rejected.float().mean().item() - 0.75) < 0.03
        k = (images[~rejected].double() * 255).round().long() - codes
        counts = torch.stack([(k == j).sum() for j in (-1, 0, 1)]).float() / k.numel()
        assert torch.allclose(counts, torch.tensor([0.25, 0.5, 0.25]), atol=0.04)


@pytest.mark.parametrize("fast", [True, False])
def test_frequencies_near_zero_match_the_masses(noise, fast):
    noise._fast_cpu = fast
    try:
        images, rejected = noise.sample(torch.zeros(1, 28, 28, dtype=torch.long), 400,
                                        torch.Generator().manual_seed(7))
    finally:
        noise._fast_cpu = True
    assert not rejected.any()
    j = (images.double() * 255).round().long().view(-1)
    near = torch.arange(-20, 21)
    observed = (j.view(-1, 1) == near).sum(0).double()
    observed = torch.cat([observed, (j.numel() - observed.sum()).view(1)])
    p = noise.masses[near + noise.radius].double() / UNITS
    expected = torch.cat([p, (1 - p.sum()).view(1)]) * j.numel()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert chi2.sf(statistic, len(near)) > 1e-4


def test_sample_api(noise):
    codes = torch.zeros(2, 3, dtype=torch.long)
    out = torch.empty(5, 2, 3)
    images, _ = noise.sample(codes, 5, torch.Generator().manual_seed(8), out=out)
    assert images is out
    again, _ = noise.sample(codes, 5, torch.Generator().manual_seed(8))
    assert torch.equal(images, again)  # seeded: reproducible
    wide, _ = noise.sample(codes, 5, torch.Generator().manual_seed(8),
                           out=torch.empty(5, 2, 3, dtype=torch.float64))
    assert wide.dtype == torch.float64
    assert torch.equal((wide * 255).round(), (images.double() * 255).round())
    with pytest.raises(SmoothmixError, match="out must be"):
        noise.sample(codes, 5, None, out=torch.empty(4, 2, 3))
    with pytest.raises(SmoothmixError, match="integer codes"):
        noise.sample(codes.float(), 5, None)
    with pytest.raises(SmoothmixError, match=r"codes must lie in \[0, 255\]"):
        noise.sample(codes + 256, 5, None)
    with pytest.raises(SmoothmixError, match="count"):
        noise.sample(codes, 0, None)


# -- Cohen's certificate on the grid -------------------------------------------------------


def _phi_inv(p_lower: np.ndarray, q_upper: np.ndarray) -> np.ndarray:
    """Phi^-1(p_lower) accurately at both ends (q_upper = 1 - p_lower, given separately)."""
    return np.where(p_lower < 0.5, norm.ppf(p_lower), norm.isf(q_upper))


def _check_cohen(p_lower, q_upper, p_true, q_true, distance, s) -> float:
    """Assert p_true[a'] >= Phi(Phi^-1(p_lower[a]) - ||a - a'|| / s) for all pairs (rows a,
    columns a'), each side in the form that float64 resolves (p near 0, q near 1); return
    the tightest ratio true / bound seen."""
    y = _phi_inv(p_lower, q_upper)[:, None] - distance / s
    upper = y >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        q_ratio = norm.sf(y) / q_true[None, :]  # q_true <= Phi(-y)  <=>  ratio >= 1
        p_ratio = p_true[None, :] / norm.cdf(y)  # p_true >= Phi(y)  <=>  ratio >= 1
    ratio = np.where(upper, q_ratio, p_ratio)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)  # 0 / 0: bound 0, nothing to check
    assert ratio.min() >= 1 - 1e-9
    return float(ratio.min())


def test_cohen_holds_on_the_grid_in_one_dimension(noise, exact):
    """One pixel, grid points a = 0..255, a base classifier h given by a table over the
    integer sum k = a + j in [-J, 255 + J]. With m_j the sampler's masses and P(j) the true
    masses (mpmath), for each class c:

        p_lower_c(a) = sum_j m_j [h(a + j) = c] / 2^60   (what the sampler estimates: it
                       never gives c more than this, rejected mass counted against c),
        p_c(a')      = sum_{|j|<=J} P(j) [h(a' + j) = c]  (true smoothed probability, tails
                       beyond J left out: a lower bound on it),

    and Cohen's theorem for the deterministic h(z) = table[round(255 z)] under N(0, sigma^2)
    says, for all grid points a, a' (in pixel units |a - a'| / 255):

        p_c(a') >= Phi( Phi^-1(p_lower_c(a)) - |a - a'| / (255 sigma) ),

    checked on every pair up to a relative 1e-9 of float64 rounding. For a threshold
    classifier (a half-space) the inequality is attained, so the check is sharp."""
    J, s = noise.radius, noise.levels * noise.sigma
    m = noise.masses.numpy()
    P = np.array([float(x) for x in exact[0]]) / UNITS
    a = np.arange(256)
    window = a[:, None] + np.arange(2 * J + 1)[None, :]  # table position of a + j
    distance = np.abs(a[:, None] - a[None, :]).astype(float)
    rng = np.random.default_rng(9)
    tables = {
        "half-space": (np.arange(-J, 256 + J) >= 128).astype(int),
        "random": rng.integers(0, 3, 256 + 2 * J),
        "parity": np.arange(-J, 256 + J) % 2,
        "blocks": np.repeat(rng.integers(0, 3, (256 + 2 * J) // 16 + 1), 16)[: 256 + 2 * J],
    }
    for name, h in tables.items():
        tight = math.inf
        for c in np.unique(h):
            hit = h[window] == c
            units = hit.astype(np.int64) @ m  # exact: every partial sum is <= 2^60
            p_lower, q_upper = units / UNITS, (UNITS - units) / UNITS
            p_true, q_true = hit @ P, (~hit) @ P + float(exact[1]) / UNITS
            assert (p_lower <= p_true * (1 + 1e-12)).all()  # the sampler is conservative
            tight = min(tight, _check_cohen(p_lower, q_upper, p_true, q_true, distance, s))
        if name == "half-space":
            assert tight < 1 + 1e-6


def test_cohen_holds_on_the_grid_in_two_dimensions():
    """The same inequality for two pixels on the grid k/15 (sigma = 0.5), random lookup
    classifiers over the integer sums (k1, k2), all pairs of the 16 x 16 grid points, with
    the Euclidean distance ||a - a'||_2 / 15. The sampler's mass of a pair is m_j1 m_j2 /
    2^120; a sample is rejected if either coordinate is."""
    grid = GridNoise(0.5, 15)
    J, L = grid.radius, grid.levels
    units, tail = true_units(grid.sigma, L, J)
    size = L + 1 + 2 * J
    band = np.zeros((L + 1, size))  # band[a, a + j + J] = mass of j
    true_band = np.zeros((L + 1, size))
    for a in range(L + 1):
        band[a, a:a + 2 * J + 1] = grid.masses.numpy() / UNITS
        true_band[a, a:a + 2 * J + 1] = [float(x) / UNITS for x in units]
    accepted = (grid.total / UNITS) ** 2
    points = np.array([(a1, a2) for a1 in range(L + 1) for a2 in range(L + 1)], dtype=float)
    distance = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
    rng = np.random.default_rng(10)
    for _ in range(3):
        h = rng.integers(0, 3, (size, size))
        lower = [(band @ (h == c) @ band.T).reshape(-1) for c in range(3)]
        true = [(true_band @ (h == c) @ true_band.T).reshape(-1) for c in range(3)]
        for c in range(3):
            others = sum(lower[d] for d in range(3) if d != c)
            q_upper = others + (1 - accepted)  # rejected mass is counted against c
            q_true = sum(true[d] for d in range(3) if d != c) + 2 * float(tail) / UNITS
            assert (lower[c] <= true[c] * (1 + 1e-12)).all()
            _check_cohen(lower[c], q_upper, true[c], q_true, distance, L * grid.sigma)


# -- the attack this mode exists for -------------------------------------------------------


def _bit_reader(z: torch.Tensor) -> torch.Tensor:
    """Class 1 when most (more than half, at least one) coordinates with |z| < 2^-9 are exact
    multiples of 2^-30, the float32 spacing just above 3/255; else class 0."""
    flat = z.reshape(len(z), -1)
    near = flat.abs() < 2**-9
    exact = near & (torch.frac(flat.double() * 2**30) == 0)
    return (2 * exact.sum(1) > near.sum(1)).long()


def test_bit_reading_classifier_fools_float_noise_but_not_the_grid(noise):
    """docs/MATH.md §2.2's counterexample. Float32 noise: around x0 = 0 the near-zero coordinates
    are fl(sigma n), finely spaced, so f says 0; around x1 = 3/255 they are fl(x1 + e) with
    x1 and e both multiples of 2^-30, so f says 1 - at distance 0.329 from a point that
    CERTIFY would certify as class 0 with R ~ 0.6.

    On the grid the only input with |z| < 2^-9 is k = 0 (1/255 > 2^-9), which is 0.0, a
    multiple of 2^-30, so f(table[k]) = [some coordinate has k = 0] exactly: a
    deterministic h of the integer sums. Votes at x0 and x1 then follow this h's smoothed
    law: class 1 with probability 1 - (1 - P(j = -a))^784, 0.993 at a = 0 and 0.992 at a = 3,
    the same class, consistent with Cohen's bound; no contradiction."""
    sigma, count = noise.sigma, 400
    g = torch.Generator().manual_seed(11)
    x0, x1 = torch.zeros(1, 28, 28), torch.full((1, 28, 28), 3 / 255)
    assert abs(float((x1 - x0).norm()) - 0.329) < 1e-3
    float_votes = []
    for x in (x0, x1):
        z = torch.empty(count, 1, 28, 28).normal_(0, sigma, generator=g).add_(x)
        float_votes.append(_bit_reader(z).float().mean().item())
    assert float_votes[0] < 0.05 and float_votes[1] > 0.95  # the naive contradiction
    p_one = {}
    for a, x in ((0, x0), (3, x1)):
        images, rejected = noise.sample(noise.to_codes(x), count, g)
        assert not rejected.any()
        k = (images.double() * 255).round().long().view(count, -1)
        votes = _bit_reader(images)
        assert torch.equal(votes, (k == 0).any(1).long())  # f is a function of the sums
        p = 1 - (1 - noise.masses[noise.radius - a].item() / UNITS) ** 784
        p_one[a] = p
        spread = 4.5 * math.sqrt(p * (1 - p) / count)
        assert abs(votes.float().mean().item() - p) < max(spread, 2 / count)
    assert 0.99 < p_one[3] < p_one[0] < 0.995
    # Cohen from x0 (p = 0.993, R = 0.61) covers x1 at 0.329 and predicts what x1 does.
    assert p_one[3] >= norm.cdf(norm.ppf(p_one[0]) - 0.329 / sigma)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sampler_matches_the_law(noise):
    codes = torch.zeros(1, 28, 28, dtype=torch.long, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(12)
    images, rejected = noise.sample(codes, 400, g)
    assert images.device.type == "cuda" and not rejected.any()
    k = (images.double() * 255).round().long()
    assert torch.equal(images.view(torch.int32), noise.decode(k).view(torch.int32))
    j = k.view(-1).cpu()
    near = torch.arange(-20, 21)
    observed = (j.view(-1, 1) == near).sum(0).double()
    observed = torch.cat([observed, (j.numel() - observed.sum()).view(1)])
    p = noise.masses[near + noise.radius].double() / UNITS
    expected = torch.cat([p, (1 - p.sum()).view(1)]) * j.numel()
    assert chi2.sf(float(((observed - expected) ** 2 / expected).sum()), len(near)) > 1e-4
    u = _draws(noise, 100_000, 13).cuda()
    assert torch.equal(noise.lookup(u).cpu(), noise.lookup(u.cpu()))
