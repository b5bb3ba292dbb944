"""Plots of one experiment, as PNG and PDF: ``metrics`` (per-variant bars of each reported metric,
± std error bars, one dot per seed, † above a significant improvement) and ``curves`` (training
loss, validation loss and the primary metric per epoch: mean over seeds, band ± std)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from stitch.fileio import atomic_path
from stitch.report.labels import DAGGER, PERCENT_METRICS, metric_label
from stitch.report.results import ExperimentResults
from stitch.stats import summarize


def _figure(ncols: int, width: float = 3.6, height: float = 3.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global backend state; Agg renders PNG and PDF

    fig = Figure(figsize=(max(1, ncols) * width, height), layout="constrained")
    axes = fig.subplots(1, max(1, ncols), squeeze=False)[0]
    return fig, axes


def _save(fig: Any, stem: Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    out = []
    for ext in ("png", "pdf"):
        p = stem.with_suffix(f".{ext}")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=150)
        out.append(p)
    return out


def plot_metrics(res: ExperimentResults, stem: Path) -> list[Path]:
    """Bars of each reported metric per variant (mean, ± std error bars, one dot per seed, † above)."""
    fig, axes = _figure(len(res.metrics), width=max(3.2, 0.7 * len(res.variants) + 1.5))
    names = [v.name for v in res.variants]
    for ax, m in zip(axes, res.metrics):
        sc = res.scale[m]
        stats = [summarize(v.values(m).values()) for v in res.variants]
        means = [s.mean * sc for s in stats]
        errs = [s.std * sc if s.has_std else 0.0 for s in stats]
        colors = ["0.7" if v.variant.is_baseline else f"C{i % 10}" for i, v in enumerate(res.variants)]
        x = list(range(len(names)))
        ax.bar(x, means, yerr=errs, color=colors, capsize=4, edgecolor="black", linewidth=0.6)
        for i, v in enumerate(res.variants):
            vals = [val * sc for val in v.values(m).values()]
            ax.plot([i] * len(vals), vals, "o", color="black", markersize=3, zorder=3)
            if res.significant(m, v.name):
                ax.annotate(DAGGER, (i, means[i] + errs[i]), ha="center", va="bottom", fontsize=12)
        finite = [a for a, e in zip(means, errs) if not math.isnan(a)]
        if finite:
            lo = min(a - e for a, e in zip(means, errs) if not math.isnan(a))
            hi = max(a + e for a, e in zip(means, errs) if not math.isnan(a))
            pad = max((hi - lo) * 0.5, 1e-3 * max(1.0, abs(hi)))
            # bars start at 0 (a cropped axis exaggerates differences); negative values go below
            ax.set_ylim(min(0.0, lo - pad), hi + pad)
        many = len(names) > 3
        ax.set_xticks(x, names, rotation=30 if many else 0, ha="right" if many else "center")
        ax.set_ylabel(metric_label(m) + (" (%)" if sc == 100.0 else ""))
        ax.grid(axis="y", alpha=0.3)
    n = sorted({len(v.seeds) for v in res.variants})
    tested = any(t.tested for ts in res.tests.values() for t in ts.values())
    split = "held-out test split" if res.split == "test" else "validation split"
    title = f"{res.name} ({split}): mean \u00b1 std over {'/'.join(map(str, n))} seed(s)"
    fig.suptitle(title + (f", {DAGGER} p<{res.alpha:g} (Holm)" if tested else ""), fontsize=10)
    return _save(fig, stem)


def plot_curves(res: ExperimentResults, stem: Path) -> list[Path]:
    """Training loss, validation loss and the primary metric per epoch: mean over seeds, ± std band."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    keys = [
        k
        for k in ("train_loss", "val_loss", res.primary)
        if any(k in h for v in res.variants for r in v.rows for h in r.history)
    ]
    fig, axes = _figure(max(1, len(keys)))
    for ax, k in zip(axes, keys):
        sc = res.scale.get(k, 100.0 if k in PERCENT_METRICS else 1.0)
        for i, v in enumerate(res.variants):
            per_epoch: dict[int, list[float]] = {}
            for r in v.rows:
                for h in r.history:
                    if k in h and isinstance(h[k], (int, float)) and "epoch" in h:
                        per_epoch.setdefault(int(h["epoch"]), []).append(float(h[k]) * sc)
            if not per_epoch:
                continue
            ep = sorted(per_epoch)
            mean = np.array([np.mean(per_epoch[e]) for e in ep])
            std = np.array([np.std(per_epoch[e], ddof=1) if len(per_epoch[e]) > 1 else 0.0 for e in ep])
            color = "0.4" if v.variant.is_baseline else f"C{i % 10}"
            ax.plot(ep, mean, label=v.name, color=color, linewidth=1.4)
            ax.fill_between(ep, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric_label(k) + (" (%)" if sc == 100.0 else ""))
        ax.set_title(
            ("validation " if k not in ("train_loss", "val_loss") else "") + metric_label(k), fontsize=10
        )
        ax.grid(alpha=0.3)
    if keys:
        axes[0].legend(fontsize=8)
    else:
        axes[0].text(
            0.5, 0.5, "no per-epoch history stored", ha="center", va="center", transform=axes[0].transAxes
        )
    fig.suptitle(f"{res.name}: mean over seeds, band \u00b1 std", fontsize=10)
    return _save(fig, stem)
