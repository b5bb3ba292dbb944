"""The comparison table: one row per variant of one experiment (seeds, metrics, the paired
difference to the baseline and its Holm-adjusted p, costs, latency, training time), or, for several
experiments, each one's variant with every insertion plus each distinct baseline (baselines trained
with the same recipe are the same runs and are shown once)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from stitch.report.captions import (
    cost_sentence,
    input_sizes_sentence,
    metric_sentence,
    seed_sentence,
    short_caption,
    split_sentence,
    stats_sentence,
)
from stitch.report.column_choice import shown_with_caption
from stitch.report.columns import (
    LATENCY_COLUMN,
    cost_cells,
    cost_column,
    cost_columns,
    cost_records,
    cost_units,
    metric_cells,
    metric_column,
)
from stitch.report.effects import (
    bold_sentence,
    ci_cell,
    ci_column,
    ci_sentence,
    delta_cell,
    delta_column,
    effect_records,
    mark_bold,
    noise_floor_sentence,
)
from stitch.report.labels import DAGGER, DASH, metric_label
from stitch.report.results import ExperimentResults, VariantRuns
from stitch.report.table import (
    Cell,
    Column,
    Row,
    Table,
    bold_best,
    latex_escape,
    number_cell,
    p_text,
    siunitx_num,
    summary_cell,
)
from stitch.stats import MIN_PAIRS, PairedTest, compare_to_reference, describe_test, summarize


def comparison_table(results: Sequence[ExperimentResults]) -> Table:
    """One row per variant (one experiment), or per experiment (several), with costs and latency."""
    if len(results) == 1:
        return _comparison_one(results[0])
    return _comparison_many(results)


def _seeds_cell(v: VariantRuns) -> Cell:
    return Cell(
        str(len(v.seeds)), f"\\({len(v.seeds)}\\)", run_ids=v.run_ids, seeds=v.seeds, source="runs.seed"
    )


def _variant_cell(v: VariantRuns) -> Cell:
    return Cell(v.name, latex_escape(v.name), run_ids=v.run_ids, seeds=v.seeds, source="runs.variant")


def _test_cells(res: ExperimentResults, v: VariantRuns, t: PairedTest | None) -> dict[str, Cell]:
    """The paired difference of the primary metric to the reference with its interval, and the
    Holm-adjusted p of the test."""
    assert res.reference is not None
    p = res.primary
    ref_ids = res.reference.ids_for(t.seeds) if t else []
    paired = (v.ids_for(t.seeds) + ref_ids) if t else []
    seeds = t.seeds if t else []
    ptxt = p_text(t.p_holm) if t else DASH
    if ptxt == DASH:
        platex = "--"
    else:
        platex = "\\(<\\num{0.001}\\)" if ptxt.startswith("<") else f"\\({siunitx_num(ptxt)}\\)"
    return {
        "diff": ci_cell(res, v, t),
        "delta": delta_cell(res, v, t),
        "p_holm": Cell(
            ptxt, platex, run_ids=paired, seeds=seeds, source=f"{res.test} on {res.source}.{p}, Holm"
        ),
    }


def _comparison_one(res: ExperimentResults) -> Table:
    cfg = res.exp.cfg
    d = cfg.report.decimals
    p = res.primary
    columns = [Column("variant", "Variant", "Variant", "l"), Column("seeds", "Seeds", "Seeds")]
    columns += [metric_column(m, res.scale[m]) for m in res.metrics]
    if res.reference is not None:
        columns += [delta_column(res), ci_column(res), Column("p_holm", "p (Holm)", "\\(p\\) (Holm)")]
    units = cost_units([res])
    columns += cost_columns(res, units, latency=True, deltas=False)
    columns += [Column("time", "Time/run (min)", "Time/run (min)")]
    tests = {}
    if res.reference is not None:
        if p in res.tests:
            tests = res.tests[p]
        else:
            values = {v.name: v.values(p) for v in res.variants}
            tests = compare_to_reference(
                values,
                res.reference.name,
                res.test,  # type: ignore[arg-type]
                res.alternative,  # type: ignore[arg-type]
                level=1 - res.alpha,
            )
    rows, records = [], []
    for v in res.variants:
        cells = {"variant": _variant_cell(v), "seeds": _seeds_cell(v)}
        t = tests.get(v.name)
        if res.reference is not None:
            cells.update(_test_cells(res, v, t))
        cost = cost_cells(res, v, d, units, with_latency=True)
        cells.update({c.key: cost[c.key] for c in cost_columns(res, units, latency=True, deltas=False)})
        minutes = [r.wall_time / 60 for r in v.rows if r.wall_time]
        mean_minutes = sum(minutes) / len(minutes) if minutes else None
        cells["time"] = number_cell(
            mean_minutes, d, run_ids=v.run_ids, seeds=v.seeds, source="runs.wall_time"
        )
        rows.append(Row(v.name, res.name, v.name, cells))
        rec: dict[str, Any] = {"variant": v.name, "seeds": len(v.seeds)}
        for m in res.metrics:
            s = summarize(v.values(m).values())
            rec.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_n": s.n})
            rec.update(effect_records(res, v, m))
        if res.reference is not None:
            rec.update(
                {
                    f"{p}_diff": t.mean_diff if t else math.nan,
                    f"{p}_p": t.p if t else math.nan,
                    f"{p}_p_holm": t.p_holm if t else math.nan,
                    "paired_seeds": len(t.seeds) if t else 0,
                }
            )
        rec.update(cost_records(res, v))
        rec.update(
            time_per_run_min=mean_minutes if mean_minutes is not None else math.nan,
            run_ids=" ".join(v.run_ids),
        )
        records.append(rec)
    metric_cells(res, rows, {v.name: v for v in res.variants}, d)
    mark_bold(res, rows, {v.name: v for v in res.variants})
    diff_sentence = ""
    if res.reference is not None:
        diff_sentence = ci_sentence(res) + " p: Holm-adjusted p-value of the paired test."
    title = f"Comparison of the variants of {res.name}."
    sentences = (
        title,
        seed_sentence(res.variants),
        metric_sentence(res),
        bold_sentence(res, rows),
        stats_sentence(res),
        diff_sentence,
        noise_floor_sentence(res),
        cost_sentence(res, latency=True, deltas=False),
        "Time/run: mean training wall time.",
    )
    label = f"{cfg.report.label}-comparison" if cfg.report.label else f"tab:{res.name}-comparison"
    shown, caption = shown_with_caption(columns, sentences, cfg.report, p)
    return Table(
        "comparison",
        shown,
        rows,
        caption,
        label,
        list(res.notes),
        records,
        short_caption=short_caption(res, title, ci=any(c.key == "diff" for c in shown)),
        layout=cfg.report.layout,
        title=title,
    )


def _entries(results: Sequence[ExperimentResults]) -> list[tuple[list[ExperimentResults], VariantRuns]]:
    """The rows of a several-experiment table: (the experiments it stands for, its variant)."""
    entries: list[tuple[list[ExperimentResults], VariantRuns]] = []
    for res in results:
        picks = ([res.reference] if res.reference is not None and res.reference is not res.full else []) + [
            res.full
        ]
        for v in picks:
            same = next(
                (
                    e
                    for e in entries
                    if e[1].variant.is_baseline
                    and v.variant.is_baseline
                    and e[1].recipe_key() == v.recipe_key()
                ),
                None,
            )
            if same is not None:
                same[0].append(res)
            else:
                entries.append(([res], v))
    return entries


def _bold_sentence_many(mode: str, rows: list[Row], metrics: list[str]) -> str:
    """What bold marks in the several-experiment table (``report.bold`` of the first experiment)."""
    if mode != "significant":
        return "Bold: best mean per metric column." if mode == "best" else ""
    plain = [metric_label(m) for m in metrics if not any(r.cells[f"metric:{m}"].bold for r in rows)]
    out = (
        "Bold: the best mean of a metric column, only where it is significantly better than its "
        f"experiment's Baseline ({DAGGER})."
    )
    if plain:
        which = "any column" if len(plain) == len(metrics) else ", ".join(plain)
        out += f" Nothing is bold in {which}: no best mean is significantly better than its Baseline."
    return out


def splits_sentence(results: Sequence[ExperimentResults]) -> str:
    """Which split and epoch each experiment reports: one sentence when they all agree, else one
    per experiment."""
    texts = {r.name: split_sentence(r).strip() for r in results}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return " ".join(f"{name}: {text[0].lower()}{text[1:]}" for name, text in texts.items())


def _comparison_many(results: Sequence[ExperimentResults]) -> Table:
    d = results[0].exp.cfg.report.decimals
    metrics = list(dict.fromkeys(m for r in results for m in r.metrics))
    scale = {m: next(r.scale[m] for r in results if m in r.scale) for m in metrics}
    columns = [
        Column("experiment", "Experiment", "Experiment", "l"),
        Column("variant", "Variant", "Variant", "l"),
        Column("seeds", "Seeds", "Seeds"),
    ]
    columns += [metric_column(m, scale[m]) for m in metrics]
    with_costs = any(r.costs for r in results)
    with_latency = any(c.latency_ms is not None for r in results for c in r.costs.values())
    units = cost_units(results)
    cost_cols = (
        [cost_column("params", units)]
        + ([cost_column("flops", units)] if with_costs else [])
        + ([LATENCY_COLUMN] if with_latency else [])
    )
    columns += cost_cols
    rows, records = [], []
    means: dict[str, dict[str, float]] = {m: {} for m in metrics}
    for exps, v in _entries(results):
        res = exps[0]
        label = ", ".join(e.name for e in exps)
        key = f"{label}: {v.name}"
        cells = {
            "experiment": Cell(
                label, latex_escape(label), run_ids=v.run_ids, seeds=v.seeds, source="experiment.yaml name"
            ),
            "variant": _variant_cell(v),
            "seeds": _seeds_cell(v),
        }
        rec: dict[str, Any] = {"experiment": label, "variant": v.name, "seeds": len(v.seeds)}
        for m in metrics:
            vals = v.values(m) if m in res.metrics else {}
            s = summarize(vals.values())
            means[m][key] = s.mean
            significant = res.significant(m, v.name)
            cells[f"metric:{m}"] = summary_cell(
                s,
                scale[m],
                d,
                dagger=significant,
                run_ids=v.ids_for(vals),
                seeds=sorted(vals),
                source=f"{v.source}.{m}",
            )
            rec.update(
                {
                    f"{m}_mean": s.mean,
                    f"{m}_std": s.std,
                    f"{m}_n": s.n,
                    f"{m}_significant": int(significant),
                }
            )
        cost = cost_cells(res, v, d, units, with_latency=True)
        cells.update({c.key: cost[c.key] for c in cost_cols})
        rec.update(cost_records(res, v))
        rec["run_ids"] = " ".join(v.run_ids)
        rows.append(Row(key, label, v.name, cells))
        records.append(rec)
    mode = results[0].exp.cfg.report.bold
    for m in metrics:
        if mode != "none":
            bold_best(rows, f"metric:{m}", means[m], d, scale[m])
        for r in rows if mode == "significant" else []:
            r.cells[f"metric:{m}"].bold &= r.cells[f"metric:{m}"].dagger  # only a significant best
    tests = sorted({(r.test, r.alternative, r.alpha) for r in results})
    sig = "; ".join(
        f"{DAGGER}: significantly better than the experiment's own Baseline at \u03b1 = {a:g} "
        f"({describe_test(t, alt, a).split(', Holm')[0]}, "  # type: ignore[arg-type]
        "Holm-corrected over the variants of that experiment)"
        for t, alt, a in tests
    )
    untested = [
        r.name
        for r in results
        if r.reference is None or not any(t.tested for m in r.metrics for t in r.tests.get(m, {}).values())
    ]
    no_claim = ""
    if untested:
        no_claim = (
            f"No significance is claimed for {', '.join(untested)} "
            f"(fewer than {MIN_PAIRS} paired seeds or no baseline)."
        )
    sentences = (
        "Comparison of "
        + ", ".join(r.name for r in results)
        + ": each experiment's variant with every insertion, and the baselines "
        "(shown once when their runs are the same).",
        "Mean \u00b1 sample standard deviation over seeds (Seeds column)"
        + (", metrics in %." if all(scale[m] == 100.0 for m in metrics) else "."),
        splits_sentence(results),
        _bold_sentence_many(mode, rows, metrics),
        sig + ".",
        no_claim,
        cost_sentence(next((r for r in results if r.costs), results[0]), latency=True, deltas=False),
        input_sizes_sentence(results),
    )
    notes = [f"{r.name}: {n}" for r in results for n in r.notes]
    report = results[0].exp.cfg.report
    shown, caption = shown_with_caption(columns, sentences, report, results[0].primary)
    return Table(
        "comparison",
        shown,
        rows,
        caption,
        "tab:comparison",
        notes,
        records,
        short_caption=_short_caption_many(results, metrics, scale, tested=len(untested) < len(results)),
        layout=report.layout,
    )


def _short_caption_many(
    results: Sequence[ExperimentResults], metrics: list[str], scale: dict[str, float], tested: bool
) -> str:
    """The several-experiment table's caption: what the rows are, the splits and their sizes, the
    seeds and what † means, in one sentence after the title."""
    splits = list(
        dict.fromkeys(
            ("held-out test split" + (f" ({r.split_images} images)" if r.split_images else ""))
            if r.split == "test"
            else "validation split"
            for r in results
        )
    )
    pct = ", metrics in %" if all(scale[m] == 100.0 for m in metrics) else ""
    words = sorted(
        {describe_test(r.test, r.alternative, r.alpha).split(" over seeds")[0] for r in results}  # type: ignore[arg-type]
    )
    sig = (
        f"{DAGGER}: significantly better than the experiment's own Baseline "
        f"({'; '.join(words)}, Holm-corrected)"
        if tested
        else "no significance test"
    )
    return (
        f"Comparison of {', '.join(r.name for r in results)}. Each experiment's variant with every "
        f"insertion and its Baseline, {' / '.join(splits)}, mean \u00b1 std over seeds{pct}; {sig}."
    )
