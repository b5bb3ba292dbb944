"""LaTeX rendering of a table: booktabs rules from ``pandas.io.formats.style.Styler.to_latex``,
sized for ``report.layout`` (:mod:`stitch.report.latex_fit`): a ``table`` float in one column or
``table*`` across the page, ``\\small`` and a smaller ``\\tabcolsep`` when the estimate says the
table is too wide, and, measured when typeset, ``\\resizebox`` to the line width only when it is
still wider. The short caption is above the table; the full method text is a ``\\footnotesize``
paragraph under it.

Numbers are ``\\num{}`` from siunitx in math mode in ``c`` columns, so they take the document's
siunitx settings while bold cells stay simple: a bold cell is ``{\\boldmath ...}`` and the table
sets ``\\sisetup{reset-math-version=false}`` locally so siunitx (v3) keeps the bold math. A pasted
table needs ``\\usepackage{booktabs,amssymb,siunitx,graphicx}`` (the file's first line says so;
its second names the layout); ``standalone=True`` writes a whole document that compiles with
pdflatex (a two-column article page for ``column`` and ``page``, a landscape page for
``landscape``), falling back to plain numbers without siunitx (Debian: ``texlive-science``)."""

from __future__ import annotations

from stitch.report.latex_fit import fit_table, split_header
from stitch.report.table import Table, latex_escape, to_dataframe

LATEX_PACKAGES = "% needs \\usepackage{booktabs,amssymb,siunitx,graphicx} (siunitx v3)"
#: the second line of every table file (the compile test recognises tables written this way)
LAYOUT_MARKER = "% stitch layout: "

_PACKAGES = r"""\usepackage{booktabs}
\usepackage{amssymb}
\usepackage{graphicx}
\IfFileExists{siunitx.sty}{\usepackage{siunitx}}{}
% without siunitx (Debian: it is in texlive-science) the numbers are typeset as they are
\providecommand{\num}[2][]{#2}
\providecommand{\sisetup}[1]{}
\pagestyle{empty}
\makeatletter\setlength{\@fptop}{0pt}\makeatother % a float page starts at the top
\begin{document}
"""
#: a landscape page of its own
STANDALONE_PREAMBLE = "\\documentclass{article}\n\\usepackage[landscape,margin=1.5cm]{geometry}\n" + _PACKAGES
#: a two-column paper page (CVPR's geometry: 3.25 in columns, 6.875 in text width)
TWOCOLUMN_PREAMBLE = (
    "\\documentclass[10pt,twocolumn]{article}\n"
    "\\usepackage[letterpaper,textwidth=6.875in,textheight=8.875in,columnsep=0.375in]{geometry}\n" + _PACKAGES
)


def stacked_header(latex: str) -> str:
    """A LaTeX header on two lines (:func:`~stitch.report.latex_fit.split_header`), as a nested
    bottom-aligned ``tabular``; a header of one line as it is."""
    lines = split_header(latex)
    if len(lines) == 1:
        return latex
    # "\\{}": a second line starting with "[" must not read as the optional skip of "\\[...]"
    return "\\begin{tabular}[b]{@{}c@{}}" + "\\\\{}".join(lines) + "\\end{tabular}"


def to_latex(table: Table, standalone: bool = False) -> str:
    """The table as a float sized for its layout; a whole document with ``standalone``."""
    fit = fit_table(table)
    df = to_dataframe(table, "latex")
    if fit.stacked:
        df.columns = [stacked_header(c.latex) for c in table.columns]
    tabular = df.style.hide(axis="index").to_latex(
        hrules=True, column_format="".join(c.align for c in table.columns)
    )
    lines = [
        f"\\begin{{{fit.environment}}}[t]",
        "\\centering",
        # keep bold math bold inside \num (siunitx v3 resets the math version otherwise); local
        "\\sisetup{reset-math-version=false}",
        f"\\caption{{{latex_escape(table.shown_caption())}}}",
        f"\\label{{{table.label}}}",
        *[cmd for cmd in (fit.size, fit.tabcolsep) if cmd],
        # measured when typeset: scaled down to the line width only when still wider
        "\\sbox0{%",
        tabular.rstrip("\n") + "}%",
        "\\ifdim\\wd0>\\linewidth\\resizebox{\\linewidth}{!}{\\usebox0}\\else\\usebox0\\fi",
    ]
    if table.details():
        lines += ["\\par\\smallskip", f"{{\\footnotesize\\raggedright {latex_escape(table.details())}\\par}}"]
    lines.append(f"\\end{{{fit.environment}}}")
    marker = (
        f"{LAYOUT_MARKER}{table.layout} ({fit.environment}, estimated {fit.width_pt:.0f} pt "
        f"for {fit.target_pt:.0f} pt)"
    )
    body = "\n".join(lines) + "\n"
    if not standalone:
        return f"{LATEX_PACKAGES}\n{marker}\n{body}"
    preamble = STANDALONE_PREAMBLE if table.layout == "landscape" else TWOCOLUMN_PREAMBLE
    first, rest = preamble.split("\n", 1)
    return f"{first}\n{marker}\n{rest}{body}\\end{{document}}\n"
