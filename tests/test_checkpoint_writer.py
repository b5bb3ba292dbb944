"""Epoch checkpoints written in the background (``train.async_checkpoint``): the same files and
results as the synchronous path, Ctrl-C and resume unchanged, a write error surfacing as its own
one line, the thread never outliving the training call, and a results row stored one epoch ahead
of the checkpoints (a kill while the write is in flight) resuming to the same result."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from test_interrupt import Setup, interrupted_then_resumed, same_run, untimed
from yaml_snippets import tiny_shapes_unet

import stitch.checkpoint_writer
from stitch.checkpoint_writer import CheckpointWriter, background_writes, epoch_checkpoint
from stitch.checkpoints import TrainingObjects
from stitch.config import load_experiment, parse_experiment
from stitch.errors import DiskFullError
from stitch.run import run_experiment
from stitch.runs import plan_runs
from stitch.safe_load import load_plain
from stitch.store import ResultStore

WRITER = "stitch-checkpoint-writer"
#: values that measure the machine (and the checksum over them), not the training
MEASUREMENTS = {"seconds", "train_images_per_s", "wall_time", "train_seconds", "peak_memory_mb", "checksum"}


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WRITER]


def files(ckpt: Path) -> dict[str, Any]:
    """Every checkpoint file of ``ckpt`` read back, by name."""
    return {p.name: load_plain(p) for p in sorted(ckpt.glob("*.pt"))}


def same_content(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            if key not in MEASUREMENTS:
                same_content(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same_content(x, y)
    else:
        assert a == b


def test_automatic_is_on_cuda_only() -> None:
    assert background_writes(None, torch.device("cuda", 0))
    assert not background_writes(None, torch.device("cpu"))
    assert background_writes(True, torch.device("cpu")) and not background_writes(False, torch.device("cuda"))


def test_the_host_copy_is_what_the_epoch_held(tmp_path: Path) -> None:
    """Training on after the hand-over (parameters and optimiser state changed in place, the
    history grown) does not reach the files the background thread writes."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    objects = TrainingObjects(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False))
    state = {"epoch": 1, "history": [{"epoch": 1}], "best_epoch": 1, "best_metrics": {"miou": 0.5}}
    (tmp_path / "sync").mkdir()
    epoch_checkpoint(tmp_path / "sync", objects, state, 2, copy=False).write()
    go = threading.Event()
    with CheckpointWriter(background=True) as writer:
        snapshot = epoch_checkpoint(tmp_path / "async", objects, state, 2, copy=True)
        writer.submit(lambda: (go.wait(30), snapshot.write()))
        with torch.no_grad():
            model.weight.add_(1.0)
        optimizer.state[model.weight]["exp_avg"].add_(1.0)
        state["history"].append({"epoch": 2})
        state["best_metrics"]["miou"] = 0.9
        go.set()
    assert writer_threads() == []
    same_content(files(tmp_path / "sync"), files(tmp_path / "async"))
    assert set(files(tmp_path / "async")) == {"epoch-0001.pt", "best.pt"}


def test_one_write_in_flight_and_its_error_is_raised_at_the_next_join(tmp_path: Path) -> None:
    order: list[str] = []
    release = threading.Event()

    def first() -> None:
        order.append("first starts")
        release.wait(30)
        order.append("first ends")

    timer = threading.Timer(0.2, release.set)  # lets the first write end while submit waits for it
    writer = CheckpointWriter(background=True)
    writer.submit(first)
    timer.start()
    writer.submit(lambda: order.append("second"))
    writer.join()
    assert order == ["first starts", "first ends", "second"]

    full = DiskFullError(f"no space left on {tmp_path} (0 B free) while writing epoch-0002.pt; free space")
    writer.submit(lambda: (_ for _ in ()).throw(full))
    with pytest.raises(DiskFullError) as info:
        writer.join()
    assert info.value is full and writer_threads() == []
    writer.join()  # raised once


def forced(**cfg: Any) -> dict[str, Any]:
    return {"async_checkpoint": True, **cfg}


def test_background_writes_give_the_synchronous_files_history_and_weights(tmp_path: Path) -> None:
    setup = Setup(tmp_path, epochs=3, keep_last=2)
    sync_model, async_model = setup.model(), setup.model()
    sync_state = setup.train(sync_model, tmp_path / "sync", async_checkpoint=False)
    async_state = setup.train(async_model, tmp_path / "async", **forced())
    assert writer_threads() == []  # joined before train() returned
    same_run((sync_state, sync_model), (async_state, async_model))
    sync_files, async_files = files(tmp_path / "sync"), files(tmp_path / "async")
    assert set(async_files) == {"epoch-0002.pt", "epoch-0003.pt", "best.pt"}  # pruned from epoch 3
    same_content(sync_files, async_files)


