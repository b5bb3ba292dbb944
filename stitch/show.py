"""``stitch show``: a PNG grid of validation images, ground truth and the predictions of one
trained run (its best checkpoint). The drawing itself is :mod:`stitch.visualize`."""

from __future__ import annotations

from pathlib import Path

from torchvision.utils import save_image

from stitch.build import stitch_variant
from stitch.errors import StitchError, did_you_mean, exception_text
from stitch.fileio import atomic_path
from stitch.plugins import load_experiment_with_plugins
from stitch.runs import experiment_data, plan_runs
from stitch.safe_load import UnsafeFileError, load_plain
from stitch.store import ResultStore, RunRow, run_dir_files
from stitch.visualize import prediction_grid


def show_run(
    run_dir: Path, variant: str | None = None, seed: int | None = None, n: int = 8, out: Path | None = None
) -> Path:
    """Write a PNG grid of images, ground truth and predictions of a trained variant (best
    checkpoint); returns the PNG's path (default ``RUN_DIR/show_<variant>_s<seed>.png``)."""
    run_dir = Path(run_dir)
    exp_file, db = run_dir_files(run_dir)
    if out is not None and not out.parent.is_dir():
        raise StitchError(f"--output {out}: the folder {out.parent} does not exist")
    exp, data = experiment_data(load_experiment_with_plugins(exp_file))
    # only runs of the experiment file as it is now: an older config's checkpoint would not fit
    plans = {p.run_id: p for p in plan_runs(exp, epochs=None)}
    with ResultStore(db) as store:
        rows = [
            r
            for r in store.rows()
            if r.run_id in plans and (run_dir / "ckpt" / r.run_id / "best.pt").is_file()
        ]
    if not rows:
        raise StitchError(
            f"{run_dir} has no trained run of its experiment.yaml with a best checkpoint"
            " (run `stitch run` first)"
        )
    row = _choose(rows, run_dir, variant, seed)
    model = stitch_variant(exp, plans[row.run_id].variant, row.seed).model
    best = run_dir / "ckpt" / row.run_id / "best.pt"
    try:
        model.load_state_dict(load_plain(best, "cpu", "`stitch run --force` retrains it")["model"])
    except UnsafeFileError:
        raise
    except Exception as exc:
        raise StitchError(
            f"{best}: cannot be read ({exception_text(exc)}); `stitch run --force` retrains it"
        ) from None
    grid = prediction_grid(model, data, n=n)
    out = out or run_dir / f"show_{plans[row.run_id].variant.slug[:80]}_s{row.seed}.png"  # as the tb/ folders
    with atomic_path(out) as tmp:
        save_image(grid, tmp)
    return out


def _choose(rows: list[RunRow], run_dir: Path, variant: str | None, seed: int | None) -> RunRow:
    """The first run of ``variant`` (name or slug) and ``seed``, where given."""
    if variant is not None:
        names = sorted({r.variant for r in rows})
        chosen = [r for r in rows if variant.lower() in (r.variant.lower(), r.variant_slug)]
        if not chosen:
            raise StitchError(
                f"no trained variant {variant!r} in {run_dir}"
                + (did_you_mean(variant, names) or f" (variants: {', '.join(names)})")
            )
        rows = chosen
    if seed is not None:
        rows = [r for r in rows if r.seed == seed]
        if not rows:
            raise StitchError(f"no trained run with seed {seed} for that variant in {run_dir}")
    return rows[0]
