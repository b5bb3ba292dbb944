"""``stitch run``: every variant x seed of an experiment, trained, evaluated and stored.

Layout of ``runs/<experiment>/``::

    experiment.yaml   the experiment file as run (``stitch show`` / ``report`` read it)
    runs.sqlite       one row per variant x seed (stitch/store.py)
    results.csv       the same rows, flattened, for a spreadsheet
    log.txt           a plain log of everything printed, with timestamps
    tb/<variant>_s<seed>/   TensorBoard scalars and image grids
    ckpt/<run_id>/    epoch-NNNN.pt (the last ``keep_last``) and best.pt

Re-running skips finished runs, resumes unfinished ones from their last checkpoint, and
``--force`` retrains.
"""
from __future__ import annotations

import inspect
import logging
import os
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from stitch.build import stitch_variant
from stitch.config import Experiment
from torch.utils.tensorboard import SummaryWriter

from stitch.engine import Callbacks, Diverged, LoopState, StopTraining, pick_device, train, train_batches
from stitch.errors import StitchError, one_line_message
from stitch.plan import Variant, plan_variants
from stitch.progress import Progress
from stitch.store import ResultStore, RunRow, run_id_of
from stitch.tasks import make_task


@dataclass
class RunPlan:
    """One variant x seed to train."""

    variant: Variant
    seed: int
    run_id: str
    config: dict[str, Any]


def _with_defaults(fn: Any, args: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``args`` plus the defaults of ``fn``'s other keyword parameters (so writing a default out
    explicitly does not change a run id)."""
    out = dict(args)
    for p in inspect.signature(fn).parameters.values():
        if p.name not in out and p.name not in skip and p.default is not p.empty:
            out[p.name] = p.default
    return out


def resolved_insertion(ins: dict[str, Any]) -> dict[str, Any]:
    """An insertion as stored in a run's config: mode and module-argument defaults filled in
    (idempotent)."""
    import modules_zoo
    from modules_zoo.registry import PROBE_ARGS

    entry = modules_zoo.get(ins["module"])
    return dict(
        ins,
        mode=ins.get("mode") or entry.modes[0],
        args=_with_defaults(entry.builder, ins.get("args") or {}, PROBE_ARGS),
        nest=[resolved_insertion(n) for n in ins.get("nest") or []],
    )


def resolved_config(exp: Experiment, variant: Variant, seed: int, epochs: int) -> dict[str, Any]:
    """Everything that determines a run's result, with defaults filled in (its id is a hash of
    this). Settings that cannot change the result (``keep_last``; ``amp`` off CUDA is recorded
    as it is) are left out."""
    from stitch.baselines import BASELINES

    cfg = exp.cfg.model_dump(mode="json")
    train_cfg = dict(cfg["train"], epochs=epochs)
    train_cfg.pop("keep_last")
    if train_cfg["scheduler"].get("milestones") is None:  # added later: unset, it must not change older run ids
        train_cfg["scheduler"] = {k: v for k, v in train_cfg["scheduler"].items() if k != "milestones"}
    data = dict(cfg["data"])
    if cfg["task"] != "instance":  # read by the instance task only (added later: must not change older run ids)
        data.pop("objects", None)
    if data.get("root"):
        data["root"] = os.path.normpath(data["root"])
    baseline = dict(cfg["baseline"], args=_with_defaults(BASELINES[exp.cfg.baseline.model].build, cfg["baseline"]["args"]))
    return {
        "task": cfg["task"],
        "baseline": baseline,
        "data": data,
        "train": train_cfg,
        "insertions": [resolved_insertion(i) for i in cfg["insertions"] if i["name"] in variant.insertions],
        "seed": seed,
        "primary_metric": exp.cfg.primary_metric,
    }


def plan_runs(exp: Experiment, epochs: int | None = None, seeds: Sequence[int] | None = None) -> list[RunPlan]:
    """Variants x seeds, each with its config and run id."""
    n_epochs = epochs or exp.cfg.train.epochs
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise StitchError(f"--seeds {' '.join(map(str, seeds))}: seeds repeat; paired statistics need distinct seeds")
    out = []
    for variant in plan_variants(exp.cfg):
        for seed in seeds if seeds is not None else exp.cfg.seeds:
            config = resolved_config(exp, variant, seed, n_epochs)
            out.append(RunPlan(variant, seed, run_id_of(config), config))
    return out


def _logger(run_dir: Path) -> logging.Logger:
    log = logging.getLogger(f"stitch.run.{run_dir}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        handler = logging.FileHandler(run_dir / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    return log


def fit_baseline_to_data(exp: Experiment, num_classes: int, in_channels: int) -> None:
    """Fill the baseline's ``num_classes``/``in_channels`` (those its builder takes) from the
    data, or say they disagree."""
    import inspect

    from stitch.baselines import BASELINES

    args = exp.cfg.baseline.args
    spec = BASELINES.get(exp.cfg.baseline.model)
    takes = set(inspect.signature(spec.build).parameters) if spec else {"num_classes", "in_channels"}
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if key not in takes:
            continue
        if key in args and args[key] != value:
            raise exp.source.error(("baseline", "args", key), f"{key}={args[key]} but the {exp.cfg.data.dataset} data has {value} (set {key}: {value})")
        if key not in args:
            exp.cfg.baseline.args[key] = value


def experiment_data(exp: Experiment) -> Any:
    """The experiment's datasets for its task (:func:`stitch.data.build_data`), with the
    baseline's ``num_classes``/``in_channels`` filled from them (or a mismatch reported)."""
    from stitch.data import build_data

    if exp.cfg.data is None:
        raise exp.source.error(("data",), "the experiment has no 'data:' block; add one, e.g. data: {dataset: nuclei} (README: The experiment file)")
    data = build_data(exp.cfg.data, task=exp.cfg.task)
    fit_baseline_to_data(exp, data.num_classes, data.in_channels)
    return data


