"""Checks across keys of a schema-valid experiment: unique names and seeds, known subset members
and metrics, and options the task cannot honour."""

from __future__ import annotations

from stitch.config.schema import ExperimentCfg
from stitch.config.schema_design import TASK_METRICS
from stitch.config.source import SourceMap
from stitch.errors import did_you_mean

#: why ``augment.scale`` is refused for the instance task
SCALE_UNDONE_FOR_INSTANCES = (
    "does nothing for Mask R-CNN: the model resizes every image to min_size itself, "
    "undoing a random rescale; "
    "for scale jitter give baseline.args.min_size a list, e.g. [96, 112, 128] "
    "(torchvision's multi-scale training)"
)


def check_cross_fields(cfg: ExperimentCfg, source: SourceMap) -> None:
    """Raise a :class:`~stitch.errors.ConfigError` (placed by ``source``) for the first mistake
    that spans several keys of a schema-valid experiment."""
    seen: dict[str, int] = {}
    for i, ins in enumerate(cfg.insertions):
        if ins.name in seen:
            raise source.error(
                ("insertions", i, "name"),
                f"insertion name {ins.name!r} is used twice (also insertions[{seen[ins.name]}]); "
                "names label table rows and must be unique",
            )
        seen[ins.name] = i
    for i, subset in enumerate(cfg.ablation.subsets):
        for j, n in enumerate(subset):
            if n not in seen:
                raise source.error(
                    ("ablation", "subsets", i, j), f"no insertion is named {n!r}" + did_you_mean(n, seen)
                )
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise source.error(("seeds",), f"seeds repeat ({cfg.seeds}); paired statistics need distinct seeds")
    if cfg.task == "instance" and cfg.data is not None and cfg.data.augment.scale is not None:
        raise source.error(("data", "augment", "scale"), SCALE_UNDONE_FOR_INSTANCES)
    known = TASK_METRICS[cfg.task]
    if cfg.metrics.primary is not None and cfg.metrics.primary not in known:
        raise source.error(
            ("metrics", "primary"),
            f"unknown {cfg.task} metric {cfg.metrics.primary!r}" + did_you_mean(cfg.metrics.primary, known),
        )
    for i, m in enumerate(cfg.metrics.report):
        if m not in known:
            raise source.error(
                ("metrics", "report", i), f"unknown {cfg.task} metric {m!r}" + did_you_mean(m, known)
            )
