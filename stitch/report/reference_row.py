"""The row of a non-learned reference (``report.reference: otsu``) under the ablation table's
variants: its metrics in the table's columns, every other cell empty, and the caption sentence
saying what it is (:mod:`stitch.reference` computes it)."""

from __future__ import annotations

from stitch.reference import REFERENCE_LABELS, otsu_reference
from stitch.report.results import ExperimentResults
from stitch.report.table import Cell, Column, Row, latex_escape, summary_cell
from stitch.runs import experiment_data
from stitch.stats import Summary


def reference_rows(res: ExperimentResults, columns: list[Column]) -> tuple[list[Row], str]:
    """The reference's row (none when ``report.reference`` is unset) and its caption sentence."""
    kind = res.exp.cfg.report.reference
    if kind is None:
        return [], ""
    _, data = experiment_data(res.exp)
    ref = otsu_reference(data, res.split)  # the split the variants' rows report
    label = REFERENCE_LABELS[kind]
    source = f"report.reference: {kind} (fitted on the train split, scored on {ref.split}; no runs)"
    cells = {c.key: Cell("", "", source=source) for c in columns}
    cells["variant"] = Cell(label, latex_escape(label), source=source)
    for m in res.metrics:
        value = ref.metrics.get(m, float("nan"))
        cells[f"metric:{m}"] = summary_cell(
            Summary(value, float("nan"), 1), res.scale[m], res.exp.cfg.report.decimals, source=source
        )
    sentence = (
        f"{label}: one global threshold by Otsu's method on the training images' histogram "
        f"(polarity chosen on the training masks), scored on the {ref.split} split; a floor, not a variant."
    )
    return [Row(label, res.name, label, cells)], sentence
