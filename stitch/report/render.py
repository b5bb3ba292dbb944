"""Writing one table in each format an experiment asks for (``report.formats``): ``.tex``,
``.md``, ``.csv`` and ``.html`` beside each other, under one file stem."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from stitch.fileio import write_text
from stitch.report.render_csv import to_csv
from stitch.report.render_html import to_html
from stitch.report.render_latex import to_latex
from stitch.report.render_markdown import to_markdown
from stitch.report.table import Table


def write_table(table: Table, stem: Path, formats: Iterable[str], standalone: bool) -> list[Path]:
    """Write ``table`` as ``stem.tex``/``.md``/``.csv``/``.html`` (the known ``formats``, in their
    order; others are skipped); returns the files written."""
    out = []
    for fmt in formats:
        if fmt == "latex":
            p = stem.with_suffix(".tex")
            write_text(p, to_latex(table, standalone))
        elif fmt == "markdown":
            p = stem.with_suffix(".md")
            write_text(p, to_markdown(table))
        elif fmt == "csv":
            p = stem.with_suffix(".csv")
            to_csv(table, p)
        elif fmt == "html":
            p = stem.with_suffix(".html")
            write_text(p, to_html(table))
        else:
            continue
        out.append(p)
    return out
