r"""Always-valid sequential tests for A/B experiments: mSPRT with a normal mixture, its p-value and confidence sequence.

A fixed-horizon test read after every new observation ("peeking") rejects a
true null far more often than its alpha. The mixture sequential probability
ratio test (mSPRT; Johari, Pekelis and Walsh, "Always valid inference",
2017) and the normal-mixture confidence sequences of Howard, Ramdas,
McAuliffe and Sekhon ("Time-uniform, nonparametric, nonasymptotic
confidence sequences", 2021) stay valid however often they are read.

**The statistic.** Arm A (the control) and arm B have means ``mu_A`` and
``mu_B`` (accuracy: the share of correct labels); ``theta = mu_B - mu_A``.
After ``n_A`` and ``n_B`` observations the estimate is ``d = mean_B - mean_A``
with variance ``s^2 = v_A / n_A + v_B / n_B`` (``v`` the per-observation
variance; for a proportion ``p (1 - p)``, estimated with ``p = (x + 1) /
(n + 2)`` so it is never 0). In the normal approximation ``d ~ N(theta,
s^2)``; the likelihood ratio of ``theta`` against ``theta_0``, mixed over a
prior ``theta ~ N(theta_0, tau^2)``, is

    Lambda(theta_0) = sqrt(s^2 / (s^2 + tau^2)) * exp(tau^2 (d - theta_0)^2 / (2 s^2 (s^2 + tau^2))).

(With equal arms, ``s^2 = V / n`` and this is Johari et al.'s
``sqrt(V / (V + n tau^2)) exp(n^2 tau^2 d^2 / (2 V (V + n tau^2)))``.) Under
the null it is a nonnegative martingale with mean 1, so by Ville's
inequality ``P(sup_n Lambda_n >= 1 / alpha) <= alpha``.

**Always-valid p-value**: ``p_n = min(1, min_{k <= n} 1 / Lambda_k(0))``, the
running minimum (monotone: once below alpha it stays there); reject the null
``theta = 0`` when ``p_n <= alpha``.

**Confidence sequence**: the ``theta_0`` with ``Lambda(theta_0) < 1 / alpha``,
``d +- r`` with

    r^2 = 2 s^2 (s^2 + tau^2) / tau^2 * (log(1 / alpha) + log((s^2 + tau^2) / s^2) / 2),

covering ``theta`` at every ``n`` at once with probability ``>= 1 - alpha``.
0 leaves the current interval exactly when ``1 / Lambda_n(0) <= alpha``.

**The mixture scale.** ``tau`` sets which effects are found fastest: about
``|theta| ~ tau`` at the horizon. :data:`DEFAULT_TAU` = 0.02 is tuned for a
2-point accuracy difference: for 0.90 vs 0.92 at 80% power and alpha 0.05,
:func:`sample_size` gives 6,148 per arm at tau 0.015, **6,222 at tau 0.02**,
6,486 at 0.03, 6,315 at 0.01 and 6,953 at 0.05 (a fixed-horizon
two-proportion z-test, read once, needs about 3,210). Simulated power at
6,222 per arm is 0.86-0.88 (1,000 tests, three seeds, checked after every
observation; 0.86 checked every 100), above 0.8 because that formula counts
only crossings at the last observation, not earlier ones.

**Validity in practice.** The guarantee is exact for normal observations of
known variance; for proportions with an estimated variance it holds to the
normal approximation, so the test starts counting once each arm has
``min_n`` observations (:data:`DEFAULT_MIN_N`). Simulated A/A tests
(:func:`simulate_aa`) checked after every observation reject 2.6-4.0% of
the time at alpha 0.05 (1,000 tests of 6,222 to 50,000 per arm at p = 0.9,
of 20,000 or 31,110 at p = 0.5; 1.8% at p = 0.99). For latency (:func:`two_means`) the mixture scale is
``tau`` times the pooled running standard deviation (a standardised effect),
which makes the latency evidence approximate: it is reported, not decided on.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import numpy as np

from hamjax import _checks

DEFAULT_TAU = 0.02
DEFAULT_MIN_N = 30
DEFAULT_TAU_SD = 0.1  # the latency test's mixture scale, in pooled standard deviations
_CHUNK = 1024


def log_mixture_ratio(difference, variance, tau: float, theta0: float = 0.0):
    """``log Lambda(theta0)`` of the normal mixture (module docstring), elementwise.

    Args:
      difference: the estimate ``d = mean_B - mean_A`` (array).
      variance: its variance ``s^2`` (array, > 0).
      tau: the mixture standard deviation (> 0).
      theta0: the null difference.

    Examples:
      >>> round(float(log_mixture_ratio(0.02, 0.1636 / 6000, 0.02)), 3)
      5.491
    """
    s2, t2 = np.asarray(variance, np.float64), tau * tau
    d = np.asarray(difference, np.float64) - theta0
    return 0.5 * np.log(s2 / (s2 + t2)) + t2 * d * d / (2.0 * s2 * (s2 + t2))


def cs_radius(variance, tau: float, alpha: float):
    """Half-width ``r`` of the confidence sequence ``d +- r`` at level ``1 - alpha`` (module docstring).

    Examples:
      >>> round(float(cs_radius(0.1636 / 6000, 0.02, 0.05)), 4)
      0.016
    """
    s2, t2 = np.asarray(variance, np.float64), tau * tau
    return np.sqrt(2.0 * s2 * (s2 + t2) / t2 * (math.log(1.0 / alpha) + 0.5 * np.log((s2 + t2) / s2)))


@dataclasses.dataclass(frozen=True)
class SequentialResult:
    """Where a sequential comparison of arm B against arm A (the control) stands.

    Attributes:
      n_a, n_b: observations per arm.
      mean_a, mean_b: their means (None without observations).
      difference: ``mean_b - mean_a`` (None until both arms have some).
      p_value: the always-valid p-value (running minimum, 1.0 before ``min_n``).
      low, high: the confidence sequence for the difference at the current ``n``
        (None before ``min_n``).
      decision: ``"continue"``, ``"A better"`` or ``"B better"`` (the sign of
        the difference when the p-value first reached ``alpha``; ``"A higher"``
        or ``"B higher"`` from :func:`two_means`).
      alpha, tau: the test's level and mixture scale.
      decided_at: total observations when the decision was reached, else None.
    """

    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    difference: float | None
    p_value: float
    low: float | None
    high: float | None
    decision: str
    alpha: float
    tau: float
    decided_at: int | None

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


def _check_level(where: str, alpha: float, tau: float) -> tuple[float, float]:
    alpha = _checks.check_number(where, "alpha", alpha, minimum=0, maximum=1, exclusive_minimum=True)
    return alpha, _checks.check_positive(where, "tau", tau)


def _result(arm, x_a, n_a, x_b, n_b, variance, tau, alpha, min_n, clip, labels) -> SequentialResult:
    """The result from running per-event totals (arrays over events) and the variance of the difference."""
    ready = (n_a >= min_n) & (n_b >= min_n)
    difference = np.divide(x_b, np.maximum(n_b, 1)) - np.divide(x_a, np.maximum(n_a, 1))
    log_ratio = np.where(ready, log_mixture_ratio(difference, np.where(ready, variance, 1.0), tau), -np.inf)
    crossed = np.flatnonzero(log_ratio >= math.log(1.0 / alpha))
    p_value = float(min(1.0, math.exp(-float(log_ratio.max(initial=-np.inf)))))
    decision, decided_at = "continue", None
    if len(crossed):
        first = int(crossed[0])
        decision, decided_at = (labels[1] if difference[first] > 0 else labels[0]), first + 1
    last = len(arm) - 1
    na, nb = (int(n_a[last]), int(n_b[last])) if len(arm) else (0, 0)
    low = high = None
    if len(arm) and ready[last]:
        radius = float(cs_radius(variance[last], tau, alpha))
        low, high = float(difference[last]) - radius, float(difference[last]) + radius
        if clip:
            low, high = max(low, -1.0), min(high, 1.0)
    return SequentialResult(
        n_a=na,
        n_b=nb,
        mean_a=float(x_a[last] / na) if na else None,
        mean_b=float(x_b[last] / nb) if nb else None,
        difference=float(difference[last]) if na and nb else None,
        p_value=p_value,
        low=low,
        high=high,
        decision=decision,
        alpha=alpha,
        tau=tau,
        decided_at=decided_at,
    )


def _arms(where: str, arm, *columns):
    arm = np.asarray(arm)
    if arm.ndim != 1 or not np.all((arm == 0) | (arm == 1)):
        raise ValueError(f"{where}: arm must be a 1-D sequence of 0 (A) and 1 (B), got {arm!r}")
    out = [np.asarray(c, np.float64) for c in columns]
    if any(c.shape != arm.shape for c in out):
        raise ValueError(f"{where}: every column must have the length of arm ({len(arm)})")
    return arm.astype(bool), out


def two_proportions(
    arm, successes, trials, *, alpha: float = 0.05, tau: float = DEFAULT_TAU, min_n: int = DEFAULT_MIN_N
) -> SequentialResult:
    """The always-valid test of ``p_B - p_A`` over events in arrival order (each a batch of labelled predictions).

    Args:
      arm: per event, 0 for arm A (control) or 1 for arm B.
      successes: per event, correct predictions.
      trials: per event, labelled predictions (>= successes).
      alpha: the level; tau: the mixture scale; min_n: observations each arm
        needs before the test counts.

    Returns:
      A :class:`SequentialResult` (p-value and decision from the whole path).

    Raises:
      ValueError: mismatched or impossible columns, or bad ``alpha``/``tau``.

    Examples:
      >>> rng = np.random.default_rng(0)
      >>> arm = np.tile([0, 1], 8000)
      >>> correct = rng.random(16000) < np.where(arm == 1, 0.95, 0.90)
      >>> result = two_proportions(arm, correct, np.ones(16000))
      >>> result.decision, result.p_value < 0.05, result.low > 0
      ('B better', True, True)
    """
    alpha, tau = _check_level("two_proportions", alpha, tau)
    min_n = _checks.check_int("two_proportions", "min_n", min_n, minimum=1)
    b, (x, n) = _arms("two_proportions", arm, successes, trials)
    if np.any(x < 0) or np.any(n < x) or np.any(x != np.round(x)) or np.any(n != np.round(n)):
        raise ValueError("two_proportions: successes and trials must be counts with 0 <= successes <= trials")
    x_a, n_a = np.cumsum(np.where(b, 0.0, x)), np.cumsum(np.where(b, 0.0, n))
    x_b, n_b = np.cumsum(np.where(b, x, 0.0)), np.cumsum(np.where(b, n, 0.0))
    q_a, q_b = (x_a + 1) / (n_a + 2), (x_b + 1) / (n_b + 2)
    variance = q_a * (1 - q_a) / np.maximum(n_a, 1) + q_b * (1 - q_b) / np.maximum(n_b, 1)
    return _result(b, x_a, n_a, x_b, n_b, variance, tau, alpha, min_n, clip=True, labels=("A better", "B better"))


def two_means(
    arm, values, *, alpha: float = 0.05, tau_sd: float = DEFAULT_TAU_SD, min_n: int = DEFAULT_MIN_N
) -> SequentialResult:
    """The same test for ``mean_B - mean_A`` of real values (latency), variances estimated as it goes.

    The mixture scale is ``tau_sd`` times the pooled running standard
    deviation (reported as ``tau`` at the last event); approximate, for
    reporting (module docstring).

    Examples:
      >>> rng = np.random.default_rng(1)
      >>> arm = np.tile([0, 1], 500)
      >>> ms = rng.normal(10.0, 1.0, 1000) + 2.0 * arm
      >>> r = two_means(arm, ms)
      >>> r.decision, round(r.difference)
      ('B higher', 2)
    """
    alpha, tau_sd = _check_level("two_means", alpha, tau_sd)
    min_n = _checks.check_int("two_means", "min_n", max(min_n, 2), minimum=2)
    b, (v,) = _arms("two_means", arm, values)
    if not np.all(np.isfinite(v)):
        raise ValueError("two_means: values must be finite")
    ones = np.ones_like(v)
    totals = {}
    for name, mask in (("a", ~b), ("b", b)):
        totals[name] = [np.cumsum(np.where(mask, c, 0.0)) for c in (ones, v, v * v)]
    (n_a, s_a, q_a), (n_b, s_b, q_b) = totals["a"], totals["b"]
    var_a = np.maximum(q_a - s_a * s_a / np.maximum(n_a, 1), 0.0) / np.maximum(n_a - 1, 1)
    var_b = np.maximum(q_b - s_b * s_b / np.maximum(n_b, 1), 0.0) / np.maximum(n_b - 1, 1)
    variance = np.maximum(var_a / np.maximum(n_a, 1) + var_b / np.maximum(n_b, 1), 1e-12)
    pooled_sd = math.sqrt(max(float((var_a[-1] + var_b[-1]) / 2), 1e-12)) if len(v) else 1.0
    labels = ("A higher", "B higher")
    return _result(b, s_a, n_a, s_b, n_b, variance, tau_sd * pooled_sd, alpha, min_n, clip=False, labels=labels)


@dataclasses.dataclass(frozen=True)
class Simulation:
    """What :func:`simulate_aa` and :func:`power` measured.

    Attributes:
      rate: the share of tests that rejected the null (false positives for an
        A/A test, power for an A/B one).
      rejected, tests: their counts; n_per_arm: each test's horizon.
      check_every: observations per arm between two looks.
      mean_stop: mean observations per arm at rejection (None if none did).
      seconds: wall time of the simulation.
    """

    rate: float
    rejected: int
    tests: int
    n_per_arm: int
    check_every: int
    mean_stop: float | None
    seconds: float


def _simulate(p_a, p_b, *, n_tests, n_per_arm, alpha, tau, min_n, seed, check_every, where) -> Simulation:
    """All tests at once: arms observed in pairs, the statistic evaluated every ``check_every`` pairs."""
    alpha, tau = _check_level(where, alpha, tau)
    n_tests = _checks.check_int(where, "n_tests", n_tests, minimum=1)
    n_per_arm = _checks.check_int(where, "n_per_arm", n_per_arm, minimum=1)
    check_every = _checks.check_int(where, "check_every", check_every, minimum=1)
    min_n = _checks.check_int(where, "min_n", min_n, minimum=1)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    x_a, x_b = np.zeros(n_tests), np.zeros(n_tests)
    stop = np.zeros(n_tests, np.int64)
    bound = math.log(1.0 / alpha)
    for start in range(0, n_per_arm, _CHUNK):
        width = min(_CHUNK, n_per_arm - start)
        c_a = x_a[:, None] + np.cumsum(rng.random((n_tests, width)) < p_a, axis=1)
        c_b = x_b[:, None] + np.cumsum(rng.random((n_tests, width)) < p_b, axis=1)
        x_a, x_b = c_a[:, -1], c_b[:, -1]
        n = np.arange(start + 1, start + width + 1, dtype=np.float64)
        looks = (n % check_every == 0) & (n >= min_n)
        if not looks.any():
            continue
        c_a, c_b, n = c_a[:, looks], c_b[:, looks], n[looks]
        q_a, q_b = (c_a + 1) / (n + 2), (c_b + 1) / (n + 2)
        log_ratio = log_mixture_ratio((c_b - c_a) / n, (q_a * (1 - q_a) + q_b * (1 - q_b)) / n, tau)
        hit = log_ratio >= bound
        first = np.where(hit.any(axis=1), n[np.argmax(hit, axis=1)], 0).astype(np.int64)
        stop = np.where((stop == 0) & (first > 0), first, stop)
    rejected = stop > 0
    return Simulation(
        rate=float(rejected.mean()),
        rejected=int(rejected.sum()),
        tests=n_tests,
        n_per_arm=n_per_arm,
        check_every=check_every,
        mean_stop=float(stop[rejected].mean()) if rejected.any() else None,
        seconds=time.perf_counter() - started,
    )


def simulate_aa(
    n_tests: int = 1000,
    n_per_arm: int = 10_000,
    p: float = 0.9,
    alpha: float = 0.05,
    seed: int = 0,
    check_every: int = 1,
    *,
    tau: float = DEFAULT_TAU,
    min_n: int = DEFAULT_MIN_N,
) -> Simulation:
    """A/A tests (both arms accuracy ``p``) read continuously: the false-positive rate of :func:`two_proportions`.

    Every test observes both arms in pairs up to ``n_per_arm`` each and is
    checked every ``check_every`` pairs (1: after every observation); a test
    counts as a false positive if it ever rejects. All tests run at once in
    numpy (1,000 tests of 10,000 per arm take about a second).

    Examples:
      >>> sim = simulate_aa(n_tests=200, n_per_arm=2000, seed=1)
      >>> sim.rate <= 0.05
      True
    """
    p = _checks.check_number("simulate_aa", "p", p, minimum=0, maximum=1)
    return _simulate(
        p, p, n_tests=n_tests, n_per_arm=n_per_arm, alpha=alpha, tau=tau, min_n=min_n, seed=seed,
        check_every=check_every, where="simulate_aa",
    )  # fmt: skip


def power(
    delta: float,
    n_per_arm: int,
    p: float = 0.9,
    alpha: float = 0.05,
    *,
    n_tests: int = 1000,
    seed: int = 0,
    check_every: int = 1,
    tau: float = DEFAULT_TAU,
    min_n: int = DEFAULT_MIN_N,
) -> Simulation:
    """Simulated power of :func:`two_proportions` to detect accuracy ``p`` vs ``p + delta`` within ``n_per_arm``.

    Examples:
      >>> power(0.05, 2000, p=0.9, n_tests=200).rate > 0.8
      True
    """
    p = _checks.check_number("power", "p", p, minimum=0, maximum=1)
    delta = _checks.check_number("power", "delta", delta, minimum=-p, maximum=1 - p)
    return _simulate(
        p, p + delta, n_tests=n_tests, n_per_arm=n_per_arm, alpha=alpha, tau=tau, min_n=min_n, seed=seed,
        check_every=check_every, where="power",
    )  # fmt: skip


def sample_size(delta: float, p: float, power: float = 0.8, alpha: float = 0.05, *, tau: float = DEFAULT_TAU) -> int:
    """Observations per arm for :func:`two_proportions` to detect ``p`` vs ``p + delta`` with ``power``.

    The smallest ``n`` with ``P(|d_n| >= r_n) >= power`` in the normal
    approximation (``d_n ~ N(delta, V / n)``, ``V = p (1 - p) + q (1 - q)``,
    ``q = p + delta``, ``r_n`` the confidence-sequence radius at ``theta = 0``):
    the chance of crossing at the last observation alone, a lower bound of
    the chance of crossing by then, so the size is conservative
    (:func:`power` measures 0.86-0.88 at it for the 2-point case).

    Examples:
      >>> sample_size(0.02, 0.90)
      6222
    """
    p = _checks.check_number("sample_size", "p", p, minimum=0, maximum=1, exclusive_minimum=True)
    delta = _checks.check_number("sample_size", "delta", delta, minimum=-p, maximum=1 - p)
    if delta == 0:
        raise ValueError("sample_size: delta must be nonzero, got 0")
    goal = _checks.check_number("sample_size", "power", power, minimum=0, maximum=1, exclusive_minimum=True)
    goal = min(goal, 1 - 1e-9)
    alpha, tau = _check_level("sample_size", alpha, tau)
    q = p + delta
    v = p * (1 - p) + q * (1 - q)
    z = statistics.NormalDist().inv_cdf(goal)

    def enough(n: int) -> bool:
        sd = math.sqrt(v / n)
        return (abs(delta) - float(cs_radius(v / n, tau, alpha))) / sd >= z

    high = 2
    while not enough(high):
        high *= 2
        if high > 1 << 40:
            raise ValueError(f"sample_size: no size up to 2**40 reaches power {power} for delta {delta}")
    low = high // 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high
