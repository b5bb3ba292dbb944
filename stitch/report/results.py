"""Loading results: a run directory's ``experiment.yaml`` and ``runs.sqlite`` to the finished runs
of each variant, the paired tests against the baseline and the (cached) costs.

Which numbers: the held-out test split at the epoch ``report.selection`` names (the best
validation epoch, or the last) when every reported run has test metrics; otherwise the
validation split itself (best or last epoch), and the captions say that this split also chose the
epoch (:data:`stitch.store.METRIC_FIELDS`).

Which runs: only ``done`` runs. Runs whose insertion settings differ from the current
``experiment.yaml`` are stale and left out; when runs with several training recipes exist
(``stitch run --epochs 2`` then a full run) the recipe with the most finished runs is used (ties:
the most recent) and the others are listed in the notes. Rows are the planned variants
(:func:`stitch.plan.plan_variants`) that have at least one finished run, in plan order, then any
other stored variant of known insertions.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stitch.config import Experiment, with_overrides
from stitch.errors import StitchError
from stitch.plan import Variant, control_insertions, plan_variants
from stitch.plugins import load_experiment_with_plugins
from stitch.report.labels import PERCENT_METRICS
from stitch.runs import recipe_text, resolved_insertion
from stitch.stats import PairedTest, compare_to_reference
from stitch.store import METRIC_FIELDS, ResultStore, RunRow, reported_split, run_dir_files


class ReportError(StitchError):
    """A run directory that cannot be reported (missing files, no finished runs)."""


@dataclass
class VariantRuns:
    """A variant and its finished runs (one per seed, sorted by seed)."""

    variant: Variant
    rows: list[RunRow]
    #: the row attribute the values come from (:data:`stitch.store.METRIC_FIELDS`)
    source: str = "best_metrics"

    @property
    def name(self) -> str:
        return self.variant.name

    def per_image(self) -> dict[int, list[Any]]:
        """``{seed: per-image confusion matrices}`` of the test evaluation the values come from
        (seeds without them left out; empty when the values are not test metrics)."""
        which = {"test_best_metrics": "best", "test_last_metrics": "last"}.get(self.source)
        out = {}
        for r in self.rows:
            images = (r.test_per_image or {}).get(which or "")
            if which and images:
                out[r.seed] = images
        return out

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.rows]

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.rows]

    def values(self, metric: str) -> dict[int, float]:
        """``{seed: value}`` of the runs that have ``metric``, from :attr:`source`."""
        out = {}
        for r in self.rows:
            v = (getattr(r, self.source) or {}).get(metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v)):
                out[r.seed] = float(v)
        return out

    def ids_for(self, seeds: Iterable[int]) -> list[str]:
        """The run ids of the given seeds, in seed order."""
        wanted = set(seeds)
        return [r.run_id for r in self.rows if r.seed in wanted]

    def recipe_key(self) -> tuple[tuple[int, str], ...]:
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
    split: str = "val"  # the split the tables report: test (held out) or val (it also chose the epoch)
    selection: str = "best"  # report.selection: the best validation epoch or the last
    split_images: int | None = None  # the reported split's size, when stored (test)
    costs: dict[str, Any] = field(default_factory=dict)  # variant name -> stitch.costs.Costs
    cost_errors: dict[str, str] = field(default_factory=dict)
    #: (variant, metric) -> its seeds x test-images bootstrap interval, computed once per report
    #: (stitch.report.effects; both tables' CSVs show it)
    image_intervals: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.exp.cfg.name

    @property
    def primary(self) -> str:
        return self.exp.cfg.primary_metric

    @property
    def source(self) -> str:
        """The run-row field the tables' metrics come from (``test_best_metrics`` …)."""
        return METRIC_FIELDS[(self.split, self.selection)]

    def by_name(self, name: str) -> VariantRuns:
        return next(v for v in self.variants if v.name == name)

    def significant(self, metric: str, variant: str) -> bool:
        """Whether ``variant`` is significantly better than the reference on ``metric`` (after Holm)."""
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


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted paths at which two resolved configs differ (a key only one of them has counts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _runs_list(rows: Iterable[RunRow]) -> str:
    return ", ".join(f"{r.variant} seed {r.seed} [{r.run_id}]" for r in rows)


def select_runs(exp: Experiment, rows: Sequence[RunRow]) -> tuple[list[VariantRuns], list[str]]:
    """The finished runs that belong in the tables, grouped by variant, and notes on the rest."""
    cfg = exp.cfg
    notes: list[str] = []
    every = list(cfg.insertions) + [c for _, c in control_insertions(cfg)]
    current = {i.name: resolved_insertion(i.model_dump(mode="json")) for i in every}
    others = Counter(r.status for r in rows if r.status != "done")
    if others:
        left = ", ".join(f"{n} {s}" for s, n in sorted(others.items()))
        notes.append("Left out (not done): " + left + " run(s).")
    done, stale = [], []
    for r in rows:
        if r.status != "done":
            continue
        used = {i.get("name"): i for i in r.config.get("insertions", [])}
        if set(r.insertions) != set(used) or any(
            current.get(n) != resolved_insertion(c) for n, c in used.items()
        ):
            stale.append(r)
        else:
            done.append(r)
    if stale:
        notes.append(
            f"Left out: {len(stale)} finished run(s) whose insertion settings differ from experiment.yaml ("
            + _runs_list(stale)
            + ")."
        )
    if not done:
        return [], notes
    by_recipe: dict[str, list[RunRow]] = {}
    for r in done:
        by_recipe.setdefault(recipe_text(r.config), []).append(r)
    chosen = max(by_recipe, key=lambda k: (len(by_recipe[k]), max(r.updated_at or 0 for r in by_recipe[k])))
    dropped = [r for k, rs in by_recipe.items() if k != chosen for r in rs]
    if dropped:
        used = json.loads(chosen)
        keys = sorted({k for r in dropped for k in differing_keys(json.loads(recipe_text(r.config)), used)})
        shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        notes.append(
            f"Left out: {len(dropped)} finished run(s) with another training recipe"
            + (f" (differing in {shown})" if keys else "")
            + " than the "
            f"{len(by_recipe[chosen])} used (" + _runs_list(dropped) + ")."
        )
    keep: dict[tuple[frozenset[str], int], RunRow] = {}
    for r in sorted(by_recipe[chosen], key=lambda r: r.updated_at or 0):
        keep[(frozenset(r.insertions), r.seed)] = r  # the latest wins (duplicates cannot normally happen)
    planned = plan_variants(cfg)
    known = set(current)
    extra: list[Variant] = []
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
        stored = ", ".join(v.name for v in extra if any(o.variant == v for o in out))
        notes.append("Variants not in the current ablation design but stored: " + stored + ".")
    return out, notes


def tables_split(variants: Sequence[VariantRuns], notes: list[str]) -> tuple[str, int | None]:
    """``("test", test images)`` when every run was evaluated on a test split, else ``("val",
    None)`` (with a note when only some were)."""
    rows = [r for v in variants for r in v.rows]
    with_test = [r for r in rows if r.test_last_metrics]
    if reported_split(rows) == "test":
        sizes = {(r.test_last_metrics or {}).get("images") for r in with_test}
        return "test", (sizes.pop() if len(sizes) == 1 else None)
    if with_test:
        notes.append(
            f"{len(rows) - len(with_test)} of {len(rows)} runs have no test-split metrics (finished before "
            "the test split was evaluated?); every table reports the validation split."
        )
    return "val", None


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
    exp = load_experiment_with_plugins(exp_file)
    with ResultStore(db) as store:
        rows = store.rows()
    variants, notes = select_runs(exp, rows)
    if not variants:
        raise ReportError(
            f"{run_dir}: no finished runs to report" + (f" ({' '.join(notes)})" if notes else "")
        )
    cfg = exp.cfg
    split, split_images = tables_split(variants, notes)
    for v in variants:
        v.source = METRIC_FIELDS[(split, cfg.report.selection)]
    metrics = list(dict.fromkeys(cfg.metrics.report or [cfg.primary_metric]))
    scale = {}
    for m in metrics:
        vals = [x for v in variants for x in v.values(m).values()]
        in_unit = bool(vals) and all(0.0 <= x <= 1.0 for x in vals)
        scale[m] = 100.0 if m in PERCENT_METRICS and in_unit else 1.0
        if m in PERCENT_METRICS and scale[m] == 1.0 and vals:
            notes.append(f"{m} has stored values outside [0, 1]; shown as stored, not in %.")
    reference = next((v for v in variants if v.variant.is_baseline), None)
    tests: dict[str, dict[str, PairedTest]] = {}
    if reference is not None:
        for m in metrics:
            tests[m] = compare_to_reference(
                {v.name: v.values(m) for v in variants},
                reference.name,
                cfg.report.test,
                alternative,  # type: ignore[arg-type]
                level=1 - cfg.report.alpha,
            )
    res = ExperimentResults(
        run_dir,
        exp,
        variants,
        reference,
        metrics,
        scale,
        tests,
        cfg.report.test,
        cfg.report.alpha,
        alternative,
        split=split,
        selection=cfg.report.selection,
        split_images=split_images,
        notes=notes,
    )
    if costs:
        from stitch.costs import cached_costs

        used = variants[0].rows[0].config
        try:
            # the baseline's arguments as trained (in_channels from the data)
            exp_run = with_overrides(exp, baseline_args=dict(used.get("baseline", {}).get("args", {})))
        except StitchError:
            exp_run = exp
        res.costs, res.cost_errors = cached_costs(
            exp_run,
            [v.variant for v in variants],
            run_dir / "costs.json",
            seed=cfg.seeds[0],
            reference=reference.name if reference else None,
            device=device,
            latency=latency,
            warmup=warmup,
            repeats=repeats,
        )
        for name, why in res.cost_errors.items():
            res.notes.append(f"No FLOPs/latency for {name}: {why}")
    return res
