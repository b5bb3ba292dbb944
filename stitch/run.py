"""``stitch run``: every variant x seed of an experiment, trained, evaluated and stored.

Re-running skips finished runs, resumes unfinished ones from their last checkpoint, and
``--force`` retrains. What a run is (its config, id and run directory) is :mod:`stitch.runs`;
training one is :class:`stitch.session.RunSession`. ``--jobs N`` trains the runs in N worker
processes (:mod:`stitch.run_workers`). Only the CLI imports this module.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from stitch.compile_model import check_compile
from stitch.config import Experiment
from stitch.ddp_follower import follow_main_rank
from stitch.devices import pick_device
from stitch.distributed import announce, barrier, start_distributed
from stitch.errors import StitchError, one_line_message
from stitch.progress import Progress
from stitch.report import write_report
from stitch.run_lock import open_locked_run_dir
from stitch.run_worker import WorkerSetup
from stitch.run_workers import train_in_workers, worker_threads
from stitch.runs import experiment_data, plan_runs, preflight, run_logger
from stitch.session import RunSession
from stitch.store import ResultStore, RunRow, write_results_csv
from stitch.tasks import make_task
from stitch.validate import validate_experiment


def run_experiment(
    exp: Experiment,
    out: str | Path = "runs",
    device: str | None = None,
    epochs: int | None = None,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    quiet: bool = False,
    stop_after: int | None = None,
    wait: bool = False,
    jobs: int = 1,
    devices: Sequence[str] | None = None,
    storage: str | None = None,
) -> list[RunRow]:
    """Train every planned run that is not finished yet; return the rows of this experiment.

    The run directory is locked from its opening to the end of the report: another live process
    working in it is :class:`~stitch.run_lock.RunDirLocked` (with ``wait``, waited for). ``jobs``
    above 1 trains the runs in that many worker processes, on ``devices`` (names as ``--device``
    takes them) round robin, by default all on the one device ``device`` names. ``storage``: a
    distributed ablation (:mod:`stitch.run_queue`), its runs claimed through that shared storage."""
    if jobs < 1:
        raise StitchError(f"--jobs {jobs}: must be at least 1")
    if storage is not None and (jobs > 1 or force):
        raise StitchError(
            f"--storage with {'--force' if force else '--jobs'}: a distributed ablation trains each run "
            "once (start several `stitch run --storage` workers, each with its own --out; to retrain, "
            "use a new storage)"
        )
    dev = pick_device(device)
    worker_devices = [str(pick_device(d)) for d in devices] if devices else [str(dev)]
    if devices:
        dev = torch.device(worker_devices[0])
    ddp = start_distributed(dev)  # under torchrun: the process group, and this rank's device
    if ddp is not None:
        dev = ddp.device
        if not ddp.main:  # trains what rank 0 announces, writes nothing
            return follow_main_rank(exp, dev, epochs, seeds)
    check_compile(exp.cfg.train.compile, dev)  # a missing compiler: before anything is written
    exp, data = experiment_data(exp)
    validate_experiment(exp, data.num_classes)  # every model-side mistake (lr_mult keys too) first
    runs = plan_runs(exp, epochs, seeds)
    preflight(data, exp.cfg.train.batch_size)  # unreadable files, bad labels: before anything is written
    barrier()  # DDP: the data is built; the other ranks build theirs now
    shared = None
    if storage is not None:  # a bad URL or another plan in the study: before anything is written
        from stitch.run_queue import open_shared_runs
        from stitch.sweep.study import open_storage

        shared = open_shared_runs(open_storage(storage), exp.cfg.name, runs, exp)

    with open_locked_run_dir(exp, out, "stitch run", wait) as run_dir:
        log = run_logger(run_dir)
        task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
        progress = Progress(quiet=quiet, log=log)
        results: list[RunRow] = []
        current = {p.run_id for p in runs}
        with ResultStore(run_dir / "runs.sqlite", force=force) as store, progress:
            session = RunSession(exp, data, task, store, dev, run_dir, progress)
            try:
                progress.start_experiment(exp.cfg.name, len(runs), dev)
                progress.message(f"data: {data.describe()}")
                if (exp.cfg.train.amp or exp.cfg.train.precision == "fp16") and dev.type != "cuda":
                    progress.message(
                        f"note: fp16 (train.amp, train.precision) is for CUDA; training in float32 on {dev}"
                    )
                if jobs > 1:
                    threads = worker_threads(jobs)
                    note = (
                        f"{threads} CPU threads each" if threads else "CPU threads as $OMP_NUM_THREADS says"
                    )
                    progress.message(f"{jobs} workers on {', '.join(worker_devices)}, {note}")
                pending = []
                for plan in runs if shared is None else ():
                    row = store.get(plan.run_id)
                    if row is not None and row.status in ("done", "diverged") and not force:
                        progress.skip(plan.variant.name, plan.seed, row.status)
                    elif jobs == 1:
                        session.train(plan, force=force, stop_after=stop_after)
                    else:
                        pending.append(plan)
                if pending:
                    setup = WorkerSetup(
                        exp, run_dir, str(dev), worker_threads(jobs), force, stop_after, os.getpid()
                    )
                    train_in_workers(pending, setup, jobs, worker_devices, progress, store)
                if shared is not None:
                    from stitch.run_queue import train_shared

                    for row in train_shared(shared, session, progress, stop_after).values():
                        store.put(row)  # every worker's run directory holds the whole ablation
                results = [row for plan in runs if (row := store.get(plan.run_id)) is not None]
                announce(None)  # DDP: no more runs for the other ranks
            except StitchError as exc:
                log.error(f"stopped: {one_line_message(exc)}")
                raise
            finally:
                write_results_csv(store, run_dir / "results.csv", current)
            shown = list(dict.fromkeys([exp.cfg.primary_metric, *exp.cfg.metrics.report]))
            progress.summary(results, shown, exp.cfg.report.selection)
            _report(run_dir, dev, progress)
    return results


def _report(run_dir: Path, dev: torch.device, progress: Progress) -> None:
    """Tables and plots in ``RUN_DIR/report`` (the same as ``stitch report RUN_DIR``). A report
    problem is printed, never allowed to undo the runs."""
    try:
        written = write_report([run_dir], run_dir / "report", device=str(dev))
        progress.message(f"report: {run_dir / 'report'} ({len(written)} files)")
    except Exception as exc:
        progress.message(f"report not written: {one_line_message(exc)} (stitch report {run_dir} retries)")
        progress.log.error(traceback.format_exc())
