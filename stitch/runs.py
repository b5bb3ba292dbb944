"""What a run is: one variant x seed of an experiment, its fully resolved config and the id that
hashes it, and the experiment's data and run directory that every command which trains or reads
runs shares (``run``, ``sweep``, ``report``, ``show``). Nothing here trains.

Layout of a run directory ``runs/<experiment>/``::

    experiment.yaml   the experiment file as run (``stitch show`` / ``report`` read it)
    runs.sqlite       one row per variant x seed (stitch/store.py)
    results.csv       the same rows, flattened, for a spreadsheet
    log.txt           a plain log of everything printed, with timestamps
    tb/<run name>/    TensorBoard: step/ and epoch/ axes, HParams (``tensorboard_log.run_name``)
    ckpt/<run_id>/    epoch-NNNN.pt (the last ``keep_last``) and best.pt
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stitch.config import Experiment, with_overrides
from stitch.config.loading import SOURCE_FOLDER_FILE
from stitch.errors import NO_SPACE_ERRNOS, StitchError
from stitch.fileio import atomic_path, write_text
from stitch.hashing import digest
from stitch.plan import Variant, plan_variants, variant_insertions
from stitch.plugins import load_plugins, module_refs
from stitch.registry import BASELINES

if TYPE_CHECKING:
    from stitch.data import DataBundle


@dataclass
class RunPlan:
    """One variant x seed to train."""

    variant: Variant
    seed: int
    run_id: str
    config: dict[str, Any]


#: data keys added with the held-out test split: left out of the resolved config while unset (None,
#: 0 or the old layout), so experiments without a test split keep their older run ids
TEST_SPLIT_KEYS = ("test_list", "test_fraction", "test_annotations", "test_images", "test_split")
#: fixed-split datasets whose ``test_region: false`` is the layout of before (kept out of run ids)
TEST_REGION_KEY = "test_region"


def run_id_of(resolved: dict[str, Any]) -> str:
    """A run's stable id: the first 16 hex digits of the SHA-256 of its canonical JSON config."""
    return digest(resolved, 16)


def recipe_text(config: dict[str, Any]) -> str:
    """The training recipe of a run's resolved config, as canonical text: everything but the seed
    and the insertions (the runs of one recipe differ only in those)."""
    return json.dumps(
        {k: v for k, v in config.items() if k not in ("seed", "insertions")}, sort_keys=True, default=str
    )


def with_defaults(fn: Callable[..., Any], args: dict[str, Any], skip: Sequence[str] = ()) -> dict[str, Any]:
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
    from modules_zoo.added_arguments import added_defaults
    from modules_zoo.registry import PROBE_ARGS

    entry = modules_zoo.get(ins["module"])
    args = with_defaults(entry.builder, ins.get("args") or {}, PROBE_ARGS)
    for name, default in added_defaults(entry.builder).items():  # added later: at its default, not recorded
        if name in args and args[name] == default:
            del args[name]
    return dict(
        ins,
        mode=ins.get("mode") or entry.modes[0],
        args=args,
        nest=[resolved_insertion(n) for n in ins.get("nest") or []],
    )


def resolved_config(exp: Experiment, variant: Variant, seed: int, epochs: int) -> dict[str, Any]:
    """Everything that determines a run's result, with defaults filled in (its id is a hash of
    this). Settings that cannot change the result (``keep_last``; ``amp`` off CUDA is recorded
    as it is) are left out."""
    cfg = exp.cfg.model_dump(mode="json")
    train_cfg = dict(cfg["train"], epochs=epochs)
    train_cfg.pop("keep_last")
    train_cfg.pop("sync_every", None)  # when the host reads the losses: never the result
    train_cfg.pop("async_checkpoint", None)  # when the checkpoint is written: never the result
    # speed settings (added later): recorded only when on, so older run ids stay; precision fp16
    # is amp: true (the same training, the same id)
    if train_cfg.get("precision") == "fp16":
        train_cfg["amp"] = True
    if train_cfg.get("precision") in ("fp16", "fp32"):
        train_cfg.pop("precision")
    for key in ("channels_last", "compile"):
        if not train_cfg.get(key, True):
            train_cfg.pop(key)
    if (
        train_cfg["scheduler"].get("milestones") is None
    ):  # added later: unset, it must not change older run ids
        train_cfg["scheduler"] = {k: v for k, v in train_cfg["scheduler"].items() if k != "milestones"}
    # Parameter groups (added later): recorded only where they change training, so that an
    # experiment that decays every parameter alike at one rate keeps its older run id.
    optimizer = dict(train_cfg["optimizer"])
    if not optimizer.get("lr_mult"):
        optimizer.pop("lr_mult", None)
    if optimizer.get("decay_norm_bias", True) or not optimizer["weight_decay"]:
        optimizer.pop("decay_norm_bias", None)
    train_cfg["optimizer"] = optimizer
    data = dict(cfg["data"])
    data.pop("cache", None)  # the decoded-data cache never changes a result (stitch.data.cache)
    if (
        cfg["task"] != "instance"
    ):  # read by the instance task only (added later: must not change older run ids)
        data.pop("objects", None)
    for key in (*TEST_SPLIT_KEYS, TEST_REGION_KEY):
        if key in data and not data[key]:
            data.pop(key)
    if data.get("root"):
        data["root"] = os.path.normpath(data["root"])
    baseline = dict(
        cfg["baseline"], args=with_defaults(BASELINES[exp.cfg.baseline.model].build, cfg["baseline"]["args"])
    )
    return {
        "task": cfg["task"],
        "baseline": baseline,
        "data": data,
        "train": train_cfg,
        "insertions": [
            resolved_insertion(i.model_dump(mode="json")) for _, i in variant_insertions(exp.cfg, variant)
        ],
        "seed": seed,
        "primary_metric": exp.cfg.primary_metric,
    }


