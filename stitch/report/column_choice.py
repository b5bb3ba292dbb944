"""Which columns a table shows, and in which order (``report.columns``, else the default of
``report.layout``): the variant (and experiment) and check-mark columns always come first, then the
chosen ones that the table has. The rows keep every cell and the CSV every field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

from stitch.config import ReportCfg
from stitch.config.schema_design import ReportColumn
from stitch.report.table import Column

#: the default columns of each layout: one column of a two-column paper shows the primary metric,
#: its Δ (without the interval) and the parameters; the full text width every metric, Δ with its
#: interval and the costs with their deltas; a landscape page every column (the tables before layouts)
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "column": ("seeds", "primary", "delta", "params", "latency"),
    "page": (
        "seeds",
        "metrics",
        "diff",
        "p_holm",
        "params",
        "params_delta",
        "flops",
        "flops_delta",
        "latency",
        "time",
    ),
    # every column, in the schema's order (the tables before layouts): all but the picks of one
    "landscape": tuple(k for k in get_args(ReportColumn) if k not in ("primary", "delta")),
}


def is_identity(column: Column) -> bool:
    """The columns that say which row it is (always shown): experiment, variant, check marks."""
    return column.key in ("experiment", "variant") or column.key.startswith("check:")


def choose_columns(
    columns: Sequence[Column], chosen: Sequence[str] | None, layout: str, primary: str
) -> list[Column]:
    """The identity columns, then those named by ``chosen`` (``report.columns``; None: the
    layout's default) in that order: ``primary`` is the primary metric's column, ``metrics``
    every metric column, any other key the column of that key; keys the table lacks are skipped."""
    keys = DEFAULT_COLUMNS[layout] if chosen is None else chosen
    out = [c for c in columns if is_identity(c)]
    for key in keys:
        if key == "metrics":
            picks = [c for c in columns if c.key.startswith("metric:")]
        elif key == "primary":
            picks = [c for c in columns if c.key == f"metric:{primary}"]
        else:
            picks = [c for c in columns if c.key == key]
        out += [c for c in picks if c not in out]
    return out


def hidden_sentence(columns: Sequence[Column], shown: Sequence[Column]) -> str:
    """The sentence naming the columns the layout leaves out (their numbers are in the CSV)."""
    hidden = [c.header for c in columns if c not in shown]
    if not hidden:
        return ""
    return f"Not shown in this layout (report.columns; the CSV has them): {', '.join(hidden)}."


def shown_with_caption(
    columns: Sequence[Column], sentences: Sequence[str], report: ReportCfg, primary: str
) -> tuple[list[Column], str]:
    """The columns ``report`` shows (:func:`choose_columns`) and the caption of ``sentences``
    (empty ones left out) ending in the sentence that names the others (:func:`hidden_sentence`)."""
    shown = choose_columns(columns, report.columns, report.layout, primary)
    return shown, " ".join(s for s in (*sentences, hidden_sentence(columns, shown)) if s)
