"""Selective-kernel convolution as timm implements it: SK.

Wrapped, not rewritten: the builder picks timm's ``SelectiveKernel`` (what
``timm.layers.create_attn`` returns for ``'sk'``, timm 1.0.31), forward unchanged, and names the
user knobs; defaults are timm's. It replaces a 3x3 conv (mode ``replace`` by default; it can change
channels and take a stride, as a bottleneck's ``conv2``).

* Paper: Li, Wang, Hu, Yang, "Selective Kernel Networks", CVPR 2019, arXiv:1903.06586; official
  code github.com/implus/SKNet (Caffe prototxts). timm's ``SelectiveKernel`` differs by default:
  ``split_input`` (each path sees half the input channels; the paper: all), attention width
  ``out / 16`` rounded to 8 (the paper ``max(C / r, L)`` with ``L = 32``: set ``rd_min: 32``),
  ``groups: 1`` (SKNet-50 is a ResNeXt, ``G = 32``); the 5x5 path is a dilated 3x3 in both.
* ``{groups: 32, split_input: false, rd_min: 32}`` at every ``conv2`` of a ResNeXt-50 32x4d is
  SKNet-50's configuration (SK has conv-BN-ReLU inside each path and SKNet no norm after it):
  replacing a torchvision ``Bottleneck.conv2``, SK absorbs that block's ``bn2`` automatically
  unless ``bottleneck: false`` (``bottleneck: auto|true|false`` as for SplitAttention,
  :mod:`modules_zoo.bottleneck_site`); 27,479,784 parameters then, the paper's 27.5M.
* SK's attention has a BN on a 1x1 map: training needs batches of 2 or more.
"""

from __future__ import annotations

from typing import Literal

from timm.layers import SelectiveKernel
from timm.layers.helpers import make_divisible
from torch import nn

from .bottleneck_site import absorbs_bn2, check_bottleneck_choice
from .registry import register
from .timm_self_attention import CONV_MODES

__all__ = ["sk"]


@register(
    "SK",
    kind="unary",
    modes=CONV_MODES,
    reference=(
        "Li, Wang, Hu, Yang, 'Selective Kernel Networks', CVPR 2019, arXiv:1903.06586; official code "
        "github.com/implus/SKNet (Caffe) (timm SelectiveKernel)"
    ),
    summary="Selective-kernel conv: 3x3 and dilated-3x3 paths (conv-BN-ReLU), softmax attention across them.",
    absorbs=absorbs_bn2,
    fidelity="variant",
    fidelity_note=(
        "timm SelectiveKernel: split input and attention width out/16 rounded to 8 by default; SKNet-50 is "
        "{groups: 32, split_input: false, rd_min: 32} on a ResNeXt-50, bn2 absorbed (its parameter count)"
    ),
    tested_by=(
        "tests/test_timm_layers.py::test_wraps_timm_unchanged",
        "tests/test_timm_layers.py::test_sk_at_every_resnext50_conv2_absorbs_bn2_as_sknet50",
    ),
)
def sk(
    in_channels: int,
    out_channels: int | None = None,
    stride: int = 1,
    kernel_size: list[int] | None = None,
    groups: int = 1,
    rd_ratio: float = 1.0 / 16,
    rd_divisor: int = 8,
    rd_min: int = 0,
    keep_3x3: bool = True,
    split_input: bool = True,
    bottleneck: bool | Literal["auto"] = "auto",
) -> nn.Module:
    """Selective Kernel conv (timm ``SelectiveKernel``; timm's defaults).

    Args:
        in_channels: input channels.
        out_channels: output channels (default: ``in_channels``).
        stride: conv stride (2 to replace a down-sampling 3x3 conv).
        kernel_size: odd kernel size per path (default ``[3, 5]``).
        groups: conv groups of each path (SKNet-50: 32).
        rd_ratio: attention width ``out_channels * rd_ratio`` (paper 1/16).
        rd_divisor: attention width rounded to a multiple of this (timm 8).
        rd_min: attention width at least this (the paper's L = 32; timm none: 0).
        keep_3x3: larger kernels as dilated 3x3 convs (paper and timm).
        split_input: split the input channels across the paths (timm; the paper: false).
        bottleneck: take over the ``bn2`` of a torchvision ``Bottleneck`` whose ``conv2`` this
            module replaces: ``auto`` (there only), ``true`` (an error elsewhere) or ``false``
            (keep ``bn2``). Read by the harness (:func:`modules_zoo.bottleneck_site.absorbs_bn2`).
    """
    check_bottleneck_choice(bottleneck)
    out = out_channels or in_channels
    kernels = list(kernel_size) if kernel_size else [3, 5]
    if any(k < 1 or k % 2 == 0 for k in kernels):
        raise ValueError(f"SK: kernel sizes must be odd, got {kernels}")
    if split_input and in_channels % len(kernels):
        raise ValueError(
            f"SK: split_input needs in_channels ({in_channels}) divisible by the {len(kernels)} paths; "
            "set split_input: false"
        )
    attn = max(make_divisible(out * rd_ratio, divisor=rd_divisor), rd_min)
    return SelectiveKernel(
        in_channels,
        out,
        kernel_size=kernels,
        stride=stride,
        groups=groups,
        rd_channels=attn,
        keep_3x3=keep_3x3,
        split_input=split_input,
    )
