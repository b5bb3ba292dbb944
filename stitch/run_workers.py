"""``stitch run --jobs N``: the runs of one experiment trained by N worker processes at once, in
the one run directory that the parent (this module's caller) holds locked.

Runs are handed out one at a time, each to the next worker that is free. Workers
(:mod:`stitch.run_worker`) are started with ``spawn`` and split the CPU cores (``cores // N``
torch threads each, unless ``$OMP_NUM_THREADS`` is set) and the ``--devices`` (round robin). The
parent alone prints and writes ``log.txt``: workers send their lines, prefixed with their run. A
worker that dies (killed, a segfault) fails only the run it held, and a new worker takes its place;
a user mistake found by a worker (bad data, a full disk) stops the handing out, lets the other
runs finish and is raised. Ctrl-C (which reaches only the parent) is passed on to every worker
once per press: the first makes each stop at its next optimiser step with a checkpoint, a second
stops them at once; then :class:`KeyboardInterrupt` goes on to the CLI's resume message.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stitch.errors import StitchError
from stitch.progress import Progress
from stitch.run_worker import WorkerSetup, worker_main
from stitch.runs import RunPlan
from stitch.store import ResultStore

#: how often the parent looks for workers that died while it waits for messages
POLL_S = 0.5
#: how long the parent waits for interrupted workers to save their checkpoints and end
STOP_WAIT_S = 300.0


def worker_threads(jobs: int) -> int | None:
    """Torch threads per worker: ``cores // jobs`` (at least 1), or None when ``$OMP_NUM_THREADS``
    is set (the user's choice, which torch reads itself)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // jobs)


@dataclass
class Worker:
    """A worker process, its task queue and the run it is training (None: none)."""

    wid: int
    process: Any
    tasks: Any
    current: RunPlan | None = None
    finished: bool = False  # said it ended (interrupted, an error) or was told to


@dataclass
class WorkerPool:
    """The workers of one ``stitch run --jobs N`` and the runs still to hand out."""

    setup: WorkerSetup
    devices: Sequence[str]
    progress: Progress
    store: ResultStore
    pending: deque[RunPlan]
    context: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))
    workers: dict[int, Worker] = field(default_factory=dict)
    stopping: bool = False
    interrupted: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        self.results = self.context.Queue()
        self.next_wid = 0

    def start_worker(self) -> None:
        wid = self.next_wid
        self.next_wid += 1
        setup = WorkerSetup(**{**self.setup.__dict__, "device": self.devices[wid % len(self.devices)]})
        tasks = self.context.SimpleQueue()
        process = self.context.Process(
            target=worker_main, args=(wid, setup, tasks, self.results), name=f"stitch-worker-{wid}"
        )
        process.start()
        self.workers[wid] = Worker(wid, process, tasks)

    def handle(self, message: tuple[Any, ...]) -> None:
        kind, worker = message[0], self.workers[message[1]]
        if kind == "log":
            level, text = message[2], message[3]
            if level == 20:  # INFO: shown and logged, as a sequential run's lines are
                self.progress.message(text)
            else:
                self.progress.log.log(level, text)
        elif kind == "ready":
            if self.pending and not self.stopping:
                worker.current = self.pending.popleft()
                worker.tasks.put(worker.current)
            else:
                worker.finished = True
                worker.tasks.put(None)
        elif kind == "done":
            worker.current = None
        elif kind == "interrupted":
            worker.finished, self.stopping, self.interrupted = True, True, True
        elif kind == "error":
            worker.finished, self.stopping = True, True
            self.error = self.error or message[2]

    def check_dead(self) -> None:
        """A worker that ended without saying so (killed, a crash of the interpreter): its run is
        failed; a new worker takes its place while runs are left to hand out."""
        dead = [w for w in self.workers.values() if not w.process.is_alive() and not w.finished]
        if not dead:
            return
        self.drain()  # what they said before they died (a run they finished)
        for worker in dead:
            worker.finished = True
            code = worker.process.exitcode
            row = self.store.get(worker.current.run_id) if worker.current is not None else None
            if worker.current is not None and row is not None and row.status == "running":
                plan = worker.current
                error = f"worker process died (exit code {code})"
                self.store.update(plan.run_id, status="failed", error=error)
                self.progress.message(f"{plan.variant.name} seed {plan.seed}: failed: {error}")
            if self.pending and not self.stopping:
                self.start_worker()

    def alive(self) -> bool:
        return any(w.process.is_alive() for w in self.workers.values())

    def pump(self) -> None:
        """Handle messages until every worker has ended."""
        checked = time.monotonic()
        while True:
            with contextlib.suppress(queue.Empty):
                self.handle(self.results.get(timeout=POLL_S))
            if time.monotonic() - checked < POLL_S:
                continue
            checked = time.monotonic()
            self.check_dead()
            if not self.alive():
                break
        self.drain()

    def drain(self) -> None:
        """The messages the ended workers left in the queue."""
        while True:
            try:
                self.handle(self.results.get(timeout=0.1))
            except queue.Empty:
                return

    def interrupt(self) -> None:
        """Pass a Ctrl-C on to every live worker (their runs stop at the next step and save)."""
        self.stopping = self.interrupted = True
        for worker in self.workers.values():
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGINT)

    def run(self, jobs: int) -> None:
        """Start ``jobs`` workers (no more than there are runs) and hand out every pending run."""
        try:
            for _ in range(min(jobs, len(self.pending))):
                self.start_worker()
            self.pump()
        except KeyboardInterrupt:
            self.interrupt()
            self.wait_after_interrupt()
            raise
        finally:
            for worker in self.workers.values():
                worker.process.join(timeout=STOP_WAIT_S if not self.interrupted else 5)
                if worker.process.is_alive():  # pragma: no cover - a worker that ignores every signal
                    worker.process.kill()
        if self.interrupted:
            raise KeyboardInterrupt
        if self.error is not None:
            raise StitchError(self.error)

    def wait_after_interrupt(self) -> None:
        """Relay the workers' last lines while they save and end; another Ctrl-C is passed on too."""
        while True:
            try:
                self.pump()
                return
            except KeyboardInterrupt:
                self.interrupt()


def train_in_workers(
    plans: Sequence[RunPlan],
    setup: WorkerSetup,
    jobs: int,
    devices: Sequence[str],
    progress: Progress,
    store: ResultStore,
) -> None:
    """Train ``plans`` in ``jobs`` worker processes (devices round robin); rows land in ``store``'s
    database. Raises :class:`KeyboardInterrupt` after a Ctrl-C once every worker has stopped, and
    the first user mistake a worker met (:class:`~stitch.errors.StitchError`) once the others end."""
    pool = WorkerPool(setup, devices, progress, store, deque(plans))
    pool.run(jobs)
