"""Effect sizes in the tables: the ``Δ [CI]`` column of the primary metric (mean paired difference
to the baseline with its t-interval), the per-seed values and intervals of the CSV, the noise
floor of the design (the smallest Δ its seeds detect, :mod:`stitch.stats_power`) and its caption
sentence, and which means are bold (``report.bold``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stitch.report.columns import metric_latex
from stitch.report.labels import DAGGER, DASH, DELTA, metric_label
from stitch.report.results import ExperimentResults, VariantRuns
from stitch.report.table import Cell, Column, Row, bold_best, latex_escape, signed_fixed, siunitx_num
from stitch.stats import MIN_PAIRS, PairedTest, summarize
from stitch.stats_images import seeds_images_interval
from stitch.stats_power import DEFAULT_POWER, min_detectable_effect, pooled_sd, seeds_needed


def level_text(level: float) -> str:
    """``95 %`` for a level of 0.95."""
    return f"{round(level * 100, 6):g} %"


def ci_header(res: ExperimentResults) -> str:
    """``ΔmIoU (pp) [95 % CI]``: the header of the primary metric's difference column."""
    p = res.primary
    unit = " (pp)" if res.scale.get(p) == 100.0 else ""
    return f"{DELTA}{metric_label(p)}{unit} [{level_text(1 - res.alpha)} CI]"


def ci_column(res: ExperimentResults, key: str = "diff") -> Column:
    """The ``Δ [CI]`` column (``key`` ``diff`` in both tables)."""
    p = res.primary
    latex = latex_escape(ci_header(res)).replace(latex_escape(metric_label(p)), metric_latex(p), 1)
    return Column(key, ci_header(res), latex)


def ci_cell(res: ExperimentResults, v: VariantRuns, t: PairedTest | None) -> Cell:
    """``+5.43 [+4.73, +6.12]``: the mean paired difference of the primary metric to the reference
    and its t-interval (the difference alone for one pair, a dash for the reference or none)."""
    assert res.reference is not None
    p, d = res.primary, res.exp.cfg.report.decimals
    scale = res.scale.get(p, 1.0)
    seeds = t.seeds if t else []
    ids = (v.ids_for(seeds) + res.reference.ids_for(seeds)) if t else []
    src = (
        f"{res.source}.{p} (paired by seed): mean difference and its "
        f"{level_text(1 - res.alpha)} t-interval over seeds"
    )
    if t is None or not t.seeds:
        return Cell(DASH, "--", run_ids=ids, seeds=seeds, source=src)
    mean = signed_fixed(t.mean_diff * scale, d)
    if math.isnan(t.ci[0]):
        return Cell(mean, f"\\({siunitx_num(mean)}\\)", run_ids=ids, seeds=seeds, source=src)
    low, high = (signed_fixed(x * scale, d) for x in t.ci)
    return Cell(
        f"{mean} [{low}, {high}]",
        f"\\({siunitx_num(mean)}\\ [{siunitx_num(low)}, {siunitx_num(high)}]\\)",
        run_ids=ids,
        seeds=seeds,
        source=src,
    )


def delta_column(res: ExperimentResults) -> Column:
    """The ``ΔmIoU (pp)`` column (key ``delta``): the mean paired difference alone, for narrow tables."""
    p = res.primary
    unit = " (pp)" if res.scale.get(p) == 100.0 else ""
    return Column("delta", f"{DELTA}{metric_label(p)}{unit}", latex_escape(DELTA) + metric_latex(p) + unit)


def delta_cell(res: ExperimentResults, v: VariantRuns, t: PairedTest | None) -> Cell:
    """The mean paired difference of :func:`ci_cell` without its interval."""
    full = ci_cell(res, v, t)
    text, latex = full.text.split(" [")[0], full.latex.split("\\ [")[0]
    if latex != full.latex:
        latex += "\\)"
    return Cell(text, latex, run_ids=full.run_ids, seeds=full.seeds, source=full.source)


