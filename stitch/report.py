"""Paper-ready tables, plots and provenance from the results database alone (no training).

``write_report([RUN_DIR, ...], OUT_DIR)`` reads ``RUN_DIR/experiment.yaml`` and
``RUN_DIR/runs.sqlite`` and writes, per experiment (file names get ``_<experiment>`` appended when
several run directories are given):

- ``ablation.{tex,md,csv,html}`` (the formats in ``report.formats``): one check-mark column per
  insertion (✓ / empty, LaTeX ``\\checkmark``), one column per metric of ``metrics.report``
  (default: the primary metric) with mean ± sample std over seeds at each run's best epoch
  (``best_metrics``), then Params (M), ΔParams (K), FLOPs (G) and ΔFLOPs (M) against the baseline.
  The best mean of each metric column is bold (every row that ties at the shown precision); † marks
  a variant significantly better than the baseline after Holm's correction (see
  :mod:`stitch.stats` for the test, the direction and the corner cases).
- ``comparison.{tex,md,csv,html}``: one row per variant with the number of seeds, the metrics, the
  paired difference of the primary metric against the baseline and its Holm-adjusted p, Params,
  FLOPs, CPU latency and training time per run. With several run directories: one row per
  experiment (its variant with every insertion), plus each distinct baseline (baselines of
  experiments with the same recipe have the same run ids and are shown once).
- ``metrics.{png,pdf}``: per-variant bars of each reported metric, error bars ± std, one dot per
  seed; ``curves.{png,pdf}``: training loss, validation loss and the primary metric per epoch
  (mean over seeds, band ± std) from each run's ``history``.
- ``provenance.json``: for every table cell (row × column header), the run ids it aggregates,
  the seeds, and where the number comes from (``best_metrics.miou``, ``runs.params``,
  ``costs.json:<key>``); plus the tests' p-values and the notes.

Decisions (also stated in the captions):

- **Which runs**: only ``done`` runs. Runs whose insertion settings differ from the current
  ``experiment.yaml`` are stale and left out; when runs with several training recipes exist
  (``stitch run --epochs 2`` then a full run) the recipe with the most finished runs is used (ties:
  the most recent) and the others are listed in the notes. Rows are the planned variants
  (:func:`stitch.plan.plan_variants`) that have at least one finished run, in plan order, then any
  other stored variant of known insertions. Rows whose seed counts differ are named in the caption.
- **Scale**: metrics of :data:`stitch.config.TASK_METRICS` (IoU, Dice, accuracy, AP … all in
  [0, 1]) are shown ×100, in %, with ``report.decimals`` decimals (default 2); a metric with a
  stored value outside [0, 1] is shown as stored. The CSV files keep the stored scale, unrounded.
- **Reference**: the variant without insertions (``Baseline``). A design without one
  (``leave-one-out``) has no deltas and no tests; the caption says so.
- **LaTeX**: ``pandas.io.formats.style.Styler.to_latex`` with booktabs rules, caption above the
  table. Numbers are ``\\num{}`` from siunitx in math mode (``\\(\\num{83.70} \\pm \\num{1.23}\\)``)
  in ``c`` columns, so they take the document's siunitx settings (decimal marker, grouping) while
  bold cells stay simple: a bold cell is ``{\\boldmath ...}`` and the table sets
  ``\\sisetup{reset-math-version=false}`` locally so siunitx (v3) keeps the bold math. A pasted
  table needs ``\\usepackage{booktabs,amssymb,siunitx}`` (the file's first line says so).
  ``standalone=True`` writes a whole ``article`` document that compiles with pdflatex; without
  siunitx installed (Debian: ``texlive-science``) it falls back to plain numbers. The caption is
  plain text from the YAML (LaTeX special characters are escaped).
- **Markdown** via ``DataFrame.to_markdown`` (needs ``tabulate``), caption above, notes below.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from stitch.config import TASK_METRICS, Experiment, load_experiment, with_overrides
from stitch.errors import StitchError
from stitch.plan import Variant, plan_variants
from stitch.stats import MIN_PAIRS, PairedTest, Summary, compare_to_reference, describe_test, summarize, wilcoxon_floor
from stitch.store import ResultStore, RunRow, run_dir_files

PERCENT_METRICS = frozenset(m for ms in TASK_METRICS.values() for m in ms)
METRIC_LABELS = {
    "miou": "mIoU", "mdice": "mDice", "pixel_acc": "Pixel acc.", "mprecision": "mPrecision",
    "mrecall": "mRecall", "fg_iou": "FG IoU", "fg_dice": "FG Dice",
    "segm_ap": "Mask AP", "segm_ap50": "Mask AP50", "segm_ap75": "Mask AP75", "segm_aps": "Mask APs",
    "segm_apm": "Mask APm", "segm_apl": "Mask APl", "segm_ar": "Mask AR",
    "bbox_ap": "Box AP", "bbox_ap50": "Box AP50", "bbox_ap75": "Box AP75", "bbox_aps": "Box APs",
    "bbox_apm": "Box APm", "bbox_apl": "Box APl", "bbox_ar": "Box AR",
    "train_loss": "Training loss", "val_loss": "Validation loss",
}
DASH = "\u2013"
DAGGER = "\u2020"
CHECK = "\u2713"
DELTA = "\u0394"


class ReportError(StitchError):
    """A run directory that cannot be reported (missing files, no finished runs)."""


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


# ============================================================================ loading
@dataclass
class VariantRuns:
    """A variant and its finished runs (one per seed, sorted by seed)."""

    variant: Variant
    rows: list[RunRow]

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.rows]

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.rows]

    def values(self, metric: str) -> dict[int, float]:
        """``{seed: best-epoch value}`` of the runs that have ``metric``."""
        out = {}
        for r in self.rows:
            v = (r.best_metrics or {}).get(metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v)):
                out[r.seed] = float(v)
        return out

    def ids_for(self, seeds: Iterable[int]) -> list[str]:
        wanted = set(seeds)
        return [r.run_id for r in self.rows if r.seed in wanted]

    def recipe_key(self) -> tuple:
        """What the runs trained, seed by seed, ignoring settings that cannot change a result
        (``keep_last``): two experiments' baselines with equal keys are the same runs."""
        def clean(config: dict[str, Any]) -> str:
            train = {k: v for k, v in config.get("train", {}).items() if k != "keep_last"}
            return json.dumps(dict(config, train=train), sort_keys=True, default=str)

        return tuple(sorted((r.seed, clean(r.config)) for r in self.rows))


