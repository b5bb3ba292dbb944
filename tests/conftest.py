"""Shared fixtures: tiny experiments written from YAML text, so tests read like the user's files."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from yaml_snippets import TINY_UNET

from stitch.config import Experiment, load_experiment

pytest_plugins = ["postgres_fixture"]  # the throwaway PostgreSQL server of the distributed sweep test


@pytest.fixture
def tiny_unet_yaml() -> str:
    """The YAML text of the tiny U-Net experiment (no insertions)."""
    return TINY_UNET


@pytest.fixture
def write_experiment(tmp_path: Path) -> Callable[[str], Path]:
    """Write YAML text (dedented) to a file and return its path."""

    def write(text: str, name: str = "exp.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p

    return write


@pytest.fixture
def tiny_unet(write_experiment: Callable[[str], Path]) -> Callable[[str], Experiment]:
    """A tiny U-Net experiment with the given ``insertions:``/``ablation:`` YAML appended."""

    def make(extra: str = "") -> Experiment:
        return load_experiment(write_experiment(TINY_UNET + textwrap.dedent(extra)))

    return make


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_experiment``/``stitch run`` in this process write no report (tables, plots, costs):
    for tests that check the runs, not the report, which is most of a tiny run's time
    (matplotlib's savefig, a model build for the costs, latency forwards). Subprocesses and
    ``stitch report`` are unaffected."""
    import stitch.run

    monkeypatch.setattr(stitch.run, "write_report", lambda run_dirs, out_dir, **kwargs: [])


@pytest.fixture
def quick_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report of ``run_experiment``/``stitch run`` in this process measures latency with one
    forward and no warm-up (recorded so), not 3 + 20: for tests that read the report of a slow
    model (Mask R-CNN) but not its timings."""
    import functools

    import stitch.run
    from stitch.report import write_report

    quick = functools.partial(write_report, latency_repeats=1, latency_warmup=0)
    monkeypatch.setattr(stitch.run, "write_report", quick)