def open_run_dir(exp: Experiment, out: str | Path) -> Path:
    """``out/<experiment name>/``, created, with the experiment file copied in as
    ``experiment.yaml`` (what ``stitch report`` and ``stitch show`` read)."""
    run_dir = Path(out) / exp.cfg.name
    if Path(out).exists() and not Path(out).is_dir():
        raise StitchError(f"--out {out}: is a file, not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    if exp.path is not None and not _same_file(exp.path, run_dir / "experiment.yaml"):
        shutil.copyfile(exp.path, run_dir / "experiment.yaml")
    return run_dir


def run_experiment(
    exp: Experiment,
    out: str | Path = "runs",
    device: str | None = None,
    epochs: int | None = None,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    quiet: bool = False,
    stop_after: int | None = None,
) -> list[RunRow]:
    """Train every planned run that is not finished yet; return the rows of this experiment."""
    from stitch.validate import validate_experiment

    dev = pick_device(device)
    data = experiment_data(exp)
    validate_experiment(exp)  # every model-side mistake before any training
    runs = plan_runs(exp, epochs, seeds)
    preflight(data, exp.cfg.train.batch_size)  # unreadable files, bad labels: before anything is written

    run_dir = open_run_dir(exp, out)
    log = _logger(run_dir)
    task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
    progress = Progress(quiet=quiet, log=log)
    results: list[RunRow] = []
    current = {p.run_id for p in runs}
    with ResultStore(run_dir / "runs.sqlite") as store, progress:
        try:
            progress.start_experiment(exp.cfg.name, len(runs), dev)
            progress.message(f"data: {data.describe()}")
            if exp.cfg.train.amp and dev.type != "cuda":
                progress.message(f"note: train.amp is for CUDA; training in float32 on {dev}")
            for plan in runs:
                row = store.get(plan.run_id)
                if row is not None and row.status in ("done", "diverged") and not force:
                    progress.skip(plan.variant.name, plan.seed, row.status)
                    results.append(row)
                    continue
                results.append(_train_run(exp, plan, data, task, run_dir, store, dev, progress, force, stop_after))
        except StitchError as exc:
            log.error(f"stopped: {one_line_message(exc)}")
            raise
        finally:
            _write_csv(store, run_dir / "results.csv", current)
        shown = list(dict.fromkeys([exp.cfg.primary_metric, *exp.cfg.metrics.report]))
        progress.summary(results, shown)
        _report(run_dir, dev, progress)
    return results


def _report(run_dir: Path, dev: torch.device, progress: Progress) -> None:
    """Tables and plots in ``RUN_DIR/report`` (the same as ``stitch report RUN_DIR``). A report
    problem is printed, never allowed to undo the runs."""
    from stitch.report import write_report

    try:
        written = write_report([run_dir], run_dir / "report", device=str(dev))
        progress.message(f"report: {run_dir / 'report'} ({len(written)} files)")
    except Exception as exc:
        progress.message(f"report not written: {one_line_message(exc)} (stitch report {run_dir} retries)")
        progress.log.error(traceback.format_exc())


def preflight(data: Any, batch_size: int) -> None:
    """Read every validation sample and the first training batch once, so unreadable files and
    out-of-range labels stop the command before any run directory is written."""
    for i in range(len(data.val)):
        data.val[i]
    for i in range(min(len(data.train), batch_size)):
        data.train[i]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _train_run(exp, plan: RunPlan, data, task, run_dir: Path, store: ResultStore, dev: torch.device, progress: Progress, force: bool, stop_after: int | None, on_record: Any = None, built: Any = None) -> RunRow:
    """Train one run (fresh or resumed) and store it. ``on_record(record)`` sees every epoch's
    record after it is stored and may raise :class:`~stitch.engine.StopTraining` (sweep pruning).
    ``built`` is the run's model when the caller has already built it (``stitch_variant`` of
    ``plan.variant`` and ``plan.seed``, untrained)."""
    ckpt_dir = run_dir / "ckpt" / plan.run_id
    tb_dir = run_dir / "tb" / f"{plan.variant.slug}_s{plan.seed}_{plan.run_id[:8]}"
    previous = store.get(plan.run_id)
    fresh = force or previous is None
    if fresh:
        for folder in (ckpt_dir, tb_dir):
            if folder.exists():
                shutil.rmtree(folder)
    built = built or stitch_variant(exp, plan.variant, plan.seed)
    epochs = plan.config["train"]["epochs"]
    train_cfg = exp.cfg.train.model_copy(update={"epochs": epochs})
    if fresh:
        store.start(RunRow(
            run_id=plan.run_id, experiment=exp.cfg.name, variant=plan.variant.name, variant_slug=plan.variant.slug,
            insertions=list(plan.variant.insertions), seed=plan.seed, status="running", config=plan.config,
            primary_metric=exp.cfg.primary_metric, params=built.params, baseline_params=built.baseline_params,
            epochs=epochs, device=str(dev),
        ))
    else:  # resume: keep the history and metrics stored so far
        store.update(plan.run_id, status="running", device=str(dev), error=None)
    writer = SummaryWriter(str(tb_dir))
    primary = exp.cfg.primary_metric

    def save_state(state: LoopState) -> None:
        store.update(
            plan.run_id, epochs_done=state.epoch, history=state.history, best_epoch=state.best_epoch,
            best_value=None if state.best_epoch is None else state.best_value, best_metrics=state.best_metrics,
            final_metrics=state.last_metrics, wall_time=state.wall_time,
            train_images_per_s=state.train_images / max(state.train_seconds, 1e-9),
        )

    def on_epoch(state: LoopState, record: dict[str, Any]) -> None:
        save_state(state)
        for key, value in record.items():
            if key != "epoch":
                writer.add_scalar(tb_tag(key), value, record["epoch"])
        metrics = state.last_metrics or {}
        for name in ("iou_per_class", "dice_per_class"):
            for c, value in enumerate(metrics.get(name, []) if record.get("val_loss") is not None else []):
                writer.add_scalar(f"val_{name}/{data.class_names[c]}", value, record["epoch"])
        writer.flush()
        progress.epoch_done(record, primary)
        if on_record is not None:
            on_record(record)

    def on_eval(epoch: int, model: torch.nn.Module) -> None:
        from stitch.visualize import prediction_grid

        writer.add_image("val/input_target_prediction", prediction_grid(model, data, n=4, device=dev), epoch)

    def on_losses(epoch: int, step: int, parts: dict[str, float]) -> None:
        global_step = (epoch - 1) * steps + step
        for part, value in parts.items():
            writer.add_scalar(f"train_step/{part}", value, global_step)

    _, _, steps = train_batches(len(data.train), train_cfg.batch_size)
    progress.start_run(plan.variant.name, plan.seed, epochs, len(data.train), steps)
    callbacks = Callbacks(on_step=progress.step, on_epoch=on_epoch, on_eval=on_eval, on_losses=on_losses)
    try:
        state = train(
            built.model, task, data.train, data.val, train_cfg, plan.seed, dev, ckpt_dir, primary,
            num_workers=exp.cfg.data.num_workers, callbacks=callbacks, stop_after=stop_after,
            collate_fn=getattr(data, "collate_fn", None),
        )
    except Diverged as exc:
        store.update(plan.run_id, status="diverged", error=str(exc))
        progress.message(f"{plan.variant.name} seed {plan.seed}: diverged ({exc})")
    except StopTraining as exc:
        store.update(plan.run_id, status=exc.status, error=exc.reason)
        progress.message(f"{plan.variant.name} seed {plan.seed}: {exc.status} ({exc.reason})")
        raise
    except KeyboardInterrupt:
        progress.message(f"{plan.variant.name} seed {plan.seed}: interrupted; run the same command again to resume")
        raise
    except StitchError as exc:  # bad data found while training (a file the preflight did not read)
        store.update(plan.run_id, status="failed", error=one_line_message(exc))
        raise
    except Exception as exc:  # a crash of one run must not lose the others
        store.update(plan.run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        progress.message(f"{plan.variant.name} seed {plan.seed}: failed: {type(exc).__name__}: {exc} (traceback in log.txt)")
        progress.log.error(traceback.format_exc())
    else:
        save_state(state)
        if state.epoch >= epochs:
            store.update(plan.run_id, status="done")
    finally:
        writer.close()
    return store.get(plan.run_id)


#: TensorBoard tag of each per-epoch record key (the rest are validation metrics, ``val/<key>``)
TB_TAGS = {"train_loss": "train/loss", "lr": "train/lr", "train_images_per_s": "train/images_per_s", "seconds": "time/epoch_seconds"}


def tb_tag(key: str) -> str:
    """TensorBoard tag of a per-epoch record key (loss components go under ``train/``)."""
    if key in TB_TAGS:
        return TB_TAGS[key]
    if key.startswith("train_loss_"):
        return f"train/{key[len('train_'):]}"
    return f"val/{key}"


def _write_csv(store: ResultStore, path: Path, current: set[str]) -> None:
    """``results.csv``: one row per run, metrics flattened into columns (written atomically).
    ``current`` marks the runs of the experiment file as it is now (older configs stay listed)."""
    import pandas as pd

    records = []
    for r in store.rows():
        rec = {"current": r.run_id in current}
        rec |= {k: getattr(r, k) for k in ("run_id", "variant", "seed", "status", "params", "baseline_params", "epochs", "epochs_done", "best_epoch", "best_value", "wall_time", "train_images_per_s", "device", "error")}
        rec["insertions"] = "+".join(r.insertions)
        for prefix, metrics in (("final", r.final_metrics), ("best", r.best_metrics)):
            for k, v in (metrics or {}).items():
                if isinstance(v, (int, float)):
                    rec[f"{prefix}_{k}"] = v
        records.append(rec)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # unique: sweep workers may share a run directory
    pd.DataFrame.from_records(records).to_csv(tmp, index=False)
    tmp.replace(path)
