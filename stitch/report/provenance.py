"""Provenance: for every table cell, the run ids it aggregates, the seeds, where the number comes
from (``best_metrics.miou``, ``runs.params``, ``costs.json:<key>``) and its text; and the paired
tests of an experiment as JSON (NaN as null)."""

from __future__ import annotations

import math
from typing import Any

from stitch.report.results import ExperimentResults
from stitch.report.table import Table


def provenance(table: Table) -> dict[str, Any]:
    """``{row key: {column header: {run_ids, seeds, source}}}`` for every cell of ``table``."""
    cells: dict[str, Any] = {}
    for r in table.rows:
        cells[r.key] = {
            c.header: {
                "run_ids": r.cells[c.key].run_ids,
                "seeds": r.cells[c.key].seeds,
                "source": r.cells[c.key].source,
                "text": r.cells[c.key].plain(),
            }
            for c in table.columns
            if c.key in r.cells
        }
    return {
        "caption": table.caption,
        "label": table.label,
        "columns": [c.header for c in table.columns],
        "cells": cells,
        "notes": table.notes,
    }


def tests_json(res: ExperimentResults) -> dict[str, Any]:
    """``{metric: {variant: the paired test against the reference}}`` (NaN as None)."""

    def clean(x: float | None) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    return {
        m: {
            name: {
                "n": t.n,
                "seeds": t.seeds,
                "unpaired_seeds": t.unpaired,
                "mean_diff": clean(t.mean_diff),
                "statistic": clean(t.statistic),
                "p": clean(t.p),
                "p_holm": clean(t.p_holm),
                "tested": t.tested,
                "significant": t.significant(res.alpha),
                "reason": t.reason,
            }
            for name, t in ts.items()
        }
        for m, ts in res.tests.items()
    }
