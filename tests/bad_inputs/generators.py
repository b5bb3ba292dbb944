"""Tiny datasets for the bad-input corpus: each function writes files into a case folder.

``case.yaml`` names one with ``data: <function>`` or ``data: {generator: <function>, key: value}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def folder_dataset(case: Path, root: str = "data", n: int = 4, size: int = 16) -> None:
    """A valid ``folder`` dataset: ``root/images/*.png`` and ``root/masks/*.png`` (classes 0, 1)."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (case / root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(case / root / "images" / f"im{i}.png")
        Image.fromarray((image[..., 0] > 127).astype(np.uint8)).save(case / root / "masks" / f"im{i}.png")


def file_at(case: Path, path: str = "out/x", text: str = "not a directory\n") -> None:
    """A plain file at ``path`` (a file where a directory goes)."""
    target = case / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


# ----------------------------------------------------------------------------- broken data files (issue 13)
def png_bomb(path: Path, width: int, height: int) -> None:
    """A grey PNG of ``width`` x ``height`` zeros: 14000x14000 (196 million pixels) is 190 KB on disk,
    the shape of a decompression bomb. Written in well under a second: one block of rows is
    deflated once (with a full flush, so its bytes repeat exactly) and repeated."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    def deflated(data: bytes) -> bytes:  # raw deflate, byte-aligned, dictionary reset after it
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        return z.compress(data) + z.flush(zlib.Z_FULL_FLUSH)

    row, rows = bytes(width + 1), 500  # each row: the filter byte, then the zeros
    n, rest = divmod(height, rows)
    block = row * rows
    adler = 1
    for _ in range(n):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    # zlib header, the blocks, a final empty block, the Adler-32 of everything
    idat = b"\x78\xda" + deflated(block) * n + deflated(row * rest) + b"\x03\x00" + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def broken_file(case: Path, path: str = "data/images/im0.png", kind: str = "bomb") -> None:
    """Replace the file at ``path`` (any file of the same stem in its folder is removed) with one
    broken ``kind``: ``bomb`` (14000x14000 PNG, over twice PIL's pixel limit), ``bomb-warning``
    (10000x10000, between once and twice the limit, where PIL only warns), ``truncated-png``,
    ``truncated-jpeg`` (half of a valid file; the JPEG takes the ``.jpg`` suffix), ``empty`` (0
    bytes), ``small`` (an 8x8 grey PNG), ``label-7`` (a 16x16 mask of label 7), ``symlink-loop``
    (a symbolic link to itself)."""
    import io

    target = case / path
    target.parent.mkdir(parents=True, exist_ok=True)
    for old in target.parent.glob(target.stem + ".*"):
        old.unlink()
    rng = np.random.default_rng(1)
    if kind in ("bomb", "bomb-warning"):
        side = 14000 if kind == "bomb" else 10000
        png_bomb(target, side, side)
    elif kind in ("truncated-png", "truncated-jpeg"):
        fmt = "PNG" if kind == "truncated-png" else "JPEG"
        target = target.with_suffix(".png" if fmt == "PNG" else ".jpg")
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, fmt)
        target.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "small":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(target)
    elif kind == "label-7":
        Image.fromarray(np.full((16, 16), 7, np.uint8)).save(target)
    elif kind == "symlink-loop":
        target.symlink_to(target.name)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def coco_dataset(
    case: Path,
    root: str = "data",
    val_annotation: dict | None = None,
    val_image: dict | None = None,
) -> None:
    """A valid COCO dataset (``root/annotations/{train,val}.json``, ``root/train``, ``root/val``: two
    32x24 images per split, one polygon and one uncompressed-RLE object each, categories 3 and 7);
    ``val_annotation`` / ``val_image`` are merged into the val file's first annotation / image."""
    import json

    h, w = 24, 32
    rle = np.zeros((h, w), np.uint8)
    rle[2:9, 3:12] = 1
    flat = rle.flatten(order="F")  # COCO's column-major run lengths, starting with zeros
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    for split in ("train", "val"):
        (case / root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for k in (1, 2):
            Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(case / root / split / f"{k:03d}.png")
            images.append({"id": k, "file_name": f"{k:03d}.png", "height": h, "width": w})
            poly = [[2, 2, 10, 2, 10, 8, 2, 8]]
            anns.append(
                {"id": 2 * k - 1, "image_id": k, "category_id": 3, "segmentation": poly, "iscrowd": 0}
            )
            seg = {"size": [h, w], "counts": counts}
            anns.append({"id": 2 * k, "image_id": k, "category_id": 7, "segmentation": seg, "iscrowd": 0})
        if split == "val":
            anns[0].update(val_annotation or {})
            images[0].update(val_image or {})
        doc = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
        }
        (case / root / "annotations").mkdir(parents=True, exist_ok=True)
        (case / root / "annotations" / f"{split}.json").write_text(json.dumps(doc))


def run_dir(case: Path, path: str = "rd", db: str | None = None) -> None:
    """A run directory as far as its ``experiment.yaml`` (the case's), and a ``runs.sqlite`` with
    the text ``db`` when given (empty: a 0-byte database; anything else: a damaged one)."""
    target = case / path
    target.mkdir(parents=True, exist_ok=True)
    (target / "experiment.yaml").write_bytes((case / "experiment.yaml").read_bytes())
    if db is not None:
        (target / "runs.sqlite").write_text(db)
