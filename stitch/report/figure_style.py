"""How every figure stitch saves looks and is written: TrueType (Type 42) fonts in PDF and PS, 8-9 pt
text, the Okabe-Ito colour-blind-safe palette, panel grids as wide as ``report.layout`` says
(column 3.5 in, page 7 in, landscape 9.5 in), and PNG plus PDF written atomically."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stitch.fileio import atomic_path

#: figure width in inches per ``report.layout``
LAYOUT_WIDTH_IN = {"column": 3.5, "page": 7.0, "landscape": 9.5}

#: Okabe & Ito's colour-blind-safe palette (black first; yellow last, it is faint on white)
OKABE_ITO = (
    "#000000",  # black: the baseline
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#F0E442",  # yellow
)
BASELINE_COLOR = OKABE_ITO[0]
VARIANT_COLORS = OKABE_ITO[1:]

#: matplotlib settings of every saved figure: fonts embedded as TrueType (Type 42), never Type 3
#: (which IEEE and ACM PDF checks reject), text readable at print size, the palette as colour cycle
PAPER_RC: dict[str, Any] = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "grid.linewidth": 0.4,
}

#: PNG resolution (print quality)
PNG_DPI = 300


@contextmanager
def paper_style() -> Iterator[None]:
    """:data:`PAPER_RC` (and the Okabe-Ito colour cycle) for the figures drawn and saved inside."""
    import matplotlib
    from cycler import cycler

    rc: dict[Any, Any] = {**PAPER_RC, "axes.prop_cycle": cycler(color=list(VARIANT_COLORS))}
    with matplotlib.rc_context(rc):
        yield


def series_color(index: int, is_baseline: bool = False) -> str:
    """The colour of a series: black for the baseline, else the ``index``-th variant colour (cycling)."""
    return BASELINE_COLOR if is_baseline else VARIANT_COLORS[index % len(VARIANT_COLORS)]


def layout_width(layout: str) -> float:
    """The figure width in inches for ``report.layout`` (``column`` for an unknown value)."""
    return LAYOUT_WIDTH_IN.get(layout, LAYOUT_WIDTH_IN["column"])


def panel_grid(
    n_panels: int,
    layout: str,
    *,
    min_panel_width: float = 1.6,
    panel_height: float = 1.9,
    header: float = 0.35,
) -> tuple[Any, list[Any]]:
    """A figure exactly as wide as ``layout`` with ``n_panels`` axes wrapped into rows (as many per
    row as fit at ``min_panel_width`` inches); ``header`` inches above for a title. Call inside
    :func:`paper_style` so the axes take its fonts."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state; Agg renders PNG and PDF

    n = max(1, n_panels)
    width = layout_width(layout)
    ncols = max(1, min(n, math.floor(width / min_panel_width)))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width, nrows * panel_height + header), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def save_figure(fig: Any, stem: Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """``fig`` as ``stem.png`` and ``stem.pdf`` (atomically, with :data:`PAPER_RC`); the size is the
    figure's own (no tight bounding box, so the width stays the layout's)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    out = []
    with paper_style():
        for ext in formats:
            p = stem.with_suffix(f".{ext}")
            with atomic_path(p) as tmp:
                fig.savefig(tmp, dpi=PNG_DPI)
            out.append(p)
    return out
