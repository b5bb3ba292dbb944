"""Paper-ready tables, plots and provenance from the results database alone (no training).

``write_report([RUN_DIR, ...], OUT_DIR)`` reads ``RUN_DIR/experiment.yaml`` and
``RUN_DIR/runs.sqlite`` and writes, per experiment (file names get ``_<experiment>`` appended when
several run directories are given):

- ``ablation.{tex,md,csv,html}`` (the formats in ``report.formats``): one check-mark column per
  insertion (✓ / empty, LaTeX ``\\checkmark``), one column per metric of ``metrics.report``
  (default: the primary metric) with mean ± sample std over seeds, on the held-out test split
  at the epoch the validation split chose (``test_best_metrics``; ``report.selection: last``:
  the last epoch), or on the validation split when there is no test split (``best_metrics``,
  said in the caption), the primary metric's paired Δ against the baseline with its confidence
  interval (``Δ [95 % CI]``), then Params, ΔParams, FLOPs and ΔFLOPs against the baseline, each in
  K, M or G chosen per column (:mod:`stitch.report.units`). Which columns, in which order:
  ``report.columns``, else the default of ``report.layout`` (:mod:`stitch.report.column_choice`).
  † marks a variant significantly better than the baseline after Holm's correction (see
  :mod:`stitch.stats` for the test, the direction and the corner cases); bold follows
  ``report.bold`` (default: the best mean only where it is significant); the method text under the
  table states the design's noise floor (:mod:`stitch.report.effects`).
- ``comparison.{tex,md,csv,html}``: one row per variant with the number of seeds, the metrics, the
  primary metric's Δ [95 % CI] against the baseline and its Holm-adjusted p, Params,
  FLOPs, CPU latency and training time per run. With several run directories: one row per
  experiment (its variant with every insertion), plus each distinct baseline (baselines of
  experiments with the same recipe have the same run ids and are shown once).
- ``metrics.{png,pdf}`` and ``curves.{png,pdf}`` (:mod:`stitch.report.plots`).
- ``provenance.json``: for every table cell (row × column header), the run ids it aggregates,
  the seeds, and where the number comes from; plus, per experiment, every value per seed, the
  tests (p-values, paired differences, t- and bootstrap intervals), the noise floor and the notes.

Decisions (also stated in the captions):

- **Which runs**: see :mod:`stitch.report.results`. Rows whose seed counts differ are named in the
  caption.
- **Scale**: metrics of :data:`stitch.config.TASK_METRICS` (IoU, Dice, accuracy, AP … all in
  [0, 1]) are shown ×100, in %, with ``report.decimals`` decimals (default 2); a metric with a
  stored value outside [0, 1] is shown as stored. The CSV files keep the stored scale, unrounded.
- **Reference**: the variant without insertions (``Baseline``). A design without one
  (``leave-one-out``) has no deltas and no tests; the caption says so.
- **Captions**: the title and one sentence on the design and the statistics above the table; the
  full method text under it (:mod:`stitch.report.captions`).
- **LaTeX**: :mod:`stitch.report.render_latex`, sized for ``report.layout``
  (:mod:`stitch.report.latex_fit`); the caption is plain text from the YAML (LaTeX special
  characters are escaped). **Markdown**: :mod:`stitch.report.render_markdown`.

A sweep's run directory gets a runs table instead (:mod:`stitch.report.sweep_runs`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stitch.fileio import write_text
from stitch.report.ablation import ablation_table
from stitch.report.comparison import comparison_table
from stitch.report.labels import metric_label
from stitch.report.plots import plot_curves, plot_metrics
from stitch.report.provenance import noise_floor_json, provenance, tests_json, values_json
from stitch.report.render import write_table
from stitch.report.results import ExperimentResults, ReportError, VariantRuns, load_results, select_runs
from stitch.report.sweep_runs import is_sweep_dir, write_runs_table
from stitch.report.table import Cell, Column, Row, Table

__all__ = [
    "Cell",
    "Column",
    "ExperimentResults",
    "ReportError",
    "Row",
    "Table",
    "VariantRuns",
    "ablation_table",
    "comparison_table",
    "default_out_dir",
    "is_sweep_dir",
    "load_results",
    "metric_label",
    "select_runs",
    "write_report",
    "write_runs_table",
]


def default_out_dir(run_dirs: Sequence[Path]) -> Path:
    """``RUN_DIR/report`` for one run directory, ``report`` next to the first one for several."""
    run_dirs = [Path(p) for p in run_dirs]
    return run_dirs[0] / "report" if len(run_dirs) == 1 else run_dirs[0].parent / "report"


def _unique_suffixes(results: Sequence[ExperimentResults]) -> list[str]:
    """``_<experiment>`` per experiment (file-name safe), numbered when two names are the same."""
    seen: Counter[str] = Counter()
    out = []
    for r in results:
        base = "_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", r.name)
        seen[base] += 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    standalone: bool = False,
    *,
    costs: bool = True,
    device: str = "cpu",
    latency: bool = True,
    latency_repeats: int = 20,
    latency_warmup: int = 3,
    alternative: str = "greater",
) -> list[Path]:
    """Write every table, plot and the provenance file for ``run_dirs`` into ``out_dir``.

    Reads only ``experiment.yaml``, ``runs.sqlite`` and ``costs.json`` (computing and caching the
    costs of variants not in it: a model build and a few forwards each, no training). Returns the
    files written. Raises :class:`ReportError` for a directory without finished runs.
    """
    dirs = [Path(p) for p in run_dirs]
    if not dirs:
        raise ReportError("no run directory given")
    out = Path(out_dir)
    results = [
        load_results(
            d,
            costs=costs,
            device=device,
            latency=latency,
            warmup=latency_warmup,
            repeats=latency_repeats,
            alternative=alternative,
        )
        for d in dirs
    ]
    out.mkdir(parents=True, exist_ok=True)  # only once every run directory has loaded
    many = len(results) > 1
    suffixes = _unique_suffixes(results) if many else [""]
    written: list[Path] = []
    prov: dict[str, Any] = {
        "generated_by": "stitch.report.write_report",
        "run_dirs": [str(d) for d in dirs],
        "tables": {},
        "tests": {},
        "values": {},
        "noise_floor": {},
    }
    for res, suffix in zip(results, suffixes):
        table = ablation_table(res)
        written += write_table(table, out / f"ablation{suffix}", res.exp.cfg.report.formats, standalone)
        prov["tables"][f"ablation{suffix}"] = {
            "experiment": res.name,
            "run_dir": str(res.run_dir),
            **provenance(table),
        }
        prov["tests"][res.name] = tests_json(res)
        prov["values"][res.name] = values_json(res)
        prov["noise_floor"][res.name] = noise_floor_json(res)
        written += plot_metrics(res, out / f"metrics{suffix}")
        written += plot_curves(res, out / f"curves{suffix}")
    comp = comparison_table(results)
    formats = list(dict.fromkeys(f for r in results for f in r.exp.cfg.report.formats))
    written += write_table(comp, out / "comparison", formats, standalone)
    prov["tables"]["comparison"] = {"experiments": [r.name for r in results], **provenance(comp)}
    p = out / "provenance.json"
    write_text(
        p, json.dumps(prov, indent=1, ensure_ascii=False)
    )  # without a final newline (write_json adds one)
    written.append(p)
    return written
