"""What a sweep writes in ``RUN_DIR/sweep/``: ``trials.csv``/``trials.md`` (every trial),
``best.yaml`` (a runnable experiment of the best trial) and plots from
``optuna.visualization.matplotlib``; every file written atomically."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from stitch.config import Experiment
from stitch.errors import one_line_message
from stitch.fileio import atomic_path, write_text
from stitch.report.figure_style import paper_style
from stitch.sweep.attributes import bookkeeping
from stitch.sweep.objectives import Objective
from stitch.sweep.space import experiment_yaml


def _trial_record(t: FrozenTrial, objectives: Sequence[Objective]) -> dict[str, Any]:
    rec: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
    for o, v in zip(objectives, t.values or [None] * len(objectives)):
        rec[o.metric] = v
    rec["insertions"] = t.user_attrs.get("insertions", "")
    rec |= dict(t.params.items())
    retry_of = t.user_attrs.get("retry_of")
    rec["note"] = (
        t.user_attrs.get("invalid")
        or t.user_attrs.get("error")
        or (f"retry of trial {retry_of}" if retry_of is not None else "")
    )
    rec["run_id"] = (t.user_attrs.get("run_id") or "")[:12]
    rec["seconds"] = round(t.duration.total_seconds(), 1) if t.duration else None
    return rec


def write_outputs(
    study: optuna.Study, exp: Experiment, out_dir: Path, objectives: Sequence[Objective]
) -> list[Path]:
    """``trials.csv``, ``trials.md``, ``best.yaml`` and the plots (each written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame.from_records([_trial_record(t, objectives) for t in study.get_trials(deepcopy=False)])
    written = [
        _write(out_dir / "trials.csv", df.to_csv(index=False)),
        _write(out_dir / "trials.md", df.to_markdown(index=False) + "\n"),
    ]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if complete:
        best = best_trial(study, objectives)
        scores = ", ".join(f"{o.metric} {v:.4f}" for o, v in zip(objectives, best.values))
        header = (
            f"# Best trial {best.number} of sweep {study.study_name} ({scores}).\n"
            "# `stitch run` of this file trains the Baseline and this variant "
            "with the sweep's seed and epochs.\n"
        )
        best_exp = yaml.safe_load(bookkeeping(best, "experiment_yaml"))
        best_exp["name"] = f"{exp.cfg.name}_best"  # its own run directory (the name is not part of run ids)
        written.append(_write(out_dir / "best.yaml", header + experiment_yaml(best_exp)))
    written += _plots(study, out_dir, objectives, complete)
    return written


def best_trial(study: optuna.Study, objectives: Sequence[Objective]) -> FrozenTrial:
    """The best complete trial; with several objectives, the best in the first objective of the
    Pareto front."""
    if len(objectives) == 1:
        return study.best_trial
    sign = 1 if objectives[0].direction == "maximize" else -1
    return max(study.best_trials, key=lambda t: sign * t.values[0])


def importances_not_drawn(complete: Sequence[FrozenTrial]) -> str | None:
    """Why a parameter-importance plot of these complete trials (one objective) would mean
    nothing: fewer than two, the same objective value in every one (nothing to explain), or a
    single value of every parameter (nothing to explain it with); None when it can be drawn."""
    if len(complete) < 2:
        return f"{len(complete)} complete trial(s); importances need at least 2"
    values = {t.values[0] for t in complete}
    if len(values) == 1:
        return (
            f"the objective is {next(iter(values)):.6g} in all {len(complete)} complete trials "
            "(constant: no parameter explains a difference)"
        )
    names = sorted({name for t in complete for name in t.params})
    if all(len({repr(t.params.get(name)) for t in complete}) == 1 for name in names):
        return "every parameter took a single value in the complete trials (nothing to compare)"
    return None


def _plots(
    study: optuna.Study, out_dir: Path, objectives: Sequence[Objective], complete: Sequence[FrozenTrial]
) -> list[Path]:
    """Optuna's matplotlib plots as PNG files; one that cannot be drawn (too few trials) or would
    mean nothing (importances of a constant objective) is listed in ``plots_not_drawn.txt``."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    names = [o.label for o in objectives]
    plots: dict[str, Callable[[], Any]] = {}
    skipped: list[str] = []
    if len(objectives) == 1:
        plots["history"] = lambda: ovm.plot_optimization_history(study, target_name=names[0])
        plots["parallel_coordinate"] = lambda: ovm.plot_parallel_coordinate(study, target_name=names[0])
        reason = importances_not_drawn(complete)
        if reason is None:
            # PED-ANOVA: optuna's own evaluator (the default, fANOVA, needs scikit-learn)
            plots["importances"] = lambda: ovm.plot_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target_name=names[0]
            )
        else:
            skipped.append(f"importances: {reason}")
    else:
        plots["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=names)
    written: list[Path] = []
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                ax = draw()
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            path = out_dir / f"{name}.png"
            with paper_style(), atomic_path(path) as tmp:  # TrueType fonts, as every figure
                fig.savefig(tmp, dpi=120, bbox_inches="tight")
                plt.close(fig)
            written.append(path)
        except Exception as exc:  # a plot Optuna cannot draw for this study: leave it out
            plt.close("all")
            skipped.append(f"{name}: {one_line_message(exc)}")
    for line in skipped:  # a plot drawn by an earlier run of the sweep would no longer be current
        (out_dir / f"{line.partition(':')[0]}.png").unlink(missing_ok=True)
    note = out_dir / "plots_not_drawn.txt"
    if skipped:
        written.append(_write(note, "\n".join(skipped) + "\n"))
    elif note.exists():
        note.unlink()
    return written


def _write(path: Path, text: str) -> Path:
    write_text(path, text)
    return path
