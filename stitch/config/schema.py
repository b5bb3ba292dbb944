"""The whole experiment file: :class:`ExperimentCfg`, made of the blocks of the ``schema_*`` modules."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt

from stitch.config.base import NAME_PATTERN, Strict
from stitch.config.schema_data import DataCfg
from stitch.config.schema_design import DEFAULT_PRIMARY, AblationCfg, MetricsCfg, ProbeCfg, ReportCfg
from stitch.config.schema_model import BaselineCfg, InsertionCfg
from stitch.config.schema_sweep import SweepCfg
from stitch.config.schema_train import TrainCfg


class ExperimentCfg(Strict):
    """An experiment file: the baseline, its insertions, the data, training, design and report."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]  # a directory name
    task: Literal["segmentation", "instance"]
    description: str = ""
    #: Python files (relative to the experiment file) or module names imported before the zoo is
    #: read: the only way an experiment file runs code (stitch.plugins)
    plugins: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    baseline: BaselineCfg
    data: DataCfg | None = None
    train: TrainCfg = Field(default_factory=TrainCfg)
    insertions: list[InsertionCfg] = Field(default_factory=list)
    ablation: AblationCfg = Field(default_factory=AblationCfg)
    seeds: Annotated[list[Annotated[StrictInt, Field(ge=0, lt=2**31)]], Field(min_length=1)] = Field(
        default_factory=lambda: [0]
    )
    metrics: MetricsCfg = Field(default_factory=MetricsCfg)
    report: ReportCfg = Field(default_factory=ReportCfg)
    probe: ProbeCfg = Field(default_factory=ProbeCfg)
    sweep: SweepCfg | None = None

    @property
    def primary_metric(self) -> str:
        """``metrics.primary``, else the task's default metric."""
        return self.metrics.primary or DEFAULT_PRIMARY[self.task]

    @property
    def probe_image_size(self) -> tuple[int, int] | None:
        """The dry run's input size: ``probe.image_size``, else ``data.image_size``, else None."""
        if self.probe.image_size:
            return self.probe.image_size
        return self.data.image_size if self.data else None
