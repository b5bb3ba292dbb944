"""From an experiment and a variant to a stitched ``nn.Module``.

The baseline is built first under the run's seed, then the variant's insertions are stitched in.
So the baseline parameters of every variant of one seed are identical (a paired design), and a
variant without insertions is exactly the baseline.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from stitch.baselines import BASELINES, BaselineSpec
from stitch.config import Experiment, format_path
from stitch.errors import ConfigError, StitchingError, check_types, did_you_mean, exception_text
from stitch.plan import Variant, find_variant, plan_variants, variant_insertions
from stitch.plugins import load_plugins
from stitch.points import probe
from stitch.surgery import Applied, Insertion, count_params, stitch


@dataclass
class BuiltModel:
    """A stitched model and the record of how it was stitched."""

    model: nn.Module
    variant: Variant
    baseline: BaselineSpec
    applied: list[Applied] = field(default_factory=list)
    baseline_params: int = 0

    @property
    def params(self) -> int:
        return count_params(self.model)

    @property
    def delta(self) -> int:
        return self.params - self.baseline_params


def check_kwargs(fn: Callable[..., Any], args: dict[str, Any]) -> str | None:
    """Why ``fn(**args)`` cannot be called (unknown or missing keyword), or None."""
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    for key in args:
        if key not in params:
            known = [p for p in params if p not in ("device", "dtype")]
            return f"unknown argument {key!r}" + (
                did_you_mean(key, known) or f" (arguments: {', '.join(known)})"
            )
    missing = [
        p.name
        for p in params.values()
        if p.default is p.empty and p.name not in args and p.kind != p.VAR_POSITIONAL
    ]
    if missing:
        return f"missing required argument {missing[0]!r}"
    return None


def baseline_of(exp: Experiment) -> BaselineSpec:
    """The experiment's baseline spec, with its name, task and arguments checked."""
    cfg, src = exp.cfg, exp.source
    load_plugins(exp)
    if cfg.baseline.model not in BASELINES:
        raise src.error(
            ("baseline", "model"),
            f"unknown baseline {cfg.baseline.model!r}"
            + (did_you_mean(cfg.baseline.model, BASELINES) or f" (baselines: {', '.join(BASELINES)})"),
        )
    spec = BASELINES[cfg.baseline.model]
    if spec.task != cfg.task:
        raise src.error(
            ("task",), f"baseline {spec.name!r} is a {spec.task} model but the task is {cfg.task!r}"
        )
    problem = check_kwargs(spec.build, cfg.baseline.args) or check_types(spec.build, cfg.baseline.args)
    if problem:
        bad = next((k for k in cfg.baseline.args if f"argument {k!r}" in problem), None)
        raise src.error(("baseline", "args", *((bad,) if bad else ())), problem)
    size = cfg.probe_image_size or spec.default_image_size
    problem = spec.check_input(cfg.baseline.args, size)
    if problem:
        where = ("probe", "image_size") if cfg.probe.image_size else ("data", "image_size")
        raise src.error(where, problem)
    return spec


def build_baseline(exp: Experiment, seed: int = 0, spec: BaselineSpec | None = None) -> nn.Module:
    """The un-stitched baseline, initialised under ``seed`` (global RNG state left untouched)."""
    spec = spec or baseline_of(exp)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return spec.build(**exp.cfg.baseline.args)
        except Exception as exc:  # bad argument values, missing weights files, no network …
            raise exp.source.error(
                ("baseline", "args"),
                f"cannot build {spec.name} with {exp.cfg.baseline.args}: {exception_text(exc)}",
            ) from None


def run_baseline(exp: Experiment, spec: BaselineSpec, model: nn.Module, batch: Any) -> Any:
    """One forward of the baseline on the example batch; a failure is the arguments' fault."""
    try:
        return spec.run(model, batch)
    except Exception as exc:
        raise exp.source.error(
            ("baseline", "args"),
            f"{spec.name} with {exp.cfg.baseline.args} fails on a {exp.cfg.probe.batch_size}-image "
            f"dummy batch: {exception_text(exc)}",
        ) from None


