"""How many seeds an experiment needs, from earlier runs of its baseline (``stitch validate``).

When the run directory of an experiment (``<out>/<name>/runs.sqlite``) already holds finished
Baseline runs of the same recipe (the baseline's resolved config apart from the seed), their
seed-to-seed spread of the primary metric sizes the design before anything new is trained: the
smallest paired difference the planned seeds would detect (the noise floor of
:mod:`stitch.report.effects`, from the baseline's spread: sqrt(2) x its std, as for two
independent runs) and, with ``report.min_effect``, the number of seeds that difference needs.
Values are those the tables would report: the held-out test split when the runs have it, at the
epoch ``report.selection`` names; else the validation split.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stitch.config import Experiment
from stitch.runs import plan_runs, recipe_text
from stitch.stats_power import DEFAULT_POWER, min_detectable_effect, seeds_needed
from stitch.store import METRIC_FIELDS, ResultStore, RunRow, reported_split


def earlier_baseline_runs(exp: Experiment, out: str | Path) -> tuple[Path, list[RunRow]]:
    """The run database ``stitch run --out OUT`` would use, and its finished Baseline runs of the
    experiment's current recipe (none when the database does not exist)."""
    db = Path(out) / exp.cfg.name / "runs.sqlite"
    if not db.is_file() or exp.cfg.data is None:  # no runs, or none that could have trained
        return db, []
    plans = [p for p in plan_runs(exp) if not p.variant.insertions]
    if not plans:
        return db, []
    recipe = recipe_text(plans[0].config)
    with ResultStore(db) as store:
        rows = store.rows("done")
    return db, [r for r in rows if not r.insertions and recipe_text(r.config) == recipe]


def seed_advice(exp: Experiment, out: str | Path = "runs") -> str | None:
    """One line on the seeds the design needs, from earlier Baseline runs; None without two."""
    from stitch.report.labels import metric_label

    db, rows = earlier_baseline_runs(exp, out)
    cfg = exp.cfg
    split = reported_split(rows)
    source = METRIC_FIELDS[(split, cfg.report.selection)]
    values = [
        float(v)
        for r in rows
        if isinstance(v := (getattr(r, source) or {}).get(cfg.primary_metric), (int, float))
        and not math.isnan(float(v))
    ]
    if len(values) < 2:
        return None
    sd = float(np.std(values, ddof=1)) * math.sqrt(2)
    label = metric_label(cfg.primary_metric)
    n, alpha = len(cfg.seeds), cfg.report.alpha
    mde = min_detectable_effect(sd, n, alpha, DEFAULT_POWER)
    text = (
        f"seeds: {len(values)} earlier Baseline runs in {db.parent} spread {label} by "
        f"{np.std(values, ddof=1):.4g} (std, {'test' if split == 'test' else 'validation'} split); "
    )
    if math.isnan(mde):
        text += f"with {n} seed(s) no paired test can be run"
    else:
        text += (
            f"with {n} paired seeds the design detects a Δ{label} of at least {mde:.4g} "
            f"(one-sided, α = {alpha:g}, {DEFAULT_POWER * 100:g} % power)"
        )
    if cfg.report.min_effect is not None:
        need = seeds_needed(cfg.report.min_effect, sd, alpha, DEFAULT_POWER)
        text += f"; a Δ of {cfg.report.min_effect:g} (report.min_effect) needs " + (
            f"{need} seeds" if need is not None else "more than 1000 seeds"
        )
    return text + "."
