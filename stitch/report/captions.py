"""Caption sentences: the seeds, the scale of the metrics, the significance test and what it can
claim, and how costs were measured. Plain text; the LaTeX renderer escapes it."""

from __future__ import annotations

from collections.abc import Sequence

from stitch.flops import CAPTION as FLOPS_ALL_CAPTION
from stitch.memory import CAPTION as MEMORY_CAPTION
from stitch.plan import plan_variants
from stitch.report.labels import DAGGER, DELTA, metric_label
from stitch.report.results import ExperimentResults, VariantRuns
from stitch.stats import MIN_PAIRS, describe_test, wilcoxon_floor

#: what the unit prefixes of the cost columns' headers mean (stitch.report.units)
UNITS = "K: thousands, M: millions, G: billions"


def seed_sentence(variants: Sequence[VariantRuns]) -> str:
    """Over which seeds the means and standard deviations are taken (naming rows that differ)."""
    sets = {tuple(v.seeds) for v in variants}
    if len(sets) == 1:
        seeds = next(iter(sets))
        if len(seeds) == 1:
            return f"Single seed ({seeds[0]}), so no standard deviation."
        return (
            f"Mean \u00b1 sample standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))})."
        )
    per = ", ".join(f"{v.name} {len(v.seeds)}" for v in variants)
    return (
        f"Mean \u00b1 sample standard deviation over seeds; the rows have different numbers of seeds: {per}."
    )


def stats_sentence(res: ExperimentResults) -> str:
    """What † means for this experiment, or why no significance is claimed."""
    if res.reference is None:
        why = (
            "No Baseline variant has finished runs"
            if any(v.is_baseline for v in plan_variants(res.exp.cfg))
            else "The ablation design has no Baseline variant"
        )
        return f"{why}: no deltas, no significance test, and no significance is claimed."
    tested = {name for m in res.metrics for name, t in res.tests[m].items() if t.tested}
    others = [v.name for v in res.variants if v is not res.reference]
    if not others:
        return "Only the Baseline has finished runs: no significance test."
    pairs = {name: max(res.tests[m][name].n for m in res.metrics) for name in others}
    if not tested:
        n = max(pairs.values())
        return (
            f"With fewer than {MIN_PAIRS} paired seeds ({n} here) no significance test is run, "
            "and no significance is claimed."
        )
    k = max(sum(1 for t in res.tests[m].values() if t.tested) for m in res.metrics)
    out = (
        f"{DAGGER}: significantly better than {res.reference.name} at \u03b1 = {res.alpha:g} "
        f"({significance_words(res.test, res.alternative, k)})."
    )
    untested = [n for n in others if n not in tested]
    if untested:
        out += f" Not tested (fewer than {MIN_PAIRS} paired seeds): {', '.join(untested)}."
    if res.test == "wilcoxon":
        n = max(pairs[t] for t in tested)
        floor = wilcoxon_floor(n, res.alternative)  # type: ignore[arg-type]
        if floor >= res.alpha:
            out += (
                f" With {n} paired seeds the exact Wilcoxon test cannot give p below {floor:.3g}, "
                f"so no {DAGGER} is possible."
            )
    return out


def significance_words(test: str, alternative: str, k: int) -> str:
    """``one-sided paired t-test over seeds, Holm-corrected over the 3 variants of each column``."""
    words = describe_test(test, alternative, 0.05).split(", Holm")[0]  # type: ignore[arg-type]
    if k > 1:
        return words + f", Holm-corrected over the {k} variants compared in each column"
    return words + "; one comparison per column, so Holm's correction changes nothing"


def metric_sentence(res: ExperimentResults) -> str:
    """Which split the metrics are on, at which epoch, and which are in %."""
    pct = [metric_label(m) for m in res.metrics if res.scale[m] == 100.0]
    if len(pct) == len(res.metrics):
        units = "All metrics in %."
    else:
        units = f"{', '.join(pct)} in %." if pct else ""
    return (split_sentence(res) + units).strip()


def split_sentence(res: ExperimentResults) -> str:
    """The reported split and the epoch: held-out test at the epoch val chose (or the last), or
    the validation split, saying that it also chose the epoch."""
    primary = metric_label(res.primary)
    epoch = (
        f"its epoch with the best validation {primary}"
        if res.selection == "best"
        else "the last epoch (report.selection: last)"
    )
    if res.split == "test":
        size = f" ({res.split_images} images)" if res.split_images else ""
        return (
            f"Metrics on the held-out test split{size}, each run at {epoch}; nothing was chosen on "
            "the test split. "
        )
    if res.selection == "best":
        return (
            f"Metrics on the validation split at each run's best validation epoch (by {primary}): no "
            "held-out test split, so the reported split also chose the epoch. "
        )
    return "Metrics on the validation split at each run's last epoch (no held-out test split). "


