"""Shared pieces of the datasets: the error type, the cache directory, atomic preparation,
image/mask reading with one-line errors, file pairing and splits, and the torch ``Dataset``.

A dataset module turns its config into a :class:`Prepared`: its *sources* (train, val, and test
where there is one) and the class layout. A source knows how many samples it has, each sample's
name and how to load it as ``(image uint8 HxWxC, mask int64 HxW)`` with the ignore value already
mapped and the labels checked. :class:`SegDataset` wraps a source with the transforms of
:mod:`stitch.data.transforms`. The instance task's sources and dataset (per-object masks, boxes,
``coco_gt``) are in :mod:`stitch.data.instance`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from stitch import fileio
from stitch.errors import StitchError, exception_text

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")  # lossless only
LOSSY_EXTS = (".jpg", ".jpeg", ".webp")
T = TypeVar("T")


class DataError(StitchError):
    """A missing or malformed dataset: one line naming the file and the fix."""

    def __init__(self, message: str, file: str | os.PathLike | None = None) -> None:
        self.file = str(file) if file is not None else None
        self.detail = message
        text = f"{self.file}: {message}" if self.file else message
        super().__init__(" ".join(text.splitlines()))


# ----------------------------------------------------------------------------- cache and preparation
def wheel_files(package: str, relpaths: Sequence[str], install: str, what: str) -> list[Path]:
    """Files shipped inside an installed package, located without importing it (importing
    stardist or nilearn would pull TensorFlow or scikit-learn; only their data files are used)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{what} inside the {package} wheel, which is not installed; run: {install}")
    for loc in spec.submodule_search_locations:
        files = [Path(loc) / r for r in relpaths]
        if all(f.is_file() for f in files):
            return files
    first = Path(next(iter(spec.submodule_search_locations))) / relpaths[0]
    raise DataError(
        f"{package} is installed but its data files are not there; reinstall: "
        f"{install.replace('install', 'install --force-reinstall', 1)}",
        first,
    )


