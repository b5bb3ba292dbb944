"""`stitch validate` sizes the seeds from earlier Baseline runs of the same recipe."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.config import load_experiment
from stitch.runs import experiment_data, plan_runs
from stitch.seed_advice import seed_advice
from stitch.stats_power import min_detectable_effect, seeds_needed
from stitch.store import ResultStore, RunRow


def experiment(tmp_path: Path, seeds: str = "[0, 1, 2]") -> Path:
    path = tmp_path / "advice.yaml"
    path.write_text(
        tiny_shapes_unet("advice", tmp_path / "data", 2)
        + textwrap.dedent(f"""\
            insertions:
              - {{name: SE, module: SE, at: "enc*"}}
            seeds: {seeds}
            report: {{min_effect: 0.05}}
            """)
    )
    return path


def store_baseline(
    tmp_path: Path, exp_path: Path, values: dict[int, float], recipe_epochs: int | None = None
) -> None:
    """Finished Baseline rows with ``values`` as their test mIoU (and other val values)."""
    exp, _ = experiment_data(load_experiment(exp_path))  # as `stitch run` plans them: fitted to the data
    plans = [p for p in plan_runs(exp, epochs=recipe_epochs, seeds=list(values)) if not p.variant.insertions]
    with ResultStore(tmp_path / "runs" / "advice" / "runs.sqlite") as store:
        for plan in plans:
            store.start(
                RunRow(
                    plan.run_id,
                    "advice",
                    "Baseline",
                    "baseline",
                    [],
                    plan.seed,
                    "running",
                    plan.config,
                    "miou",
                )
            )
            store.update(
                plan.run_id,
                status="done",
                best_metrics={"miou": 0.5},
                test_best_metrics={"miou": values[plan.seed], "images": 4},
                test_last_metrics={"miou": 0.1, "images": 4},
            )


def test_advice_from_earlier_baseline_runs(tmp_path: Path) -> None:
    path = experiment(tmp_path)
    values = {0: 0.80, 1: 0.83, 2: 0.78, 3: 0.81}
    store_baseline(tmp_path, path, values)
    text = seed_advice(experiment_data(load_experiment(path))[0], tmp_path / "runs")
    sd = float(np.std(list(values.values()), ddof=1))
    mde = min_detectable_effect(sd * math.sqrt(2), 3, 0.05)
    need = seeds_needed(0.05, sd * math.sqrt(2), 0.05)
    assert text is not None
    assert f"4 earlier Baseline runs in {tmp_path / 'runs' / 'advice'}" in text
    assert f"by {sd:.4g} (std, test split)" in text
    assert f"with 3 paired seeds the design detects a ΔmIoU of at least {mde:.4g}" in text
    assert f"a Δ of 0.05 (report.min_effect) needs {need} seeds" in text


def test_no_advice_without_two_runs_of_the_same_recipe(tmp_path: Path) -> None:
    path = experiment(tmp_path)
    assert seed_advice(experiment_data(load_experiment(path))[0], tmp_path / "runs") is None  # no database
    store_baseline(tmp_path, path, {0: 0.8})
    assert seed_advice(experiment_data(load_experiment(path))[0], tmp_path / "runs") is None  # one run
    store_baseline(tmp_path, path, {1: 0.7, 2: 0.9}, recipe_epochs=5)  # another recipe
    assert seed_advice(experiment_data(load_experiment(path))[0], tmp_path / "runs") is None


def test_validate_prints_the_advice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = experiment(tmp_path)
    store_baseline(tmp_path, path, {0: 0.80, 1: 0.83, 2: 0.78})
    assert main(["validate", str(path), "--out", str(tmp_path / "runs")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "seeds: 3 earlier Baseline runs" in out and "needs" in out
    assert main(["validate", str(path), "--out", str(tmp_path / "elsewhere")]) == 0
    assert "earlier Baseline runs" not in capsys.readouterr().out
