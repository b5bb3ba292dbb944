"""The table model: a report table as data (columns, rows of cells, a short caption and the full
method text, notes, CSV records),
each cell with its plain, Markdown and LaTeX text and the runs it comes from; and the number
formatting every cell uses (fixed decimals, ``\\num{}`` from siunitx in LaTeX, bold best)."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stitch.report.labels import CHECK, DAGGER, DASH, DELTA
from stitch.stats import Summary

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Cell:
    """One table cell: plain text, LaTeX, the number behind it and where it came from."""

    text: str
    latex: str
    bold: bool = False
    dagger: bool = False
    run_ids: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    source: str = ""

    def markdown(self) -> str:
        t = f"**{self.text}**" if self.bold and self.text else self.text
        return t + (DAGGER if self.dagger else "")

    def plain(self) -> str:
        return self.text + (DAGGER if self.dagger else "")

    def tex(self) -> str:
        t = f"{{\\boldmath{self.latex}}}" if self.bold and self.latex else self.latex
        return t + ("\\(^{\\dagger}\\)" if self.dagger else "")


@dataclass
class Column:
    key: str
    header: str  # plain text (Markdown, CSV, HTML, provenance)
    latex: str
    align: str = "c"


@dataclass
class Row:
    key: str  # unique: the variant name, or "experiment: variant"
    experiment: str
    variant: str
    cells: dict[str, Cell]


@dataclass
class Table:
    name: str
    columns: list[Column]
    rows: list[Row]
    caption: str  # the full method text (provenance; the renderers' notes paragraph)
    label: str
    notes: list[str]
    records: list[dict[str, Any]]  # the CSV: numbers unrounded, stored scale
    #: the caption the renderers show: one sentence on the design and the statistics (empty:
    #: ``caption`` itself, with no notes paragraph)
    short_caption: str = ""
    layout: str = "column"  # report.layout: what the LaTeX is sized for
    #: the title both captions open with; the method text under the table leaves it out, since
    #: the short caption above has just said it
    title: str = ""

    def shown_caption(self) -> str:
        """The caption above the table: the short one when there is one."""
        return self.short_caption or self.caption

    def details(self) -> str:
        """The method text under the table, without the title the caption above opens with (empty
        when the caption above is already all of it)."""
        if not self.short_caption:
            return ""
        if self.title and self.caption.startswith(self.title):
            return self.caption[len(self.title) :].lstrip()
        return self.caption

    def cell(self, row: str, column: str) -> Cell:
        """The cell at (row key, column key or header)."""
        r = next(r for r in self.rows if r.key == row)
        col = next(c for c in self.columns if column in (c.key, c.header))
        return r.cells[col.key]


def to_dataframe(table: Table, kind: str = "plain") -> pd.DataFrame:
    """The table as a DataFrame of strings (``plain``, ``markdown`` or ``latex`` cells)."""
    import pandas as pd

    render = {"plain": Cell.plain, "markdown": Cell.markdown, "latex": Cell.tex}[kind]
    headers = [c.latex if kind == "latex" else c.header for c in table.columns]
    data = [[render(r.cells[c.key]) if c.key in r.cells else "" for c in table.columns] for r in table.rows]
    return pd.DataFrame(data, columns=headers)


# ---------------------------------------------------------------------------- formatting
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "\u2212": r"\(-\)", "\u00b1": r"\(\pm\)", "\u03b1": r"\(\alpha\)", DAGGER: r"\(^{\dagger}\)",
    CHECK: r"\checkmark{}", "\u00d7": r"\(\times\)", "\u2013": "--", "\u2014": "---", DELTA: r"\(\Delta\)",
    "\u2264": r"\(\le\)", "\u2265": r"\(\ge\)", "\u00b7": r"\(\cdot\)",
    "\u221a": r"\(\surd\)",
}  # fmt: skip


_LATEX_TEXT = {
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "\u00a0": "~", "\u2026": r"\ldots{}",
    "\u2018": "`", "\u2019": "'", "\u201c": "``", "\u201d": "''", "\u00df": r"\ss{}", "\u00e6": r"\ae{}",
    "\u00c6": r"\AE{}", "\u00f8": r"\o{}", "\u00d8": r"\O{}", "\u0153": r"\oe{}", "\u0152": r"\OE{}",
    "\u0142": r"\l{}", "\u0141": r"\L{}", "\u0131": r"\i{}",
}  # fmt: skip
#: combining marks (of a letter's NFKD decomposition) and the OT1 accent command of each
_ACCENTS = {
    "\u0300": "`", "\u0301": "'", "\u0302": "^", "\u0303": "~", "\u0304": "=", "\u0306": "u", "\u0307": ".",
    "\u0308": '"', "\u030a": "r", "\u030b": "H", "\u030c": "v", "\u0323": "d", "\u0327": "c",
}  # fmt: skip


def latex_escape(text: str) -> str:
    """Plain text (with the symbols the report uses) to LaTeX that pdflatex takes in any encoding:
    TeX's special characters escaped, line breaks and other control characters as spaces (a blank
    line would end the caption's paragraph), accented letters as accent commands, and any other
    character pdflatex has no glyph for as ``?``."""
    return "".join(_latex_char(ch) for ch in text)


def _latex_char(ch: str) -> str:
    if ch in _LATEX_SPECIAL:
        return _LATEX_SPECIAL[ch]
    if ch in _LATEX_TEXT:
        return _LATEX_TEXT[ch]
    if " " <= ch <= "~":
        return ch
    if unicodedata.category(ch)[0] in "CZ":  # control, format, separator: a space
        return " "
    decomposed = unicodedata.normalize("NFKD", ch)
    if all(" " <= c <= "~" for c in decomposed):  # a ligature, a full-width letter: plain ASCII
        return latex_escape(decomposed)
    base, marks = decomposed[0], decomposed[1:]
    if " " <= base <= "~" and all(m in _ACCENTS for m in marks):
        out = {"i": r"\i{}", "j": r"\j{}"}.get(base) or latex_escape(base)
        for mark in marks:
            out = f"\\{_ACCENTS[mark]}{{{out}}}"
        return out
    return "?"


def fixed(x: float, decimals: int) -> str:
    """``x`` rounded to ``decimals`` places (no negative zero)."""
    return f"{round(x, decimals) + 0.0:.{decimals}f}"


def signed_fixed(x: float, decimals: int) -> str:
    """:func:`fixed` with an explicit ``+`` on non-negative numbers."""
    s = fixed(x, decimals)
    return s if s.startswith("-") else "+" + s


def siunitx_num(s: str) -> str:
    """A formatted number as siunitx ``\\num{}`` (keeping an explicit plus)."""
    return f"\\num[retain-explicit-plus]{{{s}}}" if s.startswith("+") else f"\\num{{{s}}}"


def number_cell(x: float | None, decimals: int, signed: bool = False, **kw: Any) -> Cell:
    """A cell of one number (a dash when there is none); ``signed`` shows the sign of a difference."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return Cell(DASH, "--", **kw)
    s = signed_fixed(x, decimals) if signed else fixed(x, decimals)
    return Cell(s, f"\\({siunitx_num(s)}\\)", **kw)


def summary_cell(s: Summary, scale: float, decimals: int, **kw: Any) -> Cell:
    """A ``mean ± std`` cell (the mean alone for one seed, a dash for none)."""
    if s.n == 0:
        return Cell(DASH, "--", **kw)
    mean = fixed(s.mean * scale, decimals)
    if not s.has_std:
        return Cell(mean, f"\\({siunitx_num(mean)}\\)", **kw)
    std = fixed(s.std * scale, decimals)
    return Cell(f"{mean} \u00b1 {std}", f"\\({siunitx_num(mean)} \\pm {siunitx_num(std)}\\)", **kw)


def p_text(p: float) -> str:
    """A p-value as shown: three decimals, ``<0.001`` below that, a dash for none."""
    if math.isnan(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def bold_best(rows: list[Row], key: str, means: dict[str, float], decimals: int, scale: float) -> None:
    """Bold the best (highest) mean in a column; every row that ties at the shown precision."""
    shown = {k: round(m * scale, decimals) for k, m in means.items() if not math.isnan(m)}
    if not shown:
        return
    best = max(shown.values())
    for r in rows:
        if r.key in shown and shown[r.key] == best:
            r.cells[key].bold = True
