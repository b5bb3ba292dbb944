"""Spatial-size rules of zoo modules whose layers or forward depend on the input's height and width.

Some timm layers are built for one input size (a relative position table, a depthwise conv whose
kernel is the whole map) or need sizes divisible by a block size, and timm checks that with
``assert`` statements that carry no message. The zoo's wrappers check first and raise a one-line
:class:`InputSizeError` naming the module, the size it got and the fix; the ``fit`` hook
:func:`probe_feature_size` gives a fixed-size module the size the shape probe saw at its point,
and :func:`fixed_size_fit` makes such a hook refuse, in one line, a site whose inputs vary in size
(:attr:`Site.inputs_vary`: Mask R-CNN), where the module would pass the probe and fail at the
first batch of another size. :func:`block_multiple_fit` does the same for a module that needs sizes
divisible by its block size, unless the padding guarantees that at the point's stride.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .registry import Site, SiteError

__all__ = [
    "PADDED_MULTIPLE",
    "InputSizeError",
    "block_multiple_fit",
    "check_block_multiple",
    "check_fixed_size",
    "fixed_size_fit",
    "guaranteed_multiple",
    "probe_feature_size",
    "site_feature_size",
]


class InputSizeError(ValueError):
    """An input whose height or width the module cannot take; the message is one line."""


def _seen(site: Site) -> Any:
    """The probe's shape description of what the module will take at ``site``: the point's output
    for ``after`` / ``residual``, its first input otherwise."""
    return site.output if site.mode in ("after", "residual") else (site.inputs[0] if site.inputs else None)


def site_feature_size(site: Site) -> tuple[int, int] | None:
    """(H, W) of the map the module will see at ``site``, or None when the probe saw no 4-D
    tensor there."""
    desc = _seen(site)
    if isinstance(desc, list) and len(desc) == 4 and all(isinstance(d, int) for d in desc):
        return desc[2], desc[3]
    return None


def probe_feature_size(site: Site) -> dict[str, Any]:
    """``fit`` hook: ``{"feat_size": (H, W)}``, the size the module will see at ``site``
    (:func:`site_feature_size`); a :class:`SiteError` where the probe saw no 4-D feature map."""
    size = site_feature_size(site)
    if size is None:
        raise SiteError(f"needs a 4-D feature map (N, C, H, W) here, the probe saw {_seen(site)}")
    return {"feat_size": size}


def fixed_size_fit(
    module: str, alternative: str, fixed: Callable[[Mapping[str, Any]], bool] | None = None
) -> Callable[[Site], dict[str, Any]]:
    """A ``fit`` hook like :func:`probe_feature_size` for a module that takes one input size: where
    ``fixed(site.args)`` (default: always) and the site's inputs vary in size it raises a one-line
    :class:`SiteError` naming ``module``, the probe's size and ``alternative`` (size-free settings or
    modules to use instead)."""

    def fit(site: Site) -> dict[str, Any]:
        fitted = probe_feature_size(site)
        if site.inputs_vary and (fixed is None or fixed(site.args)):
            h, w = fitted["feat_size"]
            raise SiteError(
                f"{module} takes one fixed input size (the probe's {h}x{w}); this task's inputs vary in "
                f"size (Mask R-CNN resizes every image): use {alternative} or a fixed-size task"
            )
        return fitted

    return fit


#: torchvision's ``GeneralizedRCNNTransform`` pads every Mask R-CNN batch to multiples of this
#: (``size_divisible=32``): the only sizes a point of a task whose inputs vary is sure to see.
PADDED_MULTIPLE = 32


def guaranteed_multiple(site: Site) -> int:
    """What H and W at ``site`` are always multiples of where the task's inputs vary: the padded
    multiple divided by the point's stride (the probe's input size over its feature size), 1 where
    that stride does not divide it or is unknown."""
    size = site_feature_size(site)
    if size is None or site.input_size is None:
        return 1
    strides = {full // part if part and full % part == 0 else 0 for full, part in zip(site.input_size, size)}
    stride = strides.pop() if len(strides) == 1 else 0
    return PADDED_MULTIPLE // stride if stride and PADDED_MULTIPLE % stride == 0 else 1


def block_multiple_fit(module: str, default_block_size: int) -> Callable[[Site], dict[str, Any]]:
    """A ``fit`` hook for a module that needs H and W multiples of its ``block_size`` argument:
    where the site's inputs vary in size it raises a one-line :class:`SiteError` unless every size
    the point can see is such a multiple (``block_size`` divides :func:`guaranteed_multiple`),
    naming the block sizes and points that fit. It fills in no argument."""

    def fit(site: Site) -> dict[str, Any]:
        block = site.args.get("block_size", default_block_size)
        multiple = guaranteed_multiple(site)
        if site.inputs_vary and isinstance(block, int) and block > 0 and multiple % block:
            size = site_feature_size(site)
            seen = f" (the probe's {size[0]}x{size[1]})" if size else ""
            where = (
                f", a point of stride {PADDED_MULTIPLE // block} or finer"
                if PADDED_MULTIPLE % block == 0
                else ""
            )
            raise SiteError(
                f"{module} needs H and W multiples of block_size={block}, but this task's inputs vary in "
                f"size (Mask R-CNN pads every batch to a multiple of {PADDED_MULTIPLE}): at this point{seen} "
                f"they are only sure to be multiples of {multiple}; use a block_size "
                f"that divides {multiple}{where}, or another module"
            )
        return {}

    return fit


def check_block_multiple(module: str, height: int, width: int, block_size: int) -> None:
    """Raise :class:`InputSizeError` unless ``height`` and ``width`` are multiples of ``block_size``."""
    if height % block_size or width % block_size:
        raise InputSizeError(
            f"{module}: {height}x{width} input, but H and W must be multiples of block_size={block_size}; "
            "set block_size to a divisor of both (or stitch at another point)"
        )


def check_fixed_size(module: str, height: int, width: int, built_for: tuple[int, int]) -> None:
    """Raise :class:`InputSizeError` unless the input is the ``built_for`` size (H, W)."""
    if (height, width) != tuple(built_for):
        raise InputSizeError(
            f"{module} was built for {built_for[0]}x{built_for[1]} inputs (the probe's) and got "
            f"{height}x{width}: it takes one fixed input size, so it cannot be used where input sizes "
            "vary (e.g. Mask R-CNN); choose a size-independent module or setting"
        )
