"""Split-Attention convolution (ResNeSt).

Paper: Hang Zhang, Chongruo Wu, Zhongyue Zhang, Yi Zhu, Haibin Lin, Zhi Zhang, Yue Sun, Tong He,
Jonas Mueller, R. Manmatha, Mu Li, Alexander Smola, "ResNeSt: Split-Attention Networks",
CVPR Workshops 2022 (arXiv:2004.08955). Official code: https://github.com/zhanghang1989/ResNeSt
(pip package ``resnest``, ``resnest.torch.splat.SplAtConv2d``).

We wrap timm's ``SplitAttn`` (its forward is used unchanged) and only fix the layer sizes so they
are the official ones:

* attention bottleneck ``inter = max(in_channels * radix // reduction_factor, 32)``, ``fc1`` =
  ``Conv2d(out_channels, inter, 1, groups=cardinality)``; timm would size it as ``rd_channels *
  radix`` or by ``make_divisible``;
* conv ``Conv2d(in, out * radix, k, stride, padding=k // 2, groups=cardinality * radix)``, with
  ``BatchNorm2d`` and ``bias=False`` as ResNeSt's bottleneck builds it (``norm=True``); without norm
  the conv has a bias, as ``SplAtConv2d``'s own default ``bias=True``.

timm's submodule names equal the official ones (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``), so
state dicts move between the two unchanged. Not covered: ``rectify`` (RFConv) and DropBlock
(``dropblock_prob``) from the official module, and dilation.
"""

from __future__ import annotations

from timm.layers import SplitAttn
from torch import nn

from .registry import register

__all__ = ["SplitAttention"]


@register(
    "SplitAttention",
    kind="unary",
    reference=(
        "Zhang et al., 'ResNeSt: Split-Attention Networks', CVPRW 2022, arXiv:2004.08955; official "
        "code github.com/zhanghang1989/ResNeSt (resnest.torch.splat.SplAtConv2d; via timm SplitAttn)"
    ),
    summary=(
        "Split-attention conv (radix splits, softmax attention across splits); can replace a 3x3 "
        "conv, including stride-2 and in != out ones."
    ),
    fidelity="official-output",
    tested_by=("tests/test_zoo.py::test_split_attention_matches_official",),
)
class SplitAttention(SplitAttn):
    """timm ``SplitAttn`` with the official ResNeSt ``SplAtConv2d`` layer sizes (BN as in ResNeSt's
    bottleneck).

    Args:
        in_channels: input channels (must be divisible by ``cardinality * radix``).
        out_channels: output channels (default: ``in_channels``).
        stride: conv stride (2 to replace a down-sampling 3x3 conv).
        kernel_size: conv kernel size (padding ``kernel_size // 2``).
        radix: number of splits attended over (1 = sigmoid gate, SE-like).
        cardinality: groups of the conv and of the attention MLP.
        reduction_factor: attention width ``max(in_channels * radix // reduction_factor, 32)``.
        norm: BatchNorm after the conv and in the attention MLP (conv bias off); no norm = conv bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        kernel_size: int = 3,
        radix: int = 2,
        cardinality: int = 1,
        reduction_factor: int = 4,
        norm: bool = True,
    ) -> None:
        out_channels = out_channels or in_channels
        inter = max(in_channels * radix // reduction_factor, 32)
        norm_layer = nn.BatchNorm2d if norm else None
        divisible = inter % radix == 0
        super().__init__(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            groups=cardinality,
            bias=not norm,
            radix=radix,
            # timm builds fc1 with rd_channels * radix outputs. When the official width is not a
            # multiple of radix that cannot be expressed, so a placeholder (divisible by the
            # groups) is built here and fc1/bn1/fc2 are replaced below.
            rd_channels=inter // radix if divisible else cardinality,
            norm_layer=norm_layer,
        )
        if not divisible:
            # Same layers timm would build, at the official size ``inter``.
            self.fc1 = nn.Conv2d(out_channels, inter, 1, groups=cardinality)
            self.bn1 = norm_layer(inter) if norm_layer else nn.Identity()
            self.fc2 = nn.Conv2d(inter, out_channels * radix, 1, groups=cardinality)
        self.inter_channels = inter
