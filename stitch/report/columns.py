"""Columns shared by the report's tables: the metric columns (mean ± std over seeds, bold best,
† for a significant improvement) and the cost columns (Params, FLOPs, their deltas, latency)."""

from __future__ import annotations

from typing import Any

from stitch.report.labels import DELTA, metric_label
from stitch.report.results import ExperimentResults, VariantRuns
from stitch.report.table import Cell, Column, Row, bold_best, latex_escape, number_cell, summary_cell
from stitch.stats import summarize

COST_COLUMNS = [
    Column("params", "Params (M)", "Params (M)"),
    Column("params_delta", f"{DELTA}Params (K)", r"\(\Delta\)Params (K)"),
    Column("flops", "FLOPs (G)", "FLOPs (G)"),
    Column("flops_delta", f"{DELTA}FLOPs (M)", r"\(\Delta\)FLOPs (M)"),
    # FLOPs (all ops): element-wise work, pooling and normalisation too (stitch.flops)
    Column("flops_all", "FLOPs all ops (G)", "FLOPs all ops (G)"),
    Column("flops_all_delta", f"{DELTA}FLOPs all ops (M)", r"\(\Delta\)FLOPs all ops (M)"),
]
LATENCY_COLUMN = Column("latency", "Latency (ms)", "Latency (ms)")
#: peak training memory per run (stitch.memory), mean over the variant's seeds
MEMORY_COLUMN = Column("peak_memory", "Peak memory (MiB)", "Peak memory (MiB)")


def peak_memory(v: VariantRuns) -> float | None:
    """The mean over seeds of the runs' peak training memory in MiB (None when none recorded it)."""
    values = [r.peak_memory_mb for r in v.rows if r.peak_memory_mb is not None]
    return sum(values) / len(values) if values else None


def _params(res: ExperimentResults, v: VariantRuns) -> int | None:
    """A variant's parameter count: from the database, else from the computed costs."""
    c = res.costs.get(v.name)
    return v.rows[0].params if v.rows[0].params is not None else (c.params if c else None)


def cost_cells(
    res: ExperimentResults, v: VariantRuns, decimals: int, with_latency: bool = False
) -> dict[str, Cell]:
    """The cost cells of one variant, keyed like :data:`COST_COLUMNS` (and ``latency``)."""
    c = res.costs.get(v.name)
    ids, seeds = v.run_ids, v.seeds
    src = f"costs.json:{c.key}" if c is not None and c.key else "costs.json"
    ref_ids = res.reference.run_ids if res.reference else []
    with_ref = ids + [i for i in ref_ids if i not in ids]
    params = _params(res, v)
    ref_params = None if res.reference is None else _params(res, res.reference)
    params_delta = (
        None if params is None or ref_params is None or v is res.reference else (params - ref_params) / 1e3
    )
    flops_delta = None if c is None or c.flops_delta is None or v is res.reference else c.flops_delta / 1e6
    all_delta = (
        None if c is None or c.flops_all_delta is None or v is res.reference else c.flops_all_delta / 1e6
    )
    out = {
        "params": number_cell(
            None if params is None else params / 1e6, decimals, run_ids=ids, seeds=seeds, source="runs.params"
        ),
        "params_delta": number_cell(
            params_delta,
            decimals,
            signed=True,
            run_ids=with_ref,
            seeds=seeds,
            source="runs.params - reference runs.params",
        ),
        "flops": number_cell(
            None if c is None or c.flops is None else c.flops / 1e9,
            decimals,
            run_ids=ids,
            seeds=seeds,
            source=src,
        ),
        "flops_delta": number_cell(
            flops_delta,
            decimals,
            signed=True,
            run_ids=with_ref,
            seeds=seeds,
            source=src + " (minus the reference's)",
        ),
        "flops_all": number_cell(
            None if c is None or c.flops_all is None else c.flops_all / 1e9,
            decimals,
            run_ids=ids,
            seeds=seeds,
            source=src + " flops_all",
        ),
        "flops_all_delta": number_cell(
            all_delta,
            decimals,
            signed=True,
            run_ids=with_ref,
            seeds=seeds,
            source=src + " flops_all (minus the reference's)",
        ),
    }
    out["peak_memory"] = number_cell(
        peak_memory(v), 0, run_ids=ids, seeds=seeds, source="mean of runs.peak_memory_mb"
    )
    if with_latency:
        latency = None if c is None else c.latency_ms
        out["latency"] = number_cell(latency, decimals, run_ids=ids, seeds=seeds, source=src)
    return out


def cost_records(res: ExperimentResults, v: VariantRuns) -> dict[str, Any]:
    """The cost fields of one variant's CSV record (stored units, unrounded)."""
    c = res.costs.get(v.name)
    params = _params(res, v)
    ref = res.reference.rows[0].params if res.reference is not None else None
    return {
        "params": params,
        "params_delta": None if params is None or ref is None else params - ref,
        "flops": c.flops if c else None,
        "flops_delta": c.flops_delta if c else None,
        "flops_all": c.flops_all if c else None,
        "flops_all_delta": c.flops_all_delta if c else None,
        "latency_ms": c.latency_ms if c else None,
        "peak_memory_mb": peak_memory(v),
    }


def cost_columns(res: ExperimentResults, latency: bool = False, deltas: bool = True) -> list[Column]:
    """Params (from the database) always; FLOPs, FLOPs (all ops) (and latency) when costs were computed."""
    cols = [c for c in COST_COLUMNS if c.key.startswith("params")]
    if res.costs:
        cols += [c for c in COST_COLUMNS if c.key.startswith("flops") and not c.key.startswith("flops_all")]
    if any(c.flops_all is not None for c in res.costs.values()):
        cols += [c for c in COST_COLUMNS if c.key.startswith("flops_all")]
    if not deltas or res.reference is None:
        cols = [c for c in cols if not c.key.endswith("_delta")]
    if latency and any(c.latency_ms is not None for c in res.costs.values()):
        cols.append(LATENCY_COLUMN)
    if any(peak_memory(v) is not None for v in res.variants):
        cols.append(MEMORY_COLUMN)
    return cols


def metric_column(metric: str, scale: float) -> Column:
    """The column of one metric, ``(%)`` in its header when shown ×100."""
    unit = " (%)" if scale == 100.0 else ""
    return Column(f"metric:{metric}", metric_label(metric) + unit, latex_escape(metric_label(metric) + unit))


def metric_cells(
    res: ExperimentResults, rows: list[Row], pick: dict[str, VariantRuns], decimals: int
) -> None:
    """Fill the metric cells of ``rows`` (row key -> variant), bold the best, mark †."""
    for m in res.metrics:
        key = f"metric:{m}"
        means = {}
        for r in rows:
            v = pick[r.key]
            vals = v.values(m)
            s = summarize(vals.values())
            means[r.key] = s.mean
            ids, source = v.ids_for(vals), f"{v.source}.{m}"
            ref = res.reference
            if ref is not None and ref is not v:  # the † comes from a test against the reference's runs
                ids = ids + [i for i in ref.ids_for(vals) if i not in ids]
                source += f"; the paired test also reads the reference's ({ref.name}) runs"
            r.cells[key] = summary_cell(
                s,
                res.scale[m],
                decimals,
                dagger=res.significant(m, v.name),
                run_ids=ids,
                seeds=sorted(vals),
                source=source,
            )
        bold_best(rows, key, means, decimals, res.scale[m])
