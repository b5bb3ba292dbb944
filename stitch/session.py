"""Training one run and storing it: :class:`RunSession` is the public seam that ``stitch run`` and
``stitch sweep`` share.

A session holds what every run of an experiment shares (the experiment, its data and task, the
results store, the device, the run directory and the progress display); :meth:`RunSession.train`
trains one :class:`~stitch.runs.RunPlan` (fresh or resumed from its checkpoints) and returns its
stored row. What happens around the loop is a list of small :class:`~stitch.engine.Callback`
classes: the store and progress callbacks of this module with the TensorBoard one
(:mod:`stitch.tensorboard_log`), then the caller's (a sweep adds its pruning callback).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from stitch.build import BuiltModel, stitch_variant
from stitch.config import Experiment
from stitch.ddp_follower import RunAnnouncement
from stitch.distributed import announce, is_distributed
from stitch.engine import Callback, Diverged, LoopState, StopTraining, train
from stitch.errors import StitchError, disk_full_error, one_line_message
from stitch.held_out import evaluate_test
from stitch.interrupt import interrupted_message
from stitch.loaders import train_batches
from stitch.model_notes import model_notes
from stitch.oom_retry import (
    MAX_HALVINGS,
    current_micro_batch,
    first_line,
    free_memory,
    give_up_message,
    halved,
    is_out_of_memory,
)
from stitch.param_groups import optimizer_params
from stitch.progress import Progress
from stitch.runs import RunPlan
from stitch.store import ResultStore, RunRow
from stitch.tasks import Task, make_task
from stitch.tensorboard_log import TensorBoardCallback, run_name, write_hparams

if TYPE_CHECKING:
    from stitch.data import DataBundle


class StoreCallback(Callback):
    """Writes the loop's state (history, best and last metrics, timings) into the run's row after
    every epoch, so an interrupted run keeps what it had done."""

    def __init__(self, store: ResultStore, run_id: str) -> None:
        self.store, self.run_id = store, run_id

    def save(self, state: LoopState) -> None:
        """Store ``state`` in the run's row."""
        self.store.update(
            self.run_id,
            epochs_done=state.epoch,
            history=state.history,
            best_epoch=state.best_epoch,
            best_value=None if state.best_epoch is None else state.best_value,
            best_metrics=state.best_metrics,
            final_metrics=state.last_metrics,
            wall_time=state.wall_time,
            train_images_per_s=state.train_images / max(state.train_seconds, 1e-9),
            peak_memory_mb=state.peak_memory_mb,
        )

    def on_epoch(self, state: LoopState, record: dict[str, Any]) -> None:
        self.save(state)


class ProgressCallback(Callback):
    """Steps and epochs on the progress display (bar or plain log lines)."""

    def __init__(self, progress: Progress, primary: str) -> None:
        self.progress, self.primary = progress, primary

    def on_step(self, epoch: int, step: int, loss: float, images: int) -> None:
        self.progress.step(epoch, step, loss, images)

    def on_epoch(self, state: LoopState, record: dict[str, Any]) -> None:
        self.progress.epoch_done(record, self.primary)


class OutOfMemory(Exception):
    """A run ran out of CUDA memory and is not retried (two halvings done, or a micro-batch that
    cannot be halved); the message says so and gives the advice."""