def ci_sentence(res: ExperimentResults) -> str:
    """What the ``Δ [CI]`` column shows; empty without a reference."""
    if res.reference is None:
        return ""
    pp = " in percentage points" if res.scale.get(res.primary) == 100.0 else ""
    return (
        f"{DELTA}{metric_label(res.primary)}: mean paired difference to {res.reference.name} over seeds{pp}, "
        f"with its two-sided {level_text(1 - res.alpha)} t-interval [CI] (bootstrap intervals over "
        + (
            "seeds and over seeds x test images"
            if res.primary in IMAGE_METRICS and any(v.per_image() for v in res.variants)
            else "seeds"
        )
        + " are in the CSV)."
    )


def effect_records(res: ExperimentResults, v: VariantRuns, metric: str) -> dict[str, Any]:
    """The CSV fields of one variant and metric: its value per seed, and (against the reference)
    the mean paired difference with its t- and bootstrap intervals (stored scale, unrounded)."""
    out: dict[str, Any] = {f"{metric}_seed{s}": x for s, x in sorted(v.values(metric).items())}
    t = res.tests.get(metric, {}).get(v.name)
    if res.reference is not None:
        nan2 = (math.nan, math.nan)
        ci, boot = (t.ci, t.bootstrap_ci) if t else (nan2, nan2)
        out.update(
            {
                f"{metric}_diff": t.mean_diff if t else math.nan,
                f"{metric}_diff_ci_low": ci[0],
                f"{metric}_diff_ci_high": ci[1],
                f"{metric}_diff_boot_low": boot[0],
                f"{metric}_diff_boot_high": boot[1],
            }
        )
        per_image = v.per_image() if v is not res.reference and metric in IMAGE_METRICS else {}
        if per_image:
            key = (v.name, metric)
            if key not in res.image_intervals:
                res.image_intervals[key] = seeds_images_interval(
                    per_image, res.reference.per_image(), image_score(metric), level=1 - res.alpha
                )
            low, high = res.image_intervals[key]
            out.update({f"{metric}_diff_boot_images_low": low, f"{metric}_diff_boot_images_high": high})
    return out


#: metrics the bootstrap over test images can recompute from pooled confusion matrices
IMAGE_METRICS = ("miou", "mdice", "mprecision", "mrecall", "pixel_acc", "fg_iou", "fg_dice")