@dataclass
class ExperimentResults:
    """Everything one experiment's tables need, read from its run directory."""

    run_dir: Path
    exp: Experiment
    variants: list[VariantRuns]
    reference: VariantRuns | None
    metrics: list[str]
    scale: dict[str, float]
    tests: dict[str, dict[str, PairedTest]]
    test: str
    alpha: float
    alternative: str
    costs: dict[str, Any] = field(default_factory=dict)  # variant name -> stitch.costs.Costs
    cost_errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.exp.cfg.name

    @property
    def primary(self) -> str:
        return self.exp.cfg.primary_metric

    def by_name(self, name: str) -> VariantRuns:
        return next(v for v in self.variants if v.name == name)

    def significant(self, metric: str, variant: str) -> bool:
        t = self.tests.get(metric, {}).get(variant)
        return bool(t and t.significant(self.alpha))

    @property
    def full(self) -> VariantRuns:
        """The variant with every insertion (else the one with the most), for cross-experiment tables."""
        everything = {i.name for i in self.exp.cfg.insertions}
        for v in self.variants:
            if set(v.variant.insertions) == everything:
                return v
        return max(self.variants, key=lambda v: len(v.variant.insertions))


def _recipe(row: RunRow) -> str:
    """The training recipe of a run: its config without the seed and the insertions."""
    return json.dumps({k: v for k, v in row.config.items() if k not in ("seed", "insertions")}, sort_keys=True, default=str)


def select_runs(exp: Experiment, rows: Sequence[RunRow]) -> tuple[list[VariantRuns], list[str]]:
    """The finished runs that belong in the tables, grouped by variant, and notes on the rest."""
    cfg = exp.cfg
    notes: list[str] = []
    from stitch.run import resolved_insertion

    current = {i["name"]: resolved_insertion(i) for i in cfg.model_dump(mode="json")["insertions"]}
    others = Counter(r.status for r in rows if r.status != "done")
    if others:
        notes.append("Left out (not done): " + ", ".join(f"{n} {s}" for s, n in sorted(others.items())) + " run(s).")
    done, stale = [], []
    for r in rows:
        if r.status != "done":
            continue
        used = {i.get("name"): i for i in r.config.get("insertions", [])}
        if set(r.insertions) != set(used) or any(current.get(n) != resolved_insertion(c) for n, c in used.items()):
            stale.append(r)
        else:
            done.append(r)
    if stale:
        notes.append(f"Left out: {len(stale)} finished run(s) whose insertion settings differ from experiment.yaml (" + ", ".join(f"{r.variant} seed {r.seed} [{r.run_id}]" for r in stale) + ").")
    if not done:
        return [], notes
    by_recipe: dict[str, list[RunRow]] = {}
    for r in done:
        by_recipe.setdefault(_recipe(r), []).append(r)
    chosen = max(by_recipe, key=lambda k: (len(by_recipe[k]), max(r.updated_at or 0 for r in by_recipe[k])))
    dropped = [r for k, rs in by_recipe.items() if k != chosen for r in rs]
    if dropped:
        epochs = sorted({r.epochs for r in dropped if r.epochs is not None})
        notes.append(f"Left out: {len(dropped)} finished run(s) with another training recipe" + (f" (epochs {epochs})" if epochs else "") + " than the "
                     f"{len(by_recipe[chosen])} used (" + ", ".join(f"{r.variant} seed {r.seed} [{r.run_id}]" for r in dropped) + ").")
    keep: dict[tuple[frozenset[str], int], RunRow] = {}
    for r in sorted(by_recipe[chosen], key=lambda r: r.updated_at or 0):
        keep[(frozenset(r.insertions), r.seed)] = r  # the latest wins (duplicates cannot normally happen)
    planned = plan_variants(cfg)
    known = set(current)
    extra = []
    for r in sorted(keep.values(), key=lambda r: (r.started_at or 0, r.run_id)):
        key = frozenset(r.insertions)
        if key not in {frozenset(v.insertions) for v in planned + extra} and key <= known:
            names = tuple(n for n in current if n in key)
            extra.append(Variant(r.variant, names))
    out = []
    for v in planned + extra:
        runs = sorted((r for (k, _), r in keep.items() if k == frozenset(v.insertions)), key=lambda r: r.seed)
        if runs:
            out.append(VariantRuns(v, runs))
    missing = [v.name for v in planned if not any(o.variant == v for o in out)]
    if missing:
        notes.append("No finished runs (not in the tables): " + ", ".join(missing) + ".")
    if extra:
        notes.append("Variants not in the current ablation design but stored: " + ", ".join(v.name for v in extra if any(o.variant == v for o in out)) + ".")
    return out, notes


def load_results(
    run_dir: str | Path,
    *,
    costs: bool = True,
    device: str = "cpu",
    latency: bool = True,
    warmup: int = 3,
    repeats: int = 20,
    alternative: str = "greater",
) -> ExperimentResults:
    """Read one run directory: the finished runs, the paired tests, and the (cached) costs."""
    run_dir = Path(run_dir)
    try:
        exp_file, db = run_dir_files(run_dir)
    except StitchError as exc:
        raise ReportError(str(exc)) from None
    exp = load_experiment(exp_file)
    with ResultStore(db) as store:
        rows = store.rows()
    variants, notes = select_runs(exp, rows)
    if not variants:
        raise ReportError(f"{run_dir}: no finished runs to report" + (f" ({' '.join(notes)})" if notes else ""))
    cfg = exp.cfg
    metrics = list(dict.fromkeys(cfg.metrics.report or [cfg.primary_metric]))
    scale = {}
    for m in metrics:
        vals = [x for v in variants for x in v.values(m).values()]
        scale[m] = 100.0 if m in PERCENT_METRICS and vals and all(0.0 <= x <= 1.0 for x in vals) else 1.0
        if m in PERCENT_METRICS and scale[m] == 1.0 and vals:
            notes.append(f"{m} has stored values outside [0, 1]; shown as stored, not in %.")
    reference = next((v for v in variants if v.variant.is_baseline), None)
    tests: dict[str, dict[str, PairedTest]] = {}
    if reference is not None:
        for m in metrics:
            tests[m] = compare_to_reference({v.name: v.values(m) for v in variants}, reference.name, cfg.report.test, alternative)  # type: ignore[arg-type]
    res = ExperimentResults(run_dir, exp, variants, reference, metrics, scale, tests, cfg.report.test, cfg.report.alpha, alternative, notes=notes)
    if costs:
        from stitch.costs import cached_costs

        used = variants[0].rows[0].config
        try:
            exp_run = with_overrides(exp, baseline_args=dict(used.get("baseline", {}).get("args", {})))  # args as trained (in_channels from the data)
        except StitchError:
            exp_run = exp
        res.costs, res.cost_errors = cached_costs(
            exp_run, [v.variant for v in variants], run_dir / "costs.json", seed=cfg.seeds[0],
            reference=reference.name if reference else None, device=device, latency=latency, warmup=warmup, repeats=repeats,
        )
        for name, why in res.cost_errors.items():
            res.notes.append(f"No FLOPs/latency for {name}: {why}")
    return res