def cost_sentence(res: ExperimentResults, latency: bool = False, deltas: bool = True) -> str:
    """The units of Params and FLOPs, the input they were counted for, and how latency was timed."""
    delta = f"; {DELTA} against {res.reference.name}" if deltas and res.reference is not None else ""
    memory = (
        " " + MEMORY_CAPTION
        if any(r.peak_memory_mb is not None for v in res.variants for r in v.rows)
        else ""
    )
    if not res.costs:
        params = any(v.rows[0].params is not None for v in res.variants)
        return ((f"Params in the unit of its header ({UNITS}){delta}." if params else "") + memory).strip()
    c = next(iter(res.costs.values()))
    h, w = c.image_size
    s = (
        f"Params and FLOPs in the units of their headers ({UNITS}); FLOPs for one "
        f"{c.in_channels}\u00d7{h}\u00d7{w} input (batch 1, "
        f"counted by torch.utils.flop_counter, a multiply-add = 2 FLOPs){delta}."
    )
    if c.flops_all is not None:
        s += " " + FLOPS_ALL_CAPTION
    s += memory
    if latency and c.latency_ms is not None:
        s += (
            f" Latency: median of {c.repeats} forwards after {c.warmup} warm-up, batch 1, eval mode, "
            f"{c.device}"
            + (f" ({c.threads} thread{'s' if c.threads != 1 else ''})" if c.device == "cpu" else "")
            + "."
        )
    return s


def input_sizes_sentence(results: Sequence[ExperimentResults]) -> str:
    """Named when the experiments' inputs differ (their FLOPs and latency are then not comparable)."""
    sizes = {
        r.name: "\u00d7".join(map(str, (c.in_channels, *c.image_size)))
        for r in results
        for c in list(r.costs.values())[:1]
    }
    if len(set(sizes.values())) <= 1:
        return ""
    return (
        "The experiments' inputs differ (FLOPs and latency at each one's own): "
        + ", ".join(f"{n} {sz}" for n, sz in sizes.items())
        + "."
    )


def short_caption(res: ExperimentResults, title: str, ci: bool = True) -> str:
    """The table's caption: ``title``, then the design and the statistics in one sentence (the
    split and its size, the seeds, the scale, what Δ and † mean); the full method text is the
    table's notes paragraph."""
    return f"{title.rstrip().rstrip('.')}. {design_phrase(res)}; {stats_phrase(res, ci)}."


def design_phrase(res: ExperimentResults) -> str:
    """``Held-out test split (4 images), mean ± std over 3 seeds, metrics in %``."""
    if res.split == "test":
        split = "Held-out test split" + (f" ({res.split_images} images)" if res.split_images else "")
    else:
        split = "Validation split (no test split; it also chose the epoch)"
    counts = sorted({len(v.seeds) for v in res.variants})
    if counts == [1]:
        seeds = "single seed"
    elif len(counts) == 1:
        seeds = f"mean \u00b1 std over {counts[0]} seeds"
    else:
        seeds = f"mean \u00b1 std over {counts[0]}\u2013{counts[-1]} seeds"
    pct = all(res.scale[m] == 100.0 for m in res.metrics)
    return f"{split}, {seeds}" + (", metrics in %" if pct else "")


def stats_phrase(res: ExperimentResults, ci: bool = True) -> str:
    """``ΔmIoU vs Baseline with 95 % CI; †: p < 0.05, one-sided paired t-test, Holm-corrected``
    (``ci``: the table shows the interval), or why nothing is tested."""
    if res.reference is None:
        return "no Baseline, so no \u0394 and no significance test"
    level = f"{round((1 - res.alpha) * 100, 6):g} %"
    delta = f"{DELTA}{metric_label(res.primary)} vs {res.reference.name}" + (
        f" with {level} CI" if ci else ""
    )
    tested = any(t.tested for m in res.metrics for t in res.tests.get(m, {}).values())
    if not tested:
        return f"{delta}; no significance test (fewer than {MIN_PAIRS} paired seeds)"
    words = describe_test(res.test, res.alternative, res.alpha).split(" over seeds")[0]  # type: ignore[arg-type]
    return f"{delta}; {DAGGER}: p < {res.alpha:g}, {words}, Holm-corrected"