class ProgressLogHandler(logging.Handler):
    """Log records (the engine's warnings about checkpoints it did not resume from) shown on the
    progress display and written to ``log.txt`` like every other message of a run."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.message(record.getMessage())


@dataclass
class RunSession:
    """What the runs of one experiment share; :meth:`train` trains and stores one of them."""

    exp: Experiment
    data: DataBundle
    task: Task
    store: ResultStore
    device: torch.device
    run_dir: Path
    progress: Progress
    #: builder notes already shown (each distinct one goes to the console and log.txt once)
    notes_shown: set[str] = field(default_factory=set)

    def show_notes(self, built: BuiltModel) -> None:
        """Write the baseline builder's notes (:mod:`stitch.model_notes`: which pretrained tensors
        were loaded, which re-initialised) to the console and ``log.txt``, each distinct one once."""
        for note in model_notes(built.model):
            if note not in self.notes_shown:
                self.notes_shown.add(note)
                self.progress.message(f"baseline {self.exp.cfg.baseline.model}: {note}")

    def evaluate_test(
        self, model: nn.Module, ckpt_dir: Path, state: LoopState, train_cfg: Any
    ) -> dict[str, Any]:
        """The held-out test split of a finished run (:func:`stitch.held_out.evaluate_test`): at
        the epoch val chose and at the last one."""
        test_task = make_task(self.exp.cfg.task, self.data.split_view("test"), self.exp.cfg.train.loss)
        return evaluate_test(
            model,
            test_task,
            self.data.test,
            self.device,
            ckpt_dir,
            state.best_epoch,
            state.epoch,
            train_cfg.batch_size,
            collate_fn=getattr(self.data, "collate_fn", None),
            num_classes=self.data.num_classes,
        )

    def write_hparams(self, run_id: str, tb_dir: Path) -> None:
        """The run's HParams session (its config and final metrics) for TensorBoard, once it ended."""
        row = self.store.get(run_id)
        if row is not None:
            write_hparams(tb_dir, row)

    def train(
        self,
        plan: RunPlan,
        *,
        force: bool = False,
        stop_after: int | None = None,
        callbacks: Sequence[Callback] = (),
        built: BuiltModel | None = None,
        test: bool = True,
    ) -> RunRow:
        """Train ``plan`` (fresh, or resumed from its last checkpoint unless ``force``) and store it;
        returns its row. ``callbacks`` run after the session's own (store, TensorBoard, progress)
        and may raise :class:`~stitch.engine.StopTraining` (the run is stored with that status and
        the exception goes on). ``built`` is the run's model when the caller has already built it
        (``stitch_variant`` of ``plan.variant`` and ``plan.seed``, untrained). ``stop_after`` ends
        the call after that many epochs, as an interruption would. ``test=False`` leaves the
        held-out test split alone (a sweep's trials: the search chooses on val, and no trial's
        test numbers should be there to look at)."""
        exp, store, progress = self.exp, self.store, self.progress
        assert exp.cfg.data is not None  # the session's data was built from it
        ckpt_dir = self.run_dir / "ckpt" / plan.run_id
        tb_dir = self.run_dir / "tb" / run_name(plan)  # a sweep trial's names its choices
        built = built or stitch_variant(exp, plan.variant, plan.seed)
        params = optimizer_params(exp, built, plan.seed)  # a bad lr_mult key: before anything is touched
        self.show_notes(built)
        previous = store.get(plan.run_id)
        fresh = force or previous is None
        if fresh:
            for folder in (ckpt_dir, tb_dir):
                if folder.exists():
                    shutil.rmtree(folder)
        epochs = plan.config["train"]["epochs"]
        # a resumed run goes on with the micro-batch its out-of-memory retries left it (its row's)
        retries = [] if fresh or previous is None else list(previous.memory_retries)
        batch_size, grad_accum = current_micro_batch(
            exp.cfg.train.batch_size, exp.cfg.train.grad_accum, retries
        )
        train_cfg = exp.cfg.train.model_copy(
            update={"epochs": epochs, "batch_size": batch_size, "grad_accum": grad_accum}
        )
        # DDP: the other ranks train this run with rank 0 (its checkpoint folder is ready)
        announce(RunAnnouncement(plan.run_id, str(ckpt_dir), train_cfg, stop_after))
        if fresh:
            store.start(
                RunRow(
                    run_id=plan.run_id,
                    experiment=exp.cfg.name,
                    variant=plan.variant.name,
                    variant_slug=plan.variant.slug,
                    insertions=list(plan.variant.insertions),
                    seed=plan.seed,
                    status="running",
                    config=plan.config,
                    primary_metric=exp.cfg.primary_metric,
                    params=built.params,
                    baseline_params=built.baseline_params,
                    epochs=epochs,
                    device=str(self.device),
                )
            )
        else:  # resume: keep the history and metrics stored so far
            store.update(plan.run_id, status="running", device=str(self.device), error=None)
        _, _, steps = train_batches(len(self.data.train), train_cfg.batch_size)
        saver = StoreCallback(store, plan.run_id)
        tb = TensorBoardCallback(tb_dir, self.data, self.device, steps, train_cfg)
        own = [saver, tb, ProgressCallback(progress, exp.cfg.primary_metric)]
        progress.start_run(plan.variant.name, plan.seed, epochs, len(self.data.train), steps)
        name = f"{plan.variant.name} seed {plan.seed}"
        if retries:
            progress.message(
                f"{name}: micro-batch {batch_size} x {grad_accum} accumulation (out-of-memory retry)"
            )
        engine_log = logging.getLogger("stitch.engine")  # checkpoints skipped on resume, and why
        to_progress = ProgressLogHandler(progress)
        engine_log.addHandler(to_progress)
        try:
            while True:
                error = None
                try:
                    state = train(
                        built.model,
                        self.task,
                        self.data.train,
                        self.data.val,
                        train_cfg,
                        plan.seed,
                        self.device,
                        ckpt_dir,
                        exp.cfg.primary_metric,
                        num_workers=exp.cfg.data.num_workers,
                        callbacks=[*own, *callbacks],
                        stop_after=stop_after,
                        collate_fn=getattr(self.data, "collate_fn", None),
                        param_groups=params,
                        batch_transform=getattr(self.data, "train_batch_transform", None),
                    )
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    error = first_line(exc)
                    if is_distributed():  # the ranks cannot halve their micro-batches in step
                        raise OutOfMemory(
                            f"{error}; out-of-memory retries are off under DDP (--nproc-per-node): "
                            "lower train.batch_size and raise train.grad_accum"
                        ) from None
                if error is None:
                    break
                # out of this handler, the failed attempt's frames (activations, optimiser) are gone
                train_cfg = self.smaller_micro_batch(plan, built, train_cfg, retries, error)
                _, _, steps = train_batches(len(self.data.train), train_cfg.batch_size)
                tb.restart(steps, train_cfg)
                progress.start_run(plan.variant.name, plan.seed, epochs, len(self.data.train), steps)
            if test and state.epoch >= epochs and self.data.test is not None:
                store.update(plan.run_id, **self.evaluate_test(built.model, ckpt_dir, state, train_cfg))
        except Diverged as exc:
            store.update(plan.run_id, status="diverged", error=str(exc))
            self.write_hparams(plan.run_id, tb_dir)
            progress.message(f"{name}: diverged ({exc})")
        except StopTraining as exc:
            store.update(plan.run_id, status=exc.status, error=exc.reason)
            self.write_hparams(plan.run_id, tb_dir)
            progress.message(f"{name}: {exc.status} ({exc.reason})")
            raise
        except OutOfMemory as exc:
            store.update(plan.run_id, status="failed", error=str(exc))
            progress.message(f"{name}: failed: {exc}")
            if is_distributed():  # the other ranks cannot go on to the next run alone
                raise StitchError(f"{name}: {exc}") from None
        except KeyboardInterrupt as exc:  # where Ctrl-C stopped it, and the command that resumes
            progress.message(f"{name}: {interrupted_message(exc)}")
            raise
        except (
            StitchError
        ) as exc:  # bad data found while training (a file the preflight did not read), a full disk
            with contextlib.suppress(StitchError):  # the database may be on the full disk too
                store.update(plan.run_id, status="failed", error=one_line_message(exc))
            raise
        except Exception as exc:  # a crash of one run must not lose the others
            full = disk_full_error(exc, tb_dir)  # TensorBoard's event writer on a full disk
            if full is not None:
                with contextlib.suppress(StitchError):
                    store.update(plan.run_id, status="failed", error=str(full))
                raise full from None
            store.update(plan.run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
            progress.message(f"{name}: failed: {type(exc).__name__}: {exc} (traceback in log.txt)")
            progress.log.error(traceback.format_exc())
            if is_distributed():  # the other ranks cannot go on to the next run alone
                raise
        else:
            saver.save(state)
            if state.epoch >= epochs:
                store.update(plan.run_id, status="done")
                self.write_hparams(plan.run_id, tb_dir)
        finally:
            engine_log.removeHandler(to_progress)
            tb.close()
        row = store.get(plan.run_id)
        assert row is not None  # started above or found before
        return row

    def smaller_micro_batch(
        self, plan: RunPlan, built: BuiltModel, train_cfg: Any, retries: list[dict[str, Any]], error: str
    ) -> Any:
        """After a CUDA out-of-memory error: ``train_cfg`` with half the micro-batch and twice the
        accumulation, recorded in the run's row (``memory_retries``) and the log, and ``built``'s
        model reset to its state as built (its partial step undone; the loop then loads the last
        epoch checkpoint into it when there is one). Raises :class:`OutOfMemory` with the advice
        after :data:`~stitch.oom_retry.MAX_HALVINGS` halvings or when the micro-batch is odd."""
        batch_size, grad_accum = train_cfg.batch_size, train_cfg.grad_accum
        smaller = halved(batch_size, grad_accum) if len(retries) < MAX_HALVINGS else None
        if smaller is None:
            self.progress.log.error(f"{plan.variant.name} seed {plan.seed}: {error}")
            reduced = train_cfg.amp or train_cfg.precision != "fp32"  # already below float32
            raise OutOfMemory(give_up_message(batch_size, grad_accum, retries, reduced))
        row = self.store.get(plan.run_id)
        epoch = row.epochs_done if row is not None else 0
        retries.append({"epoch": epoch, "batch_size": smaller[0], "grad_accum": smaller[1], "error": error})
        self.store.update(plan.run_id, memory_retries=retries)
        self.progress.message(
            f"{plan.variant.name} seed {plan.seed}: CUDA out of memory in epoch {epoch + 1} at micro-batch "
            f"{batch_size} x {grad_accum} accumulation ({error}); retrying from epoch {epoch + 1} with "
            f"micro-batch {smaller[0]} x {smaller[1]} (the same effective batch {batch_size * grad_accum})"
        )
        built.model.zero_grad(set_to_none=True)
        free_memory(self.device)
        fresh = stitch_variant(self.exp, plan.variant, plan.seed)  # deterministic: the model as built
        built.model.load_state_dict(fresh.model.state_dict())
        del fresh
        free_memory(self.device)
        return train_cfg.model_copy(update={"batch_size": smaller[0], "grad_accum": smaller[1]})
