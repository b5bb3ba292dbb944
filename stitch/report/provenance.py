"""Provenance: for every table cell, the run ids it aggregates, the seeds, where the number comes
from (``best_metrics.miou``, ``runs.params``, ``costs.json:<key>``) and its text; and an
experiment's per-seed values, paired tests (with intervals) and noise floor as JSON (NaN as null)."""

from __future__ import annotations

import math
from typing import Any

from stitch.report.effects import noise_floor
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
    """``{metric: {variant: the paired test against the reference}}`` (NaN as None): p-values,
    the paired differences per seed, the mean difference and its t- and bootstrap intervals."""

    def clean(x: float | None) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    return {
        m: {
            name: {
                "n": t.n,
                "seeds": t.seeds,
                "unpaired_seeds": t.unpaired,
                "mean_diff": clean(t.mean_diff),
                "diffs": t.diffs,
                "ci_level": t.level,
                "ci": [clean(x) for x in t.ci],
                "bootstrap_ci": [clean(x) for x in t.bootstrap_ci],
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


def values_json(res: ExperimentResults) -> dict[str, Any]:
    """``{metric: {variant: {seed: value}}}``: every value the tables aggregate, per seed."""
    return {
        m: {v.name: {str(s): x for s, x in v.values(m).items()} for v in res.variants} for m in res.metrics
    }


def noise_floor_json(res: ExperimentResults) -> dict[str, Any] | None:
    """The noise floor of the design (:func:`stitch.report.effects.noise_floor`), NaN as None."""
    nf = noise_floor(res)
    return None if nf is None else nf.as_json()
