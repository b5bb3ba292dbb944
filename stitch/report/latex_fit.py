"""Sizing a LaTeX table for its layout (``report.layout``): the float (``table`` in one column,
``table*`` across the page or on a landscape page), and, when the table's estimated natural width
exceeds the target, headers on two lines, ``\\small``, a smaller ``\\tabcolsep`` and then
``\\footnotesize``. The renderer measures the typeset table and scales it down to the line width
only if it is still wider (the last resort)."""

from __future__ import annotations

from dataclasses import dataclass

from stitch.report.table import Table

#: the text width each layout is sized for, in TeX points: one CVPR/IEEE column (3.25 in), the full
#: text width of a two-column paper (6.875 in), a landscape A4 page with 1.5 cm margins
TARGET_PT = {"column": 234.9, "page": 496.8, "landscape": 758.0}
#: the float environment of each layout
FLOAT = {"column": "table", "page": "table*", "landscape": "table*"}
#: estimated widths of characters at 10 pt (Computer Modern: digits 5 pt, lower case about 5, capitals
#: about 7.5, "%" and "m" 8.3); any other character 5.5
WIDE = frozenset("ABCDEFGHJKLMNOPQRSTUVWXYZmw%\u0394\u00b1\u2713")
NARROW = frozenset(" .,:;!'()[]|/Iijlft-")


def text_width(text: str) -> float:
    """Estimated width in points of ``text`` at 10 pt."""
    return sum(7.5 if ch in WIDE else 3.3 if ch in NARROW else 5.2 for ch in text)


NORMAL_SEP_PT = 6.0  # LaTeX's default \tabcolsep
NARROW_SEP_PT = 3.0
#: the font sizes tried in turn, with their size against 10 pt
SIZES = (("\\small", 0.9), ("\\footnotesize", 0.8))


@dataclass(frozen=True)
class Fit:
    """How a table is set: its float, whether headers take two lines (the unit or interval on the
    second), the font size command and column separation (empty: the defaults) and the estimated
    natural width in points at those settings."""

    environment: str
    stacked: bool
    size: str
    tabcolsep: str
    width_pt: float
    target_pt: float


def split_header(text: str) -> list[str]:
    """A header as its lines when stacked: ``ΔmIoU (pp) [95 % CI]`` -> ``ΔmIoU (pp)``, ``[95 %
    CI]``; ``mIoU (%)`` -> ``mIoU``, ``(%)``; a header without a unit or interval stays whole."""
    if " [" in text:
        head, tail = text.split(" [", 1)
        return [head, "[" + tail]
    if text.endswith(")") and " (" in text:
        head, tail = text.rsplit(" (", 1)
        return [head, "(" + tail]
    return [text]


def natural_width(
    table: Table, sep_pt: float = NORMAL_SEP_PT, scale: float = 1.0, stacked: bool = False
) -> float:
    """Estimated width with the font at ``scale`` × 10 pt: per column its longest header line or
    cell (plain text) plus the column separation on both sides."""
    total = 0.0
    for c in table.columns:
        texts = split_header(c.header) if stacked else [c.header]
        texts += [r.cells[c.key].plain() for r in table.rows if c.key in r.cells]
        total += max(text_width(t) for t in texts) * scale + 2 * sep_pt
    return total


def fit_table(table: Table) -> Fit:
    """The float, and the first of these that brings the table within its layout's width by the
    estimate: as it is; headers on two lines; then also ``\\small``; 3 pt column separation;
    ``\\footnotesize`` (the last; wider still, the typeset table is scaled down)."""
    layout = table.layout if table.layout in TARGET_PT else "column"
    target = TARGET_PT[layout]
    narrow = f"\\setlength{{\\tabcolsep}}{{{NARROW_SEP_PT:g}pt}}"
    (small, small_scale), (smaller, smaller_scale) = SIZES
    tries = [
        (False, "", "", NORMAL_SEP_PT, 1.0),
        (True, "", "", NORMAL_SEP_PT, 1.0),
        (True, small, "", NORMAL_SEP_PT, small_scale),
        (True, small, narrow, NARROW_SEP_PT, small_scale),
        (True, smaller, narrow, NARROW_SEP_PT, smaller_scale),
    ]
    fits = [
        Fit(FLOAT[layout], stacked, size, sep, natural_width(table, sep_pt, scale, stacked), target)
        for stacked, size, sep, sep_pt, scale in tries
    ]
    return next((f for f in fits if f.width_pt <= target), fits[-1])
