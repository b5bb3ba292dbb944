"""Sizing a LaTeX table for its layout (``report.layout``): the float (``table`` in one column,
``table*`` across the page or on a landscape page), and, when the table's estimated natural width
exceeds the target, ``\\small`` and then a smaller ``\\tabcolsep``. The renderer measures the
typeset table and scales it down to the line width only if it is still wider (the last resort)."""

from __future__ import annotations

from dataclasses import dataclass

from stitch.report.table import Table

#: the text width each layout is sized for, in TeX points: one CVPR/IEEE column (3.25 in), the full
#: text width of a two-column paper (6.875 in), a landscape A4 page with 1.5 cm margins
TARGET_PT = {"column": 234.9, "page": 496.8, "landscape": 758.0}
#: the float environment of each layout
FLOAT = {"column": "table", "page": "table*", "landscape": "table*"}
#: the average width of a character at 10 pt, an estimate (Computer Modern digits are 5 pt wide;
#: measured over the report's tables, spaces, signs and symbols bring the average to about 6 pt)
CHAR_PT = 6.0
NORMAL_SEP_PT = 6.0  # LaTeX's default \tabcolsep
NARROW_SEP_PT = 3.0
#: the font sizes tried in turn, with their size against 10 pt
SIZES = (("\\small", 0.9), ("\\footnotesize", 0.8))


@dataclass(frozen=True)
class Fit:
    """How a table is set: its float, the font size command and column separation (empty: the
    defaults) and the estimated natural width in points at those settings."""

    environment: str
    size: str
    tabcolsep: str
    width_pt: float
    target_pt: float


def natural_width(table: Table, sep_pt: float = NORMAL_SEP_PT, scale: float = 1.0) -> float:
    """Estimated width with the font at ``scale`` × 10 pt: per column its longest header or cell
    (plain text) plus the column separation on both sides."""
    total = 0.0
    for c in table.columns:
        texts = [c.header] + [r.cells[c.key].plain() for r in table.rows if c.key in r.cells]
        total += max(len(t) for t in texts) * CHAR_PT * scale + 2 * sep_pt
    return total


def fit_table(table: Table) -> Fit:
    """The float and the font and separation that bring the table within its layout's width when
    the estimate allows: the defaults, then ``\\small``, then 3 pt separation, then
    ``\\footnotesize`` (the smallest tried; wider still, the typeset table is scaled down)."""
    layout = table.layout if table.layout in TARGET_PT else "column"
    target = TARGET_PT[layout]
    env = FLOAT[layout]
    width = natural_width(table)
    if width <= target:
        return Fit(env, "", "", width, target)
    small, factor = SIZES[0]
    if natural_width(table, scale=factor) <= target:
        return Fit(env, small, "", natural_width(table, scale=factor), target)
    sep = f"\\setlength{{\\tabcolsep}}{{{NARROW_SEP_PT:g}pt}}"
    tries = [(size, natural_width(table, NARROW_SEP_PT, factor)) for size, factor in SIZES]
    size, narrow = next((t for t in tries if t[1] <= target), tries[-1])
    return Fit(env, size, sep, narrow, target)
