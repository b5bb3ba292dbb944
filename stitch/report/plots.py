"""Plots of one experiment, as PNG and PDF, sized for ``report.layout`` and styled by
:mod:`stitch.report.figure_style`: ``metrics`` (the paired plot of each reported metric, one line
per seed across the variants, then the primary metric's paired Δ against the baseline with its
confidence interval; :mod:`stitch.report.paired_plot`) and ``curves`` (training loss, validation
loss and the primary metric per epoch: mean over seeds, band ± std)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from stitch.report.figure_style import layout_width, panel_grid, paper_style, save_figure, series_color
from stitch.report.labels import DAGGER, PERCENT_METRICS, metric_label
from stitch.report.paired_plot import draw_deltas, draw_paired
from stitch.report.results import ExperimentResults


def _title(fig: Any, text: str, layout: str) -> None:
    """A figure title wrapped to the figure's width."""
    chars = int(layout_width(layout) * 15)
    fig.suptitle("\n".join(textwrap.wrap(text, chars)))


def _header(text: str, layout: str) -> float:
    """Inches above the panels for :func:`_title`'s lines."""
    return 0.1 + 0.17 * len(textwrap.wrap(text, int(layout_width(layout) * 15)))


def plot_metrics(res: ExperimentResults, stem: Path) -> list[Path]:
    """:func:`metrics_figure` as ``stem.png`` and ``stem.pdf``."""
    return save_figure(metrics_figure(res), stem)


def metrics_figure(res: ExperimentResults) -> Any:
    """The paired plot of every reported metric, then the primary metric's Δ against the
    baseline (when there is one), as wide as ``report.layout``."""
    layout = res.exp.cfg.report.layout
    n = sorted({len(v.seeds) for v in res.variants})
    tested = any(t.tested for ts in res.tests.values() for t in ts.values())
    split = "held-out test split" if res.split == "test" else "validation split"
    title = f"{res.name} ({split}): one line per seed, bar = mean over {'/'.join(map(str, n))} seed(s)"
    title += f"; {DAGGER} p<{res.alpha:g} (Holm)" if tested else ""
    with_delta = res.reference is not None and bool(res.tests.get(res.primary))
    with paper_style():
        fig, axes = panel_grid(len(res.metrics) + with_delta, layout, header=_header(title, layout))
        for ax, m in zip(axes, res.metrics):
            draw_paired(ax, res, m)
        if with_delta:
            draw_deltas(axes[-1], res, res.primary)
        _title(fig, title, layout)
    return fig


def _per_epoch(rows: Any, key: str, scale: float) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in rows:
        for h in r.history:
            if key in h and isinstance(h[key], (int, float)) and "epoch" in h:
                out.setdefault(int(h["epoch"]), []).append(float(h[key]) * scale)
    return out


def plot_curves(res: ExperimentResults, stem: Path) -> list[Path]:
    """:func:`curves_figure` as ``stem.png`` and ``stem.pdf``."""
    return save_figure(curves_figure(res), stem)


def _share_loss_scale(axes: list[Any]) -> None:
    """One y range for the training and validation loss panels, so the gap between them shows."""
    if len(axes) < 2:
        return
    low = min(ax.get_ylim()[0] for ax in axes)
    high = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:
        ax.set_ylim(low, high)


def curves_figure(res: ExperimentResults) -> Any:
    """Training loss, validation loss and the primary metric per epoch (mean over seeds, ± std
    band, one colour per variant), as wide as ``report.layout``."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    layout = res.exp.cfg.report.layout
    keys = [
        k
        for k in ("train_loss", "val_loss", res.primary)
        if any(k in h for v in res.variants for r in v.rows for h in r.history)
    ]
    title = f"{res.name}: mean over seeds, band \u00b1 std"
    loss_axes = ("train_loss", "val_loss")
    # both losses are the configured loss (the instance task: the sum of Mask R-CNN's losses)
    loss_name = res.exp.cfg.train.loss if res.exp.cfg.task == "segmentation" else "Mask R-CNN sum"
    with paper_style():
        # one slot more than the curves: the legend's
        fig, axes = panel_grid(len(keys) + bool(keys), layout, header=_header(title, layout))
        for ax, k in zip(axes, keys):
            sc = res.scale.get(k, 100.0 if k in PERCENT_METRICS else 1.0)
            for i, v in enumerate(res.variants):
                per_epoch = _per_epoch(v.rows, k, sc)
                if not per_epoch:
                    continue
                ep = sorted(per_epoch)
                mean = np.array([np.mean(per_epoch[e]) for e in ep])
                std = np.array([np.std(per_epoch[e], ddof=1) if len(per_epoch[e]) > 1 else 0.0 for e in ep])
                color = series_color(i, v.variant.is_baseline)
                ax.plot(ep, mean, label=v.name, color=color)
                ax.fill_between(ep, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if k in loss_axes:  # short titles: a column panel is 1.6 in wide
                ax.set_ylabel(f"loss: {loss_name}")
                ax.set_title(metric_label(k))
            else:
                ax.set_ylabel(metric_label(k) + (" (%)" if sc == 100.0 else ""))
                ax.set_title("validation " + metric_label(k))
            ax.grid(alpha=0.3)
        _share_loss_scale([ax for ax, k in zip(axes, keys) if k in loss_axes])
        if keys:
            handles, labels = axes[0].get_legend_handles_labels()
            axes[-1].axis("off")
            axes[-1].legend(handles, labels, loc="center", frameon=False)
        else:
            axes[0].text(
                0.5, 0.5, "no per-epoch history stored", ha="center", va="center", transform=axes[0].transAxes
            )
        _title(fig, title, layout)
    return fig
