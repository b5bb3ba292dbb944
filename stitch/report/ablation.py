"""The ablation table of one experiment: a ✓ column per insertion, the reported metrics (mean ±
sample std over seeds, bold per ``report.bold``, † for a significant improvement on the baseline),
the primary metric's paired Δ to the baseline with its confidence interval, then Params, ΔParams,
FLOPs and ΔFLOPs against the baseline. The caption states the design's noise floor."""

from __future__ import annotations

import math
from typing import Any

from stitch.report.captions import (
    cost_sentence,
    metric_sentence,
    seed_sentence,
    short_caption,
    stats_sentence,
)
from stitch.report.column_choice import shown_with_caption
from stitch.report.columns import (
    cost_cells,
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
from stitch.report.labels import CHECK
from stitch.report.reference_row import reference_rows
from stitch.report.results import ExperimentResults
from stitch.report.table import Cell, Column, Row, Table, latex_escape
from stitch.stats import summarize


def ablation_table(res: ExperimentResults) -> Table:
    """The ablation table: ✓ per insertion, metrics (mean ± std, bold best, †), params and FLOPs."""
    cfg = res.exp.cfg
    d = cfg.report.decimals
    names = [i.name for i in cfg.insertions]
    columns = [Column("variant", "Variant", "Variant", "l")]
    columns += [Column(f"check:{n}", n, latex_escape(n)) for n in names]
    columns += [metric_column(m, res.scale[m]) for m in res.metrics]
    if res.reference is not None:
        columns += [delta_column(res), ci_column(res)]
    units = cost_units([res])
    columns += cost_columns(res, units)
    rows, records = [], []
    for v in res.variants:
        cells = {
            "variant": Cell(
                v.name, latex_escape(v.name), run_ids=v.run_ids, seeds=v.seeds, source="runs.variant"
            )
        }
        for n in names:
            on = n in v.variant.insertions
            cells[f"check:{n}"] = Cell(
                CHECK if on else "",
                r"\checkmark" if on else "",
                run_ids=v.run_ids,
                seeds=v.seeds,
                source="runs.insertions",
            )
        if res.reference is not None:
            test = res.tests.get(res.primary, {}).get(v.name)
            cells["diff"], cells["delta"] = ci_cell(res, v, test), delta_cell(res, v, test)
        cost = cost_cells(res, v, d, units)
        cells.update({c.key: cost[c.key] for c in cost_columns(res, units)})
        rows.append(Row(v.name, res.name, v.name, cells))
        rec: dict[str, Any] = {
            "variant": v.name,
            **{f"uses_{n}": int(n in v.variant.insertions) for n in names},
        }
        for m in res.metrics:
            s = summarize(v.values(m).values())
            t = res.tests.get(m, {}).get(v.name)
            rec.update(
                {
                    f"{m}_mean": s.mean,
                    f"{m}_std": s.std,
                    f"{m}_n": s.n,
                    f"{m}_p": t.p if t else math.nan,
                    f"{m}_p_holm": t.p_holm if t else math.nan,
                    f"{m}_significant": int(res.significant(m, v.name)),
                }
            )
            rec.update(effect_records(res, v, m))
        rec.update(cost_records(res, v))
        rec.update(seeds=" ".join(map(str, v.seeds)), run_ids=" ".join(v.run_ids))
        records.append(rec)
    metric_cells(res, rows, {v.name: v for v in res.variants}, d)
    mark_bold(res, rows, {v.name: v for v in res.variants})
    ref_rows, ref_sentence = reference_rows(res, columns)
    rows += ref_rows
    title = cfg.report.caption or f"Ablation of {res.name}."
    sentences = (
        title,
        seed_sentence(res.variants),
        metric_sentence(res),
        bold_sentence(res, rows),
        stats_sentence(res),
        ci_sentence(res),
        noise_floor_sentence(res),
        cost_sentence(res),
        ref_sentence,
    )
    shown, caption = shown_with_caption(columns, sentences, cfg.report, res.primary)
    return Table(
        "ablation",
        shown,
        rows,
        caption,
        cfg.report.label or f"tab:{res.name}",
        list(res.notes),
        records,
        short_caption=short_caption(res, title, ci=any(c.key == "diff" for c in shown)),
        layout=cfg.report.layout,
        title=title,
    )