def inputs_vary(spec: BaselineSpec) -> bool:
    """Whether the baseline's input size changes between batches: instance-task images keep their
    own sizes and Mask R-CNN resizes each one keeping its aspect ratio (a segmentation baseline
    sees inputs of ``data.image_size`` only), so the probe's size is one of many."""
    return spec.task == "instance"


def resolve_variant(exp: Experiment, variant: str | Variant | None) -> Variant:
    """``None`` means every insertion; a name picks a planned variant (``baseline`` always works)."""
    if isinstance(variant, Variant):
        return variant
    if variant is None:
        names = tuple(i.name for i in exp.cfg.insertions)
        return next(
            (v for v in plan_variants(exp.cfg) if v.insertions == names),
            Variant(" ".join(f"+{n}" for n in names) or "Baseline", names),
        )
    if variant.lower() == "baseline":
        return Variant("Baseline", ())
    return find_variant(exp.cfg, variant)


def stitch_variant(exp: Experiment, variant: str | Variant | None = None, seed: int = 0) -> BuiltModel:
    """Build the baseline under ``seed`` and stitch the variant's insertions into it."""
    spec = baseline_of(exp)
    var = resolve_variant(exp, variant)
    model = build_baseline(exp, seed, spec)
    built = BuiltModel(model=model, variant=var, baseline=spec, baseline_params=count_params(model))
    if var.is_baseline:
        return built
    chosen = [Insertion(i.name, i, ("insertions", k)) for k, i in variant_insertions(exp.cfg, var)]
    batch = spec.example_batch(exp.cfg.baseline.args, exp.cfg.probe.batch_size, exp.cfg.probe_image_size)
    try:
        built.applied = stitch(
            model,
            spec.aliases(model),
            lambda m: run_baseline(exp, spec, m, batch),
            chosen,
            seed,
            inputs_vary=inputs_vary(spec),
        )
    except StitchingError as exc:
        raise _located(exp, exc) from None
    return built


def _located(exp: Experiment, exc: StitchingError) -> ConfigError:
    """Attach the file, line and YAML path of the insertion a stitching error is about."""
    if not exc.yaml_path:
        return ConfigError(str(exc), exp.source.file)
    path = (*exc.yaml_path, exc.field)
    return ConfigError(str(exc), exp.source.file, exp.source.line(path), format_path(path))


def build_model(exp: Experiment, variant: str | Variant | None = None, seed: int = 0) -> nn.Module:
    """The stitched ``nn.Module`` of ``variant`` (default: every insertion) under ``seed``."""
    return stitch_variant(exp, variant, seed).model


def list_points(exp: Experiment, include_all: bool = False) -> list[dict[str, Any]]:
    """The baseline's hook points with what the probe saw there (aliased ones, or every path)."""
    spec = baseline_of(exp)
    model = build_baseline(exp, exp.cfg.seeds[0], spec)
    aliases = spec.aliases(model)
    batch = spec.example_batch(exp.cfg.baseline.args, exp.cfg.probe.batch_size, exp.cfg.probe_image_size)
    records = probe(model, lambda m: run_baseline(exp, spec, m, batch))
    by_path: dict[str, list[str]] = {}
    for alias, path in aliases.items():
        by_path.setdefault(path, []).append(alias)
    h, w = exp.cfg.probe_image_size or spec.default_image_size
    channels = batch["image"].shape[1] if isinstance(batch, dict) and "image" in batch else 3
    size = f"{exp.cfg.probe.batch_size} x {channels} x {h} x {w}" + (
        " (the model may resize it, e.g. Mask R-CNN to min_size)" if spec.task == "instance" else ""
    )
    rows = []
    for path, rec in records.items():
        if not include_all and path not in by_path:
            continue
        rows.append(
            {
                "aliases": by_path.get(path, []),
                "path": path,
                "type": rec.type,
                "inputs": rec.inputs,
                "output": rec.output,
                "params": rec.params,
                "calls": rec.calls,
                "probe_input": size,
            }
        )
    if not include_all:  # aliases in their declared order
        order = {p: i for i, p in enumerate(dict.fromkeys(aliases.values()))}
        rows.sort(key=lambda r: order[r["path"]])
    return rows
