"""One worker process of ``stitch run --jobs N``: it builds the experiment's data and task once,
then trains the runs its parent hands it, one at a time, into the shared run directory.

The parent (:mod:`stitch.run_workers`) holds the run directory's lock and starts the workers with
``spawn`` (fresh interpreters: no CUDA state or threads copied from the parent), each in its own
process group, so a Ctrl-C at the terminal reaches only the parent, which passes it on. A worker
writes its runs' rows through its own connection to ``runs.sqlite``, its checkpoints and
TensorBoard folders under the run's own ``ckpt/<run id>/`` and ``tb/…``; everything it would print
or log goes to the parent as messages (``log.txt`` and the console have one writer).

Messages to the parent, tuples on one queue: ``("ready", wid)``, ``("log", wid, level, text)``,
``("done", wid, run_id)``, ``("error", wid, one line)`` (a user mistake such as bad data or a full
disk: the parent stops handing out runs), ``("interrupted", wid)``; then the worker ends.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stitch.config import Experiment
from stitch.errors import StitchError, one_line_message
from stitch.progress import Progress
from stitch.runs import RunPlan, experiment_data
from stitch.session import RunSession
from stitch.store import ResultStore
from stitch.tasks import make_task

#: how often a worker checks that its parent is still alive
PARENT_CHECK_S = 1.0


@dataclass
class WorkerSetup:
    """What every worker of one ``stitch run --jobs N`` gets from its parent (pickled)."""

    exp: Experiment
    run_dir: Path
    device: str
    threads: int | None  # torch threads; None: leave torch's choice ($OMP_NUM_THREADS is set)
    force: bool
    stop_after: int | None
    parent_pid: int


class RelayHandler(logging.Handler):
    """Log records sent to the parent as ``("log", wid, level, "[<run>] text")``."""

    def __init__(self, queue: Any, wid: int) -> None:
        super().__init__(logging.DEBUG)
        self.queue, self.wid, self.label = queue, wid, ""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = f"[{self.label}] " if self.label else ""
        self.queue.put(("log", self.wid, record.levelno, prefix + record.getMessage()))


class WorkerProgress(Progress):
    """The progress display of a worker: every line goes to the parent through the log (which
    prints it and writes ``log.txt``), none to this process's console."""

    def message(self, text: str) -> None:
        self.log.info(text)

    def epoch_done(self, record: dict[str, Any], primary: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # logged (and so relayed), not printed here
            super().epoch_done(record, primary)


def watch_parent(parent_pid: int) -> None:
    """End this process at once when its parent is gone (killed without the chance to stop its
    workers): a run directory whose lock is free must not have a worker still writing in it."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="stitch-parent-watch", daemon=True).start()


def worker_main(wid: int, setup: WorkerSetup, tasks: Any, results: Any) -> None:
    """The worker process: set up, then train the plans read from ``tasks`` until it reads None."""
    with contextlib.suppress(OSError):
        os.setpgrp()  # the terminal's Ctrl-C goes to the parent only, which passes it on once
    watch_parent(setup.parent_pid)
    relay = RelayHandler(results, wid)
    log = logging.getLogger(f"stitch.worker.{os.getpid()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(relay)
    try:
        if setup.threads is not None:
            torch.set_num_threads(setup.threads)
        device = torch.device(setup.device)
        if device.type == "cuda":  # CUDA only (untested here): this worker's GPU
            torch.cuda.set_device(device)
        exp, data = experiment_data(setup.exp)
        task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
        with ResultStore(setup.run_dir / "runs.sqlite", force=True) as store:  # the parent checked it
            session = RunSession(exp, data, task, store, device, setup.run_dir, WorkerProgress(True, log))
            while True:
                results.put(("ready", wid))
                plan: RunPlan | None = tasks.get()
                if plan is None:
                    break
                relay.label = f"{plan.variant.name} s{plan.seed}"
                session.train(plan, force=setup.force, stop_after=setup.stop_after)
                relay.label = ""
                results.put(("done", wid, plan.run_id))
    except KeyboardInterrupt:  # the parent passed a Ctrl-C on; the session said where it stopped
        results.put(("interrupted", wid))
    except StitchError as exc:
        results.put(("error", wid, one_line_message(exc)))
    except BaseException as exc:  # a bug outside a run (a run's own crash is stored by the session)
        import traceback

        log.error(traceback.format_exc())
        results.put(
            ("error", wid, f"worker {wid} crashed: {type(exc).__name__}: {exc} (traceback in log.txt)")
        )