# ============================================================================ the table model
@dataclass
class Cell:
    """One table cell: plain text, LaTeX, the number behind it and where it came from."""

    text: str
    latex: str
    bold: bool = False
    dagger: bool = False
    run_ids: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    source: str = ""

    def markdown(self) -> str:
        t = f"**{self.text}**" if self.bold and self.text else self.text
        return t + (DAGGER if self.dagger else "")

    def plain(self) -> str:
        return self.text + (DAGGER if self.dagger else "")

    def tex(self) -> str:
        t = f"{{\\boldmath{self.latex}}}" if self.bold and self.latex else self.latex
        return t + ("\\(^{\\dagger}\\)" if self.dagger else "")


@dataclass
class Column:
    key: str
    header: str       # plain text (Markdown, CSV, HTML, provenance)
    latex: str
    align: str = "c"


@dataclass
class Row:
    key: str          # unique: the variant name, or "experiment: variant"
    experiment: str
    variant: str
    cells: dict[str, Cell]


@dataclass
class Table:
    name: str
    columns: list[Column]
    rows: list[Row]
    caption: str
    label: str
    notes: list[str]
    records: list[dict[str, Any]]   # the CSV: numbers unrounded, stored scale

    def cell(self, row: str, column: str) -> Cell:
        """The cell at (row key, column key or header)."""
        r = next(r for r in self.rows if r.key == row)
        col = next(c for c in self.columns if column in (c.key, c.header))
        return r.cells[col.key]


# ---------------------------------------------------------------------------- formatting
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "\u2212": r"\(-\)", "\u00b1": r"\(\pm\)", "\u03b1": r"\(\alpha\)", DAGGER: r"\(^{\dagger}\)",
    CHECK: r"\checkmark{}", "\u00d7": r"\(\times\)", "\u2013": "--", "\u2014": "---", DELTA: r"\(\Delta\)",
    "\u2264": r"\(\le\)", "\u2265": r"\(\ge\)", "\u00b7": r"\(\cdot\)",
}


