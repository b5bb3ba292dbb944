"""The decoded-data cache (``data.cache``): every sample of a split read and decoded once, kept in
memory as uint8 arrays (masks in the smallest integer type that holds their values), before any
random augmentation. The cached sample is what the source would have loaded, so items, random
draws and results are those of the uncached data; only the reading and decoding are saved.

``memory`` wraps each split's source in a :class:`MemorySource` (:func:`memory_cached`);
``device`` does the same for validation and test and replaces the training split with
:class:`stitch.data.device_augment.DeviceTrainSet` (:func:`stitch.data.device_augment.device_cached`,
segmentation only).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stitch.data import DataBundle


def compact_mask(mask: np.ndarray) -> np.ndarray:
    """``mask`` in the smallest integer type that holds its values (uint8 for class indices with an
    ``ignore_index`` of 255; int16 for -100); :func:`numpy.ndarray.astype` back gives it unchanged."""
    if mask.size == 0:
        return mask.astype(np.uint8)
    lo, hi = int(mask.min()), int(mask.max())
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return mask.astype(dtype)
    return mask.copy()


class MemorySource:
    """A source (``len``, ``name(i)``, ``load(i)``) whose samples were all loaded once, at
    construction; ``load`` returns a private copy (the transforms may not write into the cache).

    Segmentation samples ``(image, mask)`` keep the mask in :func:`compact_mask`'s type and give it
    back in its loaded type; other samples (the instance task's ``(image, target dict)``) are kept
    as loaded."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.samples: list[Any] = []
        self.mask_dtypes: list[Any] = []
        for i in range(len(source)):
            image, second = source.load(i)
            if isinstance(second, np.ndarray):
                self.mask_dtypes.append(second.dtype)
                second = compact_mask(second)
            else:
                self.mask_dtypes.append(None)
            self.samples.append((image, second))

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, i: int) -> str:
        return str(self.source.name(i))

    def load(self, i: int) -> tuple[np.ndarray, Any]:
        """The sample as the wrapped source loaded it (a copy)."""
        image, second = self.samples[i]
        dtype = self.mask_dtypes[i]
        if dtype is not None:
            return image.copy(), second.astype(dtype)
        return image.copy(), copy.deepcopy(second)

    def nbytes(self) -> int:
        """Bytes the cached images and masks take."""
        total = 0
        for image, second in self.samples:
            total += image.nbytes
            if isinstance(second, np.ndarray):
                total += second.nbytes
            elif isinstance(second, dict):
                total += sum(v.nbytes for v in second.values() if isinstance(v, np.ndarray))
        return total


def cached(dataset: Any) -> Any:
    """``dataset`` (a :class:`~stitch.data.common.SourceDataset`, or ``None``) reading from a
    :class:`MemorySource` of its source."""
    if dataset is None or isinstance(dataset.source, MemorySource):
        return dataset
    return type(dataset)(MemorySource(dataset.source), dataset.transform, dataset.split)


def memory_cached(data: DataBundle) -> DataBundle:
    """``data`` with every split reading from a :class:`MemorySource` (``data.cache: memory``)."""
    return replace(data, train=cached(data.train), val=cached(data.val), test=cached(data.test))