def plan_runs(
    exp: Experiment, epochs: int | None = None, seeds: Sequence[int] | None = None
) -> list[RunPlan]:
    """Variants x seeds, each with its config and run id."""
    n_epochs = epochs or exp.cfg.train.epochs
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise StitchError(
            f"--seeds {' '.join(map(str, seeds))}: seeds repeat; paired statistics need distinct seeds"
        )
    load_plugins(exp)
    out = []
    for variant in plan_variants(exp.cfg):
        for seed in seeds if seeds is not None else exp.cfg.seeds:
            config = resolved_config(exp, variant, seed, n_epochs)
            out.append(RunPlan(variant, seed, run_id_of(config), config))
    return out


def fit_baseline_to_data(exp: Experiment, num_classes: int, in_channels: int) -> Experiment:
    """A validated copy of ``exp`` whose baseline has ``num_classes``/``in_channels`` (those its
    builder takes) filled from the data; a one-line error where the file says otherwise."""
    assert exp.cfg.data is not None  # experiment_data checked it
    args = exp.cfg.baseline.args
    spec = BASELINES.get(exp.cfg.baseline.model)
    takes = set(inspect.signature(spec.build).parameters) if spec else {"num_classes", "in_channels"}
    fills: dict[str, Any] = {}
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if key not in takes:
            continue
        if key in args and args[key] != value:
            raise exp.source.error(
                ("baseline", "args", key),
                f"{key}={args[key]} but the {exp.cfg.data.dataset} data has {value} (set {key}: {value})",
            )
        if key not in args:
            fills[key] = value
    return with_overrides(exp, fills) if fills else exp


def experiment_data(exp: Experiment) -> tuple[Experiment, DataBundle]:
    """The experiment's datasets for its task (:func:`stitch.data.build_data`), and the experiment
    with the baseline's ``num_classes``/``in_channels`` filled from them (or a mismatch reported)."""
    from stitch.data import build_data

    if exp.cfg.data is None:
        raise exp.source.error(
            ("data",),
            "the experiment has no 'data:' block; add one, e.g. data: {dataset: nuclei}"
            " (README: The experiment file)",
        )
    load_plugins(exp)
    data = build_data(exp.cfg.data, task=exp.cfg.task)
    return fit_baseline_to_data(exp, data.num_classes, data.in_channels), data


def open_run_dir(exp: Experiment, out: str | Path) -> Path:
    """``out/<experiment name>/``, created, with the experiment file copied in as
    ``experiment.yaml`` (what ``stitch report`` and ``stitch show`` read)."""
    run_dir = Path(out) / exp.cfg.name
    if Path(out).exists() and not Path(out).is_dir():
        raise StitchError(f"--out {out}: is a file, not a directory")
    if run_dir.exists() and not run_dir.is_dir():
        raise StitchError(
            f"{run_dir}: is a file, where the experiment's run directory goes; "
            "move it away or use another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    copied = exp.path is not None and not _same_file(exp.path, run_dir / "experiment.yaml")
    if exp.text is not None:  # merged over base files, or with command-line overrides: as run
        write_text(run_dir / "experiment.yaml", exp.text)
    elif exp.path is not None and copied:
        with atomic_path(run_dir / "experiment.yaml") as tmp:
            shutil.copyfile(exp.path, tmp)
    written = exp.text is not None or copied
    if written and uses_plugins(exp) and exp.base_dir is not None:  # the copy's relative plugin paths
        folder = exp.base_dir.resolve()
        relative = os.path.relpath(folder, run_dir.resolve())
        write_text(run_dir / SOURCE_FOLDER_FILE, f"{relative}\n{folder}\n")
    return run_dir


def uses_plugins(exp: Experiment) -> bool:
    """Whether the experiment imports code: ``plugins:`` or a ``file.py:Name`` / ``pkg.mod:Name``
    module or baseline."""
    return bool(exp.cfg.plugins) or ":" in exp.cfg.baseline.model or bool(module_refs(exp))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class RunLogHandler(logging.FileHandler):
    """``log.txt``'s handler: a line that cannot be written because the disk is full is dropped
    quietly (the console already shows the one-line error; logging's default would print a
    traceback on stderr for every line)."""

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return
        super().handleError(record)


def run_logger(run_dir: Path) -> logging.Logger:
    """The plain log of a run directory (``log.txt``, timestamped lines)."""
    log = logging.getLogger(f"stitch.run.{run_dir}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        handler = RunLogHandler(run_dir / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    return log


def preflight(data: DataBundle, batch_size: int) -> None:
    """Read every validation and test sample and the first training batch once, so unreadable files
    and out-of-range labels stop the command before any run directory is written."""
    for split in (data.val, data.test):
        for i in range(len(split) if split is not None else 0):
            split[i]
    for i in range(min(len(data.train), batch_size)):
        data.train[i]
