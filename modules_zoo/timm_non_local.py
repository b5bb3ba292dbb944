"""Non-local blocks that timm implements: NonLocal (embedded Gaussian) and BAT.

Wrapped, not rewritten: the timm classes ``NonLocalAttn`` and ``BatNonLocalAttn`` (what
``timm.layers.create_attn`` returns for ``'nl'`` and ``'bat'``, timm 1.0.31), forward unchanged. Both
add their own shortcut (``x + f(x)``), so they take the modes ``after``, ``before`` and ``replace``
but not ``residual`` (that would add ``x`` twice). Attention over all H*W positions makes NonLocal's
memory grow as (H*W)^2: use it at stride 16 or coarser.

Papers and code:

* NonLocal: Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018, arXiv:1711.07971;
  official code github.com/facebookresearch/video-nonlocal-net (Caffe2, video). timm's 2D block
  comes from the BAT authors' ImageNet code (below, ``model_zoo/non_local.py``).
* BAT: Chi, Yuan, Yu, Wang, "Non-Local Neural Networks With Grouped Bilinear Attentional
  Transforms", CVPR 2020 (CVF open access, no arXiv); official code
  github.com/BA-Transform/BAT-Image-Classification @ 76275b58b6058f253e7810c31083572c034d1841,
  ``model_zoo/non_local.py`` and ``model_zoo/nlnet.py`` (timm: "adapted from" it).

Defaults follow the official code's sizes, not timm's: NonLocal ``rd_ratio: 0.5, rd_divisor: 1``
(the official ``inter = C // 2``; timm's default is ``C / 8`` rounded to 8) and BAT ``groups: 4,
rd_ratio: 0.5, rd_divisor: 1, block_size: 7`` (official ``k = 4``, ``C / 2``, ``s = 7``; timm's
default is 2 groups and ``C / 4`` rounded to 8). Where timm still differs from the official code:

* NonLocal: the logits are scaled by ``C ** -0.5`` (in-channels; official ``inter ** -0.5``, so the
  logits differ by sqrt(2) and outputs differ once trained); the norm is ``norm`` (official ``bn``).
  Same layers, biases and init (kaiming-normal fan-out, zero biases, the BN zero-initialised, so the
  block is the identity at init), so the parameter count is the official one: five blocks after
  every second bottleneck of ResNet-50's layer2 and layer3 (the official NLNet) add 7,358,464.
* BAT: timm's ``ConvNormAct`` convs have no bias (the official 1x1 convs do: 2C + 4 parameters fewer
  per block), no kaiming re-init, ``H // s`` and ``W // s`` for the two resize matrices (official:
  ``H // s`` for both, square maps only). H and W must be multiples of ``block_size``:
  :class:`CheckedBatNonLocalAttn` says so in one line (timm asserts without a message), and where
  inputs vary in size (the instance task) the ``fit`` hook refuses BAT unless the padding keeps
  every size such a multiple at the point (Mask R-CNN pads to multiples of 32: never with ``s = 7``;
  :func:`modules_zoo.feature_size.block_multiple_fit`).
"""

from __future__ import annotations

import torch
from timm.layers import BatNonLocalAttn, NonLocalAttn
from timm.layers.helpers import make_divisible
from torch import nn

from .feature_size import block_multiple_fit, check_block_multiple
from .registry import register

__all__ = ["CheckedBatNonLocalAttn", "bat", "non_local"]

#: modes of a block that adds its own shortcut
OWN_SHORTCUT_MODES = ("after", "before", "replace")


class CheckedBatNonLocalAttn(BatNonLocalAttn):
    """timm ``BatNonLocalAttn`` whose forward first checks H and W against the block size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_block_multiple("BAT", x.shape[-2], x.shape[-1], self.ba.block_size)
        return super().forward(x)


@register(
    "NonLocal",
    kind="unary",
    modes=OWN_SHORTCUT_MODES,
    reference=(
        "Wang, Girshick, Gupta, He, 'Non-local Neural Networks', CVPR 2018, arXiv:1711.07971; "
        "2D block of github.com/BA-Transform/BAT-Image-Classification model_zoo/non_local.py "
        "(timm NonLocalAttn)"
    ),
    summary="Embedded-Gaussian non-local block, x + BN(W_z(softmax(theta phi^T) g)); identity at init.",
    fidelity="variant",
    fidelity_note=(
        "timm NonLocalAttn at the official sizes: the official parameter count (5 blocks on ResNet-50: "
        "7,358,464), but logits scaled by C ** -0.5 instead of the official inter ** -0.5"
    ),
    tested_by=(
        "tests/test_timm_layers.py::test_non_local_defaults_match_the_official_nlnet_parameter_count",
    ),
)
def non_local(channels: int, use_scale: bool = True, rd_ratio: float = 0.5, rd_divisor: int = 1) -> nn.Module:
    """Non-local block (timm ``NonLocalAttn``, official sizes by default).

    Args:
        channels: input (= output) channels.
        use_scale: scale the logits by ``channels ** -0.5`` (official: ``inter ** -0.5``).
        rd_ratio: embedding width ``channels * rd_ratio`` (official 1/2; timm 1/8).
        rd_divisor: embedding width rounded to a multiple of this (official 1; timm 8).
    """
    return NonLocalAttn(channels, use_scale=use_scale, rd_ratio=rd_ratio, rd_divisor=rd_divisor)


@register(
    "BAT",
    kind="unary",
    modes=OWN_SHORTCUT_MODES,
    reference=(
        "Chi, Yuan, Yu, Wang, 'Non-Local Neural Networks With Grouped Bilinear Attentional Transforms', "
        "CVPR 2020; official code github.com/BA-Transform/BAT-Image-Classification (timm BatNonLocalAttn)"
    ),
    summary=(
        "Bilinear attentional transform block, x + dropout(conv(BAT(conv(x)))); H and W multiples of "
        "block_size."
    ),
    fit=block_multiple_fit("BAT", 7),
    fidelity="variant",
    fidelity_note=(
        "timm BatNonLocalAttn at the official sizes: 1x1 convs without the official biases (2C + 4 "
        "parameters fewer per block), no kaiming re-init, separate H and W resize"
    ),
    tested_by=(
        "tests/test_timm_layers.py::test_non_local_defaults_match_the_official_nlnet_parameter_count",
    ),
)
def bat(
    channels: int,
    block_size: int = 7,
    groups: int = 4,
    rd_ratio: float = 0.5,
    rd_divisor: int = 1,
    drop_rate: float = 0.2,
) -> nn.Module:
    """BAT block (timm ``BatNonLocalAttn``, official sizes by default).

    Args:
        channels: input (= output) channels.
        block_size: side s of the bilinear transform's blocks; H and W must be multiples of it.
        groups: attention groups k (official 4; timm 2); must divide the reduced width.
        rd_ratio: reduced width ``channels * rd_ratio`` (official 1/2; timm 1/4).
        rd_divisor: reduced width rounded to a multiple of this (official 1; timm 8).
        drop_rate: Dropout2d before the shortcut (official 0.2).
    """
    reduced = make_divisible(channels * rd_ratio, divisor=rd_divisor)
    if groups < 1 or reduced % groups:
        raise ValueError(
            f"BAT: groups={groups} must divide the reduced width {reduced} (channels * rd_ratio); "
            "change groups or rd_ratio"
        )
    return CheckedBatNonLocalAttn(
        channels,
        block_size=block_size,
        groups=groups,
        rd_channels=reduced,
        drop_rate=drop_rate,
    )
