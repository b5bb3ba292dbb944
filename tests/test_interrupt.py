"""Ctrl-C while training: the loop stops at an optimiser-step boundary, saves ``interrupted.pt``
and raises TrainingInterrupted; the next call resumes mid-epoch to exactly the result of a run
that was never interrupted (history, metrics, weights), with gradient accumulation too."""

from __future__ import annotations

import gc
import os
import shlex
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from kill_points import ForkServer
from torch import nn
from yaml_snippets import tiny_shapes_unet

from stitch.build import stitch_variant
from stitch.checkpoints import INTERRUPTED
from stitch.config import parse_experiment
from stitch.engine import Callback, LoopState, TrainingInterrupted, train
from stitch.interrupt import interrupted_message, resume_command, stop_on_sigint
from stitch.runs import experiment_data
from stitch.safe_load import load_plain
from stitch.store import ResultStore
from stitch.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "train_images_per_s"}


def untimed(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A history without its timing keys (the only ones an interruption may change)."""
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


class CtrlCAt(Callback):
    """Sends SIGINT to this process (``times`` times) after micro-step ``step`` of ``epoch``."""

    def __init__(self, epoch: int, step: int, times: int = 1) -> None:
        self.at, self.times = (epoch, step), times

    def on_step(self, epoch: int, step: int, loss: float, images: int) -> None:
        if (epoch, step) == self.at:
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)


class Setup:
    """A width-4 U-Net with dropout on its logits (so training draws random numbers too) on 16
    generated, augmented images (8 in the training split, 4 micro-steps of 2 per epoch by
    default); ``ce+dice`` so the loss has parts."""

    def __init__(self, tmp_path: Path, **train_cfg: Any) -> None:
        text = tiny_shapes_unet("intr", tmp_path / "data", 3) + "  loss: ce+dice\n"
        self.exp, self.data = experiment_data(parse_experiment(text, "intr.yaml"))
        self.task = make_task(self.exp.cfg.task, self.data, self.exp.cfg.train.loss)
        self.cfg = self.exp.cfg.train.model_copy(update={"batch_size": 2, **train_cfg})

    def model(self) -> nn.Module:
        return nn.Sequential(stitch_variant(self.exp, "Baseline", 0).model, nn.Dropout(0.3))

    def train(
        self,
        model: nn.Module,
        ckpt: Path,
        callbacks=(),
        stop_after: int | None = None,
        num_workers: int = 0,
        **train_cfg: Any,
    ) -> LoopState:
        cfg = self.cfg.model_copy(update=train_cfg)
        args = (self.task, self.data.train, self.data.val, cfg, 0, torch.device("cpu"), ckpt, "miou")
        return train(model, *args, callbacks=callbacks, stop_after=stop_after, num_workers=num_workers)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoopState, nn.Module]:
    """The uninterrupted run of the default :class:`Setup` (its state and model), trained once for
    the tests that compare with it (the generated data and the training are the same in every
    test's folder)."""
    tmp_path = tmp_path_factory.mktemp("straight")
    setup = Setup(tmp_path)
    model = setup.model()
    return setup.train(model, tmp_path / "a"), model


def same_run(a: tuple[LoopState, nn.Module], b: tuple[LoopState, nn.Module]) -> None:
    (sa, ma), (sb, mb) = a, b
    assert untimed(sa.history) == untimed(sb.history)
    assert (sa.epoch, sa.best_epoch, sa.best_value, sa.train_images) == (
        sb.epoch,
        sb.best_epoch,
        sb.best_value,
        sb.train_images,
    )
    assert sa.best_metrics == sb.best_metrics and sa.last_metrics == sb.last_metrics
    wa, wb = ma.state_dict(), mb.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def interrupted_then_resumed(setup: Setup, ckpt: Path, at: tuple[int, int], **train_cfg: Any):
    with pytest.raises(TrainingInterrupted) as info:
        setup.train(setup.model(), ckpt, [CtrlCAt(*at)], **train_cfg)
    assert (ckpt / INTERRUPTED).exists()
    exc = info.value
    # the interrupted loop's frames (and its DataLoader workers) go now, as in a process that ends:
    # collected only after the resumed run has forked its own workers, their shutdown waits 5 s each
    del info
    exc.__traceback__ = None
    gc.collect()
    model = setup.model()  # as a new process would build it
    return exc, (setup.train(model, ckpt, **train_cfg), model)


def test_ctrl_c_mid_epoch_resumes_to_exactly_the_uninterrupted_run(tmp_path: Path, straight) -> None:
    setup = Setup(tmp_path)
    before = signal.getsignal(signal.SIGINT)
    exc, resumed = interrupted_then_resumed(setup, tmp_path / "b", (2, 2))
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back, raised or returned
    assert (exc.epoch, exc.step) == (2, 2) and "epoch 2, step 2" in str(exc)
    saved = load_plain(tmp_path / "b" / "epoch-0003.pt")
    assert saved["state"]["epoch"] == 3 and "checksum" in saved
    assert not (tmp_path / "b" / INTERRUPTED).exists()  # gone once a newer epoch checkpoint is written
    same_run(straight, resumed)


def test_with_accumulation_and_workers_it_stops_at_the_end_of_the_optimiser_step(tmp_path: Path) -> None:
    """Two DataLoader workers: they augment with their own random streams, which drawing the
    batches already trained on again brings to where they were."""
    setup = Setup(tmp_path, batch_size=1, grad_accum=3)  # 8 micro-steps: groups of 3, 3 and 2
    straight_model = setup.model()
    straight = (setup.train(straight_model, tmp_path / "a", num_workers=2), straight_model)
    exc, resumed = interrupted_then_resumed(setup, tmp_path / "b", (1, 4), num_workers=2)
    assert (exc.epoch, exc.step) == (1, 6)  # Ctrl-C at micro-step 4: its group ends at 6
    same_run(straight, resumed)


def test_ctrl_c_at_the_last_step_of_an_epoch(tmp_path: Path, straight) -> None:
    setup = Setup(tmp_path)
    exc, resumed = interrupted_then_resumed(setup, tmp_path / "b", (1, 4))
    assert (exc.epoch, exc.step) == (1, 4)  # before epoch 1's evaluation and checkpoint
    same_run(straight, resumed)


class CtrlCAtEval(Callback):
    """Sends SIGINT during the evaluation of ``epoch`` (after its last step)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_eval(self, epoch: int, model: nn.Module) -> None:
        if epoch == self.epoch:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_after_the_last_step_still_stops_with_everything_saved(tmp_path: Path, straight) -> None:
    setup = Setup(tmp_path)
    with pytest.raises(TrainingInterrupted) as info:
        setup.train(setup.model(), tmp_path / "b", [CtrlCAtEval(3)])
    assert (info.value.epoch, info.value.step) == (3, 4) and info.value.path.name == "epoch-0003.pt"
    model = setup.model()
    same_run(straight, (setup.train(model, tmp_path / "b"), model))  # nothing left to train


def test_a_mid_epoch_checkpoint_of_another_batch_size_is_ignored(tmp_path: Path, straight) -> None:
    """After an out-of-memory retry (half the batch, twice the accumulation) the epoch starts over
    from its epoch checkpoint, and the mid-epoch checkpoint goes once that epoch is done."""
    setup = Setup(tmp_path)
    with pytest.raises(TrainingInterrupted):
        setup.train(setup.model(), tmp_path / "b", [CtrlCAt(2, 3)])
    state = setup.train(setup.model(), tmp_path / "b", batch_size=1, grad_accum=2)
    assert state.epoch == 3 and not (tmp_path / "b" / INTERRUPTED).exists()
    history = straight[0].history
    assert untimed(state.history)[0] == untimed(history)[0]  # epoch 1 from its checkpoint
    assert state.history[1]["train_loss"] != history[1]["train_loss"]  # epoch 2 again, smaller batches


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
        setup.train(setup.model(), tmp_path / "b", [CtrlCAt(1, 2, times=2)])
    assert not isinstance(info.value, TrainingInterrupted) and not (tmp_path / "b" / INTERRUPTED).exists()
    assert signal.getsignal(signal.SIGINT) is before


def test_the_flag_is_set_only_in_the_main_thread_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    with stop_on_sigint() as stop:
        assert signal.getsignal(signal.SIGINT) is not before and not stop.requested
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
    assert signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_on_sigint():  # SIGINT ignored (a background job): left alone
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_the_message_names_the_step_and_the_command_that_resumes_without_force() -> None:
    argv = ["run", "experiments/my exp.yaml", "--out", "runs", "--force"]
    assert resume_command(argv) == "stitch run 'experiments/my exp.yaml' --out runs"
    exc = TrainingInterrupted(3, 5, Path("runs/x/ckpt/abc/interrupted.pt"))
    assert interrupted_message(exc, argv) == (
        "interrupted at epoch 3, step 5; checkpoint saved; resume with: "
        "stitch run 'experiments/my exp.yaml' --out runs"
    )
    assert interrupted_message(KeyboardInterrupt(), ["sweep", "s.yaml"]) == (
        "interrupted; resume with: stitch sweep s.yaml"
    )


def test_ctrl_c_on_stitch_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    """The real thing: SIGINT to a ``stitch run`` process mid-training, exit 130, then the same
    command finishes with the metrics and history of a run never interrupted."""
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_shapes_unet("tiny_run", tmp_path / "data", 10) + "seeds: [0]\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["run", str(path), "--quiet"]
    # the three processes are forked from one that imported stitch once (kill_points.ForkServer):
    # each runs what `python -m stitch run ...` runs, without the imports' seconds
    server = ForkServer(env, ROOT)
    try:
        stopped = [*args, "--out", str(tmp_path / "stopped")]
        proc = server.start(stopped, tmp_path / "stopped.out", tmp_path / "stopped.err")
        ckpt_root = tmp_path / "stopped" / "tiny_run" / "ckpt"
        deadline = time.time() + 120
        while time.time() < deadline and not list(ckpt_root.glob("*/epoch-0002.pt")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, "the run finished before it could be interrupted"
        out, err = (tmp_path / "stopped.out").read_text(), (tmp_path / "stopped.err").read_text()
        (ckpt,) = ckpt_root.glob(f"*/{INTERRUPTED}")
        for out_dir in ("stopped", "straight"):
            output = tmp_path / f"{out_dir}-again.out"
            code = server.start([*args, "--out", str(tmp_path / out_dir)], output).wait(timeout=300)
            assert code == 0, output.read_text()
    finally:
        server.close()
    resume = shlex.join(["stitch", "run", str(path), "--quiet", "--out", str(tmp_path / "stopped")])
    assert (
        "Baseline seed 0: interrupted at epoch " in out
        and f"; checkpoint saved; resume with: {resume}\n" in out
    )
    last = err.strip().splitlines()[-1]  # the CLI's own last line says the same
    assert last.startswith("interrupted at epoch ") and last.endswith(f"; resume with: {resume}")
    rows = []
    for out_dir in ("stopped", "straight"):
        with ResultStore(tmp_path / out_dir / "tiny_run" / "runs.sqlite") as store:
            rows += store.rows()
    assert rows[0].status == rows[1].status == "done" and not ckpt.exists()
    assert rows[0].final_metrics == rows[1].final_metrics and rows[0].best_metrics == rows[1].best_metrics
    assert untimed(rows[0].history) == untimed(rows[1].history)
