"""The noise floor of a seed design: the smallest paired difference a paired t-test over ``n``
seeds detects with a given power, and the number of seeds a named difference needs.

No torch. The power of a paired t-test with ``n`` pairs whose differences have standard deviation
``sd``, for a true mean difference ``delta > 0``, uses the noncentral t distribution
(:data:`scipy.stats.nct`) with ``df = n - 1`` and noncentrality ``delta * sqrt(n) / sd``:

- one-sided (``alternative="greater"``, the report's default): ``P(T > t_{1-alpha, df})``;
- two-sided: ``P(T > t_{1-alpha/2, df}) + P(T < -t_{1-alpha/2, df})``.

The search for the smallest effect starts at 0 (power alpha) and doubles the bracket until the power
is reached, so the root is the first crossing.

:func:`min_detectable_effect` solves ``power(delta) = power`` for ``delta`` (Brent's method);
:func:`seeds_needed` is the smallest ``n`` (at least :data:`stitch.stats.MIN_PAIRS`) whose power
reaches the target. The report applies the t-test formulas also when it runs the Wilcoxon test
(whose power is close to the t-test's for normal differences, and lower for very few seeds; the
caption names the t-test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from stitch.stats import MIN_PAIRS, Alternative

DEFAULT_POWER = 0.8
MAX_SEEDS = 1000  # seeds_needed gives up (returns None) above this


def t_test_power(
    delta: float, sd: float, n: int, alpha: float, alternative: Alternative = "greater"
) -> float:
    """Power of a paired t-test with ``n`` pairs (differences of std ``sd``) for a true ``delta``."""
    from scipy.stats import nct, t

    if n < 2 or sd <= 0 or math.isnan(sd):
        return math.nan
    df, nc = n - 1, delta * math.sqrt(n) / sd
    if alternative == "greater":
        return float(nct.sf(t.ppf(1 - alpha, df), df, nc))
    crit = float(t.ppf(1 - alpha / 2, df))
    # the lower tail P(T < -crit | nc) as P(T > crit | -nc): scipy's cdf gives NaN for some large nc
    return float(nct.sf(crit, df, nc) + nct.sf(crit, df, -nc))


def min_detectable_effect(
    sd: float, n: int, alpha: float, power: float = DEFAULT_POWER, alternative: Alternative = "greater"
) -> float:
    """The smallest true mean difference detected with probability ``power`` (NaN when ``n < 2``
    or ``sd`` is not positive), in the units of ``sd``."""
    from scipy.optimize import brentq

    if n < 2 or not sd > 0:
        return math.nan
    f = lambda d: t_test_power(d, sd, n, alpha, alternative) - power
    high = sd
    while f(high) < 0:
        high *= 2
    return float(brentq(f, 0.0, high, xtol=1e-12 * sd, rtol=1e-12))


def seeds_needed(
    delta: float,
    sd: float,
    alpha: float,
    power: float = DEFAULT_POWER,
    alternative: Alternative = "greater",
    max_seeds: int = MAX_SEEDS,
) -> int | None:
    """The smallest number of paired seeds (at least :data:`MIN_PAIRS`) whose paired t-test
    detects ``delta`` with probability ``power``; None when ``max_seeds`` do not suffice."""
    if not sd > 0 or not delta > 0:
        return None
    for n in range(MIN_PAIRS, max_seeds + 1):
        if t_test_power(delta, sd, n, alpha, alternative) >= power:
            return n
    return None


def pooled_sd(samples: Sequence[Sequence[float]]) -> float:
    """Pooled sample standard deviation of several samples (each weighted by its ``n - 1``);
    NaN when no sample has two values."""
    num, den = 0.0, 0
    for s in samples:
        v = np.asarray(s, dtype=float)
        if v.size >= 2:
            num += float(np.var(v, ddof=1)) * (v.size - 1)
            den += v.size - 1
    return math.sqrt(num / den) if den else math.nan
