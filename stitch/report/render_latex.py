"""LaTeX rendering of a table: ``pandas.io.formats.style.Styler.to_latex`` with booktabs rules, the
caption above the table. Numbers are ``\\num{}`` from siunitx in math mode in ``c`` columns, so
they take the document's siunitx settings while bold cells stay simple: a bold cell is
``{\\boldmath ...}`` and the table sets ``\\sisetup{reset-math-version=false}`` locally so siunitx
(v3) keeps the bold math. A pasted table needs ``\\usepackage{booktabs,amssymb,siunitx}`` (the
file's first line says so); ``standalone=True`` writes a whole ``article`` document that compiles
with pdflatex, falling back to plain numbers without siunitx (Debian: ``texlive-science``)."""

from __future__ import annotations

from stitch.report.table import Table, latex_escape, to_dataframe

LATEX_PACKAGES = "% needs \\usepackage{booktabs,amssymb,siunitx} (siunitx v3)"

STANDALONE_PREAMBLE = r"""\documentclass{article}
\usepackage[landscape,margin=1.5cm]{geometry}
\usepackage{booktabs}
\usepackage{amssymb}
\IfFileExists{siunitx.sty}{\usepackage{siunitx}}{}
% without siunitx (Debian: it is in texlive-science) the numbers are typeset as they are
\providecommand{\num}[2][]{#2}
\providecommand{\sisetup}[1]{}
\pagestyle{empty}
\makeatletter\setlength{\@fptop}{0pt}\makeatother % a float page starts at the top
\begin{document}
"""


def to_latex(table: Table, standalone: bool = False) -> str:
    """booktabs LaTeX through ``Styler.to_latex``; a whole document with ``standalone``."""
    df = to_dataframe(table, "latex")
    body = df.style.hide(axis="index").to_latex(
        hrules=True,
        column_format="".join(c.align for c in table.columns),
        position="t",
        position_float="centering",
        caption=latex_escape(table.caption),
        label=table.label,
    )
    # keep bold math bold inside \num (siunitx v3 resets the math version otherwise); local to the table
    body = body.replace("\\centering\n", "\\centering\n\\sisetup{reset-math-version=false}\n", 1)
    if not standalone:
        return f"{LATEX_PACKAGES}\n{body}"
    return STANDALONE_PREAMBLE + body + "\\end{document}\n"
