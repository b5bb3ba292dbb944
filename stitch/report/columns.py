"""Columns shared by the report's tables: the metric columns (mean ± std over seeds, bold best,
† for a significant improvement) and the cost columns (Params, FLOPs, their deltas, latency)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from stitch.report.labels import DELTA, metric_label
from stitch.report.results import ExperimentResults, VariantRuns
from stitch.report.table import Cell, Column, Row, bold_best, latex_escape, number_cell, summary_cell
from stitch.report.units import unit_for
from stitch.stats import summarize

#: the scaled cost columns: key -> (header before the unit, the unit without numbers to choose by)
COST_HEADERS: dict[str, tuple[str, str]] = {
    "params": ("Params", "M"),
    "params_delta": (f"{DELTA}Params", "K"),
    "flops": ("FLOPs", "G"),
    "flops_delta": (f"{DELTA}FLOPs", "M"),
    # FLOPs (all ops): element-wise work, pooling and normalisation too (stitch.flops)
    "flops_all": ("FLOPs all ops", "G"),
    "flops_all_delta": (f"{DELTA}FLOPs all ops", "M"),
}
LATENCY_COLUMN = Column("latency", "Latency (ms)", "Latency (ms)")
#: peak training memory per run (stitch.memory), mean over the variant's seeds
MEMORY_COLUMN = Column("peak_memory", "Peak memory (MiB)", "Peak memory (MiB)")
#: a cost column's unit: (prefix, factor), from stitch.report.units
Units = dict[str, tuple[str, float]]


def cost_column(key: str, units: Units) -> Column:
    """The column of a scaled cost (``params``, ``flops_delta`` …), its unit in the header."""
    name, default = COST_HEADERS[key]
    header = f"{name} ({units.get(key, (default, 0.0))[0]})"
    return Column(key, header, latex_escape(header))


def peak_memory(v: VariantRuns) -> float | None:
    """The mean over seeds of the runs' peak training memory in MiB (None when none recorded it)."""
    values = [r.peak_memory_mb for r in v.rows if r.peak_memory_mb is not None]
    return sum(values) / len(values) if values else None


def _params(res: ExperimentResults, v: VariantRuns) -> int | None:
    """A variant's parameter count: from the database, else from the computed costs."""
    c = res.costs.get(v.name)
    return v.rows[0].params if v.rows[0].params is not None else (c.params if c else None)


def raw_costs(res: ExperimentResults, v: VariantRuns) -> dict[str, float | None]:
    """A variant's costs as shown, before scaling: counts, and differences to the reference (None
    for the reference itself)."""
    c = res.costs.get(v.name)
    params = _params(res, v)
    ref_params = None if res.reference is None else _params(res, res.reference)
    own = v is res.reference
    return {
        "params": params,
        "params_delta": None if params is None or ref_params is None or own else params - ref_params,
        "flops": None if c is None else c.flops,
        "flops_delta": None if c is None or own else c.flops_delta,
        "flops_all": None if c is None else c.flops_all,
        "flops_all_delta": None if c is None or own else c.flops_all_delta,
    }


def cost_units(results: Sequence[ExperimentResults]) -> Units:
    """Per scaled cost column, the unit that keeps its numbers short (over every variant shown)."""
    raw = [raw_costs(r, v) for r in results for v in r.variants]
    return {key: unit_for([x[key] for x in raw], default) for key, (_, default) in COST_HEADERS.items()}


def cost_cells(
    res: ExperimentResults, v: VariantRuns, decimals: int, units: Units, with_latency: bool = False
) -> dict[str, Cell]:
    """The cost cells of one variant, keyed like :data:`COST_HEADERS` (and ``latency``,
    ``peak_memory``), each in the unit ``units`` chose for its column."""
    c = res.costs.get(v.name)
    ids, seeds = v.run_ids, v.seeds
    src = f"costs.json:{c.key}" if c is not None and c.key else "costs.json"
    ref_ids = res.reference.run_ids if res.reference else []
    with_ref = ids + [i for i in ref_ids if i not in ids]
    sources = {
        "params": "runs.params",
        "params_delta": "runs.params - reference runs.params",
        "flops": src,
        "flops_delta": src + " (minus the reference's)",
        "flops_all": src + " flops_all",
        "flops_all_delta": src + " flops_all (minus the reference's)",
    }
    out = {}
    for key, x in raw_costs(res, v).items():
        factor = units[key][1]
        delta = key.endswith("_delta")
        out[key] = number_cell(
            None if x is None else x / factor,
            decimals,
            signed=delta,
            run_ids=with_ref if delta else ids,
            seeds=seeds,
            source=sources[key],
        )
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


def cost_columns(
    res: ExperimentResults, units: Units, latency: bool = False, deltas: bool = True
) -> list[Column]:
    """Params (from the database) always; FLOPs, FLOPs (all ops) (and latency) when costs were computed."""
    keys = [k for k in COST_HEADERS if k.startswith("params")]
    if res.costs:
        keys += [k for k in COST_HEADERS if k.startswith("flops") and not k.startswith("flops_all")]
    if any(c.flops_all is not None for c in res.costs.values()):
        keys += [k for k in COST_HEADERS if k.startswith("flops_all")]
    cols = [cost_column(k, units) for k in keys]
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
    return Column(f"metric:{metric}", metric_label(metric) + unit, metric_latex(metric) + latex_escape(unit))


#: AP at an IoU threshold or object size at the end of a label: ``Mask AP50``, ``Box APs``
_AP_SUFFIX = re.compile(r"AP(50|75|s|m|l)$")


def metric_latex(metric: str) -> str:
    """The LaTeX label of a metric, with the subscripts of COCO's AP names: ``Mask AP\\(_{50}\\)``,
    ``Box AP\\(_{S}\\)`` (Markdown and plain text keep ``AP50``)."""
    label = metric_label(metric)
    m = _AP_SUFFIX.search(label)
    if m is None:
        return latex_escape(label)
    return latex_escape(label[: m.start()]) + f"AP\\(_{{{m.group(1).upper()}}}\\)"


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