@pytest.mark.parametrize("at", [(2, 1), (2, 4)], ids=["first-step-after-an-epoch", "last-step"])
def test_ctrl_c_with_background_writes_resumes_to_the_uninterrupted_run(
    tmp_path: Path, at: tuple[int, int]
) -> None:
    """Ctrl-C right after an epoch's checkpoint was handed over: ``interrupted.pt`` is written
    after that epoch's files (which end by removing it), and the resume is exact."""
    setup = Setup(tmp_path, epochs=3)
    straight = setup.model()
    reference = (setup.train(straight, tmp_path / "straight"), straight)
    _, resumed = interrupted_then_resumed(setup, tmp_path / "ctrl-c", at, **forced())
    same_run(reference, resumed)
    assert writer_threads() == []


def test_a_failed_background_write_is_its_one_line_error_and_the_thread_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = stitch.checkpoint_writer.save_checkpoint
    line = f"no space left on {tmp_path} (0 B free) while writing epoch-0002.pt; free space and run again"

    def save(obj: dict[str, Any], path: Path) -> None:
        if path.name == "epoch-0002.pt":
            raise DiskFullError(line)
        real(obj, path)

    monkeypatch.setattr(stitch.checkpoint_writer, "save_checkpoint", save)
    setup = Setup(tmp_path, epochs=3)
    with pytest.raises(DiskFullError) as info:
        setup.train(setup.model(), tmp_path / "ckpt", **forced())
    assert str(info.value) == line and writer_threads() == []
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("epoch-*.pt")) == ["epoch-0001.pt"]


@pytest.mark.usefixtures("no_report")  # the runs are compared, not their reports
def test_a_results_row_ahead_of_the_checkpoints_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    """With background writes the row of epoch N is stored while epoch N's checkpoint may still
    be written; a kill then leaves the row one epoch ahead of the newest checkpoint. The same
    command trains epoch N again from epoch N-1's files and stores the same values."""
    text = tiny_shapes_unet("ahead", tmp_path / "data", epochs=3) + "  async_checkpoint: true\nseeds: [0]\n"
    path = tmp_path / "ahead.yaml"
    path.write_text(text)
    exp = load_experiment(path)
    run_experiment(exp, out=tmp_path / "straight", quiet=True)
    out = tmp_path / "killed"
    run_experiment(exp, out=out, quiet=True, stop_after=1)
    (ckpt,) = (out / "ahead" / "ckpt").iterdir()
    shutil.copytree(ckpt, tmp_path / "epoch-1-files")
    run_experiment(exp, out=out, quiet=True, stop_after=2)
    shutil.rmtree(ckpt)  # the kill came before epoch 2's files: only epoch 1's are there
    shutil.copytree(tmp_path / "epoch-1-files", ckpt)
    with ResultStore(out / "ahead" / "runs.sqlite") as store:
        (row,) = store.rows()
    assert row.epochs_done == 2 and len(row.history) == 2
    run_experiment(exp, out=out, quiet=True)
    with ResultStore(out / "ahead" / "runs.sqlite") as store:
        (resumed,) = store.rows()
    with ResultStore(tmp_path / "straight" / "ahead" / "runs.sqlite") as store:
        (straight,) = store.rows()
    assert (resumed.status, resumed.epochs_done, resumed.best_epoch) == ("done", 3, straight.best_epoch)
    assert untimed(resumed.history) == untimed(straight.history)
    assert (resumed.best_metrics, resumed.final_metrics) == (straight.best_metrics, straight.final_metrics)
    (straight_ckpt,) = (tmp_path / "straight" / "ahead" / "ckpt").iterdir()
    for name in ("best.pt", "epoch-0003.pt"):
        assert torch.equal(
            torch.cat([t.flatten().double() for t in load_plain(ckpt / name)["model"].values()]),
            torch.cat([t.flatten().double() for t in load_plain(straight_ckpt / name)["model"].values()]),
        )


def test_the_setting_is_never_part_of_the_run_id(tmp_path: Path) -> None:
    text = tiny_shapes_unet("ids", tmp_path / "data")
    (base,) = plan_runs(parse_experiment(text, "ids.yaml"))
    for value in ("true", "false"):
        (other,) = plan_runs(parse_experiment(f"{text}  async_checkpoint: {value}\n", "ids.yaml"))
        assert other.run_id == base.run_id
