"""Markdown rendering of a table via ``DataFrame.to_markdown`` (needs ``tabulate``): the short
caption above, the full method text and the notes below."""

from __future__ import annotations

from stitch.report.table import Table, to_dataframe


def to_markdown(table: Table) -> str:
    """A pipe table with a ``Table:`` caption line, the method text as a paragraph under it, and a
    ``Notes:`` list when there are notes."""
    df = to_dataframe(table, "markdown")
    md = df.to_markdown(
        index=False,
        tablefmt="pipe",
        disable_numparse=True,
        colalign=["left" if c.align == "l" else "center" for c in table.columns],
    )
    out = f"Table: {table.shown_caption()}\n\n{md}\n"
    if table.details():
        out += f"\n{table.details()}\n"
    if table.notes:
        out += "\nNotes:\n\n" + "".join(f"- {n}\n" for n in table.notes)
    return out
