"""The statistical core: CERTIFY and PREDICT of Cohen, Rosenfeld & Kolter (2019).

The API matches Cohen's ``core.Smooth`` so that existing code ports by changing one import.
Soundness rests on rules kept here and nowhere else: the class is selected on ``n0``
samples and bounded on ``n`` *fresh* ones; the bound is the exact one-sided Clopper-Pearson
interval (:func:`clopper_pearson_lower` / ``_upper``, the only implementation in the
package); PREDICT abstains unless a two-sided binomial test separates the top two classes at
level ``alpha``; and a draw the noise rejects votes for no class, which counts against the
selected class and for the runner-up.

Around it, each idea has its own module: the noise (:mod:`smoothmix.noise`), the vote
counter and early abstain (:mod:`smoothmix.votes`), how the classifier is run
(:mod:`smoothmix.execution`), and what a level alpha allows, with the argument checks
(:mod:`smoothmix.statistics`). Their names stay importable from here.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from smoothmix.checks import check_alpha, check_count, check_num_classes, check_sigma
from smoothmix.device import module_device
from smoothmix.errors import require
from smoothmix.execution import Execution, check_alone, check_request, resolve_execution
from smoothmix.noise import Noise, make_noise
from smoothmix.statistics import (
    certifying_votes,
    check_bound,
    check_certify_args,
    check_predict_args,
)
from smoothmix.votes import Votes, check_image, count_votes, show_samples

__all__ = ["ABSTAIN", "Certificate", "Smooth", "Votes", "certified_radius", "certifying_votes",
           "check_bound", "check_certify_args", "check_predict_args", "clopper_pearson_lower",
           "clopper_pearson_upper", "module_device", "radius_from_counts"]
# Names that lived here before 0.5, and their modules now: still importable from here.
_MOVED = {"BOUNDS": "statistics", "smallest_certifying_n": "statistics",
          "smallest_predicting_n": "statistics", "FUTILITY_CHECKS": "votes",
          "base_votes": "votes", "futility_checks": "votes", "voting": "votes",
          "prepare_model": "execution", "GridNoise": "grid"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(f"smoothmix.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ABSTAIN = -1


def clopper_pearson_lower(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial
    proportion after ``n_a`` successes in ``n`` trials (0 when ``n_a == 0``)."""
    require(n >= 1 and 0 <= n_a <= n, f"need 0 <= n_a <= n and n >= 1, got n_a={n_a}, n={n}")
    check_alpha(alpha)
    if n_a == 0:
        return 0.0
    return float(beta.ppf(alpha, n_a, n - n_a + 1))


