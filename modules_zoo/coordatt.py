"""Coordinate Attention.

Paper: Qibin Hou, Daquan Zhou, Jiashi Feng, "Coordinate Attention for Efficient Mobile Network
Design", CVPR 2021 (arXiv:2103.02907). Official code: https://github.com/Andrew-Qibin/CoordAttention
(now https://github.com/houqb/CoordAttention), file ``coordatt.py``.

We do not reimplement it: timm's ``CoordAttn`` is the official module layer for layer once it is
given the official bottleneck width ``mip = max(8, channels // reduction)`` and ``bias=True``.

Checked against the official ``coordatt.py``:

* same layers and the same state-dict keys (``conv1``, ``bn1``, ``conv_h``, ``conv_w``; the
  activation and gate hold no parameters), so official checkpoints load with ``strict=True``;
* pooling: official ``AdaptiveAvgPool2d((None, 1))`` / ``((1, None))`` == timm's ``mean`` over W / H;
* activation: official ``h_swish`` (``x * relu6(x + 3) / 6``) == ``nn.Hardswish``;
* gate: sigmoid on both branches, ``out = identity * a_w * a_h``, no residual (``has_skip=False``).

Differences (none change the maths):

* the official module takes ``(inp, oup)``; the output is multiplied with the input, so ``oup`` must
  equal ``inp`` in practice; here there is only ``channels``;
* timm's default is ``bias=False`` and a different width rule (``rd_ratio * se_factor``), which is
  why the builder passes ``rd_channels`` and ``bias=True`` explicitly;
* the ImageNet model file ``mbv2_ca.py`` in the same repository names the layers ``conv2`` /
  ``conv3`` (instead of ``conv_h`` / ``conv_w``) and calls the reduction ``groups``: rename those keys
  to load MobileNetV2-CA checkpoints.
"""

from __future__ import annotations

from timm.layers.coord_attn import CoordAttn
from torch import nn

from .registry import register

__all__ = ["coord_att"]


@register(
    "CoordAtt",
    kind="unary",
    reference=(
        "Hou, Zhou, Feng, 'Coordinate Attention for Efficient Mobile Network Design', CVPR 2021, "
        "arXiv:2103.02907; official code github.com/Andrew-Qibin/CoordAttention (via timm CoordAttn)"
    ),
    summary="Coordinate attention: H- and W-strip pooling, shared 1x1 bottleneck, per-axis sigmoid gates.",
    fidelity="official-output",
    tested_by=("tests/test_zoo.py::test_coordatt_matches_official",),
)
def coord_att(channels: int, reduction: int = 32) -> nn.Module:
    """Official Coordinate Attention (timm ``CoordAttn`` with the official sizes).

    Args:
        channels: input (= output) channels.
        reduction: bottleneck width is ``max(8, channels // reduction)`` (official default 32).
    """
    if reduction < 1:
        raise ValueError(f"reduction must be >= 1, got {reduction}")
    mip = max(8, channels // reduction)
    return CoordAttn(
        channels,
        rd_channels=mip,
        bias=True,
        act_layer=nn.Hardswish,
        norm_layer=nn.BatchNorm2d,
        gate_layer="sigmoid",
        has_skip=False,
    )
