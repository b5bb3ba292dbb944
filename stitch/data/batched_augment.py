"""The batched pixel work of ``data.cache: device``: a batch of drawn augmentation plans made into
images and masks with a number of tensor operations that does not grow with the batch size.

Samples that share a shape and mask type form a group held as one tensor. Each step works on
whole groups: rot90 and fit-resize split a group by their parameter (``k``; output size) and run
the pipeline's own kernel once per part; flips run on the flipped rows of a group (``index_select``,
the kernel, ``index_copy``); the random crop pads a group once (the padding depends only on the
shape) and cuts every sample's window with one ``gather``; colour jitter, on the groups merged
back together, runs each adjustment once per position in the drawn order on the rows that drew it
there, with per-sample factors (:mod:`stitch.data.batched_color`). Everything the device needs from
the host (rows, offsets, factors) goes over in one copy per batch.

:class:`BatchProgram` walks the steps on the groups' shapes alone (no tensor touched) and records
the tensor operations; :meth:`BatchProgram.run` copies the host values over and runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from stitch.data import batched_color as colour
from stitch.data.transforms import FitResize, RandomRot90

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Group:
    """Batch positions held as one image tensor (``len(rows)`` x C x H x W) and one mask tensor."""

    rows: list[int]
    shape: tuple[int, int]
    mask_dtype: torch.dtype
    channels: int


@dataclass
class Env:
    """What the recorded operations work on: the host values on the device, the groups' tensors."""

    ints: torch.Tensor
    floats: torch.Tensor
    tensors: dict[int, Pair] = field(default_factory=dict)


Op = Callable[[Env], None]


def unwrap(x: Any) -> torch.Tensor:
    return x.as_subclass(torch.Tensor)


def apply_step(step: v2.Transform, pair: Pair, params: dict[str, Any]) -> Pair:
    """The pipeline step's own kernels on a whole group (they take leading batch dimensions)."""
    image, mask = pair
    return (
        unwrap(step.transform(tv_tensors.Image(image), params)),
        unwrap(step.transform(tv_tensors.Mask(mask), params)),
    )


def gather_crop(pair: Pair, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]) -> Pair:
    """Each sample's ``size`` window at its own ``(top, left)``: one ``gather`` per tensor."""
    image, mask = pair
    n, hh, ww = image.shape[0], image.shape[-2], image.shape[-1]
    h, w = size
    rows = top[:, None] + torch.arange(h, device=image.device)
    cols = left[:, None] + torch.arange(w, device=image.device)
    flat = (rows[:, :, None] * ww + cols[:, None, :]).view(n, 1, h * w)
    out = []
    for x in (image, mask):
        xf = x.reshape(n, -1, hh * ww)
        out.append(xf.gather(2, flat.expand(n, xf.shape[1], h * w)).view(*x.shape[:-2], h, w))
    return out[0], out[1]


def rot_k(params: dict[str, Any]) -> int:
    return int(params["k"])


def rot_shape(group: Group, params: dict[str, Any]) -> tuple[int, int]:
    h, w = group.shape
    return (w, h) if params["k"] % 2 else (h, w)


def no_turn(params: dict[str, Any]) -> bool:
    return int(params["k"]) == 0


def resized_shape(group: Group, params: dict[str, Any]) -> tuple[int, int]:
    return out_size(params)


def out_size(params: dict[str, Any]) -> tuple[int, int]:
    h, w = params["out"]
    return int(h), int(w)


def same_size(params: dict[str, Any]) -> bool:
    return out_size(params) == tuple(params["in"])