def clopper_pearson_upper(n_b: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound on a binomial
    proportion after ``n_b`` successes in ``n`` trials (1 when ``n_b == n``)."""
    require(n >= 1 and 0 <= n_b <= n, f"need 0 <= n_b <= n and n >= 1, got n_b={n_b}, n={n}")
    check_alpha(alpha)
    if n_b == n:
        return 1.0
    return float(beta.ppf(1.0 - alpha, n_b + 1, n - n_b))


def radius_from_counts(n_a: int, n_b: int, n: int, alpha: float, sigma: float,
                       bound: str = "cohen") -> float | None:
    """The certified l2 radius from the estimation counts, or None to abstain.

    ``cohen``: sigma * Phi^-1(p_A) with p_A the (1 - alpha) lower bound on the selected
    class, i.e. the runner-up bounded by 1 - p_A (CERTIFY). ``two-sided``: Cohen's theorem
    in full, (sigma / 2) (Phi^-1(p_A) - Phi^-1(p_B)), with p_A the lower bound of n_a and
    p_B the upper bound of n_b (the largest other class's votes) each at alpha / 2. The
    runner-up is picked from the data, yet its bound holds: the true runner-up's count is at
    most n_b and the upper bound grows with the count. ``n_b`` is ignored by ``cohen``.
    Guarantee: when the counts come from fresh samples and the selected class was chosen on
    others, with probability >= 1 - alpha g returns that class on the whole l2 ball of the
    returned radius (Cohen et al. 2019, Theorem 1).
    """
    return _radius(n_a, n_b, n, alpha, check_sigma(sigma), bound)


def _radius(n_a: int, n_b: int, n: int, alpha: float, sigma: float, bound: str) -> float | None:
    """:func:`radius_from_counts` without the sigma check: for a sigma checked where it
    entered (:class:`Smooth`), or recorded by a file that is only being read (an old file's
    sigma is what it is; the sigma > 4 guard is for new input)."""
    check_bound(bound)
    if bound == "cohen":
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        return float(sigma * norm.ppf(p_lower)) if p_lower >= 0.5 else None
    require(n_a + n_b <= n, f"need n_a + n_b <= n, got n_a={n_a}, n_b={n_b}, n={n}")
    p_lower = clopper_pearson_lower(n_a, n, alpha / 2)
    p_upper = clopper_pearson_upper(n_b, n, alpha / 2)
    if p_lower <= max(0.5, p_upper):
        return None
    return float(sigma / 2 * (norm.ppf(p_lower) - norm.ppf(p_upper)))


def certified_radius(p_lower: float, sigma: float) -> float:
    """The l2 radius sigma * Phi^-1(p_lower) certified by a lower bound p_lower >= 1/2 on
    the top-class probability under N(0, sigma^2 I) noise: if the bound holds, g returns
    the top class everywhere within that radius."""
    check_sigma(sigma)
    require(0.5 <= p_lower <= 1.0, f"p_lower={p_lower} < 1/2 certifies nothing (abstain)")
    return float(sigma * norm.ppf(p_lower))


class Certificate(NamedTuple):
    """What CERTIFY returned for one image and what it cost."""

    prediction: int  # the certified class, or -1 (abstained, or skipped)
    radius: float  # l2 radius, 0.0 when prediction is -1
    samples: int  # noise samples drawn: n0 for the selection + those of the estimation
    status: str  # "certified", "abstain", or "skipped" (selection != label, see certificate)
    n_a: int = -1  # estimation votes for the selected class (-1: no estimation ran)
    n_b: int = -1  # the largest estimation count among the other classes
    # (0.5) the class the n0 selection chose, kept when it abstains; and the estimation
    # votes for the true label when one was given (-1: no label, or no estimation ran)
    selected: int = -1
    n_label: int = -1


class Smooth:
    """A smoothed classifier g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I)
    (or another :class:`smoothmix.noise.Noise`)."""

    ABSTAIN = ABSTAIN

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float | Noise, *,
                 chunk_size: int | None = None, precision: str | None = None,
                 layout: str | None = None, compile: bool | None = None,
                 execution: Execution | None = None, grid: int | None = None) -> None:
        """``base_classifier`` maps N x C x H x W images in [0, 1] to N x num_classes logits.

        ``sigma``: the noise level of Gaussian noise, or a :class:`smoothmix.noise.Noise`;
        ``grid=255`` is :class:`smoothmix.noise.GridGaussianNoise` (inputs are 8-bit images
        and the noise the sound integer sampler of docs/grid.md, so that no base classifier
        can exploit float rounding of x + noise).

        How it is run (:mod:`smoothmix.execution`): ``precision`` "fp32" (default) or
        "bf16" (autocast: the certificate is then about the classifier as run in bf16),
        ``layout`` "channels_last" or "contiguous" (default: channels_last for conv nets on
        a CPU), ``chunk_size`` rows per forward pass (default: a fixed rule, never timing,
        so that separate processes vote identically), ``compile`` (torch.compile). Or a
        resolved ``execution`` (a dataset run's, recorded in its result file)."""
        require(isinstance(base_classifier, nn.Module),
                f"base_classifier must be a torch.nn.Module, got {type(base_classifier).__name__}"
                " (Smooth(base_classifier, num_classes, sigma))")
        self.base_classifier = base_classifier
        self.num_classes = check_num_classes(num_classes)
        self.noise = make_noise(sigma, grid)
        self.chunk_size = chunk_size
        # Checked by name now (chunk_size too: the one check of it), resolved per device at
        # the first image (nothing printed here).
        check_request(precision=precision, layout=layout, chunk=chunk_size, compile=compile)
        self._request: dict[str, Any] = {"precision": precision, "layout": layout,
                                         "chunk": chunk_size, "compile": compile}
        check_alone(execution, self._request)
        self._execution = execution
        self._resolved: dict[tuple[str, int], Execution] = {}

    @property
    def sigma(self) -> float:
        return self.noise.sigma

    def execution(self, device: torch.device, batch_size: int) -> Execution:
        """How blocks of ``batch_size`` noisy copies are run on ``device``."""
        if self._execution is not None:
            return self._execution.for_block(batch_size)
        key = (str(device), batch_size)
        if key not in self._resolved:
            self._resolved[key] = resolve_execution(self.base_classifier, device, batch_size,
                                                    **self._request)
        return self._resolved[key]

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None, bound: str = "cohen", *,
                progress: bool = False) -> tuple[int, float]:
        """CERTIFY: (class, l2 radius), or (-1, 0.0) when it abstains. With probability at
        least 1 - alpha over the noise, when a class is returned g returns that class on
        the whole l2 ball of that radius around ``x``. ``bound``: ``cohen`` (CERTIFY) or
        ``two-sided`` (see :func:`radius_from_counts`). ``progress=True`` shows the n0 + n
        noise samples as they are drawn (:func:`smoothmix.progress.show_samples`: a bar on a
        terminal, else a line a minute); the votes, and so the answer, are the same."""
        with show_samples(progress, n0 + n):
            result = self.certificate(x, n0, n, alpha, batch_size, generator, bound=bound)
        return result.prediction, result.radius

    def certificate(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                    generator: torch.Generator | None = None, *, label: int | None = None,
                    skip_wrong: bool = True, early_abstain: bool = True,
                    bound: str = "cohen") -> Certificate:
        """CERTIFY with its cost: the same answer, with the same guarantee, as
        :meth:`certify` on the same noise.

        Early abstain (docs/MATH.md §2.1): once even all remaining estimation votes could
        not lift the selected class to k* = :func:`certifying_votes` votes, the full run
        would abstain, so sampling stops there; the answer is identical, only cheaper
        (``early_abstain=False`` draws all n, for testing that claim).

        ``label`` (evaluation only): the estimation's votes for it are returned as
        ``n_label`` (the data of p_y, the base classifier's accuracy under noise); and, with
        ``skip_wrong`` (the default), when the n0 selection is not the label the estimation
        is skipped, since whatever it returned would score 0 in certified accuracy and ACR:
        the result is then (-1, 0.0, n0, "skipped"), with ``selected`` and no counts.

        ``bound`` is the radius formula (:func:`radius_from_counts`): ``cohen`` (CERTIFY, as
        the published tables) or ``two-sided`` (larger where votes spread over classes).
        """
        check_certify_args(n0, n, alpha, batch_size)
        check_bound(bound)
        require(label is None or 0 <= int(label) < self.num_classes,
                f"label {label} is not a class (0 to {self.num_classes - 1})")
        return self._certificate(x, n0, n, alpha, batch_size, generator, label=label,
                                 skip_wrong=skip_wrong, early_abstain=early_abstain, bound=bound)

    def _certificate(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                     generator: torch.Generator | None = None, *, label: int | None = None,
                     skip_wrong: bool = True, early_abstain: bool = True,
                     bound: str = "cohen") -> Certificate:
        """:meth:`certificate` for arguments already checked where they entered (the
        dataset runners check them once per run, not once per image)."""
        c_hat = int(self.votes(x, n0, batch_size, generator).counts.argmax())
        if label is not None and skip_wrong and c_hat != int(label):
            return Certificate(ABSTAIN, 0.0, n0, "skipped", selected=c_hat)
        # Fresh samples: reusing the selection votes would bias the bound upwards.
        level = alpha if bound == "cohen" else alpha / 2  # the level of p_A's bound
        need = certifying_votes(n, level) if early_abstain else None
        votes = self.votes(x, n, batch_size, generator, watch=c_hat, need=need)
        # Rejected draws count against c_hat (n stays nominal) and for the runner-up, which
        # keeps both bounds conservative.
        counts, rejected = votes.read()
        n_a, n_b = counts[c_hat], max(c for k, c in enumerate(counts) if k != c_hat) + rejected
        n_label = -1 if label is None else counts[int(label)]
        radius = _radius(n_a, n_b, n, alpha, self.sigma, bound) if votes.drawn == n else None
        if radius is None:
            return Certificate(ABSTAIN, 0.0, n0 + votes.drawn, "abstain", n_a, n_b, c_hat, n_label)
        return Certificate(c_hat, radius, n0 + n, "certified", n_a, n_b, c_hat, n_label)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> int:
        """PREDICT: g's class, or -1 to abstain; returns a class other than g(x) with
        probability at most alpha over the noise."""
        check_predict_args(n, alpha, batch_size)
        return self._predict(x, n, alpha, batch_size, generator)

    def _predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
                 generator: torch.Generator | None = None) -> int:
        """:meth:`predict` for arguments already checked where they entered."""
        counts, rejected = self.votes(x, n, batch_size, generator).read()
        top = max(range(len(counts)), key=counts.__getitem__)
        n_a = counts[top]
        # The runner-up, with the rejected draws on its side.
        n_b = max(c for k, c in enumerate(counts) if k != top) + rejected
        # Among tied top classes max takes the first (topk's pick among ties was unspecified).
        # Two-sided test, as Cohen's, but with rejected draws on the runner-up's side n_b can
        # exceed n_a; a significant test then speaks against the top class, not for it.
        if n_a <= n_b or binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return top

    def votes(self, x: torch.Tensor, num: int, batch_size: int,
              generator: torch.Generator | None = None, *, watch: int | None = None,
              need: int | None = None) -> Votes:
        """The base classifier's votes on ``num`` noisy copies of ``x``
        (:func:`smoothmix.votes.count_votes`), run as :meth:`execution` resolves it for
        blocks of ``batch_size``; with ``watch`` and ``need``, stopped early once class
        ``watch`` cannot reach ``need`` votes."""
        check_image(x)
        check_count("batch_size", batch_size)
        device = module_device(self.base_classifier, x.device)
        return count_votes(self.base_classifier, self.noise, x.to(device), num,
                           self.num_classes, self.execution(device, min(num, batch_size)),
                           generator, watch=watch, need=need)

    def _sample_noise(self, x: torch.Tensor, num: int, batch_size: int) -> np.ndarray:
        """Cohen's ``_sample_noise``: the class counts (a numpy int array of length
        num_classes) of the base classifier on ``num`` noisy copies of ``x``, drawn from
        torch's default generator."""
        return self.votes(x, num, batch_size).counts.cpu().numpy()