def image_score(metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """``metric`` of a stack of confusion matrices (:func:`stitch.tasks.metrics.confusion_scores`,
    the definition the runs were scored with)."""
    import torch

    from stitch.tasks.metrics import confusion_scores

    def score(matrices: np.ndarray) -> np.ndarray:
        return confusion_scores(torch.from_numpy(np.rint(matrices).astype(np.int64)))[metric].numpy()

    return score


@dataclass(frozen=True)
class NoiseFloor:
    """The smallest Δ of the primary metric the design detects (stored units, oriented better > 0)."""

    metric: str
    n: int  # paired seeds of the design
    sd: float  # std of the paired differences over seeds (NaN when unknown)
    sd_source: str  # "paired differences" or "baseline" (then sqrt(2) x the baseline's std)
    alpha: float
    power: float
    alternative: str
    mde: float  # NaN when it cannot be computed
    min_effect: float | None
    seeds_needed: int | None

    def as_json(self) -> dict[str, Any]:
        clean = lambda x: None if isinstance(x, float) and math.isnan(x) else x
        return {k: clean(v) for k, v in self.__dict__.items()}


def noise_floor(res: ExperimentResults) -> NoiseFloor | None:
    """The design's noise floor for the primary metric; None without a reference.

    The spread is the pooled sample std of the paired differences of every variant with 2 or more
    paired seeds; where there is none, sqrt(2) x the baseline's std over seeds (the difference of
    two independent runs). ``n`` is the largest number of paired seeds of any variant (the
    baseline's seeds when only it has runs).
    """
    if res.reference is None:
        return None
    p, cfg = res.primary, res.exp.cfg.report
    tests = list(res.tests.get(p, {}).values())
    sd, source = pooled_sd([t.diffs for t in tests]), "paired differences"
    if math.isnan(sd):
        sd, source = summarize(res.reference.values(p).values()).std * math.sqrt(2), "baseline"
    n = max([t.n for t in tests], default=0) or len(res.reference.seeds)
    alt = res.alternative  # "greater" or "two-sided"
    mde = min_detectable_effect(sd, n, res.alpha, DEFAULT_POWER, alt) if n >= MIN_PAIRS else math.nan  # type: ignore[arg-type]
    need = None
    if cfg.min_effect is not None and not math.isnan(sd):
        need = seeds_needed(cfg.min_effect, sd, res.alpha, DEFAULT_POWER, alt)  # type: ignore[arg-type]
    return NoiseFloor(p, n, sd, source, res.alpha, DEFAULT_POWER, alt, mde, cfg.min_effect, need)


def noise_floor_sentence(res: ExperimentResults) -> str:
    """``With 4 paired seeds ... the design detects a ΔmIoU of at least 0.97 pp at α = 0.05 and
    80 % power ...``, and the seeds a ``report.min_effect`` needs; empty without a reference."""
    nf = noise_floor(res)
    if nf is None or math.isnan(nf.sd):
        return ""
    if not nf.sd > 0:  # identical results over seeds: no spread to estimate a floor from
        return "Noise floor: not estimated; the results do not vary over seeds."
    scale = res.scale.get(nf.metric, 1.0)
    unit = " pp" if scale == 100.0 else ""
    d = res.exp.cfg.report.decimals
    num = lambda x: f"{round(x * scale, d) + 0.0:.{d}f}{unit}"
    side = "one-sided" if nf.alternative == "greater" else "two-sided"
    label = f"{DELTA}{metric_label(nf.metric)}"
    spread = (
        f"the standard deviation of the paired differences over seeds ({num(nf.sd)})"
        if nf.sd_source == "paired differences"
        else f"\u221a2 \u00d7 the Baseline's standard deviation over seeds ({num(nf.sd)})"
    )
    power = f"at \u03b1 = {nf.alpha:g} and {nf.power * 100:g} % power ({side} paired t-test)"
    out = ""
    if not math.isnan(nf.mde):
        out = (
            f"Noise floor: with {nf.n} seeds and {spread}, the design detects a {label} of at least "
            f"{num(nf.mde)} {power}."
        )
    if nf.min_effect is not None:
        need = f"{nf.seeds_needed} seeds" if nf.seeds_needed is not None else "more than 1000 seeds"
        out += (" " if out else "") + f"A {label} of {num(nf.min_effect)} needs {need} {power}."
    return out


def mark_bold(res: ExperimentResults, rows: list[Row], pick: dict[str, VariantRuns]) -> None:
    """Bold per ``report.bold``: ``best`` the best mean of each metric column (ties at the shown
    precision), ``significant`` (default) those best means that are significantly better than the
    reference after Holm (†), ``none`` nothing. Call it after the metric cells are filled."""
    mode, d = res.exp.cfg.report.bold, res.exp.cfg.report.decimals
    for m in res.metrics:
        key = f"metric:{m}"
        for r in rows:  # replaces whatever bold the metric cells were filled with
            r.cells[key].bold = False
        if mode == "none":
            continue
        means = {r.key: summarize(pick[r.key].values(m).values()).mean for r in rows}
        bold_best(rows, key, means, d, res.scale[m])
        if mode == "significant":
            for r in rows:
                if not res.significant(m, pick[r.key].name):
                    r.cells[key].bold = False


def bold_sentence(res: ExperimentResults, rows: list[Row]) -> str:
    """What bold marks in this table, and why nothing is bold where nothing is."""
    mode = res.exp.cfg.report.bold
    if mode == "none":
        return ""
    if mode == "best":
        return "Bold: best mean per metric column."
    plain = [
        metric_label(m)
        for m in res.metrics
        if not any(r.cells[f"metric:{m}"].bold for r in rows if f"metric:{m}" in r.cells)
    ]
    if res.reference is None:
        return "Bold: a best mean significantly better than the Baseline; nothing is bold without a Baseline."
    out = (
        "Bold: the best mean of a metric column, only where it is significantly better than "
        f"{res.reference.name} ({DAGGER})."
    )
    if plain:
        which = "any column" if len(plain) == len(res.metrics) else ", ".join(plain)
        out += f" Nothing is bold in {which}: no best mean is significantly better than {res.reference.name}."
    return out
