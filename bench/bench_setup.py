"""What the benchmarks share: the main job's experiment, data, task and models, built the way
``stitch run`` builds them (:func:`stitch.runs.experiment_data`, :func:`stitch.runs.plan_runs`,
:func:`stitch.build.stitch_variant`, :func:`stitch.param_groups.optimizer_params`), and the
device-synchronised clock the timings use.

``--data shapes`` swaps the experiment's data block for generated shapes (no nuclei sample
needed), with the baseline's ``in_channels``/``num_classes`` then filled from that data.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from stitch.build import BuiltModel, stitch_variant
from stitch.config import Experiment, load_experiment, parse_experiment
from stitch.data import DataBundle
from stitch.param_groups import optimizer_params
from stitch.runs import RunPlan, experiment_data, plan_runs
from stitch.tasks import Task, make_task

ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB = ROOT / "experiments" / "unet_coordatt.yaml"


def common_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes."""
    parser.add_argument("--experiment", default=str(MAIN_JOB), help="experiment file (default: the main job)")
    parser.add_argument("--data", choices=["experiment", "shapes"], default="experiment")
    parser.add_argument("--shapes-images", type=int, default=32, help="images generated with --data shapes")
    parser.add_argument("--shapes-size", type=int, default=64, help="image side with --data shapes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--cache",
        choices=["none", "memory", "device"],
        default=None,
        help="data.cache (default: the experiment's)",
    )


@dataclass
class Bench:
    """The experiment (fitted to its data), its data bundle, task and planned runs (one seed)."""

    exp: Experiment
    data: DataBundle
    task: Task
    plans: list[RunPlan]

    def plan(self, variant: str) -> RunPlan:
        """The planned run of ``variant`` (``Baseline``, ``+CA`` …)."""
        for p in self.plans:
            if p.variant.name == variant:
                return p
        raise SystemExit(f"no variant {variant!r}; the experiment has {[p.variant.name for p in self.plans]}")

    def model(self, variant: str, seed: int) -> tuple[BuiltModel, list[Any]]:
        """A fresh model of ``variant`` (as ``stitch run`` builds it) and its optimiser param groups."""
        plan = self.plan(variant)
        built = stitch_variant(self.exp, plan.variant, seed)
        return built, optimizer_params(self.exp, built, seed)


def shapes_raw(raw: dict[str, Any], n_images: int, size: int) -> dict[str, Any]:
    """The experiment mapping ``raw`` (as read from YAML) with generated shapes data (two classes,
    ``n_images`` of ``size`` pixels) instead of its data block; ``raw`` is not changed."""
    out = {**raw, "baseline": {**raw["baseline"], "args": dict(raw["baseline"].get("args", {}))}}
    out["data"] = {"dataset": "shapes", "num_images": n_images, "image_size": [size, size], "num_classes": 2}
    for key in ("in_channels", "num_classes"):  # filled from the data
        out["baseline"]["args"].pop(key, None)
    return out


def write_experiment(raw: dict[str, Any], path: Path) -> Path:
    """``raw`` written as an experiment file at ``path`` (for the benchmarks that run the CLI)."""
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def shapes_experiment(exp: Experiment, n_images: int, size: int) -> Experiment:
    """``exp`` with generated shapes data (two classes, ``n_images`` of ``size`` pixels)."""
    raw = yaml.safe_load(Path(exp.path).read_text(encoding="utf-8")) if exp.path else {}
    raw = shapes_raw(raw, n_images, size)
    out = parse_experiment(yaml.safe_dump(raw, sort_keys=False), f"{exp.path} (shapes data)")
    out.path, out.base_dir = exp.path, exp.base_dir
    return out


def load_bench(args: argparse.Namespace) -> Bench:
    """The benchmark's experiment, data, task and runs from the command line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    exp = load_experiment(args.experiment)
    if args.data == "shapes":
        exp = shapes_experiment(exp, args.shapes_images, args.shapes_size)
    if getattr(args, "cache", None) and exp.cfg.data is not None:
        exp.cfg.data.cache = args.cache
    exp, data = experiment_data(exp)
    task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
    return Bench(exp, data, task, plan_runs(exp, args.epochs, [args.seed]))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work is done."""
    sync(device)
    return time.perf_counter()


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and machine facts recorded with every figure."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": torch.multiprocessing.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
