"""Statistics over paired seeds: mean ± std, paired tests against a reference, Holm correction.

No torch. Conventions (the report's captions say the same):

- **Spread**: mean and *sample* standard deviation (``ddof=1``) over the seeds of one variant; with
  one seed the standard deviation is undefined (NaN) and the table shows the mean alone.
- **Pairing**: a variant is compared with the reference (the ``Baseline`` variant) on the seeds
  present in both, so seed ``s`` of the variant meets seed ``s`` of the baseline (same initial
  baseline weights, same data order: see docs/stitching.md, "Guarantees"). Seeds in only one of
  the two are left out of the test (and counted in ``PairedTest.unpaired``).
- **Test**: paired t-test (:func:`scipy.stats.ttest_rel`, the default) or Wilcoxon signed-rank
  (:func:`scipy.stats.wilcoxon`, exact distribution for small n) on ``variant - baseline``.
- **Direction**: one-sided by default (``alternative="greater"``: "the variant improves on the
  baseline"). The tables mark only significant *improvements* (†), and the one-sided test is the
  test of exactly that claim. ``alternative="two-sided"`` is available; then a † still needs the
  mean difference to point the right way. For a metric where lower is better pass
  ``higher_is_better=False`` (the differences are negated, so "greater" still means "better").
- **Minimum**: with fewer than :data:`MIN_PAIRS` (3) paired seeds no test is run: ``p`` is NaN,
  ``tested`` is False and ``reason`` says why; the report then claims no significance.
  Note that an exact Wilcoxon test cannot reach p < 0.05 with fewer than 5 pairs one-sided (its
  smallest p is 1/2^n) or 6 two-sided; :func:`wilcoxon_floor` gives that floor and the report
  mentions it.
- **Zero variance**: when every paired difference is exactly 0 (identical values) there is no
  evidence of any difference; both tests are undefined there (scipy returns NaN or warns), and we
  return ``p = 1`` with ``reason = "identical values"``. When the differences are equal but not
  zero (a constant shift), the t statistic is infinite and scipy gives p = 0 (one-sided in the
  shift's direction) or 1 (against it); we keep that value and say so in ``reason``.
  The Wilcoxon test drops zero differences (``zero_method="wilcox"``); when fewer than 3
  non-zero differences remain, no test is run.
- **Intervals**: next to the test, the mean paired difference gets a two-sided confidence interval
  at ``level`` (the report passes ``1 - report.alpha``): a t-interval over the seeds
  (:func:`t_interval`, :data:`scipy.stats.t`) and a percentile bootstrap over the seeds
  (:func:`bootstrap_interval`, :func:`scipy.stats.bootstrap` with a fixed seed, so tables are
  reproducible). Resampling the paired differences resamples whole seeds (both runs of a pair
  together). Both need at least 2 pairs (else NaN); equal differences give a zero-width interval.
- **Multiplicity**: Holm's step-down correction over the variants compared in one table column
  (one metric), :func:`holm`. scipy has no Holm (``false_discovery_control`` is Benjamini-Hochberg
  / -Yekutieli, which control the FDR, not the family-wise error) and statsmodels is not a
  dependency, so it is implemented here (a few lines, tested against a hand-worked example).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

MIN_PAIRS = 3
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # fixed, so a report is the same every time it is written
Test = Literal["ttest", "wilcoxon"]
Alternative = Literal["greater", "two-sided"]
TEST_NAMES = {"ttest": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1) of one variant's values over seeds."""

    mean: float
    std: float
    n: int

    @property
    def has_std(self) -> bool:
        return self.n >= 2 and not math.isnan(self.std)


def summarize(values: Iterable[float]) -> Summary:
    """Mean ± sample std (``ddof=1``); NaN std for one value, NaN mean for none. NaNs are dropped."""
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return Summary(math.nan, math.nan, 0)
    std = float(np.std(v, ddof=1)) if v.size >= 2 else math.nan
    return Summary(float(np.mean(v)), std, int(v.size))


@dataclass
class PairedTest:
    """A variant against the reference on their common seeds."""

    test: Test
    alternative: Alternative
    seeds: list[int]  # the paired seeds, sorted
    n: int  # len(seeds)
    mean_diff: float  # mean of (variant - reference), in the metric's own scale
    statistic: float = math.nan
    p: float = math.nan  # raw p-value (NaN when no test was run)
    p_holm: float = math.nan  # after Holm over the family (set by compare_to_reference)
    tested: bool = False
    reason: str = ""  # why no test was run, or a remark (identical values …)
    unpaired: list[int] = field(default_factory=list)  # seeds in only one of the two
    diffs: list[float] = field(default_factory=list)  # the oriented paired differences, in seed order
    level: float = 0.95  # confidence level of the intervals (two-sided)
    ci: tuple[float, float] = (math.nan, math.nan)  # t-interval of mean_diff over seeds
    bootstrap_ci: tuple[float, float] = (math.nan, math.nan)  # percentile bootstrap over seeds

    def significant(self, alpha: float) -> bool:
        """Significantly *better* than the reference after Holm (needs a test and the right sign)."""
        return self.tested and not math.isnan(self.p_holm) and self.p_holm < alpha and self.mean_diff > 0


