"""Peak training memory: measured per run, stored in runs.sqlite and results.csv; databases
written before the column existed stay readable."""

from __future__ import annotations

import resource
import sqlite3
from pathlib import Path

import pandas as pd
import torch
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.memory import larger, peak_memory_mb
from stitch.store import SCHEMA, ResultStore, RunRow

OLD_COLUMNS = SCHEMA.split("peak_memory_mb")[0].rstrip().rstrip(",") + "\n);\n"  # the schema before it


def test_cpu_peak_is_the_process_max_rss() -> None:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got = peak_memory_mb(torch.device("cpu"))
    assert got is not None and kib / 1024 <= got <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert larger(None, 2.0) == 2.0 and larger(3.0, None) == 3.0 and larger(3.0, 2.0) == 3.0
    assert larger(None, None) is None


def test_a_tiny_run_stores_its_peak_memory(tmp_path: Path) -> None:
    exp = tmp_path / "mem.yaml"
    # the landscape layout shows every column (the default, column, shows the primary metric's)
    exp.write_text(
        tiny_shapes_unet("mem", tmp_path / "data", 1) + "seeds: [0]\nreport: {layout: landscape}\n"
    )
    assert main(["run", str(exp), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "mem"
    with ResultStore(run_dir / "runs.sqlite") as store:
        (row,) = store.rows()
    rss_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert row.device == "cpu" and row.peak_memory_mb is not None and 0 < row.peak_memory_mb <= rss_now
    assert pd.read_csv(run_dir / "results.csv")["peak_memory_mb"].tolist() == [row.peak_memory_mb]
    # the report shows it as a column, with what it means in the method text under the table
    md = (run_dir / "report" / "ablation.md").read_text()
    header, baseline = [line for line in md.splitlines() if line.startswith("|")][0:3:2]
    assert "Peak memory: mean over seeds of each run's peak during training, in MiB" in md
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in baseline.split("|")]))
    assert cells["Peak memory (MiB)"] == f"{row.peak_memory_mb:.0f}"
    csv = pd.read_csv(run_dir / "report" / "ablation.csv")
    assert csv["peak_memory_mb"].tolist() == [row.peak_memory_mb]


def old_database(path: Path, schema: str) -> None:
    """A runs.sqlite as an older stitch wrote it, with one finished run."""
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    conn.execute(
        "INSERT INTO runs (run_id, experiment, variant, variant_slug, insertions, seed, status, config,"
        " primary_metric, params, best_metrics, history, wall_time)"
        " VALUES ('r1', 'e', 'Baseline', 'baseline', '[]', 0, 'done', '{}', 'miou', 10, '{\"miou\": 0.5}',"
        " '[]', 1.5)"
    )
    conn.commit()
    conn.close()


def test_databases_without_the_column_stay_readable(tmp_path: Path) -> None:
    before_pruned = OLD_COLUMNS.replace(", 'pruned'", "")
    assert "'pruned'" not in before_pruned and "'pruned'" in OLD_COLUMNS
    for i, schema in enumerate((OLD_COLUMNS, before_pruned)):
        db = tmp_path / f"runs{i}.sqlite"
        old_database(db, schema)
        with ResultStore(db) as store:
            (row,) = store.rows()
            assert (row.run_id, row.params, row.best_metrics, row.wall_time) == ("r1", 10, {"miou": 0.5}, 1.5)
            assert row.peak_memory_mb is None
            store.update("r1", peak_memory_mb=12.5, status="pruned")
            store.start(RunRow("r2", "e", "+SE", "se", ["SE"], 0, "running", {}, "miou", peak_memory_mb=3.0))
        with ResultStore(db) as store:  # opened again: nothing to migrate
            assert {r.run_id: (r.status, r.peak_memory_mb) for r in store.rows()} == {
                "r1": ("pruned", 12.5),
                "r2": ("running", 3.0),
            }
