"""``data.cache: device``: the decoded training split on the run's device, augmented there.

The training split's uint8 images and masks are decoded once and moved to the device when the
run's loaders are made (:func:`stitch.loaders.make_loaders` calls :meth:`DeviceTrainSet.place`).
An item of :class:`DeviceTrainSet` holds no pixels: ``dataset[i]`` draws sample ``i``'s
augmentation parameters (rotation, flips, scale, crop offsets, colour factors) with the very
``make_params`` calls of the plain pipeline (:mod:`stitch.data.transforms`), in the same order
and from the same generator (torch's global RNG, in the main process: the loader has no
workers). :meth:`DeviceTrainSet.augment_batch` (the bundle's ``train_batch_transform``, applied by
the engine to every training batch once it is on the device) then does the pixel work on the
device, batched (:mod:`stitch.data.batched_augment`: a number of tensor operations per step that
does not grow with the batch size, except that fit-resize runs once per distinct output size), with
the pipeline's own kernels or, for colour jitter, their arithmetic with per-sample factors
(:mod:`stitch.data.batched_color`). On CPU the batches are identical to the plain path's, bit for
bit; on CUDA the resize and colour arithmetic are the GPU kernels' (torchvision resizes uint8 in
float there), so pixels may differ by rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from stitch.data.batched_augment import BatchProgram
from stitch.data.cache import MemorySource, cached
from stitch.data.common import DataError
from stitch.data.transforms import FitResize, RandomRot90

if TYPE_CHECKING:
    from stitch.data import DataBundle

#: the largest share of the device's free memory the cache may take (the model needs the rest)
DEVICE_SHARE = 0.5
#: the pipeline steps drawn per sample and applied on the device (the rest must be deterministic)
PER_SAMPLE_STEPS = (
    RandomRot90,
    v2.RandomHorizontalFlip,
    v2.RandomVerticalFlip,
    FitResize,
    v2.RandomCrop,
    v2.ColorJitter,
)
#: the steps applied to the whole batch at the end
BATCH_STEPS = (v2.ToDtype, v2.Normalize)


@dataclass
class BatchPlan:
    """The drawn parameters of a batch's samples: ``(sample index, [(step number, params)...])``
    each. Not a tensor or container, so moving a batch to the device leaves it where it is."""

    samples: list[tuple[int, list[tuple[int, dict[str, Any]]]]]


class DeviceTrainSet:
    """The training split decoded once, on the device after :meth:`place`; items are augmentation
    plans, batches are made by :meth:`collate` and turned into ``{"image", "mask", "index"}`` by
    :meth:`augment_batch`. ``on_device`` tells the loaders (no workers, no pinned memory)."""

    on_device = True

    def __init__(self, source: Any, transform: v2.Compose, split: str = "train") -> None:
        self.source, self.transform, self.split = source, transform, split
        steps = list(transform.transforms)
        tail = next((n for n, s in enumerate(steps) if isinstance(s, BATCH_STEPS)), len(steps))
        for n, step in enumerate(steps):
            allowed = PER_SAMPLE_STEPS if n < tail else BATCH_STEPS
            if not isinstance(step, allowed):
                raise DataError(
                    f"data.cache: device cannot run the {type(step).__name__} augmentation step; "
                    "use data.cache: memory"
                )
        self.steps, self.tail = steps[:tail], steps[tail:]
        cache = source if isinstance(source, MemorySource) else MemorySource(source)
        #: per sample: its stack's key (channels, height, width, stored and loaded mask type) and row
        self.keys: list[tuple[int, int, int, torch.dtype, torch.dtype]] = []
        self.rows: list[int] = []
        members: dict[Any, list[int]] = {}
        for i in range(len(cache)):
            image, mask = cache.samples[i]
            h, w, c = image.shape
            loaded = torch.from_numpy(np.zeros(0, cache.mask_dtypes[i])).dtype
            key = (c, h, w, torch.from_numpy(mask[:0]).dtype, loaded)
            self.keys.append(key)
            self.rows.append(len(members.setdefault(key, [])))
            members[key].append(i)
        #: the samples of one key stacked: uint8 images N x C x H x W, masks N x H x W (compact type)
        self.image_stacks: dict[Any, torch.Tensor] = {}
        self.mask_stacks: dict[Any, torch.Tensor] = {}
        for key, indices in members.items():
            images = np.stack([cache.samples[i][0].transpose(2, 0, 1) for i in indices])
            self.image_stacks[key] = torch.from_numpy(np.ascontiguousarray(images))
            self.mask_stacks[key] = torch.from_numpy(np.stack([cache.samples[i][1] for i in indices]))
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.keys)

    def name(self, i: int) -> str:
        return str(self.source.name(i))

    def nbytes(self) -> int:
        """Bytes the decoded images and masks take on the device."""
        stacks = [*self.image_stacks.values(), *self.mask_stacks.values()]
        return sum(t.nbytes for t in stacks)

    def place(self, device: torch.device) -> None:
        """Move the decoded samples to ``device``; on CUDA, a one-line :class:`DataError` when they
        would take more than :data:`DEVICE_SHARE` of its free memory."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # CUDA only: "cuda" is the current one
            device = torch.device("cuda", torch.cuda.current_device())
        if device == self.device:
            return
        need = self.nbytes()
        if device.type == "cuda":  # CUDA only: not run by the CPU test suite
            free, _total = torch.cuda.mem_get_info(device)
            if need > DEVICE_SHARE * free:
                raise DataError(
                    f"data.cache: device needs {need / 2**20:.0f} MiB for the decoded training split but "
                    f"{device} has {free / 2**20:.0f} MiB free (the cache may take half); "
                    "use data.cache: memory"
                )
        self.image_stacks = {k: t.to(device) for k, t in self.image_stacks.items()}
        self.mask_stacks = {k: t.to(device) for k, t in self.mask_stacks.items()}
        self.device = device

    def __getitem__(self, i: int) -> dict[str, Any]:
        """``{"index": i, "plan": [...]}``: sample ``i``'s augmentation drawn as the plain pipeline
        draws it (see the module docstring)."""
        if -len(self) <= i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for the {self.split} split ({len(self)} samples)")
        c, h, w = self.keys[i][:3]
        plan: list[tuple[int, dict[str, Any]]] = []
        for n, step in enumerate(self.steps):
            flip = isinstance(step, (v2.RandomHorizontalFlip, v2.RandomVerticalFlip))
            if flip and torch.rand(1) >= step.p:  # exactly the draw of torchvision's forward
                continue
            probe = tv_tensors.Image(torch.empty((c, h, w), dtype=torch.uint8, device="meta"))
            params = step.make_params([probe])
            if isinstance(step, RandomRot90) and params["k"] % 2:
                h, w = w, h
            elif isinstance(step, FitResize):
                h, w = params["out"]
            elif isinstance(step, v2.RandomCrop):
                h, w = step.size
            elif isinstance(step, v2.ColorJitter):
                params = dict(params, fn_idx=[int(f) for f in params["fn_idx"]])
            plan.append((n, params))
        return {"index": i, "plan": plan}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """A batch of plans: the indices as a tensor (moved to the device with the batch) and a
        :class:`BatchPlan` (stays on the CPU)."""
        return {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
            "plan": BatchPlan([(it["index"], it["plan"]) for it in items]),
        }

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The training batch of a collated plan: ``{"image": float32 BxCxHxW, "mask": int64 BxHxW,
        "index"}`` as the plain pipeline and the default collate would give it."""
        device = batch["index"].device
        if device != self.device:
            self.place(device)
        images, masks = BatchProgram(self, batch["plan"].samples).run(device)
        image: Any = tv_tensors.Image(images)
        for step in self.tail:
            image = step.transform(image, {})
        return {
            "image": image.as_subclass(torch.Tensor).contiguous(),
            "mask": masks.contiguous(),
            "index": batch["index"],
        }

    def __repr__(self) -> str:
        return f"DeviceTrainSet({self.split}, {len(self)} samples on {self.device})"


def device_cached(data: DataBundle) -> DataBundle:
    """``data`` with ``data.cache: device``: the training split a :class:`DeviceTrainSet` (and
    its :meth:`~DeviceTrainSet.augment_batch` the bundle's ``train_batch_transform``), validation
    and test reading from memory. The instance task is refused (one line naming the fix): its
    items are lists of images, boxes and masks, not one batch of equal tensors."""
    if data.task != "segmentation":
        raise DataError(
            f"data.cache: device is for the segmentation task (the {data.task} task's items are lists of "
            "images, boxes and masks, not augmented as one batch); use data.cache: memory"
        )
    train = DeviceTrainSet(data.train.source, data.train.transform)
    return replace(
        data,
        train=train,
        val=cached(data.val),
        test=cached(data.test),
        train_batch_transform=train.augment_batch,
    )
