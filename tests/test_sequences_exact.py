"""Exact false-claim probabilities of the ``certify --radii`` procedures (docs/MATH.md §2.1).

Each procedure of :mod:`smoothmix.sequences` claims "robust at r" after looks at fixed
sample counts, so its probability of claiming for a class with vote probability p is a sum
over vote counts: a dynamic program over the count a carries the probability of each a
among the runs still undecided from one look to the next (binomial steps between looks,
claims and give-ups removed at each look). This module computes that probability with its
own implementation of the documented schedules (looks at 16 samples, then x1.25 rounded up,
and the cap; union-bound checkpoints 1..28, then x1.1 rounded up, levels 5 alpha /
((t + 4)(t + 5)); stages 1 : 10 : 100 of the cap, Clopper-Pearson at alpha / 3 on each
stage's samples alone, give-up at beta), never calling the module to get it, and then:

* checks the code against it, sample path by sample path (same decision, same cost) and
  in distribution (its Monte-Carlo false-claim rate within 4 binomial standard deviations
  of the exact value), at settings where a procedure run at twice its level lies far
  outside that band: the comparison has power, which "rate <= alpha + 3 sd" had not
  (at p = p0 = 0.7, alpha = 0.1 the exact rates are 0.011 / 0.0026 / 0.046, far below
  alpha, so variants at 5 alpha passed it);
* checks that the exact value is at most alpha over a grid of (alpha, p0, cap).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import betaln
from scipy.stats import binom, norm

import smoothmix.sequences as seq

# ------------------------------------------------------------------ the documented rules


def look_points(cap: int) -> list[int]:
    """Where kt and union look: after 16 samples, then x1.25 rounded up, the cap last."""
    points, n = [], 0
    while n < cap:
        n = min(cap, max(n + 1, 16, -(-5 * n // 4)))  # ceil(5n / 4) in integers
        points.append(n)
    return points


def union_points(cap: int) -> list[int]:
    """The union bound's checkpoints: 1, 2, ..., 28, then x1.1 rounded up, the cap last."""
    points, n = [], 1
    while n < cap:
        points.append(n)
        n = n + 1 if n < 28 else -(-11 * n // 10)  # ceil(11n / 10) in integers
    return [*points, cap]


def union_level(t: int, alpha: float) -> float:
    return 5 * alpha / ((t + 4) * (t + 5))


def stage_lengths(cap: int) -> list[int]:
    """Stages 1 : 10 : 100 of the cap (111 parts), at least one sample each, the rest last."""
    first, second = max(1, cap // 111), max(1, 10 * cap // 111)
    return [first, second, cap - first - second]


def kt_log_ratio(a: np.ndarray, n: int, p0: float) -> np.ndarray:
    """log of the Beta(1/2, 1/2) mixture likelihood over the Bin(n, p0) likelihood."""
    return (betaln(a + 0.5, n - a + 0.5) - math.log(math.pi) - a * math.log(p0)
            - (n - a) * math.log1p(-p0))


class Rule:
    """One procedure as documented: ``checkpoints`` (sample counts where it may decide),
    ``claim`` / ``give_up`` as boolean arrays over the votes at a checkpoint, and ``look``
    (the sample count at which the code notices a decision taken at a checkpoint)."""

    def __init__(self, sequence: str, p0: float, alpha: float, cap: int,
                 beta: float | None = None, stage_level: float | None = None) -> None:
        self.sequence, self.p0, self.alpha, self.cap = sequence, p0, alpha, cap
        self.beta = alpha if beta is None else beta
        self.stage_level = alpha / 3 if stage_level is None else stage_level
        if sequence == "kt":
            self.checkpoints = look_points(cap)
        elif sequence == "union":
            self.checkpoints = union_points(cap)
        else:
            self.checkpoints = list(np.cumsum(stage_lengths(cap)))
        self._looks = look_points(cap)

    def look(self, checkpoint: int) -> int:
        if self.sequence == "union":  # checkpoints inside a segment are read at its end
            return next(n for n in self._looks if n >= checkpoint)
        return checkpoint

    def claim(self, a: np.ndarray, n: int, t: int) -> np.ndarray:
        if self.sequence == "kt":
            return (a >= self.p0 * n) & (kt_log_ratio(a, n, self.p0) >= math.log(1 / self.alpha))
        if self.sequence == "union":
            return binom.sf(a - 1, n, self.p0) <= union_level(t, self.alpha)
        # Clopper-Pearson lower bound >= p0 iff P_p0(X >= a) <= level (its definition).
        return binom.sf(a - 1, n, self.p0) <= self.stage_level

    def give_up(self, a: np.ndarray, n: int, t: int) -> np.ndarray:
        if self.sequence == "kt":
            return (a < self.p0 * n) & (kt_log_ratio(a, n, self.p0) >= math.log(1 / self.beta))
        if self.sequence == "union":
            return (binom.cdf(a, n, self.p0) <= union_level(t, self.beta)) & ~self.claim(a, n, t)
        # Clopper-Pearson upper bound (level beta) < p0 iff P_p0(X <= a) < beta.
        return binom.cdf(a, n, self.p0) < self.beta

    @property
    def fresh_stages(self) -> bool:
        return self.sequence == "staged"  # each stage tests its own samples only


def exact_claim_probability(rule: Rule, p: float) -> float:
    """P(the procedure claims "robust" for a class of vote probability p): a dynamic
    program over the vote count of the undecided runs from checkpoint to checkpoint."""
    total, n = 0.0, 0
    dist = np.array([1.0])  # P(a votes since the counting began, still undecided)
    alive = 1.0  # staged: P(still undecided) before the stage
    for t, point in enumerate(rule.checkpoints, start=1):
        step = point - n
        pmf = binom.pmf(np.arange(step + 1), step, p)
        if rule.fresh_stages:
            a = np.arange(step + 1)
            claim, give_up = rule.claim(a, step, t), rule.give_up(a, step, t)
            total += alive * pmf[claim].sum()
            alive *= pmf[~claim & ~give_up].sum()
        else:
            dist = np.convolve(dist, pmf)
            a = np.arange(point + 1)
            claim, give_up = rule.claim(a, point, t), rule.give_up(a, point, t)
            total += dist[claim].sum()
            dist = np.where(claim | give_up, 0.0, dist)
        n = point
    return float(total)


def reference_decision(rule: Rule, votes: np.ndarray) -> tuple[str, int]:
    """(decision, samples drawn when it was taken) of the documented rule on one stream."""
    start = 0
    for t, point in enumerate(rule.checkpoints, start=1):
        a = np.array([votes[start if rule.fresh_stages else 0: point].sum()])
        n = point - start if rule.fresh_stages else point
        if rule.claim(a, n, t)[0]:
            return seq.CERTIFIED, rule.look(point)
        if rule.give_up(a, n, t)[0]:
            return seq.NOT_CERTIFIED, rule.look(point)
        start = point
    return seq.UNDECIDED, rule.cap


# ------------------------------------------------------------------ the code, driven


def code_procedure(sequence: str, p0: float, alpha: float, cap: int,
                   beta: float | None = None) -> seq.Procedure:
    """The real procedure for the label's class (evaluation mode) at the one radius
    sigma Phi^-1(p0), sigma = 1, as ``decide_dataset`` builds it."""
    return seq.make_procedure(sequence, [float(norm.ppf(p0))], 1.0, alpha, cap, 1, 0,
                              beta=beta)


def run_code(procedure: seq.Procedure, votes) -> tuple[str, int]:
    """Feed the procedure the votes it asks for (1 = the tested class), one look at a time,
    as the pool does; (decision, samples) at the radius. ``votes(k)`` gives the next k."""
    while not procedure.done:
        procedure.feed(votes(procedure.want()), 2)
    return procedure.decisions[0], procedure.samples[0]


def monte_carlo_claims(make, p: float, trials: int, seed: int) -> int:
    """How many of ``trials`` fresh procedures ``make()`` claim, with Bernoulli(p) votes."""
    rng = np.random.default_rng(seed)
    claims = 0
    for _ in range(trials):
        decision, _ = run_code(make(), lambda k: (rng.random(k) < p).astype(np.int64))
        claims += decision == seq.CERTIFIED
    return claims


def band(q: float, trials: int, sds: float = 4.0) -> tuple[float, float]:
    """q +- ``sds`` binomial standard deviations of a rate over ``trials``."""
    half = sds * math.sqrt(q * (1 - q) / trials)
    return q - half, q + half


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("cap", [16, 17, 50, 600, 1000, 12_345, 100_000])
def test_the_code_uses_the_documented_schedules(cap):
    assert seq.union_checkpoints(cap) == union_points(cap)
    assert seq.stage_sizes(cap) == stage_lengths(cap)
    for sequence in ("kt", "union"):
        # The looks the procedure asks for: votes that never decide (half for, half
        # against, at p0 = 1/2) run it to the cap, one look per feed.
        proc, looks = code_procedure(sequence, 0.5, 0.01, cap), []
        while not proc.done:
            proc.feed(np.arange(proc.n, proc.n + proc.want()) % 2, 2)
            looks.append(proc.n)
        assert looks == look_points(cap)
        assert proc.decisions == [seq.UNDECIDED] and proc.samples == [cap]


def test_the_rules_agree_with_a_brute_force_sum_over_every_stream():
    # The dynamic program against the direct sum over all 2^18 vote streams of length 18.
    cap, p = 18, 0.6
    bits = (np.arange(2 ** cap)[:, None] >> np.arange(cap)[None, :]) & 1
    weight = np.prod(np.where(bits == 1, p, 1 - p), axis=1)
    for sequence, p0, alpha in (("kt", 0.3, 0.3), ("union", 0.4, 0.4), ("staged", 0.5, 0.5)):
        rule = Rule(sequence, p0, alpha, cap)
        decided, claimed = np.zeros(len(bits), bool), np.zeros(len(bits), bool)
        start = 0
        for t, point in enumerate(rule.checkpoints, start=1):
            a = bits[:, start if rule.fresh_stages else 0: point].sum(axis=1)
            n = point - start if rule.fresh_stages else point
            claim, give_up = rule.claim(a, n, t), rule.give_up(a, n, t)
            claimed |= ~decided & claim
            decided |= claim | give_up
            start = point
        brute = float(weight[claimed].sum())
        assert 0.01 < brute  # the case claims at all, so the comparison means something
        assert exact_claim_probability(rule, p) == pytest.approx(brute, rel=1e-10)


@pytest.mark.parametrize("sequence", seq.SEQUENCES)
def test_each_stream_gets_the_documented_decision_at_the_documented_cost(sequence):
    # Random streams around p0 reach all three decisions; the code and the rule must take
    # the same one after the same number of samples on every stream.
    p0, alpha, cap = 0.7, 0.1, 300
    rng = np.random.default_rng(11)
    rule, seen = Rule(sequence, p0, alpha, cap), set()
    for _ in range(150):
        votes = (rng.random(cap) < rng.uniform(0.55, 0.9)).astype(np.int64)
        pos = [0]

        def take(k: int, votes=votes, pos=pos) -> np.ndarray:
            pos[0] += k
            return votes[pos[0] - k: pos[0]]

        got = run_code(code_procedure(sequence, p0, alpha, cap), take)
        assert got == reference_decision(rule, votes)
        seen.add(got[0])
    assert seen == set(seq.DECISIONS)


@pytest.mark.parametrize("sequence", seq.SEQUENCES)
@pytest.mark.parametrize("alpha", [0.1, 0.01, 0.001])
@pytest.mark.parametrize("p0", [0.5, 0.7, 0.9, 0.99])
@pytest.mark.parametrize("cap", [100, 1000, 10_000])
def test_exact_false_claim_probability_is_at_most_alpha(sequence, alpha, p0, cap):
    # p = p0 is the worst case of the null p <= p0 (every claim region is an upper set of
    # the vote count and every give-up region a lower set, so the claim probability grows
    # with p); checked below it too.
    q = exact_claim_probability(Rule(sequence, p0, alpha, cap), p0)
    assert 0 <= q <= alpha
    below = exact_claim_probability(Rule(sequence, p0, alpha, cap), p0 - 0.05)
    assert below <= q + 1e-15


def test_exact_false_claim_probabilities_of_the_old_check():
    # The setting of tests/test_sequences.py: far below alpha = 0.1, so "rate <= alpha +
    # 3 sd" could not see a procedure at several times its level.
    exact = {s: exact_claim_probability(Rule(s, 0.7, 0.1, 600), 0.7) for s in seq.SEQUENCES}
    assert exact["kt"] == pytest.approx(0.0109, abs=5e-5)
    assert exact["union"] == pytest.approx(0.00259, abs=5e-6)
    assert exact["staged"] == pytest.approx(0.0458, abs=5e-5)


# Per procedure: (alpha, p0, cap, trials) where the exact rates at alpha and of the
# mis-levelled variant lie far apart (more than 4 sd of the one plus 4.5 sd of the other).
POWER = {
    "kt": (0.4, 0.75, 50, 2000),  # exact 0.0332 at alpha; 0.0881 at 2 alpha
    "union": (0.3, 0.5, 50, 3000),  # 0.0152; 0.0435 at 2 alpha
    "staged": (0.1, 0.7, 600, 1000),  # 0.0458; 0.1565 with alpha per stage
}


def mis_levelled(sequence: str, p0: float, alpha: float, cap: int) -> tuple[float, Rule]:
    """A deliberately unsound variant, give-up level unchanged: twice alpha for kt and
    union, the full alpha at each of the three stages for staged. Returns the level to run
    the real code at (with beta = alpha) and the documented rule of that variant."""
    if sequence == "staged":
        return 3 * alpha, Rule(sequence, p0, alpha, cap, stage_level=alpha)
    return 2 * alpha, Rule(sequence, p0, 2 * alpha, cap, beta=alpha)


@pytest.mark.parametrize("sequence", [  # union's power needs 3,000 trials: the slow tier
    pytest.param(s, marks=[pytest.mark.slow] if POWER[s][3] > 2000 else []) for s in seq.SEQUENCES])
def test_monte_carlo_false_claims_match_the_exact_value_and_catch_a_doubled_level(sequence):
    alpha, p0, cap, trials = POWER[sequence]
    q = exact_claim_probability(Rule(sequence, p0, alpha, cap), p0)
    lo, hi = band(q, trials)
    claims = monte_carlo_claims(lambda: code_procedure(sequence, p0, alpha, cap), p0,
                                trials, seed=1)
    assert lo <= claims / trials <= hi, (claims, trials, q)
    assert q <= alpha
    # The detector has power: the same code at a wrong level falls outside the band.
    wrong, wrong_rule = mis_levelled(sequence, p0, alpha, cap)
    q_wrong = exact_claim_probability(wrong_rule, p0)
    assert q_wrong - 4.5 * math.sqrt(q_wrong * (1 - q_wrong) / trials) > hi  # by design
    bad = monte_carlo_claims(lambda: code_procedure(sequence, p0, wrong, cap, beta=alpha),
                             p0, trials, seed=2)
    assert not lo <= bad / trials <= hi, (bad, trials, q)
    lo_wrong, hi_wrong = band(q_wrong, trials)
    assert lo_wrong <= bad / trials <= hi_wrong  # and the program tracks the variant too


def test_deployment_mode_false_claims_are_a_mixture_over_the_selection():
    # The class is the argmax of n0 = 9 separate votes: class 1 (vote probability p0) with
    # P(Bin(9, p0) >= 5), else class 0, whose claims at p0 need p = 1 - p0 (negligible).
    alpha, p0, cap, trials, n0 = 0.1, 0.7, 600, 1000, 9
    rule = Rule("staged", p0, alpha, cap)
    right = binom.sf(n0 // 2, n0, p0)
    q = (right * exact_claim_probability(rule, p0)
         + (1 - right) * exact_claim_probability(rule, 1 - p0))
    rng = np.random.default_rng(5)
    claims = 0
    for _ in range(trials):
        proc = seq.make_procedure("staged", [float(norm.ppf(p0))], 1.0, alpha, cap, None, n0)
        decision, _ = run_code(proc, lambda k: (rng.random(k) < p0).astype(np.int64))
        claims += decision == seq.CERTIFIED  # a claim for class 0 is false as well
    lo, hi = band(q, trials)
    assert lo <= claims / trials <= hi, (claims, q)
