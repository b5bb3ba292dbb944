"""``folder``: ``root/images/*`` + ``root/masks/*`` paired by file stem.

Split (:func:`split_pairs`), test first, then train/val from the pairs left:

- **test** (optional): the stems of ``test_list``, or a seeded random ``test_fraction`` of the
  sorted stems (seed ``split_seed``; at least one test and one other pair; only without
  ``train_list``/``val_list``). Default: no test split.
- **train / val**: ``train_list`` / ``val_list`` files (one stem per line, relative to ``root``);
  with only one of them the other split is every remaining pair, i.e. every pair in neither the
  given list nor the test split. Without lists, a seeded random ``val_fraction`` of the remaining
  sorted stems (at least one pair in each split); with no test split this is exactly the split
  of older versions.

A stem in two of the lists is an error naming it; so is an empty split. Pairs named in no list
when ``train_list`` and ``val_list`` are both given are not used.

Classes: ``num_classes`` if set (labels then checked as each mask loads), else every mask is read
once at build time and the largest label + 1 is used (labels equal to ``ignore_index`` skipped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stitch.data.common import (
    DataError,
    FileSource,
    Prepared,
    hold_out,
    image_channels,
    pair_files,
    read_list,
    read_mask,
    require_nonempty,
)

if TYPE_CHECKING:
    from stitch.config import FolderData


def check_disjoint(
    splits: Mapping[str, Sequence[str]], label: Mapping[str, str], where: Mapping[str, Any]
) -> None:
    """No sample in two of ``splits``; else a one-line :class:`DataError` naming the first shared
    one and both splits by ``label``, at ``where`` of the later split."""
    names = list(splits)
    for k, a in enumerate(names):
        for b in names[k + 1 :]:
            both = sorted(set(splits[a]) & set(splits[b]))
            if both:
                raise DataError(
                    f"{both[0]!r} is in both {label[a]} and {label[b]} ({len(both)} shared); a sample in "
                    "both splits leaks",
                    where[b],
                )


def split_pairs(
    pairs: dict[str, tuple[Path, Path]], root: Path, cfg: FolderData
) -> tuple[list[str], list[str], list[str], str]:
    """``(train stems, val stems, test stems, how)`` (module docstring); raises
    :class:`DataError` on a bad list, a stem in two splits or an empty split."""
    stems = list(pairs)
    test: list[str] = []
    how_test = ""
    if cfg.test_list:
        test = read_list(root / cfg.test_list, stems)
        require_nonempty("test", len(test), root / cfg.test_list, "list at least one stem, or drop test_list")
        how_test = f", test list {cfg.test_list}"
    elif cfg.test_fraction:
        _, test = hold_out(stems, cfg.test_fraction, cfg.split_seed, "data.test_fraction", root)
        how_test = f", seeded random test_fraction {cfg.test_fraction} (split_seed {cfg.split_seed}) first"
    held = set(test)
    rest = [s for s in stems if s not in held]
    train, val, how = train_val(stems, rest, root, cfg)
    if cfg.test_list:
        label = {"train": "train_list", "val": "val_list", "test": "test_list"}
        where = {"train": root, "val": root, "test": root / cfg.test_list}
        check_disjoint({"train": train, "val": val, "test": test}, label, where)
    return train, val, test, how + how_test


def train_val(
    stems: list[str], rest: list[str], root: Path, cfg: FolderData
) -> tuple[list[str], list[str], str]:
    """``(train, val, how)`` out of ``rest`` (the pairs not in the test split); ``stems`` are every
    pair (what the lists are checked against)."""
    train_list, val_list = cfg.train_list, cfg.val_list
    also = " and test_list" if cfg.test_list else ""
    if train_list or val_list:
        where = root / (val_list or train_list or "")  # the val list if given, else the train list
        train = read_list(root / train_list, stems) if train_list else None
        val = read_list(root / val_list, stems) if val_list else None
        if train is not None and val is not None:
            check_disjoint(
                {"train": train, "val": val}, {"train": "train_list", "val": "val_list"}, {"val": where}
            )
        if train is None:  # then the val list was given
            train = [s for s in rest if s not in set(val or ())]
        if val is None:
            val = [s for s in rest if s not in set(train)]
        how = f"lists {train_list or '(rest)'} / {val_list or '(rest)'}"
        require_nonempty(
            "train",
            len(train),
            root / train_list if train_list else where,
            f"list at least one stem in train_list, or leave some pairs out of val_list{also}",
        )
        require_nonempty(
            "val",
            len(val),
            root / val_list if val_list else where,
            f"list at least one stem in val_list, or leave some pairs out of train_list{also}",
        )
        return train, val, how
    if len(rest) < 2:
        left = " after the test split; add pairs or hold out fewer" if len(rest) < len(stems) else ""
        raise DataError(
            f"only {len(rest)} image/mask pair: a train and a val split need at least 2{left}", root
        )
    n_val = min(len(rest) - 1, max(1, round(len(rest) * cfg.val_fraction)))
    order = np.random.default_rng(cfg.split_seed).permutation(len(rest))
    val_idx = {int(i) for i in order[:n_val]}
    train = [s for i, s in enumerate(rest) if i not in val_idx]
    val = [s for i, s in enumerate(rest) if i in val_idx]
    return train, val, f"seeded random val_fraction {cfg.val_fraction} (split_seed {cfg.split_seed})"


def infer_num_classes(masks: list[Path], ignore_index: int) -> int:
    """Largest label + 1 over every mask (``ignore_index`` skipped)."""
    top, top_file = -1, None
    seen: set[int] = set()
    for m in masks:
        arr = read_mask(m)
        vals = np.unique(arr)
        seen.update(int(v) for v in vals)
        vals = vals[vals != ignore_index]
        if vals.size and int(vals.min()) < 0:
            raise DataError(f"mask has negative label {int(vals.min())}; labels are 0..K-1", m)
        if vals.size and int(vals.max()) > top:
            top, top_file = int(vals.max()), m
    if top < 1:
        only = sorted(seen)
        hint = (
            " (binary masks with 255 as foreground? rewrite them as 0/1)"
            if only == [0, 255] and ignore_index == 255
            else ""
        )
        raise DataError(
            f"the masks hold only the labels {only}; with ignore_index {ignore_index} that leaves no class "
            f"besides background{hint}; "
            "fix the masks or set data.num_classes / data.ignore_index",
            masks[0].parent,
        )
    if top > 1000:
        raise DataError(
            f"mask has label {top}: is it an instance or colour mask? masks hold class indices 0..K-1; set "
            "data.num_classes to check",
            top_file,
        )
    return top + 1


def channels_of(cfg_channels: int | None, first_image: Path) -> int:
    return int(cfg_channels) if cfg_channels else image_channels(first_image)


def prepare_pairs(
    pairs: dict[str, tuple[Path, Path]],
    train: list[str],
    val: list[str],
    *,
    channels: int,
    num_classes: int,
    ignore_index: int,
    class_names: list[str],
    info: dict,
    raw_ignore: int | None = None,
    fix: str = "",
    test: list[str] | None = None,
) -> Prepared:
    """A :class:`Prepared` of :class:`FileSource` splits over ``pairs`` (``test`` only when given
    and not empty)."""

    def source(stems: list[str]) -> FileSource:
        return FileSource([pairs[s] for s in stems], channels, num_classes, ignore_index, raw_ignore, fix)

    counts = {"train": len(train), "val": len(val), **({"test": len(test)} if test else {})}
    return Prepared(
        train=source(train),
        val=source(val),
        test=source(test) if test else None,
        num_classes=num_classes,
        in_channels=channels,
        class_names=class_names,
        info={**info, **counts},
    )


def build(cfg: FolderData, cache_dir: Path | None = None) -> Prepared:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            "dataset folder not found; set data.root to the folder holding images/ and masks/", root
        )
    pairs = pair_files(root / cfg.images, root / cfg.masks)
    train, val, test, how = split_pairs(pairs, root, cfg)
    if cfg.num_classes is not None:
        num_classes = cfg.num_classes
    elif cfg.class_names is not None:
        num_classes = len(cfg.class_names)
    else:
        num_classes = infer_num_classes([pairs[s][1] for s in train + val + test], cfg.ignore_index)
    names = (
        list(cfg.class_names)
        if cfg.class_names
        else ["background"] + [f"class{i}" for i in range(1, num_classes)]
    )
    channels = channels_of(cfg.channels, pairs[train[0]][0])
    return prepare_pairs(
        pairs,
        train,
        val,
        test=test,
        channels=channels,
        num_classes=num_classes,
        ignore_index=cfg.ignore_index,
        class_names=names,
        info={"dataset": "folder", "root": str(root), "split": how},
    )