def latex_escape(text: str) -> str:
    """Plain text (with the symbols the report uses) to LaTeX that pdflatex takes in any encoding."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _fmt(x: float, decimals: int) -> str:
    return f"{round(x, decimals) + 0.0:.{decimals}f}"


def _signed(x: float, decimals: int) -> str:
    s = _fmt(x, decimals)
    return s if s.startswith("-") else "+" + s


def _num(s: str) -> str:
    return f"\\num[retain-explicit-plus]{{{s}}}" if s.startswith("+") else f"\\num{{{s}}}"


def number_cell(x: float | None, decimals: int, signed: bool = False, **kw: Any) -> Cell:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return Cell(DASH, "--", **kw)
    s = _signed(x, decimals) if signed else _fmt(x, decimals)
    return Cell(s, f"\\({_num(s)}\\)", **kw)


def summary_cell(s: Summary, scale: float, decimals: int, **kw: Any) -> Cell:
    if s.n == 0:
        return Cell(DASH, "--", **kw)
    mean = _fmt(s.mean * scale, decimals)
    if not s.has_std:
        return Cell(mean, f"\\({_num(mean)}\\)", **kw)
    std = _fmt(s.std * scale, decimals)
    return Cell(f"{mean} \u00b1 {std}", f"\\({_num(mean)} \\pm {_num(std)}\\)", **kw)


def _p_text(p: float) -> str:
    if math.isnan(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _bold_best(rows: list[Row], key: str, means: dict[str, float], decimals: int, scale: float) -> None:
    """Bold the best (highest) mean in a column; every row that ties at the shown precision."""
    shown = {k: round(m * scale, decimals) for k, m in means.items() if not math.isnan(m)}
    if not shown:
        return
    best = max(shown.values())
    for r in rows:
        if r.key in shown and shown[r.key] == best:
            r.cells[key].bold = True


# ---------------------------------------------------------------------------- captions
def _seed_sentence(variants: Sequence[VariantRuns]) -> str:
    sets = {tuple(v.seeds) for v in variants}
    if len(sets) == 1:
        seeds = next(iter(sets))
        if len(seeds) == 1:
            return f"Single seed ({seeds[0]}), so no standard deviation."
        return f"Mean \u00b1 sample standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))})."
    per = ", ".join(f"{v.name} {len(v.seeds)}" for v in variants)
    return f"Mean \u00b1 sample standard deviation over seeds; the rows have different numbers of seeds: {per}."


def _stats_sentence(res: ExperimentResults) -> str:
    if res.reference is None:
        why = "No Baseline variant has finished runs" if any(v.is_baseline for v in plan_variants(res.exp.cfg)) else "The ablation design has no Baseline variant"
        return f"{why}: no deltas, no significance test, and no significance is claimed."
    tested = {name for m in res.metrics for name, t in res.tests[m].items() if t.tested}
    others = [v.name for v in res.variants if v is not res.reference]
    if not others:
        return "Only the Baseline has finished runs: no significance test."
    pairs = {name: max(res.tests[m][name].n for m in res.metrics) for name in others}
    if not tested:
        n = max(pairs.values())
        return (f"With fewer than {MIN_PAIRS} paired seeds ({n} here) no significance test is run, and no significance is claimed.")
    k = max(sum(1 for t in res.tests[m].values() if t.tested) for m in res.metrics)
    out = f"{DAGGER}: significantly better than {res.reference.name} at \u03b1 = {res.alpha:g} ({_test_words(res.test, res.alternative, k)})."
    untested = [n for n in others if n not in tested]
    if untested:
        out += f" Not tested (fewer than {MIN_PAIRS} paired seeds): {', '.join(untested)}."
    if res.test == "wilcoxon":
        n = max(pairs[t] for t in tested)
        floor = wilcoxon_floor(n, res.alternative)  # type: ignore[arg-type]
        if floor >= res.alpha:
            out += f" With {n} paired seeds the exact Wilcoxon test cannot give p below {floor:.3g}, so no {DAGGER} is possible."
    return out


def _test_words(test: str, alternative: str, k: int) -> str:
    """``one-sided paired t-test over seeds, Holm-corrected over the 3 variants of each column``."""
    words = describe_test(test, alternative, 0.05).split(", Holm")[0]  # type: ignore[arg-type]
    if k > 1:
        return words + f", Holm-corrected over the {k} variants compared in each column"
    return words + "; one comparison per column, so Holm's correction changes nothing"


def _metric_sentence(res: ExperimentResults) -> str:
    pct = [metric_label(m) for m in res.metrics if res.scale[m] == 100.0]
    s = f"Metrics at each run's best validation epoch (by {metric_label(res.primary)})"
    return s + (", in %." if len(pct) == len(res.metrics) else (f"; {', '.join(pct)} in %." if pct else "."))


def _cost_sentence(res: ExperimentResults, latency: bool = False, deltas: bool = True) -> str:
    delta = f"; {DELTA} against {res.reference.name}" if deltas and res.reference is not None else ""
    if not res.costs:
        return f"Params in millions{delta}." if any(v.rows[0].params is not None for v in res.variants) else ""
    c = next(iter(res.costs.values()))
    h, w = c.image_size
    s = (f"Params in millions; FLOPs in billions for one {c.in_channels}\u00d7{h}\u00d7{w} input (batch 1, "
         f"counted by torch.utils.flop_counter, a multiply-add = 2 FLOPs){delta}.")
    if latency and c.latency_ms is not None:
        s += (f" Latency: median of {c.repeats} forwards after {c.warmup} warm-up, batch 1, eval mode, "
              f"{c.device}{f' ({c.threads} threads)' if c.device == 'cpu' else ''}.")
    return s


# ---------------------------------------------------------------------------- the tables
def _cost_cells(res: ExperimentResults, v: VariantRuns, decimals: int, with_latency: bool = False) -> dict[str, Cell]:
    c = res.costs.get(v.name)
    ids, seeds = v.run_ids, v.seeds
    src = f"costs.json:{c.key}" if c is not None and c.key else "costs.json"
    ref_ids = res.reference.run_ids if res.reference else []
    params = v.rows[0].params if v.rows[0].params is not None else (c.params if c else None)
    ref_params = None
    if res.reference is not None:
        ref_params = res.reference.rows[0].params if res.reference.rows[0].params is not None else (res.costs[res.reference.name].params if res.reference.name in res.costs else None)
    out = {
        "params": number_cell(None if params is None else params / 1e6, decimals, run_ids=ids, seeds=seeds, source="runs.params"),
        "params_delta": number_cell(None if params is None or ref_params is None or v is res.reference else (params - ref_params) / 1e3, decimals, signed=True,
                                    run_ids=ids + [i for i in ref_ids if i not in ids], seeds=seeds, source="runs.params - reference runs.params"),
        "flops": number_cell(None if c is None or c.flops is None else c.flops / 1e9, decimals, run_ids=ids, seeds=seeds, source=src),
        "flops_delta": number_cell(None if c is None or c.flops_delta is None or v is res.reference else c.flops_delta / 1e6, decimals, signed=True,
                                   run_ids=ids + [i for i in ref_ids if i not in ids], seeds=seeds, source=src + " (minus the reference's)"),
    }
    if with_latency:
        out["latency"] = number_cell(None if c is None else c.latency_ms, decimals, run_ids=ids, seeds=seeds, source=src)
    return out


def _cost_records(res: ExperimentResults, v: VariantRuns) -> dict[str, Any]:
    c = res.costs.get(v.name)
    params = v.rows[0].params if v.rows[0].params is not None else (c.params if c else None)
    ref = res.reference.rows[0].params if res.reference is not None else None
    return {
        "params": params,
        "params_delta": None if params is None or ref is None else params - ref,
        "flops": c.flops if c else None,
        "flops_delta": c.flops_delta if c else None,
        "latency_ms": c.latency_ms if c else None,
    }


_COST_COLUMNS = [
    Column("params", "Params (M)", "Params (M)"),
    Column("params_delta", f"{DELTA}Params (K)", r"\(\Delta\)Params (K)"),
    Column("flops", "FLOPs (G)", "FLOPs (G)"),
    Column("flops_delta", f"{DELTA}FLOPs (M)", r"\(\Delta\)FLOPs (M)"),
]


def _cost_columns(res: ExperimentResults, latency: bool = False, deltas: bool = True) -> list[Column]:
    """Params (from the database) always; FLOPs (and latency) when costs were computed."""
    cols = [c for c in _COST_COLUMNS if c.key.startswith("params")]
    if res.costs:
        cols += [c for c in _COST_COLUMNS if c.key.startswith("flops")]
    if not deltas or res.reference is None:
        cols = [c for c in cols if not c.key.endswith("_delta")]
    if latency and any(c.latency_ms is not None for c in res.costs.values()):
        cols.append(Column("latency", "Latency (ms)", "Latency (ms)"))
    return cols


def _metric_column(res: ExperimentResults, m: str) -> Column:
    unit = " (%)" if res.scale[m] == 100.0 else ""
    return Column(f"metric:{m}", metric_label(m) + unit, latex_escape(metric_label(m) + unit))


def _metric_cells(res: ExperimentResults, rows: list[Row], pick: dict[str, VariantRuns], decimals: int) -> None:
    """Fill the metric cells of ``rows`` (row key -> variant), bold the best, mark †."""
    for m in res.metrics:
        key = f"metric:{m}"
        means = {}
        for r in rows:
            v = pick[r.key]
            vals = v.values(m)
            s = summarize(vals.values())
            means[r.key] = s.mean
            ids, source = v.ids_for(vals), f"best_metrics.{m}"
            ref = res.reference
            if ref is not None and ref is not v:  # the † comes from a test against the reference's runs
                ids = ids + [i for i in ref.ids_for(vals) if i not in ids]
                source += f"; the paired test also reads the reference's ({ref.name}) runs"
            r.cells[key] = summary_cell(s, res.scale[m], decimals, dagger=res.significant(m, v.name),
                                        run_ids=ids, seeds=sorted(vals), source=source)
        _bold_best(rows, key, means, decimals, res.scale[m])


def ablation_table(res: ExperimentResults) -> Table:
    """The ablation table: ✓ per insertion, metrics (mean ± std, bold best, †), params and FLOPs."""
    cfg = res.exp.cfg
    d = cfg.report.decimals
    names = [i.name for i in cfg.insertions]
    columns = [Column("variant", "Variant", "Variant", "l")]
    columns += [Column(f"check:{n}", n, latex_escape(n)) for n in names]
    columns += [_metric_column(res, m) for m in res.metrics]
    columns += _cost_columns(res)
    rows, records = [], []
    for v in res.variants:
        cells = {"variant": Cell(v.name, latex_escape(v.name), run_ids=v.run_ids, seeds=v.seeds, source="runs.variant")}
        for n in names:
            on = n in v.variant.insertions
            cells[f"check:{n}"] = Cell(CHECK if on else "", r"\checkmark" if on else "", run_ids=v.run_ids, seeds=v.seeds, source="runs.insertions")
        cost = _cost_cells(res, v, d)
        cells.update({c.key: cost[c.key] for c in _cost_columns(res)})
        rows.append(Row(v.name, res.name, v.name, cells))
        rec: dict[str, Any] = {"variant": v.name, **{f"uses_{n}": int(n in v.variant.insertions) for n in names}}
        for m in res.metrics:
            s = summarize(v.values(m).values())
            t = res.tests.get(m, {}).get(v.name)
            rec.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_n": s.n,
                        f"{m}_p": t.p if t else math.nan, f"{m}_p_holm": t.p_holm if t else math.nan,
                        f"{m}_significant": int(res.significant(m, v.name))})
        rec.update(_cost_records(res, v))
        rec.update(seeds=" ".join(map(str, v.seeds)), run_ids=" ".join(v.run_ids))
        records.append(rec)
    _metric_cells(res, rows, {v.name: v for v in res.variants}, d)
    caption = " ".join(s for s in (
        cfg.report.caption or f"Ablation of {res.name}.",
        _seed_sentence(res.variants), _metric_sentence(res), "Bold: best mean per metric column.",
        _stats_sentence(res), _cost_sentence(res),
    ) if s)
    return Table("ablation", columns, rows, caption, cfg.report.label or f"tab:{res.name}", list(res.notes), records)


def comparison_table(results: Sequence[ExperimentResults]) -> Table:
    """One row per variant (one experiment), or per experiment (several), with costs and latency."""
    if len(results) == 1:
        return _comparison_one(results[0])
    return _comparison_many(results)


def _comparison_one(res: ExperimentResults) -> Table:
    cfg = res.exp.cfg
    d = cfg.report.decimals
    p = res.primary
    columns = [Column("variant", "Variant", "Variant", "l"), Column("seeds", "Seeds", "Seeds")]
    columns += [_metric_column(res, m) for m in res.metrics]
    pm_scale = res.scale.get(p, 100.0 if p in PERCENT_METRICS else 1.0)
    if res.reference is not None:
        unit = " (pp)" if pm_scale == 100.0 else ""
        columns += [Column("diff", f"{DELTA}{metric_label(p)}{unit}", latex_escape(f"{DELTA}{metric_label(p)}{unit}")),
                    Column("p_holm", "p (Holm)", "\\(p\\) (Holm)")]
    columns += _cost_columns(res, latency=True, deltas=False)
    columns += [Column("time", "Time/run (min)", "Time/run (min)")]
    tests = {}
    if res.reference is not None:
        tests = res.tests[p] if p in res.tests else compare_to_reference(
            {v.name: v.values(p) for v in res.variants}, res.reference.name, res.test, res.alternative)  # type: ignore[arg-type]
    rows, records = [], []
    for v in res.variants:
        cells = {"variant": Cell(v.name, latex_escape(v.name), run_ids=v.run_ids, seeds=v.seeds, source="runs.variant"),
                 "seeds": Cell(str(len(v.seeds)), f"\\({len(v.seeds)}\\)", run_ids=v.run_ids, seeds=v.seeds, source="runs.seed")}
        t = tests.get(v.name)
        if res.reference is not None:
            ref_ids = res.reference.ids_for(t.seeds) if t else []
            paired = (v.ids_for(t.seeds) + ref_ids) if t else []
            cells["diff"] = number_cell(None if t is None or not t.seeds else t.mean_diff * pm_scale, d, signed=True,
                                        run_ids=paired, seeds=t.seeds if t else [], source=f"best_metrics.{p} (paired by seed)")
            ptxt = _p_text(t.p_holm) if t else DASH
            cells["p_holm"] = Cell(ptxt, "--" if ptxt == DASH else ("\\(<\\num{0.001}\\)" if ptxt.startswith("<") else f"\\({_num(ptxt)}\\)"),
                                   run_ids=paired, seeds=t.seeds if t else [], source=f"{res.test} on best_metrics.{p}, Holm")
        cost = _cost_cells(res, v, d, with_latency=True)
        cells.update({c.key: cost[c.key] for c in _cost_columns(res, latency=True, deltas=False)})
        minutes = [r.wall_time / 60 for r in v.rows if r.wall_time]
        cells["time"] = number_cell(sum(minutes) / len(minutes) if minutes else None, d, run_ids=v.run_ids, seeds=v.seeds, source="runs.wall_time")
        rows.append(Row(v.name, res.name, v.name, cells))
        rec: dict[str, Any] = {"variant": v.name, "seeds": len(v.seeds)}
        for m in res.metrics:
            s = summarize(v.values(m).values())
            rec.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_n": s.n})
        if res.reference is not None:
            rec.update({f"{p}_diff": t.mean_diff if t else math.nan, f"{p}_p": t.p if t else math.nan,
                        f"{p}_p_holm": t.p_holm if t else math.nan, "paired_seeds": len(t.seeds) if t else 0})
        rec.update(_cost_records(res, v))
        rec.update(time_per_run_min=sum(minutes) / len(minutes) if minutes else math.nan, run_ids=" ".join(v.run_ids))
        records.append(rec)
    _metric_cells(res, rows, {v.name: v for v in res.variants}, d)
    caption = " ".join(s for s in (
        f"Comparison of the variants of {res.name}.", _seed_sentence(res.variants), _metric_sentence(res),
        "Bold: best mean per metric column.", _stats_sentence(res),
        (f"{DELTA}{metric_label(p)}: mean paired difference to {res.reference.name}"
         + (" in percentage points" if pm_scale == 100.0 else "") + "; p: Holm-adjusted p-value of that test."
         if res.reference is not None else ""),
        _cost_sentence(res, latency=True, deltas=False), "Time/run: mean training wall time.",
    ) if s)
    label = f"{cfg.report.label}-comparison" if cfg.report.label else f"tab:{res.name}-comparison"
    return Table("comparison", columns, rows, caption, label, list(res.notes), records)


def _input_sizes_sentence(results: Sequence[ExperimentResults]) -> str:
    sizes = {r.name: "\u00d7".join(map(str, (c.in_channels, *c.image_size))) for r in results for c in list(r.costs.values())[:1]}
    if len(set(sizes.values())) <= 1:
        return ""
    return "The experiments' inputs differ (FLOPs and latency at each one's own): " + ", ".join(f"{n} {sz}" for n, sz in sizes.items()) + "."


def _comparison_many(results: Sequence[ExperimentResults]) -> Table:
    d = results[0].exp.cfg.report.decimals
    metrics = list(dict.fromkeys(m for r in results for m in r.metrics))
    scale = {m: next(r.scale[m] for r in results if m in r.scale) for m in metrics}
    columns = [Column("experiment", "Experiment", "Experiment", "l"), Column("variant", "Variant", "Variant", "l"), Column("seeds", "Seeds", "Seeds")]
    for m in metrics:
        unit = " (%)" if scale[m] == 100.0 else ""
        columns.append(Column(f"metric:{m}", metric_label(m) + unit, latex_escape(metric_label(m) + unit)))
    with_costs = any(r.costs for r in results)
    with_latency = any(c.latency_ms is not None for r in results for c in r.costs.values())
    cost_cols = [_COST_COLUMNS[0]] + ([_COST_COLUMNS[2]] if with_costs else []) + ([Column("latency", "Latency (ms)", "Latency (ms)")] if with_latency else [])
    columns += cost_cols
    entries: list[tuple[list[ExperimentResults], VariantRuns]] = []  # (experiments it stands for, variant)
    for res in results:
        picks = ([res.reference] if res.reference is not None and res.reference is not res.full else []) + [res.full]
        for v in picks:
            same = next((e for e in entries if e[1].variant.is_baseline and v.variant.is_baseline and e[1].recipe_key() == v.recipe_key()), None)
            if same is not None:
                same[0].append(res)
            else:
                entries.append(([res], v))
    rows, records, means = [], [], {m: {} for m in metrics}
    for exps, v in entries:
        res = exps[0]
        label = ", ".join(e.name for e in exps)
        key = f"{label}: {v.name}"
        cells = {"experiment": Cell(label, latex_escape(label), run_ids=v.run_ids, seeds=v.seeds, source="experiment.yaml name"),
                 "variant": Cell(v.name, latex_escape(v.name), run_ids=v.run_ids, seeds=v.seeds, source="runs.variant"),
                 "seeds": Cell(str(len(v.seeds)), f"\\({len(v.seeds)}\\)", run_ids=v.run_ids, seeds=v.seeds, source="runs.seed")}
        rec: dict[str, Any] = {"experiment": label, "variant": v.name, "seeds": len(v.seeds)}
        for m in metrics:
            vals = v.values(m) if m in res.metrics else {}
            s = summarize(vals.values())
            means[m][key] = s.mean
            cells[f"metric:{m}"] = summary_cell(s, scale[m], d, dagger=res.significant(m, v.name), run_ids=v.ids_for(vals), seeds=sorted(vals), source=f"best_metrics.{m}")
            rec.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_n": s.n, f"{m}_significant": int(res.significant(m, v.name))})
        cost = _cost_cells(res, v, d, with_latency=True)
        cells.update({c.key: cost[c.key] for c in cost_cols})
        rec.update(_cost_records(res, v))
        rec["run_ids"] = " ".join(v.run_ids)
        rows.append(Row(key, label, v.name, cells))
        records.append(rec)
    for m in metrics:
        _bold_best(rows, f"metric:{m}", means[m], d, scale[m])
    tests = sorted({(r.test, r.alternative, r.alpha) for r in results})
    sig = "; ".join(f"{DAGGER}: significantly better than the experiment's own Baseline at \u03b1 = {a:g} ({describe_test(t, alt, a).split(', Holm')[0]}, Holm-corrected over the variants of that experiment)" for t, alt, a in tests)  # type: ignore[arg-type]
    untested = [r.name for r in results if r.reference is None or not any(t.tested for m in r.metrics for t in r.tests.get(m, {}).values())]
    caption = " ".join(s for s in (
        "Comparison of " + ", ".join(r.name for r in results) + ": each experiment's variant with every insertion, and the baselines (shown once when their runs are the same).",
        "Mean \u00b1 sample standard deviation over seeds (Seeds column), metrics at each run's best validation epoch"
        + (", in %." if all(scale[m] == 100.0 for m in metrics) else "."),
        "Bold: best mean per metric column.", sig + ".",
        (f"No significance is claimed for {', '.join(untested)} (fewer than {MIN_PAIRS} paired seeds or no baseline)." if untested else ""),
        _cost_sentence(next((r for r in results if r.costs), results[0]), latency=True, deltas=False),
        _input_sizes_sentence(results),
    ) if s)
    notes = [f"{r.name}: {n}" for r in results for n in r.notes]
    return Table("comparison", columns, rows, caption, "tab:comparison", notes, records)


# ============================================================================ renderers
LATEX_PACKAGES = "% needs \\usepackage{booktabs,amssymb,siunitx} (siunitx v3)"

STANDALONE_PREAMBLE = r"""\documentclass{article}
\usepackage[landscape,margin=1.5cm]{geometry}
\usepackage{booktabs}
\usepackage{amssymb}
\IfFileExists{siunitx.sty}{\usepackage{siunitx}}{}
% without siunitx (Debian: it is in texlive-science) the numbers are typeset as they are
\providecommand{\num}[2][]{#2}
\providecommand{\sisetup}[1]{}
\pagestyle{empty}
\makeatletter\setlength{\@fptop}{0pt}\makeatother % a float page starts at the top
\begin{document}
"""


def to_dataframe(table: Table, kind: str = "plain"):
    """The table as a DataFrame of strings (``plain``, ``markdown`` or ``latex`` cells)."""
    import pandas as pd

    render = {"plain": Cell.plain, "markdown": Cell.markdown, "latex": Cell.tex}[kind]
    headers = [c.latex if kind == "latex" else c.header for c in table.columns]
    data = [[render(r.cells[c.key]) if c.key in r.cells else "" for c in table.columns] for r in table.rows]
    return pd.DataFrame(data, columns=headers)


def to_latex(table: Table, standalone: bool = False) -> str:
    """booktabs LaTeX through ``Styler.to_latex``; a whole document with ``standalone``."""
    df = to_dataframe(table, "latex")
    body = df.style.hide(axis="index").to_latex(
        hrules=True,
        column_format="".join(c.align for c in table.columns),
        position="t",
        position_float="centering",
        caption=latex_escape(table.caption),
        label=table.label,
    )
    # keep bold math bold inside \num (siunitx v3 resets the math version otherwise); local to the table
    body = body.replace("\\centering\n", "\\centering\n\\sisetup{reset-math-version=false}\n", 1)
    if not standalone:
        return f"{LATEX_PACKAGES}\n{body}"
    return STANDALONE_PREAMBLE + body + "\\end{document}\n"


def to_markdown(table: Table) -> str:
    df = to_dataframe(table, "markdown")
    md = df.to_markdown(index=False, tablefmt="pipe", disable_numparse=True,
                        colalign=["left" if c.align == "l" else "center" for c in table.columns])
    out = f"Table: {table.caption}\n\n{md}\n"
    if table.notes:
        out += "\nNotes:\n\n" + "".join(f"- {n}\n" for n in table.notes)
    return out


def to_html(table: Table) -> str:
    """``Styler.to_html``: bold best cells by CSS, caption on top."""
    df = to_dataframe(table, "plain")
    bold = [[r.cells.get(c.key) is not None and r.cells[c.key].bold for c in table.columns] for r in table.rows]
    import pandas as pd

    styles = pd.DataFrame([["font-weight: bold" if b else "" for b in row] for row in bold], columns=df.columns)
    styler = df.style.hide(axis="index").set_caption(table.caption).apply(lambda _: styles, axis=None)
    styler = styler.set_table_styles([
        {"selector": "", "props": "border-collapse: collapse; font-family: sans-serif;"},
        {"selector": "caption", "props": "caption-side: top; text-align: left; max-width: 60em; padding-bottom: 0.5em;"},
        {"selector": "th, td", "props": "padding: 0.2em 0.8em; text-align: center;"},
        {"selector": "thead th", "props": "border-top: 2px solid black; border-bottom: 1px solid black;"},
        {"selector": "tbody tr:last-child td", "props": "border-bottom: 2px solid black;"},
    ])
    html = styler.to_html(doctype_html=True)
    if table.notes:
        notes = "".join(f"<li>{_html_escape(n)}</li>" for n in table.notes)
        html = html.replace("</body>", f"<p>Notes:</p><ul>{notes}</ul>\n</body>")
    return html


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_csv(table: Table, path: Path) -> None:
    import pandas as pd

    pd.DataFrame.from_records(table.records).to_csv(path, index=False)


def provenance(table: Table) -> dict[str, Any]:
    """``{row key: {column header: {run_ids, seeds, source}}}`` for every cell of ``table``."""
    cells: dict[str, Any] = {}
    for r in table.rows:
        cells[r.key] = {
            c.header: {"run_ids": r.cells[c.key].run_ids, "seeds": r.cells[c.key].seeds, "source": r.cells[c.key].source, "text": r.cells[c.key].plain()}
            for c in table.columns if c.key in r.cells
        }
    return {"caption": table.caption, "label": table.label, "columns": [c.header for c in table.columns], "cells": cells, "notes": table.notes}


# ============================================================================ plots
def _figure(ncols: int, width: float = 3.6, height: float = 3.2):
    from matplotlib.figure import Figure  # no pyplot: no global backend state; Agg renders PNG and PDF

    fig = Figure(figsize=(max(1, ncols) * width, height), layout="constrained")
    axes = fig.subplots(1, max(1, ncols), squeeze=False)[0]
    return fig, axes


def _save(fig, stem: Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    out = []
    for ext in ("png", "pdf"):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=150)
        out.append(p)
    return out


def plot_metrics(res: ExperimentResults, stem: Path) -> list[Path]:
    """Bars of each reported metric per variant (mean, ± std error bars, one dot per seed, † above)."""
    fig, axes = _figure(len(res.metrics), width=max(3.2, 0.7 * len(res.variants) + 1.5))
    names = [v.name for v in res.variants]
    for ax, m in zip(axes, res.metrics):
        sc = res.scale[m]
        stats = [summarize(v.values(m).values()) for v in res.variants]
        means = [s.mean * sc for s in stats]
        errs = [s.std * sc if s.has_std else 0.0 for s in stats]
        colors = ["0.7" if v.variant.is_baseline else f"C{i % 10}" for i, v in enumerate(res.variants)]
        x = list(range(len(names)))
        ax.bar(x, means, yerr=errs, color=colors, capsize=4, edgecolor="black", linewidth=0.6)
        for i, v in enumerate(res.variants):
            vals = [val * sc for val in v.values(m).values()]
            ax.plot([i] * len(vals), vals, "o", color="black", markersize=3, zorder=3)
            if res.significant(m, v.name):
                ax.annotate(DAGGER, (i, means[i] + errs[i]), ha="center", va="bottom", fontsize=12)
        finite = [a for a, e in zip(means, errs) if not math.isnan(a)]
        if finite:
            lo = min(a - e for a, e in zip(means, errs) if not math.isnan(a))
            hi = max(a + e for a, e in zip(means, errs) if not math.isnan(a))
            pad = max((hi - lo) * 0.5, 1e-3 * max(1.0, abs(hi)))
            # bars start at 0 (a cropped axis exaggerates differences); negative values go below
            ax.set_ylim(min(0.0, lo - pad), hi + pad)
        ax.set_xticks(x, names, rotation=30 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
        ax.set_ylabel(metric_label(m) + (" (%)" if sc == 100.0 else ""))
        ax.grid(axis="y", alpha=0.3)
    n = sorted({len(v.seeds) for v in res.variants})
    fig.suptitle(f"{res.name}: mean \u00b1 std over {'/'.join(map(str, n))} seed(s)" + (f", {DAGGER} p<{res.alpha:g} (Holm)" if any(t.tested for ts in res.tests.values() for t in ts.values()) else ""), fontsize=10)
    return _save(fig, stem)


def plot_curves(res: ExperimentResults, stem: Path) -> list[Path]:
    """Training loss, validation loss and the primary metric per epoch: mean over seeds, ± std band."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    keys = [k for k in ("train_loss", "val_loss", res.primary)
            if any(k in h for v in res.variants for r in v.rows for h in r.history)]
    fig, axes = _figure(max(1, len(keys)))
    for ax, k in zip(axes, keys):
        sc = res.scale.get(k, 100.0 if k in PERCENT_METRICS else 1.0)
        for i, v in enumerate(res.variants):
            per_epoch: dict[int, list[float]] = {}
            for r in v.rows:
                for h in r.history:
                    if k in h and isinstance(h[k], (int, float)) and "epoch" in h:
                        per_epoch.setdefault(int(h["epoch"]), []).append(float(h[k]) * sc)
            if not per_epoch:
                continue
            ep = sorted(per_epoch)
            mean = np.array([np.mean(per_epoch[e]) for e in ep])
            std = np.array([np.std(per_epoch[e], ddof=1) if len(per_epoch[e]) > 1 else 0.0 for e in ep])
            color = "0.4" if v.variant.is_baseline else f"C{i % 10}"
            ax.plot(ep, mean, label=v.name, color=color, linewidth=1.4)
            ax.fill_between(ep, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric_label(k) + (" (%)" if sc == 100.0 else ""))
        ax.set_title(("validation " if k not in ("train_loss", "val_loss") else "") + metric_label(k), fontsize=10)
        ax.grid(alpha=0.3)
    if keys:
        axes[0].legend(fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "no per-epoch history stored", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle(f"{res.name}: mean over seeds, band \u00b1 std", fontsize=10)
    return _save(fig, stem)


# ============================================================================ entry point
def default_out_dir(run_dirs: Sequence[Path]) -> Path:
    """``RUN_DIR/report`` for one run directory, ``report`` next to the first one for several."""
    run_dirs = [Path(p) for p in run_dirs]
    return run_dirs[0] / "report" if len(run_dirs) == 1 else run_dirs[0].parent / "report"


def _write_table(table: Table, stem: Path, formats: Iterable[str], standalone: bool) -> list[Path]:
    out = []
    for fmt in formats:
        if fmt == "latex":
            p = stem.with_suffix(".tex")
            p.write_text(to_latex(table, standalone), encoding="utf-8")
        elif fmt == "markdown":
            p = stem.with_suffix(".md")
            p.write_text(to_markdown(table), encoding="utf-8")
        elif fmt == "csv":
            p = stem.with_suffix(".csv")
            to_csv(table, p)
        elif fmt == "html":
            p = stem.with_suffix(".html")
            p.write_text(to_html(table), encoding="utf-8")
        else:
            continue
        out.append(p)
    return out


def _tests_json(res: ExperimentResults) -> dict[str, Any]:
    def clean(x: float) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    return {
        m: {
            name: {"n": t.n, "seeds": t.seeds, "unpaired_seeds": t.unpaired, "mean_diff": clean(t.mean_diff),
                   "statistic": clean(t.statistic), "p": clean(t.p), "p_holm": clean(t.p_holm), "tested": t.tested,
                   "significant": t.significant(res.alpha), "reason": t.reason}
            for name, t in ts.items()
        }
        for m, ts in res.tests.items()
    }


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
    results = [load_results(d, costs=costs, device=device, latency=latency, warmup=latency_warmup, repeats=latency_repeats, alternative=alternative) for d in dirs]
    out.mkdir(parents=True, exist_ok=True)  # only once every run directory has loaded
    many = len(results) > 1
    suffixes = _unique_suffixes(results) if many else [""]
    written: list[Path] = []
    prov: dict[str, Any] = {"generated_by": "stitch.report.write_report", "run_dirs": [str(d) for d in dirs], "tables": {}, "tests": {}}
    for res, suffix in zip(results, suffixes):
        table = ablation_table(res)
        written += _write_table(table, out / f"ablation{suffix}", res.exp.cfg.report.formats, standalone)
        prov["tables"][f"ablation{suffix}"] = {"experiment": res.name, "run_dir": str(res.run_dir), **provenance(table)}
        prov["tests"][res.name] = _tests_json(res)
        written += plot_metrics(res, out / f"metrics{suffix}")
        written += plot_curves(res, out / f"curves{suffix}")
    comp = comparison_table(results)
    formats = list(dict.fromkeys(f for r in results for f in r.exp.cfg.report.formats))
    written += _write_table(comp, out / "comparison", formats, standalone)
    prov["tables"]["comparison"] = {"experiments": [r.name for r in results], **provenance(comp)}
    p = out / "provenance.json"
    p.write_text(json.dumps(prov, indent=1, ensure_ascii=False), encoding="utf-8")
    written.append(p)
    return written


def _unique_suffixes(results: Sequence[ExperimentResults]) -> list[str]:
    seen: Counter[str] = Counter()
    out = []
    for r in results:
        base = "_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", r.name)
        seen[base] += 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out
