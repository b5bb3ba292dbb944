"""CSV of a table: its records (the numbers unrounded, in the stored scale), one row per table row."""

from __future__ import annotations

from pathlib import Path

from stitch.fileio import atomic_path
from stitch.report.table import Table


def to_csv(table: Table, path: Path) -> None:
    """Write the table's records to ``path`` (atomically)."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame.from_records(table.records).to_csv(tmp, index=False)
