"""CUDA out of memory in training: the run retries from its last epoch checkpoint with half the
micro-batch and twice the accumulation (the same effective batch), recorded in its row, the log and
results.csv; after two halvings, or with a micro-batch that cannot be halved, it is `failed` with
the memory advice. The out-of-memory error is injected on CPU through the task's loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from yaml_snippets import tiny_shapes_unet

from stitch.config import Experiment, load_experiment
from stitch.loaders import train_batches
from stitch.oom_retry import give_up_message, halved, is_out_of_memory
from stitch.run import run_experiment
from stitch.runs import experiment_data
from stitch.store import ResultStore, RunRow
from stitch.tasks.segmentation import SegmentationTask

#: the runs here are checked, not their reports
pytestmark = pytest.mark.usefixtures("no_report")

OOM_TEXT = "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.15 GiB total capacity)\nmore text"
#: what differs between two identical runs: timings
TIMING = {"seconds", "train_images_per_s"}
REAL_LOSS = SegmentationTask.loss


def experiment(tmp_path: Path, batch_size: int = 4, grad_accum: int = 1, epochs: int = 2) -> Experiment:
    """The tiny deterministic U-Net experiment with this micro-batch and accumulation."""
    text = tiny_shapes_unet("oom", tmp_path / "data", epochs).replace(
        "  batch_size: 4\n", f"  batch_size: {batch_size}\n  grad_accum: {grad_accum}\n"
    )
    path = tmp_path / f"oom_{batch_size}x{grad_accum}_{epochs}.yaml"
    path.write_text(text)
    return load_experiment(path)


class Injector:
    """Replaces the segmentation loss: raises an out-of-memory error for a batch of more than
    ``limit`` images from the ``start``-th training batch on; records every batch size seen."""

    def __init__(self, limit: int, start: int = 1, error: BaseException | None = None) -> None:
        self.limit, self.start, self.calls = limit, start, 0
        self.sizes: list[int] = []
        self.error = error or torch.OutOfMemoryError(OOM_TEXT)

    def __call__(self, task: SegmentationTask, model: torch.nn.Module, batch: dict[str, Any]) -> Any:
        self.calls += 1
        n = int(batch["image"].shape[0])
        if n > self.limit and self.calls >= self.start:
            raise self.error
        self.sizes.append(n)
        return REAL_LOSS(task, model, batch)


def inject(monkeypatch: pytest.MonkeyPatch, limit: int, start: int = 1, **kw: Any) -> Injector:
    injector = Injector(limit, start, **kw)
    monkeypatch.setattr(SegmentationTask, "loss", lambda task, model, batch: injector(task, model, batch))
    return injector


def history(row: RunRow) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in row.history]


def same_result(a: RunRow, b: RunRow) -> None:
    assert history(a) == history(b)
    assert a.final_metrics == b.final_metrics and a.best_metrics == b.best_metrics
    assert a.test_last_metrics == b.test_last_metrics


def test_out_of_memory_errors_are_recognised() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR: out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_halving_keeps_the_effective_batch_and_refuses_odd_micro_batches() -> None:
    assert halved(8, 1) == (4, 2) and halved(4, 2) == (2, 4) and halved(2, 3) == (1, 6)
    assert halved(5, 1) is None and halved(3, 2) is None and halved(1, 4) is None
    retries = [{"batch_size": 4, "grad_accum": 2}, {"batch_size": 2, "grad_accum": 4}]
    assert give_up_message(2, 4, retries, amp=False) == (
        "CUDA out of memory at micro-batch 2 after two halvings (8 -> 4 -> 2); "
        "lower data.image_size or use a smaller model, or set train.amp: true"
    )
    assert give_up_message(2, 4, retries, amp=True).endswith("use a smaller model")
    assert give_up_message(3, 2, [{"batch_size": 3, "grad_accum": 2}], amp=False) == (
        "CUDA out of memory at micro-batch 3 after one halving (6 -> 3); micro-batch 3 cannot be "
        "halved without changing the effective batch (3 x 2); lower data.image_size or use a smaller "
        "model, or set train.amp: true"
    )


def test_retry_before_any_checkpoint_equals_a_straight_run_with_the_halved_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = run_experiment(experiment(tmp_path, 2, 2), out=tmp_path / "straight", quiet=True)
    # the first micro-batch of 4 trains (a half step the retry must not keep), the second runs out
    injector = inject(monkeypatch, limit=2, start=2)
    exp = experiment(tmp_path, 4, 1)
    (row,) = run_experiment(exp, out=tmp_path / "runs", quiet=True)
    assert injector.sizes[0] == 4 and set(injector.sizes[1:]) == {2}
    assert row.status == "done" and row.error is None and row.epochs_done == 2
    assert row.memory_retries == [
        {"epoch": 0, "batch_size": 2, "grad_accum": 2, "error": OOM_TEXT.splitlines()[0]}
    ]
    same_result(row, straight[0])
    # the same run: its id and config are the experiment's, not the smaller batch's
    assert row.config["train"].get("batch_size", 4) == 4 and row.run_id != straight[0].run_id
    run_dir = tmp_path / "runs" / "oom"
    log = (run_dir / "log.txt").read_text()
    assert "CUDA out of memory in epoch 1 at micro-batch 4 x 1 accumulation" in log
    assert "retrying from epoch 1 with micro-batch 2 x 2 (the same effective batch 4)" in log
    csv = pd.read_csv(run_dir / "results.csv")
    assert csv["micro_batch_changes"].tolist() == ["2x2 from epoch 1"]


def test_retry_after_a_checkpoint_equals_a_run_resumed_there_with_the_halved_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = experiment(tmp_path, 4, 1, epochs=3)
    # reference: one epoch at 4 x 1, then the rest at 2 x 2 (a resume reads the setting from the row)
    (first,) = run_experiment(exp, out=tmp_path / "ref", quiet=True, stop_after=1)
    with ResultStore(tmp_path / "ref" / "oom" / "runs.sqlite") as store:
        retry = {"epoch": 1, "batch_size": 2, "grad_accum": 2, "error": "by hand"}
        store.update(first.run_id, memory_retries=[retry])
    spy = inject(monkeypatch, limit=4)
    (ref,) = run_experiment(exp, out=tmp_path / "ref", quiet=True)
    assert set(spy.sizes) == {2} and ref.status == "done"

    # the retried run: out of memory in epoch 2 (after the epoch-1 checkpoint)
    steps = train_batches(len(experiment_data(exp)[1].train), 4)[2]  # micro-batches of 4 per epoch
    inject(monkeypatch, limit=2, start=steps + 2)
    (row,) = run_experiment(exp, out=tmp_path / "runs", quiet=True)
    assert row.status == "done" and row.epochs_done == 3
    assert [(r["epoch"], r["batch_size"], r["grad_accum"]) for r in row.memory_retries] == [(1, 2, 2)]
    same_result(row, ref)
    assert history(row)[0] == history(first)[0]


def test_a_resumed_run_keeps_the_smaller_micro_batch_and_force_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = experiment(tmp_path, 4, 1, epochs=3)
    inject(monkeypatch, limit=2)
    (part,) = run_experiment(exp, out=tmp_path / "runs", quiet=True, stop_after=1)
    assert part.status == "running" and len(part.memory_retries) == 1
    spy = inject(monkeypatch, limit=4)  # memory enough now: the resume still trains at 2 x 2
    (row,) = run_experiment(exp, out=tmp_path / "runs", quiet=True)
    assert row.status == "done" and set(spy.sizes) == {2} and row.memory_retries == part.memory_retries
    assert (
        "micro-batch 2 x 2 accumulation (out-of-memory retry)" in (tmp_path / "runs/oom/log.txt").read_text()
    )
    spy = inject(monkeypatch, limit=4)
    (forced,) = run_experiment(exp, out=tmp_path / "runs", quiet=True, force=True)
    assert forced.status == "done" and forced.memory_retries == [] and set(spy.sizes) == {4}


def test_after_two_halvings_the_run_fails_with_the_memory_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = experiment(tmp_path, 8, 1)
    inject(monkeypatch, limit=1, error=RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED: out of memory"))
    (row,) = run_experiment(exp, out=tmp_path / "runs", quiet=True)
    message = (
        "CUDA out of memory at micro-batch 2 after two halvings (8 -> 4 -> 2); "
        "lower data.image_size or use a smaller model, or set train.amp: true"
    )
    assert row.status == "failed" and row.error == message
    assert [(r["batch_size"], r["grad_accum"]) for r in row.memory_retries] == [(4, 2), (2, 4)]
    assert message in (tmp_path / "runs/oom/log.txt").read_text()
    # run again: it goes on at 2 x 4 and, out of memory again, fails at once (no third halving)
    (again,) = run_experiment(exp, out=tmp_path / "runs", quiet=True)
    assert again.status == "failed" and again.error == message and len(again.memory_retries) == 2


def test_an_odd_micro_batch_is_not_halved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, limit=2)
    (row,) = run_experiment(experiment(tmp_path, 6, 1), out=tmp_path / "six", quiet=True)
    assert row.status == "failed" and [r["batch_size"] for r in row.memory_retries] == [3]
    assert row.error is not None and row.error.startswith(
        "CUDA out of memory at micro-batch 3 after one halving (6 -> 3); micro-batch 3 cannot be halved"
    )
    (row,) = run_experiment(experiment(tmp_path, 5, 1), out=tmp_path / "five", quiet=True)
    assert row.status == "failed" and row.memory_retries == []
    assert row.error is not None and row.error.startswith(
        "CUDA out of memory at micro-batch 5; micro-batch 5 cannot be halved without changing the "
        "effective batch (5 x 1)"
    )


def test_other_errors_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, limit=0, error=RuntimeError("expected scalar type Float"))
    (row,) = run_experiment(experiment(tmp_path), out=tmp_path / "runs", quiet=True)
    assert row.status == "failed" and row.memory_retries == []
    assert row.error == "RuntimeError: expected scalar type Float"
