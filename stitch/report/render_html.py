"""HTML rendering of a table via ``Styler.to_html``: a whole page, bold best cells by CSS, the
short caption on top, booktabs-like rules, the method text and the notes below."""

from __future__ import annotations

from stitch.report.table import Table, to_dataframe

TABLE_STYLES = [
    {"selector": "", "props": "border-collapse: collapse; font-family: sans-serif;"},
    {
        "selector": "caption",
        "props": "caption-side: top; text-align: left; max-width: 60em; padding-bottom: 0.5em;",
    },
    {"selector": "th, td", "props": "padding: 0.2em 0.8em; text-align: center;"},
    {"selector": "thead th", "props": "border-top: 2px solid black; border-bottom: 1px solid black;"},
    {"selector": "tbody tr:last-child td", "props": "border-bottom: 2px solid black;"},
]


def html_escape(s: str) -> str:
    """Escape ``&``, ``<`` and ``>`` for HTML text."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_html(table: Table) -> str:
    """``Styler.to_html``: bold best cells by CSS, caption on top."""
    import pandas as pd

    df = to_dataframe(table, "plain")
    bold = [
        [r.cells.get(c.key) is not None and r.cells[c.key].bold for c in table.columns] for r in table.rows
    ]
    styles = pd.DataFrame(
        [["font-weight: bold" if b else "" for b in row] for row in bold], columns=df.columns
    )
    styler = df.style.hide(axis="index").set_caption(table.shown_caption()).apply(lambda _: styles, axis=None)
    styler = styler.set_table_styles(TABLE_STYLES)
    html = styler.to_html(doctype_html=True)
    if table.details():
        html = html.replace("</body>", f"<p>{html_escape(table.details())}</p>\n</body>")
    if table.notes:
        notes = "".join(f"<li>{html_escape(n)}</li>" for n in table.notes)
        html = html.replace("</body>", f"<p>Notes:</p><ul>{notes}</ul>\n</body>")
    return html
