"""stitch.stats against scipy on known numbers, and Holm's correction on a hand-worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from stitch.stats import compare_to_reference, describe_test, holm, paired_test, summarize, wilcoxon_floor

BASE = {0: 0.70, 1: 0.72, 2: 0.71, 3: 0.69, 4: 0.73, 5: 0.68}
BETTER = {0: 0.75, 1: 0.78, 2: 0.765, 3: 0.742, 4: 0.79, 5: 0.725}


def test_summary_is_mean_and_sample_std() -> None:
    s = summarize([0.70, 0.72, 0.71])
    assert s.mean == pytest.approx(0.71)
    assert s.std == pytest.approx(np.std([0.70, 0.72, 0.71], ddof=1)) == pytest.approx(0.01)
    assert s.n == 3 and s.has_std
    one = summarize([0.5])
    assert one.mean == 0.5 and math.isnan(one.std) and not one.has_std
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)
    assert summarize([0.5, float("nan"), 0.7]).n == 2  # NaNs dropped


@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_paired_t_test_matches_scipy(alternative: str) -> None:
    r = paired_test(BASE, BETTER, "ttest", alternative)
    seeds = sorted(BASE)
    ref = st.ttest_rel([BETTER[s] for s in seeds], [BASE[s] for s in seeds], alternative=alternative)
    assert r.tested and r.n == 6 and r.seeds == seeds
    assert r.statistic == pytest.approx(ref.statistic)
    assert r.p == pytest.approx(ref.pvalue)
    assert r.mean_diff == pytest.approx(np.mean([BETTER[s] - BASE[s] for s in seeds]))


@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_wilcoxon_matches_scipy(alternative: str) -> None:
    worse_in_one = {**BETTER, 3: 0.685}
    r = paired_test(BASE, worse_in_one, "wilcoxon", alternative)
    seeds = sorted(BASE)
    ref = st.wilcoxon([worse_in_one[s] for s in seeds], [BASE[s] for s in seeds], alternative=alternative)
    assert r.tested and r.statistic == pytest.approx(ref.statistic) and r.p == pytest.approx(ref.pvalue)
    # exact distribution: all six differences positive gives 1/2^6 one-sided
    assert paired_test(BASE, BETTER, "wilcoxon", "greater").p == pytest.approx(1 / 64)
    assert wilcoxon_floor(6, "greater") == pytest.approx(1 / 64)
    assert wilcoxon_floor(3, "greater") == pytest.approx(0.125) and wilcoxon_floor(
        5, "two-sided"
    ) == pytest.approx(1 / 16)


def test_pairing_is_by_seed_and_only_common_seeds_count() -> None:
    variant = {
        5: BETTER[5],
        1: BETTER[1],
        0: BETTER[0],
        9: 0.99,
    }  # order does not matter, seed 9 has no partner
    r = paired_test(BASE, variant)
    ref = st.ttest_rel([BETTER[s] for s in (0, 1, 5)], [BASE[s] for s in (0, 1, 5)], alternative="greater")
    assert r.seeds == [0, 1, 5] and r.n == 3
    assert r.unpaired == [2, 3, 4, 9]
    assert r.p == pytest.approx(ref.pvalue)


def test_fewer_than_three_pairs_runs_no_test() -> None:
    r = paired_test({0: 0.5, 1: 0.6}, {0: 0.9, 1: 0.95, 2: 0.9})
    assert not r.tested and math.isnan(r.p) and r.n == 2
    assert "2 paired seeds" in r.reason and "at least 3" in r.reason
    assert not r.significant(0.05)


def test_zero_variance_differences() -> None:
    same = paired_test(BASE, BASE)
    assert same.tested and same.p == 1.0 and same.reason == "identical values" and not same.significant(0.05)
    same_w = paired_test(BASE, BASE, "wilcoxon")
    assert same_w.p == 1.0 and same_w.reason == "identical values"
    shifted = {s: v + 0.01 for s, v in BASE.items()}
    up = paired_test(BASE, shifted)
    assert up.p == pytest.approx(0.0, abs=1e-12) and "constant" in up.reason
    down = paired_test(shifted, BASE)
    assert down.p == pytest.approx(1.0) and not down.significant(0.05)
    # Wilcoxon drops zero differences; with two non-zero ones left there is no test
    two = paired_test({0: 1, 1: 1, 2: 1, 3: 1}, {0: 1, 1: 1, 2: 2, 3: 2}, "wilcoxon")
    assert not two.tested and "non-zero" in two.reason


def test_lower_is_better_flips_the_direction() -> None:
    loss_base = {s: 1 - v for s, v in BASE.items()}
    loss_var = {s: 1 - v for s, v in BETTER.items()}
    r = paired_test(loss_base, loss_var, higher_is_better=False)
    assert r.mean_diff > 0 and r.p == pytest.approx(paired_test(BASE, BETTER).p)


def test_holm_hand_worked_example() -> None:
    # m = 4; sorted p: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN (not tested) is neither adjusted nor counted: m = 2
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1 and monotone
    assert holm([]) == []
    # at alpha = 0.05 Holm rejects the two smallest here, Bonferroni (x4) only the smallest
    assert [p < 0.05 for p in holm([0.01, 0.04, 0.03, 0.005])] == [True, False, False, True]


def test_compare_to_reference_holm_over_tested_variants_only() -> None:
    values = {
        "Baseline": BASE,
        "+A": BETTER,
        "+B": {s: v + (0.002 if s % 2 else -0.001) for s, v in BASE.items()},
        "+C": {0: 0.9, 1: 0.9},  # two seeds: not tested, not in the family
        "+D": {s: v - 0.03 + 0.001 * s for s, v in BASE.items()},  # clearly worse
    }
    res = compare_to_reference(values, "Baseline")
    assert set(res) == {"+A", "+B", "+C", "+D"}
    raw = [res[n].p for n in ("+A", "+B", "+D")]
    for n, adj in zip(("+A", "+B", "+D"), holm(raw)):
        assert res[n].p_holm == pytest.approx(adj)
    assert res["+A"].p_holm == pytest.approx(3 * res["+A"].p)  # the smallest of three tested
    assert not res["+C"].tested and math.isnan(res["+C"].p_holm)
    assert res["+A"].significant(0.05) and not res["+B"].significant(0.05) and not res["+D"].significant(0.05)
    # two-sided: a significantly *worse* variant gets no improvement mark
    two = compare_to_reference(values, "Baseline", alternative="two-sided")
    assert two["+D"].p_holm < 0.05 and not two["+D"].significant(0.05)
    with pytest.raises(KeyError):
        compare_to_reference(values, "nope")


def test_bad_arguments_and_description() -> None:
    with pytest.raises(ValueError):
        paired_test(BASE, BETTER, "anova")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        paired_test(BASE, BETTER, alternative="less")  # type: ignore[arg-type]
    assert (
        describe_test("wilcoxon", "two-sided", 0.01)
        == "two-sided Wilcoxon signed-rank test over seeds, Holm-corrected, \u03b1 = 0.01"
    )


# ---------------------------------------------------------------------------- intervals and power
DIFFS = [0.050, 0.060, 0.055, 0.052, 0.041]


def test_t_interval_matches_scipy() -> None:
    from stitch.stats import t_interval

    d = np.asarray(DIFFS)
    for level in (0.95, 0.9):
        ref = st.t.interval(level, d.size - 1, loc=d.mean(), scale=st.sem(d))
        assert t_interval(d, level) == pytest.approx(ref)
    assert all(math.isnan(x) for x in t_interval([0.1]))
    assert t_interval([0.02, 0.02, 0.02]) == (0.02, 0.02)  # equal differences: zero width


def test_bootstrap_interval_matches_scipy_and_is_reproducible() -> None:
    from stitch.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_interval

    ref = st.bootstrap(
        (np.asarray(DIFFS),),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    ).confidence_interval
    assert bootstrap_interval(DIFFS) == pytest.approx((ref.low, ref.high))
    assert bootstrap_interval(DIFFS) == bootstrap_interval(DIFFS)  # fixed seed
    # resampling paired seeds = resampling the differences: scipy's paired two-sample bootstrap agrees
    a, b = np.asarray(list(BETTER.values())), np.asarray(list(BASE.values()))
    paired = st.bootstrap(
        (a, b),
        lambda x, y, axis=-1: np.mean(x - y, axis=axis),
        paired=True,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    ).confidence_interval
    assert bootstrap_interval(a - b) == pytest.approx((paired.low, paired.high))
    low, high = bootstrap_interval(DIFFS)
    assert min(DIFFS) <= low < np.mean(DIFFS) < high <= max(DIFFS)


def test_paired_test_carries_the_intervals() -> None:
    from stitch.stats import bootstrap_interval, t_interval

    r = paired_test(BASE, BETTER, level=0.9)
    diffs = [BETTER[s] - BASE[s] for s in sorted(BASE)]
    assert r.diffs == pytest.approx(diffs) and r.level == 0.9
    assert r.ci == pytest.approx(t_interval(diffs, 0.9)) and r.bootstrap_ci == pytest.approx(
        bootstrap_interval(diffs, 0.9)
    )
    lower = paired_test(
        {s: 1 - v for s, v in BASE.items()}, {s: 1 - v for s, v in BETTER.items()}, higher_is_better=False
    )
    assert lower.ci == pytest.approx(t_interval(diffs))  # oriented: positive is better


def _power(delta: float, sd: float, n: int, alpha: float, two_sided: bool) -> float:
    """An independent power computation (noncentral t) to check stitch.stats_power against."""
    df, nc = n - 1, delta / (sd / np.sqrt(n))
    if not two_sided:
        return 1 - st.nct.cdf(st.t.isf(alpha, df), df, nc)
    c = st.t.isf(alpha / 2, df)
    return 1 - st.nct.cdf(c, df, nc) + np.nan_to_num(st.nct.cdf(-c, df, nc))  # NaN where it underflows


@pytest.mark.parametrize(("alternative", "two_sided"), [("greater", False), ("two-sided", True)])
def test_min_detectable_effect_matches_a_noncentral_t_power_computation(alternative, two_sided) -> None:
    from scipy.optimize import root_scalar

    from stitch.stats_power import min_detectable_effect, t_test_power

    for sd, n, alpha in [(0.01, 3, 0.05), (0.0056, 4, 0.05), (1.0, 10, 0.01)]:
        mde = min_detectable_effect(sd, n, alpha, 0.8, alternative)
        ref = root_scalar(
            lambda d, sd=sd, n=n, alpha=alpha: _power(d, sd, n, alpha, two_sided) - 0.8,
            bracket=[1e-9, 10 * sd],
            xtol=1e-14,
        ).root
        assert mde == pytest.approx(ref, rel=1e-6)
        assert t_test_power(mde, sd, n, alpha, alternative) == pytest.approx(0.8)
    # a larger design detects smaller effects
    assert min_detectable_effect(1.0, 10, 0.05) < min_detectable_effect(1.0, 5, 0.05)
    assert math.isnan(min_detectable_effect(1.0, 1, 0.05)) and math.isnan(min_detectable_effect(0.0, 5, 0.05))


def test_seeds_needed_matches_the_textbook_numbers() -> None:
    from stitch.stats_power import MAX_SEEDS, seeds_needed

    # Cohen's d = 0.5, alpha = 0.05, 80 % power: 27 pairs one-sided, 34 two-sided (G*Power)
    assert seeds_needed(0.5, 1.0, 0.05) == 27
    assert seeds_needed(0.5, 1.0, 0.05, alternative="two-sided") == 34
    n = seeds_needed(0.01, 0.008, 0.05)
    assert n is not None and _power(0.01, 0.008, n, 0.05, False) >= 0.8 > _power(
        0.01, 0.008, n - 1, 0.05, False
    )
    assert seeds_needed(10.0, 1.0, 0.05) == 3  # never fewer than a test needs
    assert seeds_needed(1e-6, 1.0, 0.05) is None and MAX_SEEDS == 1000


def test_pooled_sd() -> None:
    from stitch.stats_power import pooled_sd

    a, b = [1.0, 2.0, 4.0], [3.0, 3.5]
    ref = np.sqrt((np.var(a, ddof=1) * 2 + np.var(b, ddof=1)) / 3)
    assert pooled_sd([a, b, [7.0]]) == pytest.approx(ref)
    assert math.isnan(pooled_sd([[1.0], []]))


def test_seeds_images_bootstrap_matches_scipy_for_one_seed() -> None:
    """One seed: the bootstrap over images is scipy's paired percentile bootstrap of the pooled
    metric difference (resampling images, both arms together)."""
    from scipy.stats import bootstrap

    from stitch.stats_images import seeds_images_interval

    rng = np.random.default_rng(3)
    n = 12
    ref = rng.integers(20, 200, size=(n, 2, 2))
    var = ref.copy()
    var[:, 1, 1] += rng.integers(0, 30, size=n)  # more true positives, image by image
    var[:, 1, 0] = np.maximum(var[:, 1, 0] - 5, 0)

    def fg_iou(m: np.ndarray) -> np.ndarray:
        tp, fp, fn = m[..., 1, 1], m[..., 0, 1], m[..., 1, 0]
        return tp / (tp + fp + fn)

    def pooled_diff(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.asarray(idx, dtype=int)
        return fg_iou(var[idx].sum(-3)) - fg_iou(ref[idx].sum(-3))

    ours = seeds_images_interval({0: var.tolist()}, {0: ref.tolist()}, fg_iou, level=0.95, resamples=4000)
    theirs = bootstrap(
        (np.arange(n),),
        lambda i, axis=-1: pooled_diff(i),
        vectorized=False,
        n_resamples=4000,
        method="percentile",
        rng=np.random.default_rng(1),
    ).confidence_interval
    width = theirs.high - theirs.low
    assert ours[0] == pytest.approx(theirs.low, abs=0.1 * width)
    assert ours[1] == pytest.approx(theirs.high, abs=0.1 * width)
    assert ours[0] < pooled_diff(np.arange(n)) < ours[1]


def test_seeds_images_bootstrap_widens_with_image_noise_and_handles_missing() -> None:
    from stitch.stats_images import seeds_images_interval

    def fg_iou(m: np.ndarray) -> np.ndarray:
        tp, fp, fn = m[..., 1, 1], m[..., 0, 1], m[..., 1, 0]
        return tp / (tp + fp + fn)

    same = [[[50, 5], [5, 50]]] * 6
    # identical images: resampling images changes nothing, only the seeds' spread remains
    var = {s: [[[50, 5], [4 - s, 51 + s]]] * 6 for s in range(3)}
    low, high = seeds_images_interval(var, dict.fromkeys(range(3), same), fg_iou)
    assert 0 < low <= high
    assert np.isnan(seeds_images_interval(var, {9: same}, fg_iou)[0])  # no common seed
    assert np.isnan(seeds_images_interval({0: same}, {0: same[:3]}, fg_iou)[0])  # image counts differ
    uneven = {0: same, 1: same[:3]}  # the runs of one arm scored on different numbers of images
    assert np.isnan(seeds_images_interval(uneven, dict.fromkeys(range(2), same), fg_iou)[0])
