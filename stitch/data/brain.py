"""``brain``: axial slices of the MNI ICBM152 2009a symmetric template shipped in the nilearn wheel.

Source: ``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``
(197 x 233 x 189 voxels of 1 mm, found with ``importlib.util.find_spec`` without importing
nilearn, read with nibabel). Image: the T1 slice (uint8, one channel). Labels: 0 background,
1 grey matter, 2 white matter — the tissue with the larger probability where that probability is
above 0.5 (probabilities are stored as 0-255).

Slices are axial (``z`` fixed), rotated so anterior is up: 233 rows x 197 columns. Fixed bands
along z, each contiguous (neighbouring, nearly identical slices do not straddle a boundary) and
separated from its neighbours by a gap of 4 slices that no split uses. With ``test_region: true``
(the default; cache layout v2):

======  ====================  ======
split   z                     slices
======  ====================  ======
train   10-71 and 124-149     88
(gap)   72-75
test    76-95                 20
(gap)   96-99
val     100-119               20
(gap)   120-123
======  ====================  ======

Val (through the top of the lateral ventricles, rich in both tissues) chooses the epoch; test
(the basal ganglia and the bodies of the lateral ventricles, also rich in both) is what the tables
report. ``test_region: false`` is the first layout (cache layout v1, the run ids of before): train
z = 10-95 and 124-149 (112 slices), val z = 100-119 (20), gaps 96-99 and 120-123, no test split.

Written once to ``<cache>/brain-icbm152-2009a-v<layout>/`` as ``images/z<z>.png``,
``masks/z<z>.png``, ``train.txt``, ``val.txt`` (and ``test.txt``) and ``meta.json``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stitch.data.common import (
    DataError,
    FileSource,
    Prepared,
    prepare_once,
    prepared_pairs,
    resolve_cache_dir,
    wheel_files,
    write_json,
)
from stitch.errors import exception_text

if TYPE_CHECKING:
    from stitch.config import BrainData

#: cache layout: 1 = train/val (``test_region: false``), 2 = train/val/test
VERSION = 2
INSTALL = "pip install --no-deps nilearn==0.14.1 && pip install nibabel"
#: ``split -> (first z, last z)`` bands of each layout (module docstring)
BANDS: dict[int, dict[str, list[tuple[int, int]]]] = {
    1: {"train": [(10, 95), (124, 149)], "val": [(100, 119)]},
    2: {"train": [(10, 71), (124, 149)], "val": [(100, 119)], "test": [(76, 95)]},
}
CLASSES = ["background", "grey_matter", "white_matter"]


def layout_version(test_region: bool) -> int:
    """The cache layout of ``test_region``: 2 with a test band, 1 without."""
    return VERSION if test_region else 1


def split_slices(layout: int) -> dict[str, list[int]]:
    """``split -> z indices`` of a layout, in order."""
    return {s: [z for a, b in bands for z in range(a, b + 1)] for s, bands in BANDS[layout].items()}


def bands_text(layout: int) -> str:
    """``axial z 10-71 and 124-149 train, z 100-119 val, z 76-95 test``."""
    return "axial " + ", ".join(
        "z " + " and ".join(f"{a}-{b}" for a, b in bands) + f" {s}" for s, bands in BANDS[layout].items()
    )


def template_files() -> dict[str, Path]:
    """``{"t1", "gm", "wm"} -> path`` inside the installed nilearn wheel."""
    kinds = ("t1", "gm", "wm")
    rel = [f"datasets/data/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in kinds]
    return dict(zip(kinds, wheel_files("nilearn", rel, INSTALL, "the brain dataset is the MNI template")))


def read_volume(path: Path) -> np.ndarray:
    try:
        import nibabel
    except ImportError:
        raise DataError("reading the MNI template needs nibabel; run: pip install nibabel") from None
    try:
        return np.asarray(nibabel.load(str(path)).dataobj)  # type: ignore[attr-defined]  # a Nifti1Image
    except Exception as exc:  # nibabel raises several types on a damaged file
        reason = exception_text(exc, join_lines=True, limit=200)
        raise DataError(
            f"cannot read the NIfTI volume ({reason}); reinstall: pip install --no-deps "
            "--force-reinstall nilearn==0.14.1",
            path,
        ) from None


def labels_from(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    scale = 255.0 if max(float(gm.max()), float(wm.max())) > 1.0 else 1.0
    g, w = gm.astype(np.float32) / scale, wm.astype(np.float32) / scale
    lab = np.zeros(g.shape, dtype=np.uint8)
    tissue = np.maximum(g, w) > 0.5
    lab[tissue & (g >= w)] = 1
    lab[tissue & (w > g)] = 2
    return lab


def prepare(out: Path, layout: int = VERSION) -> None:
    """Write the slices of ``layout`` (:data:`BANDS`), the split lists and ``meta.json`` into ``out``."""
    from PIL import Image

    files = template_files()
    t1, gm, wm = (read_volume(files[k]) for k in ("t1", "gm", "wm"))
    if not (t1.shape == gm.shape == wm.shape) or t1.ndim != 3 or t1.shape[2] < 150:
        raise DataError(
            f"unexpected template shapes {t1.shape}, {gm.shape}, {wm.shape}; reinstall: {INSTALL}",
            files["t1"],
        )
    lab = labels_from(gm, wm)
    t1 = t1.astype(np.float64)
    t1 = np.clip(np.round(t1 / max(float(t1.max()), 1e-9) * 255.0), 0, 255).astype(np.uint8)
    (out / "images").mkdir()
    (out / "masks").mkdir()
    slices = split_slices(layout)
    for z in sorted(z for zs in slices.values() for z in zs):
        Image.fromarray(np.ascontiguousarray(np.rot90(t1[:, :, z])), "L").save(
            out / "images" / f"z{z:03d}.png"
        )
        Image.fromarray(np.ascontiguousarray(np.rot90(lab[:, :, z])), "L").save(
            out / "masks" / f"z{z:03d}.png"
        )
    for split, zs in slices.items():
        (out / f"{split}.txt").write_text("".join(f"z{z:03d}\n" for z in zs))
    write_json(
        out / "meta.json",
        {
            "dataset": "brain",
            "version": layout,
            "classes": CLASSES,
            "volume_shape": list(t1.shape),
            "slice_shape": [int(t1.shape[1]), int(t1.shape[0])],
            "source": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.values()},
            "split": {f"{s}_z": [list(b) for b in bands] for s, bands in BANDS[layout].items()},
            "pixel_counts": {
                split: np.bincount(np.concatenate([lab[:, :, z].ravel() for z in zs]), minlength=3).tolist()
                for split, zs in slices.items()
            },
        },
    )


def build(cfg: BrainData, cache_dir: Path | None = None) -> Prepared:
    layout = layout_version(cfg.test_region)
    root = prepare_once(
        resolve_cache_dir(cfg, cache_dir), f"brain-icbm152-2009a-v{layout}", lambda tmp: prepare(tmp, layout)
    )
    fix = f"delete {root} to prepare it again"
    sources = {}
    for split in BANDS[layout]:
        pairs = prepared_pairs(root, split)
        sources[split] = FileSource(pairs, 1, 3, cfg.ignore_index, fix=fix)
    return Prepared(
        train=sources["train"],
        val=sources["val"],
        test=sources.get("test"),
        num_classes=3,
        in_channels=1,
        class_names=list(CLASSES),
        info={
            "dataset": "brain",
            "root": str(root),
            "split": bands_text(layout),
            **{s: len(src) for s, src in sources.items()},
        },
    )
