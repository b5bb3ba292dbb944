"""The ``ablation:``, ``metrics:``, ``report:`` and ``probe:`` blocks, and the metric names of each task."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from stitch.config.base import Design, Strict
from stitch.config.schema_data import MAX_SIDE

#: Metric names each task reports (``metrics.primary`` and ``metrics.report`` choose among them).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "segmentation": ("miou", "mdice", "pixel_acc", "mprecision", "mrecall", "fg_iou", "fg_dice"),
    "instance": (
        "segm_ap",
        "segm_ap50",
        "segm_ap75",
        "segm_aps",
        "segm_apm",
        "segm_apl",
        "segm_ar",
        "bbox_ap",
        "bbox_ap50",
        "bbox_ap75",
        "bbox_aps",
        "bbox_apm",
        "bbox_apl",
        "bbox_ar",
    ),
}
#: the primary metric of each task when ``metrics.primary`` is not given
DEFAULT_PRIMARY: dict[str, str] = {"segmentation": "miou", "instance": "segm_ap"}


class AblationCfg(Strict):
    """Which subsets of the insertions are trained (see :mod:`stitch.plan`); a bare string is the design."""

    design: Design = "none"
    subsets: list[list[str]] = Field(default_factory=list)
    #: control variants added for each insertion (see :func:`stitch.plan.control_insertions`)
    controls: list[Literal["matched", "identity"]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"design": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _subsets_given(self) -> AblationCfg:
        if self.design == "subsets" and not self.subsets:
            raise ValueError("design 'subsets' needs a 'subsets:' list of insertion-name lists")
        if self.design != "subsets" and self.subsets:
            raise ValueError(f"'subsets' is only read with design 'subsets', not {self.design!r}")
        if len(set(self.controls)) != len(self.controls):
            raise ValueError(f"'controls' lists a control twice: {self.controls}")
        return self


class MetricsCfg(Strict):
    """The primary metric (``primary``, default per task) and the tables' metric columns (``report``)."""

    primary: str | None = None
    report: list[str] = Field(default_factory=list)


#: the table formats ``report.formats`` may list
ReportFormat = Literal["latex", "markdown", "csv", "html"]
#: the formats written when ``report.formats`` is not given
DEFAULT_FORMATS: tuple[ReportFormat, ...] = ("latex", "markdown", "csv")


#: the column keys of ``report.columns``: ``primary`` (the primary metric), ``metrics`` (every
#: metric of ``metrics.report``), ``delta`` (its Δ to the Baseline), ``diff`` (Δ with its
#: interval), then the tables' own column keys (stitch.report.column_choice)
ReportColumn = Literal[
    "seeds",
    "primary",
    "metrics",
    "delta",
    "diff",
    "p_holm",
    "params",
    "params_delta",
    "flops",
    "flops_delta",
    "flops_all",
    "flops_all_delta",
    "latency",
    "peak_memory",
    "time",
]


class ReportCfg(Strict):
    """Table caption and label, output formats, the paired test and its level, decimals shown,
    what bold marks, the difference the noise-floor sentence sizes the seeds for, and which
    epoch's test metrics the tables report (``selection``: the epoch with the best validation
    value of the primary metric, or the last epoch)."""

    caption: str | None = None
    label: str | None = None
    formats: list[ReportFormat] = Field(default_factory=lambda: list(DEFAULT_FORMATS))
    test: Literal["ttest", "wilcoxon"] = "ttest"
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    decimals: Annotated[int, Field(ge=0, le=6)] = 2
    #: a non-learned reference row in the ablation table (binary segmentation)
    reference: Literal["otsu"] | None = None
    bold: Literal["significant", "best", "none"] = "significant"
    min_effect: Annotated[float, Field(gt=0)] | None = None  # in the metric's stored units
    selection: Literal["best", "last"] = "best"
    #: the page the tables and figures are sized for: one column of a two-column paper (3.5 in),
    #: the full text width (7 in, ``table*``), or a landscape page of their own
    layout: Literal["column", "page", "landscape"] = "column"
    #: which columns the tables show, in this order, after the variant and check-mark columns
    #: (none: the layout's default, stitch.report.column_choice)
    columns: list[ReportColumn] | None = None

    @field_validator("label")
    @classmethod
    def _plain_label(cls, v: str | None) -> str | None:
        # a LaTeX \label cannot be escaped (\ref must name it as written), so only characters
        # that mean nothing to TeX are allowed
        if v is not None and not re.fullmatch(r"[A-Za-z0-9:._/+-]+", v):
            raise ValueError(
                f"label {v!r} may hold only letters, digits and : . _ / + - (it becomes a LaTeX \\label)"
            )
        return v

    @field_validator("columns")
    @classmethod
    def _distinct_columns(cls, v: list[str] | None) -> list[str] | None:
        repeated = sorted({c for c in v or [] if v.count(c) > 1}) if v else []
        if repeated:
            raise ValueError(f"column {repeated[0]!r} is listed twice; name each column once")
        return v


class ProbeCfg(Strict):
    """Input used by the dry run (shape probe, ``stitch validate``); defaults to the data size."""

    image_size: (
        tuple[Annotated[StrictInt, Field(gt=0, le=MAX_SIDE)], Annotated[StrictInt, Field(gt=0, le=MAX_SIDE)]]
        | None
    ) = None
    batch_size: Annotated[int, Field(ge=2, le=64)] = 2  # BatchNorm in training mode needs 2 or more

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