def paired_test(
    reference: Mapping[int, float],
    variant: Mapping[int, float],
    test: Test = "ttest",
    alternative: Alternative = "greater",
    higher_is_better: bool = True,
    level: float = 0.95,
) -> PairedTest:
    """Test ``variant`` against ``reference`` (``{seed: value}`` each) on their common seeds.

    ``mean_diff`` (and its intervals at ``level``) is oriented so that positive means better
    (``variant - reference``, negated when ``higher_is_better`` is False). See the module
    docstring for the conventions.
    """
    if test not in TEST_NAMES:
        raise ValueError(f"unknown test {test!r} (ttest or wilcoxon)")
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"unknown alternative {alternative!r} (greater or two-sided)")
    ok = lambda x: x is not None and not math.isnan(float(x))
    ref = {int(s): float(x) for s, x in reference.items() if ok(x)}
    var = {int(s): float(x) for s, x in variant.items() if ok(x)}
    seeds = sorted(set(ref) & set(var))
    unpaired = sorted(set(ref) ^ set(var))
    sign = 1.0 if higher_is_better else -1.0
    diffs = np.asarray([sign * (var[s] - ref[s]) for s in seeds], dtype=float)
    out = PairedTest(
        test,
        alternative,
        seeds,
        len(seeds),
        float(diffs.mean()) if seeds else math.nan,
        unpaired=unpaired,
        diffs=diffs.tolist(),
        level=level,
        ci=t_interval(diffs, level),
        bootstrap_ci=bootstrap_interval(diffs, level),
    )
    if len(seeds) < MIN_PAIRS:
        out.reason = (
            f"{len(seeds)} paired seed{'s' if len(seeds) != 1 else ''} (a test needs at least {MIN_PAIRS})"
        )
        return out
    if np.all(diffs == 0):
        out.tested, out.p, out.statistic, out.reason = True, 1.0, math.nan, "identical values"
        return out
    a, b = sign * np.asarray([var[s] for s in seeds]), sign * np.asarray([ref[s] for s in seeds])
    with warnings.catch_warnings():
        # scipy warns about "catastrophic cancellation" for (near-)constant differences; the
        # result is still the right limit (t = ±inf) and is flagged in ``reason`` below.
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "ttest":
            from scipy.stats import ttest_rel

            res = ttest_rel(a, b, alternative=alternative)
        else:
            nonzero = int(np.count_nonzero(diffs))
            if nonzero < MIN_PAIRS:
                out.reason = (
                    f"{nonzero} non-zero paired differences "
                    f"(Wilcoxon drops zeros; a test needs at least {MIN_PAIRS})"
                )
                return out
            from scipy.stats import wilcoxon

            res = wilcoxon(a, b, alternative=alternative, zero_method="wilcox")
    out.statistic, out.p, out.tested = float(res.statistic), float(res.pvalue), True
    if test == "ttest" and np.all(diffs == diffs[0]):
        out.reason = "constant non-zero difference (t is infinite)"
    return out


def t_interval(diffs: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided t confidence interval of the mean of ``diffs`` at ``level`` (NaN for < 2 values).

    ``mean ± t_{(1+level)/2, n-1} * s / sqrt(n)`` with the sample std ``s`` (``ddof=1``), as
    ``scipy.stats.t.interval(level, n - 1, loc=mean, scale=s / sqrt(n))``.
    """
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return math.nan, math.nan
    mean, sem = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(d.size)
    if sem == 0.0:
        return mean, mean
    from scipy.stats import t

    low, high = t.interval(level, d.size - 1, loc=mean, scale=sem)
    return float(low), float(high)


def bootstrap_interval(
    diffs: Sequence[float] | np.ndarray, level: float = 0.95, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the paired ``diffs`` at ``level`` (resampling
    seeds, :data:`BOOTSTRAP_RESAMPLES` times, from a fixed ``seed``); NaN for < 2 values."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    from scipy.stats import bootstrap

    res = bootstrap(
        (d,),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order; NaNs stay NaN and are not counted.

    Sort the m valid p-values ascending, p_(1) <= ... <= p_(m); the adjusted value of p_(i) is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))`` (step-down, monotone). Rejecting where the
    adjusted value is below alpha is Holm's procedure at family-wise level alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out.tolist()
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out.tolist()


def compare_to_reference(
    values: Mapping[str, Mapping[int, float]],
    reference: str,
    test: Test = "ttest",
    alternative: Alternative = "greater",
    higher_is_better: bool = True,
    level: float = 0.95,
) -> dict[str, PairedTest]:
    """Paired test of every variant in ``values`` (``{variant: {seed: value}}``) against
    ``reference``, with Holm's correction over the variants actually tested (one family), and
    intervals of each mean difference at ``level``."""
    if reference not in values:
        raise KeyError(f"reference {reference!r} has no values")
    results = {
        name: paired_test(values[reference], vals, test, alternative, higher_is_better, level)
        for name, vals in values.items()
        if name != reference
    }
    names = [n for n, r in results.items() if r.tested]
    for name, adj in zip(names, holm([results[n].p for n in names])):
        results[name].p_holm = adj
    return results


def wilcoxon_floor(n: int, alternative: Alternative = "greater") -> float:
    """The smallest p an exact Wilcoxon signed-rank test can give with n non-zero pairs."""
    if n <= 0:
        return 1.0
    return min(1.0, (1 if alternative == "greater" else 2) / 2**n)


def describe_test(test: Test, alternative: Alternative, alpha: float) -> str:
    """``one-sided paired t-test, Holm-corrected, alpha = 0.05`` (plain text, for captions)."""
    side = "one-sided" if alternative == "greater" else "two-sided"
    return f"{side} {TEST_NAMES[test]} over seeds, Holm-corrected, \u03b1 = {alpha:g}"
