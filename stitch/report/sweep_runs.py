"""The runs table of a sweep (``stitch report`` of a directory written by ``stitch sweep``): one row
per trained configuration from ``runs.sqlite``, as Markdown, CSV and LaTeX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stitch.errors import StitchError
from stitch.fileio import write_text
from stitch.report.table import latex_escape

# module arguments that the insertion point fills in (not choices of the sweep)
_WIRED_ARGS = ("channels", "in_channels", "out_channels", "stride")


def is_sweep_dir(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` was written by ``stitch sweep`` (its experiment has a ``sweep:`` block)."""
    path = Path(run_dir) / "experiment.yaml"
    if not path.is_file():
        return False
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and data.get("sweep") is not None


def describe_insertion(ins: dict[str, Any]) -> str:
    """A stored insertion in a few words: ``SE@enc2 parallel (reduction=8)``."""
    args = ", ".join(f"{k}={v}" for k, v in (ins.get("args") or {}).items() if k not in _WIRED_ARGS)
    return (
        f"{ins['module']}@{ins['at']}"
        + (f" {ins['mode']}" if ins.get("mode") else "")
        + (f" ({args})" if args else "")
    )


def write_runs_table(run_dir: str | Path, out_dir: str | Path, standalone: bool = False) -> list[Path]:
    """The sweep's trained runs from ``runs.sqlite`` as a table (Markdown, CSV, LaTeX): one row
    per distinct configuration, its slot choices, searched training settings, the report metrics
    at its best epoch (in %), parameters, epochs trained and status (done or pruned), best first;
    the best value of each metric column in bold. ``stitch report RUN_DIR`` of a sweep writes it."""
    import pandas as pd

    from stitch.config import sweep_of
    from stitch.plugins import load_experiment_with_plugins
    from stitch.store import ResultStore, run_dir_files

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    exp_file, db = run_dir_files(run_dir)
    exp = load_experiment_with_plugins(exp_file)
    sweep = sweep_of(exp)
    metrics = list(dict.fromkeys([exp.cfg.primary_metric, *exp.cfg.metrics.report]))
    with ResultStore(db) as store:
        rows = [r for r in store.rows() if r.status in ("done", "pruned")]
    if not rows:
        raise StitchError(f"{run_dir}: no finished trial runs yet (run `stitch sweep {exp_file}`)")
    records = []
    for r in rows:
        rec: dict[str, Any] = {"run": r.variant, "status": r.status}
        by_slot = {i["name"]: i for i in r.config.get("insertions", [])}
        for slot in sweep.slots:
            rec[slot.name] = describe_insertion(by_slot[slot.name]) if slot.name in by_slot else "–"
        for path in sweep.train:
            node: Any = r.config.get("train", {})
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            rec[path] = node
        for m in metrics:
            value = (r.best_metrics or {}).get(m)
            rec[m] = None if value is None else 100.0 * float(value)
        rec["params (M)"] = None if r.params is None else r.params / 1e6
        rec["epochs"] = r.epochs_done
        rec["run_id"] = r.run_id[:12]
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    df = df.sort_values(
        by=[exp.cfg.primary_metric, "epochs"], ascending=[False, False], na_position="last"
    ).reset_index(drop=True)
    caption = (
        f"Runs of sweep {exp.cfg.name}: one per distinct configuration, "
        "metrics (%) at the best validation epoch "
        f"(pruned runs: at the best epoch before they were stopped), seed {sweep.seed}."
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = df.copy()
    for m in metrics:
        done = df.loc[df["status"] == "done", m].dropna()
        best = done.max() if len(done) else None
        shown[m] = [
            ""
            if pd.isna(v)
            else (f"**{v:.2f}**" if best is not None and v == best and st == "done" else f"{v:.2f}")
            for v, st in zip(df[m], df["status"])
        ]
    shown["params (M)"] = [f"{v:.3f}" for v in df["params (M)"]]
    written = [out_dir / "runs.md", out_dir / "runs.csv"]
    write_text(written[0], f"Table: {caption}\n\n" + shown.to_markdown(index=False) + "\n")
    write_text(written[1], df.to_csv(index=False))
    styler = (
        df.style.format(precision=2, na_rep="–", escape="latex")
        .format_index(escape="latex", axis=1)
        .hide(axis="index")
    )
    done_rows = df.index[df["status"] == "done"]
    for m in metrics:
        if len(done_rows):
            styler = styler.highlight_max(subset=(done_rows, [m]), props="textbf:--rwrap;")
    latex = styler.to_latex(
        hrules=True,
        caption=latex_escape(caption),
        label=f"tab:{exp.cfg.name}_runs",
        position_float="centering",
    )
    if standalone:
        latex = (
            "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]{geometry}\n"
            "\\begin{document}\n" + latex + "\\end{document}\n"
        )
    write_text(out_dir / "runs.tex", latex)
    written.append(out_dir / "runs.tex")
    return written
