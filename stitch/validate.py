"""``stitch validate``: build every variant, probe it, run forward and backward on a dummy batch.

Everything a user can get wrong on the model side shows up here, before any training: the schema
(in :mod:`stitch.config`), unknown modules and points, channel mismatches, modules at points they
cannot take, and gradients that do not reach a stitched module.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from stitch.build import BuiltModel, stitch_variant
from stitch.config import Experiment
from stitch.errors import StitchError, exception_text
from stitch.model_mode import eval_mode
from stitch.param_groups import optimizer_params, stitched_parameter_names
from stitch.plan import Variant, plan_variants
from stitch.tasks.segmentation import segmentation_logits


@dataclass
class VariantCheck:
    """The outcome of building and running one variant."""

    variant: Variant
    built: BuiltModel
    loss: float
    seconds: float


def check_variant(exp: Experiment, variant: Variant, seed: int) -> VariantCheck:
    """Build ``variant``, run a training-mode forward and backward on CPU, check gradients."""
    start = time.perf_counter()
    built = stitch_variant(exp, variant, seed)
    optimizer_params(exp, built, seed)  # train.optimizer.lr_mult keys name parameters of this variant
    spec = built.baseline
    batch = spec.example_batch(exp.cfg.baseline.args, exp.cfg.probe.batch_size, exp.cfg.probe_image_size)
    model = built.model.train()
    try:
        loss = spec.loss(model, batch)
    except Exception as exc:  # a stitched module that does not fit in training mode
        raise StitchError(
            f"variant {variant.name!r}: training-mode forward on a dummy batch fails: {exception_text(exc)}"
            " (--debug shows where)"
        ) from exc
    if not torch.isfinite(loss):
        raise StitchError(
            f"variant {variant.name!r}: the loss on a dummy batch is {loss.item()} (not finite)"
        )
    loss.backward()
    params = dict(model.named_parameters())
    missing = [
        n for n in stitched_parameter_names(built) if params[n].requires_grad and params[n].grad is None
    ]
    if missing:
        raise StitchError(
            f"variant {variant.name!r}: stitched parameter {missing[0]!r} gets no gradient "
            f"({len(missing)} in all); the module's output is not used by the network"
        )
    model.zero_grad(set_to_none=True)
    return VariantCheck(variant, built, float(loss.item()), time.perf_counter() - start)


def validate_experiment(exp: Experiment, num_classes: int | None = None) -> list[VariantCheck]:
    """Check every planned variant with the experiment's first seed; raises on the first mistake.
    With ``num_classes`` (the data's), a segmentation model must also give that many scores per
    pixel, whatever its class-count argument is called."""
    seed = exp.cfg.seeds[0]
    checks = [check_variant(exp, v, seed) for v in plan_variants(exp.cfg)]
    if num_classes is not None and exp.cfg.task == "segmentation":
        check_class_count(exp, checks[0].built, num_classes)
    return checks


def check_class_count(exp: Experiment, built: BuiltModel, num_classes: int) -> None:
    """A one-line error when the model's logits do not have the data's ``num_classes`` channels."""
    spec = built.baseline
    batch = spec.example_batch(exp.cfg.baseline.args, exp.cfg.probe.batch_size, exp.cfg.probe_image_size)
    with torch.no_grad(), eval_mode(built.model):
        scores = segmentation_logits(spec.run(built.model, batch)).shape[1]
    if scores != num_classes:
        dataset = exp.cfg.data.dataset if exp.cfg.data is not None else "the"
        raise StitchError(
            f"baseline {exp.cfg.baseline.model} gives {scores} class scores per pixel but the {dataset} "
            f"data has {num_classes} classes; set its class-count argument in baseline.args to {num_classes}"
        )


def human_count(n: float) -> str:
    """``31.04M``, ``6.3k``, ``512``; signed when asked via a negative number."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{sign}{n / div:.{2 if unit != 'k' else 1}f}{unit}"
    return f"{sign}{int(n)}" if not math.isnan(n) else "nan"
