"""The benchmark scripts in bench/ run end to end (one round, one epoch, tiny generated shapes) and
print their JSON, so they cannot rot; the figures themselves are measured by hand (bench/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
TINY = ["--data", "shapes", "--shapes-images", "12", "--shapes-size", "32", "--epochs", "1", "--threads", "1"]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STITCH_DATA", str(tmp_path / "data"))


def printed_json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def test_harness_overhead_runs(capsys: pytest.CaptureFixture[str]) -> None:
    out = load("harness_overhead").main([*TINY, "--rounds", "1", "--variants", "+CA"])
    assert printed_json(capsys) == json.loads(json.dumps(out))
    result = out["variants"]["+CA"]
    assert result["ratio_train"] > 0 and result["ratio_total"] > 0
    assert result["stitch"]["train_images_per_s"] > 0 and result["hand"]["train_images_per_s"] > 0


def test_harness_overhead_engine_alone(capsys: pytest.CaptureFixture[str]) -> None:
    out = load("harness_overhead").main(
        [*TINY, "--rounds", "1", "--variants", "Baseline", "--harness", "engine"]
    )
    assert out["harness"] == "engine" and out["variants"]["Baseline"]["ratio_train"] > 0


def test_data_wait_runs(capsys: pytest.CaptureFixture[str]) -> None:
    out = load("data_wait").main([*TINY, "--workers", "0"])
    assert printed_json(capsys) == json.loads(json.dumps(out))
    (result,) = out["results"]
    assert result["num_workers"] == 0 and 0 <= result["wait_share"] <= 1