def resolve_cache_dir(cfg: Any, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where prepared datasets live: ``cache_dir`` if given, else ``cfg.root``, else
    ``$STITCH_DATA``, else ``~/.cache/stitch``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = getattr(cfg, "root", None)
    if root:
        return Path(root).expanduser()
    env = os.environ.get("STITCH_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "stitch"


def prepare_once(cache_dir: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``cache_dir / name``, built by ``build(tmp_dir)`` the first time, atomically.

    ``build`` writes everything, ending with ``meta.json``, into a temporary directory beside the
    final one, which is then renamed into place (``os.replace``): a crash leaves no half-written
    dataset, and of two processes preparing at once one wins and the other reuses its result.

    The files ``build`` writes inside that temporary directory (images, split lists, JSON) may be
    written plainly, not through :mod:`stitch.fileio`: nothing reads the directory before it is
    renamed into place as a whole, and a failed preparation removes it.
    """
    final = cache_dir / name
    if (final / "meta.json").is_file():
        return final
    if final.exists():
        raise DataError(
            "exists but holds no meta.json (an incomplete preparation?); delete it to prepare again", final
        )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
    except OSError as exc:
        reason = exception_text(exc, join_lines=True, limit=200)
        raise DataError(
            f"cannot create the data cache ({reason}); set data.root or $STITCH_DATA to a writable directory",
            cache_dir,
        ) from None
    try:
        build(tmp)
        if not (tmp / "meta.json").is_file():  # pragma: no cover - a programming error
            raise RuntimeError(f"preparing {name} wrote no meta.json")
        try:
            os.replace(tmp, final)
        except OSError:
            if (final / "meta.json").is_file():  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_json(path: Path, data: Any) -> None:
    """``data`` as JSON with the data room's layout (indent 1, keys in their order), atomically."""
    fileio.write_json(path, data, indent=1, sort_keys=False)


# ----------------------------------------------------------------------------- reading files
def max_image_pixels() -> int:
    """The most pixels an image or mask file may have: PIL's ``Image.MAX_IMAGE_PIXELS`` (89,478,485),
    its guard against decompression bombs. PIL raises above twice that and only warns above it; stitch
    refuses both."""
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS or 0)


@contextmanager
def open_image(path: Path, what: str, missing: str, fix: str) -> Iterator[Any]:
    """``PIL.Image.open(path)`` whose every failure is one :class:`DataError` naming ``path``: a
    missing file (``missing`` is the fix), an empty, truncated or corrupt one (``what`` and ``fix``),
    an image over :func:`max_image_pixels` (resize or tile it), before its pixels are decoded."""
    import re
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except FileNotFoundError:
        raise DataError(f"{what} file is missing; {missing}", path) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise DataError(
            f"{what} has {size}, over the {max_image_pixels():,}-pixel limit against decompression bombs "
            "(a small file that decodes to gigabytes); resize or tile it below that size",
            path,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = exception_text(exc, join_lines=True, limit=200)
        if path.is_file() and path.stat().st_size == 0:
            reason = "the file is empty, 0 bytes"
        raise DataError(f"cannot read the {what} ({reason}); {fix}", path) from None


IMAGE_FIX = "re-export it (PNG/JPEG) or remove it"
MISSING_IMAGE = "restore it or remove it from the split"


def read_image(path: Path, channels: int) -> np.ndarray:
    """An image file as uint8 HxWxC with C = ``channels`` (1 grey, 3 RGB): a grey file is repeated
    to RGB, an RGB file converted to grey, as ``channels`` asks.

    16-bit and float images are min-max scaled to 0-255 per image; alpha is dropped.
    """
    with open_image(path, "image", MISSING_IMAGE, IMAGE_FIX) as im:
        im.load()
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            a = np.asarray(im, dtype=np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
            grey = np.round(a).astype(np.uint8)
            arr = grey[..., None] if channels == 1 else np.repeat(grey[..., None], 3, axis=2)
        else:
            arr = np.array(im.convert("L" if channels == 1 else "RGB"))
            if channels == 1:
                arr = arr[..., None]
    return np.ascontiguousarray(arr)


def image_channels(path: Path) -> int:
    """1 for a grey image file, 3 otherwise (read from the header only)."""
    with open_image(path, "image", MISSING_IMAGE, IMAGE_FIX) as im:
        mode = im.mode
    return 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F") else 3


def read_mask(path: Path) -> np.ndarray:
    """A class-index mask file (PNG mode L, P, 1, I or I;16) as int64 HxW.

    Palette PNGs are read as their indices (VOC style). A colour mask whose three channels are
    equal is accepted as grey; any other colour mask is an error.
    """
    missing = "restore it or remove the image from the split"
    with open_image(path, "mask", missing, "re-export it as a PNG index mask") as im:
        im.load()
        mode = im.mode
        arr = np.asarray(im)
    if arr.ndim == 3:
        if mode in ("LA", "PA") or (
            arr.shape[2] >= 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()
        ):
            arr = arr[..., 0]
        else:
            raise DataError(
                f"mask is a colour ({mode}) image; save class indices as a single-channel PNG (mode L or P, "
                "pixel value = class)",
                path,
            )
    return arr.astype(np.int64)


def check_labels(mask: np.ndarray, num_classes: int, ignore_index: int, path: Any, fix: str = "") -> None:
    """Raise :class:`DataError` if ``mask`` has labels outside ``0..num_classes-1`` (ignore excluded)."""
    if mask.size == 0 or (int(mask.min()) >= 0 and int(mask.max()) < num_classes):
        return
    outside = mask[(mask < 0) | (mask >= num_classes)]
    bad = np.unique(outside[outside != ignore_index])
    if bad.size == 0:
        return
    shown = ", ".join(str(int(v)) for v in bad[:6]) + (" …" if len(bad) > 6 else "")
    raise DataError(
        f"mask has labels {shown} outside the class range 0..{num_classes - 1} (ignore_index "
        f"{ignore_index}); " + (fix or "fix the mask, or set num_classes / ignore_index to match it"),
        path,
    )


# ----------------------------------------------------------------------------- pairing and splits
def list_files(folder: Path, exts: Sequence[str]) -> dict[str, Path]:
    """``stem -> path`` of the files in ``folder`` with one of ``exts``; two files with one stem, or a
    symbolic link with one of ``exts`` that leads to no file, are an error."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_symlink() and not p.exists() and p.suffix.lower() in exts:
            raise DataError(
                "a symbolic link that leads to no file (broken, or a loop); point it at the file or "
                "remove it",
                p,
            )
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
            if p.stem in out:
                raise DataError(
                    f"two files share the stem {p.stem!r} ({out[p.stem].name}, {p.name}); keep one", folder
                )
            out[p.stem] = p
    return out


def pair_files(images_dir: Path, masks_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Pair ``images_dir/*`` with ``masks_dir/*`` by stem; any unpaired file is an error."""
    for d, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not d.is_dir():
            raise DataError(f"no {what} folder here; check data.root and data.{what}", d)
    images = list_files(images_dir, IMAGE_EXTS)
    if not images:
        raise DataError(
            f"no image files ({', '.join(IMAGE_EXTS)}) in this folder; check data.root and data.images",
            images_dir,
        )
    lossy = [p for p in masks_dir.iterdir() if p.suffix.lower() in LOSSY_EXTS]
    if lossy:
        raise DataError(
            "mask is a lossy JPEG/WebP file, which changes the labels; save masks as PNG index images",
            lossy[0],
        )
    masks = list_files(masks_dir, MASK_EXTS)
    for stem, img in images.items():
        if stem not in masks:
            raise DataError(
                f"image has no mask (expected {masks_dir / (stem + '.png')}); add the mask or remove the "
                "image",
                img,
            )
    for stem, m in masks.items():
        if stem not in images:
            raise DataError(
                f"mask has no image (expected {images_dir / stem}.png/.jpg/…); add the image or remove the "
                "mask",
                m,
            )
    return {s: (images[s], masks[s]) for s in sorted(images)}


def read_list(path: Path, known: Sequence[str] | None = None) -> list[str]:
    """Stems listed one per line (blank lines and ``#`` comments skipped); unknown stems are errors."""
    if not path.is_file():
        raise DataError("split list file not found; check the path (relative to data.root)", path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exception_text(exc, join_lines=True, limit=200)
        raise DataError(f"cannot read the split list ({reason})", path) from None
    out: list[str] = []
    known_set = set(known) if known is not None else None
    for n, line in enumerate(lines, 1):
        stem = line.split("#", 1)[0].strip()
        if not stem:
            continue
        stem = Path(stem).stem if Path(stem).suffix.lower() in IMAGE_EXTS else stem
        if known_set is not None and stem not in known_set:
            raise DataError(f"line {n}: {stem!r} has no image/mask pair; fix the list or add the files", path)
        out.append(stem)
    return list(dict.fromkeys(out))


def require_nonempty(split: str, n: int, where: Any, fix: str) -> None:
    if n == 0:
        raise DataError(f"the {split} split is empty; {fix}", where)


def hold_out(
    names: Sequence[T], fraction: float, seed: int, key: str = "data.test_fraction", where: Any = None
) -> tuple[list[T], list[T]]:
    """``(kept, held)``: a seeded random ``fraction`` of ``names`` held out (``round(n * fraction)``,
    at least one, at most ``n - 1``; the draw is ``numpy.random.default_rng(seed).permutation``),
    both lists in their original order. Fewer than two names is a one-line :class:`DataError`
    naming ``key``."""
    n = len(names)
    if n < 2:
        raise DataError(
            f"{key} {fraction} needs at least 2 samples to hold some out and keep the rest, found {n}; "
            f"add samples or drop {key}",
            where,
        )
    n_held = min(n - 1, max(1, round(n * fraction)))
    held_idx = {int(i) for i in np.random.default_rng(seed).permutation(n)[:n_held]}
    return (
        [s for i, s in enumerate(names) if i not in held_idx],
        [s for i, s in enumerate(names) if i in held_idx],
    )


# ----------------------------------------------------------------------------- sources and the dataset
class Source(Protocol):
    """One split of a dataset, before transforms."""

    def __len__(self) -> int: ...
    def name(self, i: int) -> str: ...
    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class FileSource:
    """Image/mask file pairs. ``raw_ignore`` is the ignore value in the files (VOC's 255), mapped
    to ``ignore_index``; labels are checked against ``num_classes`` as each mask is loaded."""

    pairs: list[tuple[Path, Path]]
    channels: int
    num_classes: int
    ignore_index: int
    raw_ignore: int | None = None
    fix: str = ""

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, i: int) -> str:
        return self.pairs[i][0].stem

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, mask_path = self.pairs[i]
        image = read_image(img_path, self.channels)
        mask = read_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {img_path.name} is "
                f"{image.shape[1]}x{image.shape[0]} (WxH); they must match",
                mask_path,
            )
        if self.raw_ignore is not None and self.raw_ignore != self.ignore_index:
            mask[mask == self.raw_ignore] = self.ignore_index
        check_labels(mask, self.num_classes, self.ignore_index, mask_path, self.fix)
        return image, mask


@dataclass
class Prepared:
    """What a dataset module hands to :func:`stitch.data.build_data`."""

    train: Any  # Source
    val: Any  # Source
    num_classes: int
    in_channels: int
    class_names: list[str]
    info: dict = field(default_factory=dict)
    test: Any = None  # Source of the held-out test split; None where the experiment has none


class SourceDataset:
    """A torch ``Dataset`` over a source (``len``, ``name(i)``, ``load(i)``) and a transform; the
    task's subclass turns a loaded sample into an item."""

    def __init__(self, source: Any, transform: Callable, split: str) -> None:
        self.source, self.transform, self.split = source, transform, split

    def __len__(self) -> int:
        return len(self.source)

    def name(self, i: int) -> str:
        return self.source.name(i)

    def index(self, i: int) -> int:
        """``i`` as a non-negative index (negative ones count from the end), or ``IndexError``."""
        if -len(self.source) <= i < 0:
            i += len(self.source)
        if not 0 <= i < len(self.source):
            raise IndexError(
                f"index {i} out of range for the {self.split} split ({len(self.source)} samples)"
            )
        return i


class SegDataset(SourceDataset):
    """``{"image": float32 CxHxW, "mask": int64 HxW, "index": int}`` per sample.

    Deterministic given the index, apart from the random augmentation, which draws from torch's
    global RNG (seed the DataLoader workers).
    """

    def __getitem__(self, i: int) -> dict:
        import torch
        from torchvision import tv_tensors

        i = self.index(i)
        image, mask = self.source.load(i)
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
        img, msk = self.transform(img, msk)
        return {
            "image": img.as_subclass(torch.Tensor).contiguous(),
            "mask": msk.as_subclass(torch.Tensor).to(torch.int64).contiguous(),
            "index": i,
        }

    def __repr__(self) -> str:
        return f"SegDataset({self.split}, {len(self)} samples)"


def check_prepared(pairs: Sequence[tuple[Path, Path]], root: Path) -> None:
    """Every file of a prepared dataset exists (a cheap stat each); else say how to rebuild it."""
    for pair in pairs:
        for p in pair:
            if not p.is_file():
                raise DataError(
                    f"a file of the prepared dataset is missing; delete {root} to prepare it again", p
                )


def prepared_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """The ``images/<stem>.png``/``masks/<stem>.png`` pairs listed in ``root/<split>.txt`` of a
    prepared dataset, all checked to exist."""
    lst = root / f"{split}.txt"
    if not lst.is_file():
        raise DataError(f"the prepared dataset has no split list; delete {root} to prepare it again", lst)
    pairs = [(root / "images" / f"{s}.png", root / "masks" / f"{s}.png") for s in read_list(lst)]
    require_nonempty(split, len(pairs), lst, f"delete {root} to prepare it again")
    check_prepared(pairs, root)
    return pairs
