"""Sound Gaussian noise on the 8-bit grid (Voráček & Hein, ICLR 2023; docs/MATH.md §2.2).

In float32 the network sees fl(x + eps), whose rounding depends on x, so a base classifier
that reads low-order bits can break Cohen's certificate. This module replaces the sampler for
inputs on the grid x = a / levels (a an integer in [0, levels]):

- the noise is the integer j = round(levels * eps), eps ~ N(0, sigma^2), with law
  P(j) = Phi((j + 1/2) / (levels sigma)) - Phi((j - 1/2) / (levels sigma)) for |j| <= J,
  J the smallest integer with mass beyond +-J below 2^-60;
- each atom gets m_j = floor(2^60 P(j)) units of 2^-60, computed with mpmath; a uniform
  60-bit integer u per coordinate picks atom i = #{thresholds <= u} (the thresholds are the
  cumulative sums of the m_j), and u >= sum(m_j) is a *rejected* coordinate. Every atom has
  at most its true mass; the missing mass (tails included) is the rejection;
- the integer sum k = a + j is mapped to the network's input by one fixed table,
  table[k] = fl(k / levels), so the input depends on k only.

The votes are then those of the deterministic classifier h(z) = f(fl(round(levels z)) /
levels) under real Gaussian noise around x, except that a rejected sample (probability
below about 1e-11 per MNIST image) must count against the selected class. See docs/grid.md.

Cost: on CPU one int32 draw per coordinate (31 of the 60 bits) resolves the atom through a
2^20-entry table in all but ~0.03-0.2 % of coordinates (sigma 0.12-1); only those draw the
other 29 bits and take the exact binary search. On other devices the full 60 bits are drawn
and looked up with ``torch.searchsorted`` (no host synchronisation). Both give the same atom
for the same u.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from smoothmix.checks import check_count, check_sigma
from smoothmix.errors import SmoothmixError, require

__all__ = ["UNIT_BITS", "GridNoise"]

UNIT_BITS = 60  # probabilities are integers in units of 2^-60
_UNITS = 1 << UNIT_BITS
_HI_BITS = 31  # the bits one int32 random_() draw gives, [0, 2^31)
_LO_BITS = UNIT_BITS - _HI_BITS  # drawn only where the top bits do not settle the atom
_COARSE_BITS = 20  # the fast table is indexed by the top 20 bits of u
_GRID_TOLERANCE = 1e-3  # in units of 1/levels; float32 k/255 is within 8e-6 of the grid


@dataclass(frozen=True)
class _Table:
    """The integer law of one (sigma, levels): everything the sampler looks up (CPU)."""

    radius: int  # J
    masses: torch.Tensor  # int64 m_j for j = -J..J
    thresholds: torch.Tensor  # int64 cumulative sums of masses
    coarse: torch.Tensor  # int16/int32 per top-20-bit bucket: the atom index, or -1
    build_dps: int  # mpmath digits the masses were computed with


def _atom_units(sigma: float, levels: int, dps: int) -> tuple[int, list[int]] | None:
    """(J, [m_0, ..., m_J]) at ``dps`` digits, or None if some floor(2^60 P(j)) is too close
    to an integer to be decided at that precision. P(-j) = P(j), so only j >= 0 is built,
    from the upper tails Q_i = Phi(-(i + 1/2)/s): P(0) = 1 - 2 Q_0, P(j) = Q_{j-1} - Q_j."""
    from mpmath import mp

    with mp.workdps(dps):
        s = mp.mpf(levels) * mp.mpf(sigma)  # the float sigma's exact binary value
        scale = 1 / (s * mp.sqrt(2))
        half = mp.mpf(0.5)
        limit = mp.ldexp(1, -UNIT_BITS)
        guard = mp.ldexp(1, -UNIT_BITS)  # >> the error of a 2^60 P(j) at dps >= 40
        tails = [mp.erfc(half * scale) / 2]
        while 2 * tails[-1] >= limit:  # J = the first i with both tails below 2^-60
            tails.append(mp.erfc((len(tails) + half) * scale) / 2)
        radius = len(tails) - 1
        units = []
        for j in range(radius + 1):
            p = 1 - 2 * tails[0] if j == 0 else tails[j - 1] - tails[j]
            scaled = mp.ldexp(p, UNIT_BITS)
            whole = mp.floor(scaled)
            if scaled - whole < guard or whole + 1 - scaled < guard:
                return None
            units.append(int(whole))
    return radius, units


def _coarse_table(thresholds: np.ndarray, atoms: int) -> torch.Tensor:
    """For each of the 2^20 buckets of u (its top 20 bits): the atom index when it is the
    same for every u in the bucket and not the rejection, else -1 (resolve exactly)."""
    width = 1 << (UNIT_BITS - _COARSE_BITS)
    starts = np.arange(1 << _COARSE_BITS, dtype=np.int64) * width
    first = np.searchsorted(thresholds, starts, side="right")
    last = np.searchsorted(thresholds, starts + (width - 1), side="right")
    coarse = np.where((first == last) & (first < atoms), first, -1)
    dtype = np.int16 if atoms < 2**15 else np.int32
    return torch.from_numpy(coarse.astype(dtype))


@functools.lru_cache(maxsize=16)
def _build_table(sigma: float, levels: int) -> _Table:
    built = None
    for dps in (40, 80, 160):
        built = _atom_units(sigma, levels, dps)
        if built is not None:
            break
    if built is None:  # would need 2^60 P(j) within 2^-60 of an integer three times over
        raise RuntimeError(f"could not floor the grid masses for sigma={sigma}, levels={levels}")
    radius, half = built
    masses = np.array(half[:0:-1] + half, dtype=np.int64)  # j = -J..J
    thresholds = np.cumsum(masses)
    assert thresholds[-1] <= _UNITS  # each m_j <= 2^60 P(j) and sum P(j) < 1
    return _Table(
        radius=radius,
        masses=torch.from_numpy(masses),
        thresholds=torch.from_numpy(thresholds),
        coarse=_coarse_table(thresholds, len(masses)),
        build_dps=dps,
    )


class GridNoise:
    """Gaussian noise N(0, sigma^2) rounded to the grid k / ``levels``, sampled soundly.

    ``sigma`` is in pixel units (as in :class:`smoothmix.core.Smooth`), ``levels`` the
    number of steps of the grid (255: 8-bit images). The integer law is built once per
    (sigma, levels) in high precision and cached (about 0.1 s at sigma = 0.25, 0.3 s at 1.0).

    Attributes: ``radius`` J, ``atoms`` (int64 j = -J..J), ``masses`` (int64 m_j in units of
    2^-60), ``thresholds`` (their cumulative sums), ``total`` (sum of the m_j),
    ``rejected_units`` (2^60 - total: the per-coordinate rejection, in units of 2^-60).

    One object keeps scratch buffers between calls: do not share one between threads.
    """

    def __init__(self, sigma: float, levels: int = 255) -> None:
        sigma, levels = check_sigma(sigma), check_count("levels", levels)
        self._setup(sigma, levels, _build_table(sigma, levels))

    @classmethod
    def _from_masses(cls, masses: list[int], levels: int = 255) -> GridNoise:
        """A sampler over a given integer law (odd length, j = -J..J, sum <= 2^60): for
        tests of the lookup and of rejections; sigma is reported as nan."""
        array = np.array(masses, dtype=np.int64)
        assert len(array) % 2 == 1 and array.min() >= 0 and int(array.sum()) <= _UNITS
        thresholds = np.cumsum(array)
        table = _Table(len(array) // 2, torch.from_numpy(array), torch.from_numpy(thresholds),
                       _coarse_table(thresholds, len(array)), 0)
        noise = cls.__new__(cls)
        noise._setup(math.nan, levels, table)
        return noise

    def _setup(self, sigma: float, levels: int, table: _Table) -> None:
        self.sigma = sigma
        self.levels = levels
        self._table = table
        self.radius: int = table.radius
        self.masses: torch.Tensor = table.masses.clone()  # copies: the table is shared
        self.thresholds: torch.Tensor = table.thresholds.clone()
        self.total: int = int(table.thresholds[-1])
        self.rejected_units: int = _UNITS - self.total
        self._reject_index = 2 * self.radius + 1  # atom index meaning "rejected"
        self._fast_cpu = True  # the two-level CPU lookup (False: plain searchsorted)
        self._on_device: dict[tuple, torch.Tensor] = {}
        self._scratch: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"GridNoise(sigma={self.sigma}, levels={self.levels})"

    @property
    def atoms(self) -> torch.Tensor:
        """The noise values j = -J..J (int64), in grid steps of 1 / levels."""
        return torch.arange(-self.radius, self.radius + 1, dtype=torch.int64)

    # -- the grid ------------------------------------------------------------------------

    def to_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes a = x * levels (int64, same shape and device) of an image ``x``
        on the grid, or :class:`SmoothmixError` naming its worst pixel when it is not."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise SmoothmixError(f"grid noise needs a floating image in [0, 1], got {kind}")
        scaled = x.detach().double() * self.levels
        codes = scaled.round().clamp_(0, self.levels)
        off = (scaled - codes).abs_().nan_to_num_(nan=math.inf)
        if off.numel():
            worst = int(off.argmax())
            if float(off.view(-1)[worst]) > _GRID_TOLERANCE:
                value = float(x.detach().reshape(-1)[worst])
                grid = "8-bit grid (k/255)" if self.levels == 255 else f"grid k/{self.levels}"
                if math.isfinite(value):
                    gap = abs(value - float(codes.view(-1)[worst]) / self.levels)
                    what = f"pixel value {value:.5g} is {gap:.2g} off"
                else:
                    what = f"pixel value {value} is not a number in [0, 1]"
                raise SmoothmixError(
                    f"input is not on the {grid}: {what}; --grid needs images decoded from "
                    f"8-bit files without float transforms")
        return codes.long()

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest grid image fl(clamp(round(x * levels)) / levels) in x's dtype: round an
        attacked point (PGD output) onto the grid before certifying or predicting it."""
        codes = (x.detach().double() * self.levels).round_().clamp_(0, self.levels)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return self.decode(codes.long().to(x.device), dtype)

    def values(self, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """The canonical map from integer sums to network inputs: entry k + J is fl(k /
        levels) for k = -J..levels + J, plus one last entry 0 (where rejected coordinates
        land). float32 and float64 entries are correctly rounded divisions (what
        ``uint8.float().div(255)`` gives); other float dtypes round the float64 value."""
        device = torch.device(device)
        key = ("values", dtype, device)
        table = self._on_device.get(key)
        if table is None:
            require(dtype.is_floating_point, f"grid values need a float dtype, got {dtype}")
            work = dtype if dtype in (torch.float32, torch.float64) else torch.float64
            k = torch.arange(-self.radius, self.levels + self.radius + 1, dtype=work)
            table = torch.cat([k / self.levels, k.new_zeros(1)]).to(dtype)
            table = self._on_device[key] = table.to(device)
        return table

    def decode(self, k: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """fl(k / levels) for integer sums ``k`` in [-J, levels + J] through the canonical
        table (the map :meth:`sample` applies)."""
        table = self.values(dtype, k.device)
        return table.index_select(0, k.reshape(-1).long() + self.radius).view(k.shape)

    # -- sampling ------------------------------------------------------------------------

    def sample(
        self,
        codes: torch.Tensor,
        count: int,
        generator: torch.Generator | None = None,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` noisy copies of the grid image with integer ``codes`` (from
        :meth:`to_codes`): (images, rejected).

        images: count x codes.shape on codes' device, each pixel fl((a + j) / levels) through
        the canonical table (dtype of ``out``, float32 by default; ``out``, if given, must
        be a contiguous tensor of exactly that shape and is filled and returned).
        rejected: bool vector of length count, True for samples with any rejected
        coordinate; their images hold finite values that must not be voted with (count
        them against the selected class). Noise comes from ``generator`` (on codes'
        device; None: torch's default generator of that device). Codes are range-checked on
        CPU only (elsewhere the check would synchronise): pass what to_codes returned."""
        out = self._check_sample(codes, count, generator, out)
        device = codes.device
        pixels = codes.numel()
        n = count * pixels
        codes = codes.reshape(1, pixels).long()
        rejected = torch.zeros(count, dtype=torch.bool, device=device)
        if device.type == "cpu" and self._fast_cpu:
            hi = self._buffer("hi", n, torch.int32, device)
            hi.random_(generator=generator)  # uniform on [0, 2^31): the top 31 bits of u

            def lo_bits(positions: torch.Tensor) -> torch.Tensor:
                return torch.randint(0, 1 << _LO_BITS, (len(positions),), generator=generator)

            index, rows = self._resolve(hi, lo_bits)
            rejected[torch.div(rows, pixels, rounding_mode="floor")] = True
        else:
            u = torch.randint(0, _UNITS, (n,), generator=generator, device=device,
                              dtype=torch.int64)
            index = self.lookup(u)
            torch.any(index.view(count, pixels) == self._reject_index, dim=1, out=rejected)
        self._render(index.view(count, pixels), codes, out)
        return out, rejected

    def _check_sample(self, codes: torch.Tensor, count: int,
                      generator: torch.Generator | None, out: torch.Tensor | None
                      ) -> torch.Tensor:
        """The arguments of :meth:`sample` checked, and the output tensor to fill."""
        require(isinstance(count, int) and count >= 1, f"count must be >= 1, got {count!r}")
        require(
            isinstance(codes, torch.Tensor) and not codes.is_floating_point()
            and not codes.is_complex() and codes.dtype != torch.bool,
            "sample() needs integer codes from GridNoise.to_codes",
        )
        device = codes.device
        if generator is not None and generator.device.type != device.type:
            raise SmoothmixError(f"generator is on {generator.device}, the codes on {device}")
        if device.type == "cpu" and codes.numel():  # elsewhere: a host sync per call
            low, high = (int(v) for v in torch.aminmax(codes))
            require(0 <= low and high <= self.levels,
                    f"codes must lie in [0, {self.levels}], got [{low}, {high}]")
        shape = (count, *codes.shape)
        if out is None:
            return torch.empty(shape, dtype=torch.float32, device=device)
        require(
            tuple(out.shape) == shape and out.device == device and out.is_contiguous()
            and out.is_floating_point(),
            f"out must be a contiguous float tensor of shape {shape} on {device}, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}",
        )
        return out

    def _render(self, index: torch.Tensor, codes: torch.Tensor, out: torch.Tensor) -> None:
        """The one integer-to-float map: out[s, p] = values[codes[p] + index[s, p]], i.e.
        fl((a + j) / levels) with j = index - J (``index``: count x pixels atom indices,
        ``codes``: 1 x pixels int64; ``out``: contiguous, count x pixels elements)."""
        flat = self._buffer("flat", index.numel(), torch.int64, index.device).view(index.shape)
        torch.add(index, codes, out=flat)  # (a + j) + J: the position of a + j in the table
        torch.index_select(self.values(out.dtype, out.device), 0, flat.view(-1),
                           out=out.view(-1))

    def lookup(self, u: torch.Tensor) -> torch.Tensor:
        """The exact atom index for 60-bit uniforms ``u`` (int64 in [0, 2^60)): #{thresholds
        <= u}, i.e. ``searchsorted(thresholds, u, right=True)``; j = index - J, and index
        2J + 1 (u >= total) is a rejection. The reference the fast CPU path must equal."""
        return torch.searchsorted(self._device_thresholds(u.device), u, right=True)

    def _resolve(self, hi: torch.Tensor, lo_bits: Callable[[torch.Tensor], torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fast CPU lookup. ``hi``: int32 top 31 bits of u; ``lo_bits(positions)``: the low
        29 bits (int64) of u at those positions, asked only where the top 20 bits leave the
        atom open. Returns (atom index per coordinate, in the coarse table's integer dtype;
        the positions whose coordinate is rejected). Equals :meth:`lookup` of
        (hi << 29) | lo element for element."""
        n = len(hi)
        coarse = self._table.coarse
        bucket = self._buffer("bucket", n, torch.int32, hi.device)
        torch.bitwise_right_shift(hi, _HI_BITS - _COARSE_BITS, out=bucket)
        lanes = 8 // coarse.element_size()  # entries per 64-bit word
        padded = self._buffer("index", -(-n // lanes) * lanes, coarse.dtype, hi.device)
        padded[n:] = 0
        index = padded[:n]
        torch.index_select(coarse, 0, bucket, out=index)
        # Open entries are the negative ones: test the sign bits of whole 64-bit words, a
        # quarter of the work of a comparison and a nonzero over every entry.
        sign_bits = sum(1 << (8 * coarse.element_size() * (k + 1) - 1) for k in range(lanes))
        words = padded.view(torch.int64).bitwise_and(sign_bits - (1 << 64))
        candidates = words.nonzero().view(-1)
        if len(candidates) == 0:
            return index, candidates
        entries = padded.view(-1, lanes).index_select(0, candidates)
        word, lane = (entries < 0).nonzero().unbind(1)
        positions = candidates.index_select(0, word).mul_(lanes).add_(lane)
        u = hi.index_select(0, positions).long().bitwise_left_shift_(_LO_BITS)
        u.bitwise_or_(lo_bits(positions))
        exact = self.lookup(u)
        index.index_copy_(0, positions, exact.to(index.dtype))
        return index, positions[exact == self._reject_index]

    def _device_thresholds(self, device: torch.device) -> torch.Tensor:
        key = ("thresholds", device)
        if key not in self._on_device:
            self._on_device[key] = self._table.thresholds.to(device)
        return self._on_device[key]

    def _buffer(self, name: str, n: int, dtype: torch.dtype, device: torch.device
                ) -> torch.Tensor:
        """A reusable scratch vector of n elements (CPU allocations of this size would
        otherwise fault fresh pages on every block)."""
        buf = self._scratch.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = self._scratch[name] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n]
