"""The panels of the main metric figure, drawn onto given axes: a paired plot of one metric
(variants on the x axis, one line per seed joining that seed's values, the variant's mean as a
coloured bar, † above a significant improvement) and the primary metric's paired Δ against the
baseline (each seed's difference, the mean difference and its confidence interval). The y axes zoom
to the data, so a difference of a few points is visible."""

from __future__ import annotations

import math
from typing import Any

from stitch.report.figure_style import series_color
from stitch.report.labels import DAGGER, DELTA, metric_label
from stitch.report.results import ExperimentResults
from stitch.stats import summarize

#: the colour of the per-seed lines and dots (neutral: the palette marks variants)
SEED_COLOR = "0.55"


def _variant_ticks(ax: Any, names: list[str]) -> None:
    many = len(names) > 2
    ax.set_xticks(range(len(names)), names, rotation=35 if many else 0, ha="right" if many else "center")
    ax.set_xlim(-0.5, len(names) - 0.5)


def _zoom(ax: Any, values: list[float]) -> None:
    """The y axis around ``values`` (not from 0: a few points of difference stay visible), with
    room above for a dagger."""
    if not values:
        return
    lo, hi = min(values), max(values)
    span = (hi - lo) or max(abs(hi), 1.0) * 0.02
    ax.set_ylim(lo - 0.1 * span, hi + 0.22 * span)


def metric_axis_label(res: ExperimentResults, metric: str) -> str:
    """``mIoU (%)`` for a metric shown in %, else the metric's label."""
    return metric_label(metric) + (" (%)" if res.scale.get(metric) == 100.0 else "")


def draw_paired(ax: Any, res: ExperimentResults, metric: str) -> None:
    """One panel of ``metric``: a line per seed through the variants that have it (``gid``
    ``seed <n>``), the variant means as short coloured bars, † above significant variants."""
    sc = res.scale.get(metric, 1.0)
    names = [v.name for v in res.variants]
    seeds = sorted({s for v in res.variants for s in v.values(metric)})
    for seed in seeds:
        pts = [
            (i, v.values(metric)[seed] * sc) for i, v in enumerate(res.variants) if seed in v.values(metric)
        ]
        (line,) = ax.plot(
            [x for x, _ in pts],
            [y for _, y in pts],
            color=SEED_COLOR,
            linewidth=0.7,
            marker="o",
            markersize=2.5,
            zorder=2,
        )
        line.set_gid(f"seed {seed}")
    for i, v in enumerate(res.variants):
        vals = [x * sc for x in v.values(metric).values()]
        if not vals:
            continue
        mean = summarize(vals).mean
        ax.plot(
            [i - 0.22, i + 0.22], [mean, mean], color=series_color(i, v.variant.is_baseline), lw=2.2, zorder=3
        )
        if res.significant(metric, v.name):
            ax.annotate(
                DAGGER, (i, max(vals)), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom"
            )
    _zoom(ax, [x * sc for v in res.variants for x in v.values(metric).values()])
    _variant_ticks(ax, names)
    ax.set_ylabel(metric_axis_label(res, metric))
    ax.grid(axis="y", alpha=0.3)


def draw_deltas(ax: Any, res: ExperimentResults, metric: str) -> bool:
    """The paired Δ of ``metric`` against the reference per variant: each seed's difference (grey
    dots), the mean difference in the variant's colour with its t-interval where there is one, a
    line at 0. Oriented as the tables' Δ (positive: better). False when there is no reference."""
    tests = res.tests.get(metric, {})
    if res.reference is None or not tests:
        return False
    sc = res.scale.get(metric, 1.0)
    others = [(i, v) for i, v in enumerate(res.variants) if v is not res.reference]
    ax.axhline(0.0, color=series_color(0, True), linewidth=0.8, zorder=1)
    for x, (i, v) in enumerate(others):
        t = tests.get(v.name)
        if t is None:
            continue
        diffs = [d * sc for d in t.diffs]
        shift = 0.0  # one seed: its difference is the mean (the diamond), on the tick
        if len(diffs) > 1:
            ax.plot([x] * len(diffs), diffs, "o", color=SEED_COLOR, markersize=2.5, zorder=2)
            shift = 0.18
        lo, hi = (c * sc for c in t.ci)
        color = series_color(i)
        if math.isnan(t.mean_diff):
            continue
        if not (math.isnan(lo) or math.isnan(hi)):
            mean = t.mean_diff * sc
            yerr = [[mean - lo], [hi - mean]]
            ax.errorbar(x + shift, mean, yerr=yerr, fmt="D", color=color, markersize=3.5, capsize=2, zorder=3)
        else:
            ax.plot(x + shift, t.mean_diff * sc, "D", color=color, markersize=3.5, zorder=3)
    _variant_ticks(ax, [v.name for _, v in others])
    ax.margins(y=0.12)
    unit = " (points)" if sc == 100.0 else ""
    ax.set_ylabel(f"{DELTA} {metric_label(metric)}{unit}")
    level = next(iter(tests.values())).level
    with_ci = any(not math.isnan(t.ci[0]) for t in tests.values())
    one_seed = all(t.n <= 1 for t in tests.values())
    no_ci = "\nno CI" + (" (1 seed)" if one_seed else "")
    ax.set_title(f"vs {res.reference.name}" + (f"\n{level * 100:g} % CI" if with_ci else no_ci))
    ax.grid(axis="y", alpha=0.3)
    return True