class BatchProgram:
    """The operations that make one batch (see the module docstring). ``store`` is the
    :class:`~stitch.data.device_augment.DeviceTrainSet` (its stacks, keys and steps); ``samples``
    the batch's ``(sample index, [(step number, params), ...])``."""

    def __init__(self, store: Any, samples: Sequence[tuple[int, list[tuple[int, dict[str, Any]]]]]) -> None:
        self.store = store
        self.size = len(samples)
        self.params = [dict(plan) for _, plan in samples]
        self.values: list[float] = []
        self.ops: list[Op] = []
        self.groups: dict[int, Group] = {}
        self.next_id = 0
        self.result = -1  # the group that holds the batch at the end (set by the final merge)
        self.load([i for i, _ in samples])
        for n, step in enumerate(store.steps):
            if isinstance(step, RandomRot90):
                self.split_by(n, step, rot_k, rot_shape, no_turn)
            elif isinstance(step, FitResize):
                self.split_by(n, step, out_size, resized_shape, same_size)
            elif isinstance(step, (v2.RandomHorizontalFlip, v2.RandomVerticalFlip)):
                self.flip(n, step)
            elif isinstance(step, v2.RandomCrop):
                self.crop(n, step)
            else:  # v2.ColorJitter (DeviceTrainSet accepts nothing else here)
                self.merge()
                self.jitter(n, step)
        self.merge(final=True)

    # -- recording -------------------------------------------------------------------------------
    def host(self, values: Sequence[float]) -> slice:
        """Where ``values`` will be in :attr:`Env.ints` / :attr:`Env.floats`."""
        start = len(self.values)
        self.values.extend(float(v) for v in values)
        return slice(start, len(self.values))

    def new_group(self, rows: list[int], shape: Sequence[int], mask_dtype: torch.dtype, channels: int) -> int:
        gid, self.next_id = self.next_id, self.next_id + 1
        self.groups[gid] = Group(rows, (int(shape[0]), int(shape[1])), mask_dtype, channels)
        return gid

    def load(self, indices: list[int]) -> None:
        """One group per dataset stack (shape, mask type), read with ``index_select``."""
        by_key: dict[Any, list[int]] = {}
        for pos, i in enumerate(indices):
            by_key.setdefault(self.store.keys[i], []).append(pos)
        for key, rows in by_key.items():
            c, h, w, _compact, mask_dtype = key
            gid = self.new_group(rows, (h, w), mask_dtype, c)
            sl = self.host([self.store.rows[indices[pos]] for pos in rows])

            def op(env: Env, gid: int = gid, key: Any = key, sl: slice = sl, dtype: Any = mask_dtype) -> None:
                idx = env.ints[sl]
                images, masks = self.store.image_stacks[key], self.store.mask_stacks[key]
                env.tensors[gid] = (images.index_select(0, idx), masks.index_select(0, idx).to(dtype))

            self.ops.append(op)

    def kernel(self, gid: int, step: v2.Transform, params: dict[str, Any]) -> None:
        """Record the step's own kernels on the whole of group ``gid``."""

        def op(env: Env) -> None:
            env.tensors[gid] = apply_step(step, env.tensors[gid], params)

        self.ops.append(op)

    def subset(self, gid: int, local: list[int], shape: Sequence[int]) -> int:
        """A new group of some rows of group ``gid`` (positions ``local`` in it)."""
        g = self.groups[gid]
        new = self.new_group([g.rows[j] for j in local], shape, g.mask_dtype, g.channels)
        if local == list(range(len(g.rows))):

            def alias(env: Env, a: int = gid, b: int = new) -> None:
                env.tensors[b] = env.tensors[a]

            self.ops.append(alias)
        else:
            sl = self.host(local)

            def op(env: Env, a: int = gid, b: int = new, sl: slice = sl) -> None:
                idx = env.ints[sl]
                image, mask = env.tensors[a]
                env.tensors[b] = (image.index_select(0, idx), mask.index_select(0, idx))

            self.ops.append(op)
        return new

    def split_by(self, n: int, step: v2.Transform, key: Callable, shape_of: Callable, noop: Callable) -> None:
        """Rot90 and fit-resize: every group split by the step's parameter, the kernel once per part
        (none for a part the step leaves as it is)."""
        for gid, g in list(self.groups.items()):
            parts: dict[Any, list[int]] = {}
            for j, pos in enumerate(g.rows):
                parts.setdefault(key(self.params[pos][n]), []).append(j)
            for local in parts.values():
                params = self.params[g.rows[local[0]]][n]
                new = self.subset(gid, local, shape_of(g, params))
                if not noop(params):
                    self.kernel(new, step, params)
            del self.groups[gid]

    def flip(self, n: int, step: v2.Transform) -> None:
        """The rows that drew the flip, flipped by the step's kernel."""
        for gid, g in self.groups.items():
            local = [j for j, pos in enumerate(g.rows) if n in self.params[pos]]
            if not local:
                continue
            if len(local) == len(g.rows):
                self.kernel(gid, step, {})
                continue
            sl = self.host(local)

            def op(env: Env, a: int = gid, sl: slice = sl) -> None:
                idx = env.ints[sl]
                image, mask = env.tensors[a]
                fi, fm = apply_step(step, (image.index_select(0, idx), mask.index_select(0, idx)), {})
                env.tensors[a] = (image.index_copy(0, idx, fi), mask.index_copy(0, idx, fm))

            self.ops.append(op)

    def crop(self, n: int, step: v2.Transform) -> None:
        """Pad each group once (the padding depends on the shape only), then cut the windows."""
        for gid, g in self.groups.items():
            params = [self.params[pos][n] for pos in g.rows]
            first = params[0]
            h, w = g.shape
            if first["needs_pad"]:
                pad = dict(first, needs_crop=False)
                self.kernel(gid, step, pad)
                left, top, right, bottom = first["padding"]
                h, w = h + top + bottom, w + left + right
            size = (int(first["height"]), int(first["width"]))
            offsets = {(p["top"], p["left"]) for p in params}
            if (h, w) != size:
                if len(offsets) == 1:
                    cut = dict(first, needs_pad=False, needs_crop=True)
                    self.kernel(gid, step, cut)
                else:
                    tops = self.host([p["top"] for p in params])
                    lefts = self.host([p["left"] for p in params])

                    def op(env: Env, a: int = gid, t: slice = tops, le: slice = lefts, s: Any = size) -> None:
                        env.tensors[a] = gather_crop(env.tensors[a], env.ints[t], env.ints[le], s)

                    self.ops.append(op)
            g.shape = size

    def merge(self, final: bool = False) -> None:
        """The groups joined into one when they share shape, channels and mask type; at the end
        always, the masks as int64 and the rows put back in batch order."""
        groups = list(self.groups.items())
        kinds = {(g.shape, g.mask_dtype, g.channels) for _, g in groups}
        if len(groups) > 1 and (len(kinds) == 1 or final):
            first = groups[0][1]
            rows = [pos for _, g in groups for pos in g.rows]
            gid = self.new_group(
                rows, first.shape, torch.int64 if final else first.mask_dtype, first.channels
            )
            self.groups = {gid: self.groups[gid]}
            ids = [a for a, _ in groups]

            def op(env: Env, ids: list[int] = ids, b: int = gid) -> None:
                pairs = [env.tensors.pop(a) for a in ids]
                masks = [m.to(torch.int64) for _, m in pairs] if final else [m for _, m in pairs]
                env.tensors[b] = (torch.cat([i for i, _ in pairs]), torch.cat(masks))

            self.ops.append(op)
        if final:
            ((gid, g),) = self.groups.items()
            order = None if g.rows == list(range(self.size)) else self.host(np.argsort(g.rows).tolist())

            def last(env: Env, a: int = gid, sl: slice | None = order) -> None:
                image, mask = env.tensors[a]
                if sl is not None:
                    idx = env.ints[sl]
                    image, mask = image.index_select(0, idx), mask.index_select(0, idx)
                env.tensors[a] = (image, mask.to(torch.int64))

            self.ops.append(last)
            self.result = gid

    def jitter(self, n: int, step: v2.ColorJitter) -> None:
        """Each adjustment once per position of the drawn order, on the rows that drew it there."""
        names = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
        for gid, g in self.groups.items():
            params = [self.params[pos][n] for pos in g.rows]
            for place in range(4):
                for fn in range(4):
                    if g.channels == 1 and fn >= 2:
                        continue  # saturation and hue leave grey images alone
                    local = [
                        j
                        for j, p in enumerate(params)
                        if p["fn_idx"][place] == fn and p[names[fn]] is not None
                    ]
                    if not local:
                        continue
                    factors = [params[j][names[fn]] for j in local]
                    alphas = [float(np.float32(1.0 - f)) for f in factors]
                    whole = len(local) == len(params)
                    sl = None if whole else self.host(local)
                    fs, al = self.host(factors), self.host(alphas)
                    exact = fn == 2 and colour.sum_is_exact(factors, alphas)
                    self.ops.append(
                        partial(
                            self.adjust, gid=gid, fn=fn, sl=sl, fs=fs, al=al, factors=factors, exact=exact
                        )
                    )

    # -- running ---------------------------------------------------------------------------------
    @staticmethod
    def adjust(
        env: Env,
        gid: int,
        fn: int,
        sl: slice | None,
        fs: slice,
        al: slice,
        factors: list[float],
        exact: bool,
    ) -> None:
        """Colour adjustment ``fn`` (brightness, contrast, saturation, hue) on rows ``sl`` of a group."""
        image, mask = env.tensors[gid]
        idx = None if sl is None else env.ints[sl]
        x = image if idx is None else image.index_select(0, idx)
        factor = env.floats[fs].view(-1, 1, 1, 1)
        mode = colour.blend_mode(image.device)
        if fn in (1, 2) and mode == "unknown":  # the kernel's rounding unknown here: per sample
            kernel = F.adjust_contrast if fn == 1 else F.adjust_saturation
            x = torch.stack([kernel(x[j], f) for j, f in enumerate(factors)])
        elif fn == 0:
            x = colour.brightness(x, factor)
        elif fn == 1:
            x = colour.contrast(x, factor, env.floats[al].view(-1, 1, 1, 1), mode)
        elif fn == 2:
            x = colour.saturation(x, factor, env.floats[al].view(-1, 1, 1, 1), mode, exact)
        else:
            x = colour.hue(x, env.floats[fs].view(-1, 1, 1))
        env.tensors[gid] = (x if idx is None else image.index_copy(0, idx, x), mask)

    def run(self, device: torch.device) -> Pair:
        """The batch's uint8 images (B x C x H x W) and int64 masks (B x H x W) on ``device``."""
        host = torch.tensor(self.values, dtype=torch.float64)
        if device.type == "cuda":  # CUDA only: pinned, so the copy does not wait for the device
            host = host.pin_memory()
        values = host.to(device, non_blocking=True)
        env = Env(values.to(torch.int64), values.to(torch.float32))
        for op in self.ops:
            op(env)
        return env.tensors[self.result]
