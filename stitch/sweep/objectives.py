"""What a sweep optimises: its objectives (metrics maximised, network costs minimised by default)
and a finished run's value for each of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from stitch.config import TASK_METRICS, Experiment, sweep_of
from stitch.costs import variant_costs
from stitch.plan import Variant
from stitch.store import RunRow

#: objectives that are costs of the network, minimised by default
COST_OBJECTIVES = ("params", "flops", "flops_all", "latency_ms")


@dataclass(frozen=True)
class Objective:
    """One objective of the study: a metric or a cost, and whether Optuna maximises it."""

    metric: str
    direction: Literal["maximize", "minimize"]

    @property
    def label(self) -> str:
        """Its name in the study (optuna-dashboard's axis): ``val fg_iou`` for a metric (the
        validation value at the run's best epoch), the cost's own name for a cost."""
        return self.metric if self.metric in COST_OBJECTIVES else f"val {self.metric}"


def objectives_of(exp: Experiment) -> list[Objective]:
    """The sweep's objectives with their directions (default: the primary metric, maximised)."""
    sweep = sweep_of(exp)
    known = TASK_METRICS[exp.cfg.task]
    out = []
    for i, item in enumerate(sweep.objectives or [exp.cfg.primary_metric]):
        name = item if isinstance(item, str) else item.metric
        given = None if isinstance(item, str) else item.direction
        if name not in known and name not in COST_OBJECTIVES:
            raise exp.source.error(
                ("sweep", "objectives", i),
                f"unknown objective {name!r}: a {exp.cfg.task} metric ({', '.join(known)}) "
                f"or a cost ({', '.join(COST_OBJECTIVES)})",
            )
        out.append(Objective(name, given or ("minimize" if name in COST_OBJECTIVES else "maximize")))
    if len({o.metric for o in out}) != len(out):
        raise exp.source.error(("sweep", "objectives"), "an objective is listed twice")
    return out


def describe_objectives(objectives: Sequence[Objective]) -> str:
    """The objectives in one line: ``maximize val fg_iou (best epoch); minimize params``."""
    return "; ".join(
        f"{o.direction} {o.label}" + ("" if o.metric in COST_OBJECTIVES else " (best epoch)")
        for o in objectives
    )


def describe_sweep(exp: Experiment) -> str:
    """The sweep's design in one line: its sampler, pruner, seed, epochs and what it searches."""
    sweep = sweep_of(exp)
    searched = [
        f"{s.name}: {'|'.join(s.modules)} at {'|'.join(s.at)}" + (" or none" if s.optional else "")
        for s in sweep.slots
    ] + [f"train.{path}" for path in sweep.train]
    return (
        f"Optuna sweep ({sweep.sampler} sampler, {sweep.pruner} pruner, seed {sweep.seed}, "
        f"{sweep.epochs or exp.cfg.train.epochs} epochs per trial) over {'; '.join(searched)}"
    )


def prunable(objectives: Sequence[Objective]) -> bool:
    """Whether a pruner can watch the objective per epoch: a single objective, and a metric."""
    return len(objectives) == 1 and objectives[0].metric not in COST_OBJECTIVES


def objective_values(
    row: RunRow, objectives: Sequence[Objective], exp: Experiment, variant: Variant, seed: int
) -> float | tuple[float, ...]:
    """A finished run's value of each objective (one float for a single objective): metrics at
    its best epoch, parameters from the row, FLOPs (PyTorch's or all ops, :mod:`stitch.flops`) and
    latency measured on ``variant``; NaN
    where one is undefined."""
    out = []
    costs = None
    latency = any(o.metric == "latency_ms" for o in objectives)
    for o in objectives:
        if o.metric == "params":
            out.append(float("nan") if row.params is None else float(row.params))
        elif o.metric in ("flops", "flops_all", "latency_ms"):
            if costs is None:
                costs = variant_costs(exp, variant, seed, latency=latency)
            value = getattr(costs, o.metric)
            out.append(float("nan") if value is None else float(value))
        else:
            out.append(float((row.best_metrics or {}).get(o.metric, float("nan"))))
    return out[0] if len(out) == 1 else tuple(out)
