"""The benchmark scripts in bench/ run end to end (one round, one epoch, tiny generated shapes) and
print their JSON, so they cannot rot; the figures themselves are measured by hand (bench/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
TINY = ["--data", "shapes", "--shapes-images", "12", "--shapes-size", "32", "--epochs", "1", "--threads", "1"]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
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


def test_coco_eval_runs(capsys: pytest.CaptureFixture[str]) -> None:
    out = load("coco_eval").main(["--images", "6", "--size", "64", "--rounds", "1"])
    assert printed_json(capsys) == json.loads(json.dumps(out))
    assert out["detections"] > 0 and out["ground_truth_objects"] > 0
    assert set(out["median_seconds"]) == {"pycocotools", "faster-coco-eval"}
    for iou_type in ("bbox", "segm"):
        assert len(out["stats"][iou_type]["pycocotools"]) == 12
        assert out["max_abs_difference"][iou_type] < 1e-9  # the two libraries agree on these detections
    assert out["metrics_max_abs_difference"] < 1e-9


def test_coco_eval_detections_are_deterministic() -> None:
    coco = load("coco_eval")
    _, objects = coco.ground_truth(3, 48, 4, seed=1)
    a, b = coco.detections(objects, 48, 4, seed=1), coco.detections(objects, 48, 4, seed=1)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_epoch_costs_runs(capsys: pytest.CaptureFixture[str]) -> None:
    original_save = torch.save
    out = load("epoch_costs").main(TINY)
    assert printed_json(capsys) == json.loads(json.dumps(out))
    assert out["epochs_counted"] == 2  # Baseline and +CA, one epoch each
    sections = out["sections"]
    for path in ("train", "train > epoch checkpoint > checksum", "train > epoch checkpoint > fsync"):
        assert sections[path]["ms_per_epoch"] > 0
    assert "train > prediction grid" in sections and "train > results row" in sections
    assert torch.save is original_save  # the timers are removed after the run


def test_sweep_search_runs(capsys: pytest.CaptureFixture[str]) -> None:
    args = [*TINY[:6], "--epochs", "1", "--points", "enc1", "--modules", "SE", "--tpe-trials", "1"]
    out = load("sweep_search").main([*args, "--in-process"])
    assert printed_json(capsys) == json.loads(json.dumps(out))
    assert out["space"]["configurations"] == 2 and len(out["grid_ranking"]) == 2
    assert out["grid"]["rank"] == 1 and out["grid"]["regret"] == 0
    assert out["tpe"]["trials"] == 1 and 1 <= out["tpe"]["rank"] <= 2


def test_gpu_util_without_cuda_skips(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = load("gpu_util").main([])
    assert printed_json(capsys) == out and "no CUDA device" in out["skipped"]


def test_gpu_util_sampling_and_summary() -> None:
    gpu = load("gpu_util")
    readings = iter([(10.0, 100.0), (0.0, 120.0), (50.0, None)])
    stop = threading.Event()

    def read() -> tuple[float, float | None]:
        try:
            return next(readings)
        except StopIteration:
            stop.set()
            raise RuntimeError("no more readings") from None

    samples = gpu.sample_until(read, "fake", 0.001, stop)
    assert samples.util == [10.0, 0.0, 50.0]
    result = gpu.summary(samples, wall=1.0)
    assert result["mean_util_percent"] == 20.0 and result["peak_util_percent"] == 50.0
    assert result["busy_share"] == round(2 / 3, 4) and result["peak_memory_mb"] == 120.0
    cmd = gpu.run_command(gpu.parse_args(["--epochs", "2", "--seeds", "0", "1"]), Path("out"))
    assert cmd[1:5] == ["-m", "stitch", "run", str(BENCH.parent / "experiments" / "unet_coordatt.yaml")]
    assert cmd[-5:] == ["--epochs", "2", "--seeds", "0", "1"] and "--device" in cmd


def test_gpu_checks_run_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    out = load("gpu_checks").main(["--device", "cpu"])
    assert printed_json(capsys) == json.loads(json.dumps(out))
    assert set(out["checks"]) == {"sync", "fp16", "bf16", "bf16_channels_last", "diverged", "cache_device"}
    assert all(check["ok"] for check in out["checks"].values())
    assert out["checks"]["cache_device"]["max_history_difference"] == 0.0  # identical on CPU
