"""Split-Attention convolution (ResNeSt), alone or as the 3x3 conv of a ResNet bottleneck.

Paper: Hang Zhang, Chongruo Wu, Zhongyue Zhang, Yi Zhu, Haibin Lin, Zhi Zhang, Yue Sun, Tong He,
Jonas Mueller, R. Manmatha, Mu Li, Alexander Smola, "ResNeSt: Split-Attention Networks",
CVPR Workshops 2022 (arXiv:2004.08955). Official code: https://github.com/zhanghang1989/ResNeSt
@ 1dfb3e8867e2ece1c28a65c9db1cded2818a2031, ``resnest/torch/models/splat.py`` (``SplAtConv2d``)
and ``resnest/torch/models/resnet.py`` (``Bottleneck``, ``ResNet``; pip package ``resnest``).

We wrap timm's ``SplitAttn`` (its forward is used unchanged) and only fix the layer sizes so they
are the official ones:

* attention bottleneck ``inter = max(in_channels * radix // reduction_factor, 32)``, ``fc1`` =
  ``Conv2d(out_channels, inter, 1, groups=cardinality)``; timm would size it as ``rd_channels *
  radix`` or by ``make_divisible``;
* conv ``Conv2d(in, out * radix, k, stride, padding=k // 2, groups=cardinality * radix)``, with
  ``BatchNorm2d`` and ``bias=False`` as ResNeSt's bottleneck builds it (``norm=True``); without norm
  the conv has a bias, as ``SplAtConv2d``'s own default ``bias=True``.

timm's submodule names equal the official ones (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``), so
state dicts move between the two unchanged (the ``avd`` pool holds no parameters).

Inside a bottleneck (official ``Bottleneck``; timm's ``ResNestBottleneck`` does the same):

* no ``bn2`` and no ReLU follow a split-attention conv (they exist only for ``radix == 0``). With
  ``bottleneck: auto`` (default) a ``replace`` of a torchvision ``Bottleneck.conv2`` absorbs
  ``bn2`` (:mod:`modules_zoo.bottleneck_site`); torchvision's shared ReLU stays but is a no-op, the
  output being a non-negative combination of ReLU outputs. ``bottleneck: false`` keeps ``bn2``
  (stitch's behaviour before; not ResNeSt's block).
* ``avd`` (official ``Bottleneck`` default off; the released ResNeSt-50/101/200/269 and timm's
  ``resnest*d`` models: on, ``avd_first`` off): at stride > 1 the split-attention conv runs at
  stride 1 and ``AvgPool2d(3, stride, padding=1)`` follows it (``avd_first``: precedes it). The
  official code also pools at stride 1 in the first block of a dilated stage (``is_first``): not
  covered (stitch places no module by block index).
* ``init: resnest``: the official ``ResNet`` init, applied to this module: every conv (``conv``,
  ``fc1``, ``fc2``) ``normal(0, sqrt(2 / (k_h * k_w * out_channels)))`` (groups not counted),
  conv biases left at PyTorch's default, BN weight 1 / bias 0. torchvision's ResNet init
  (``kaiming_normal_(mode="fan_out", nonlinearity="relu")``) gives its other convs the same std;
  timm's ResNet init also (no conv bias handling) but zero-inits ``bn3`` (``zero_init_last``), which
  the official ``last_gamma`` would too, were it not overwritten by the init loop that follows
  (``last_gamma`` has no effect in the official code; not copied). ``init: default`` keeps
  PyTorch's default init (stitch's behaviour before).

The released models' block is ``{avd: true, init: resnest}`` on top of the defaults (radix 2,
cardinality 1, reduction factor 4). There is no ``preset``: it would name two arguments only,
and a replaced conv2 cannot give the rest of a released ResNeSt. Not covered: the deep stem and
the ``avg_down`` shortcut (ResNet-D), DropBlock (``dropblock_prob``), ``rectify`` (RFConv) and
dilation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from timm.layers import SplitAttn
from torch import nn

from .bottleneck_site import absorbs_bn2, check_bottleneck_choice
from .registry import register

__all__ = ["SplitAttention", "resnest_init"]


@register(
    "SplitAttention",
    kind="unary",
    reference=(
        "Zhang et al., 'ResNeSt: Split-Attention Networks', CVPRW 2022, arXiv:2004.08955; official "
        "code github.com/zhanghang1989/ResNeSt (resnest.torch.splat.SplAtConv2d, resnest.torch.resnet."
        "Bottleneck; via timm SplitAttn)"
    ),
    summary=(
        "Split-attention conv (radix splits, softmax attention across splits); can replace a 3x3 "
        "conv, including stride-2 and in != out ones; replacing a ResNet Bottleneck's conv2 it "
        "absorbs bn2 as in ResNeSt."
    ),
    absorbs=absorbs_bn2,
    fidelity="official-output",
    fidelity_note=(
        "SplAtConv2d; replacing a torchvision Bottleneck's conv2 (bn2 absorbed; avd, avd_first), the "
        "official ResNeSt Bottleneck"
    ),
    tested_by=(
        "tests/test_zoo.py::test_split_attention_matches_official",
        "tests/test_split_attention.py::test_replaced_bottleneck_conv2_equals_resnest_bottleneck",
    ),
)
class SplitAttention(SplitAttn):
    """timm ``SplitAttn`` with the official ResNeSt ``SplAtConv2d`` layer sizes (BN as in ResNeSt's
    bottleneck), optionally with ResNeSt's ``avd`` pooling and initialisation.

    Args:
        in_channels: input channels (must be divisible by ``cardinality * radix``).
        out_channels: output channels (default: ``in_channels``).
        stride: conv stride (2 to replace a down-sampling 3x3 conv).
        kernel_size: conv kernel size (padding ``kernel_size // 2``).
        radix: number of splits attended over (1 = sigmoid gate, SE-like).
        cardinality: groups of the conv and of the attention MLP.
        reduction_factor: attention width ``max(in_channels * radix // reduction_factor, 32)``.
        norm: BatchNorm after the conv and in the attention MLP (conv bias off); no norm = conv bias.
        bottleneck: take over the ``bn2`` of a torchvision ``Bottleneck`` whose ``conv2`` this
            module replaces: ``auto`` (there only), ``true`` (an error elsewhere) or ``false``
            (keep ``bn2``). Read by the harness (:func:`modules_zoo.bottleneck_site.absorbs_bn2`).
        avd: at ``stride > 1``, run the conv at stride 1 and down-sample with
            ``AvgPool2d(3, stride, padding=1)`` (ResNeSt's ``avd``); no effect at stride 1.
        avd_first: pool before the conv instead of after it.
        init: ``default`` (PyTorch's) or ``resnest`` (the official ResNet init, see the module doc).
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
        bottleneck: bool | Literal["auto"] = "auto",
        avd: bool = False,
        avd_first: bool = False,
        init: Literal["default", "resnest"] = "default",
    ) -> None:
        if init not in ("default", "resnest"):
            raise ValueError(f"init must be default or resnest, not {init!r}")
        out_channels = out_channels or in_channels
        inter = max(in_channels * radix // reduction_factor, 32)
        norm_layer = nn.BatchNorm2d if norm else None
        divisible = inter % radix == 0
        pooled = avd and stride > 1
        super().__init__(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=1 if pooled else stride,
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
        self.bottleneck = check_bottleneck_choice(bottleneck)
        self.avd_first = avd_first
        # ResNeSt's name for the pool; no parameters, so state dicts match SplAtConv2d's
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if pooled else None
        if init == "resnest":
            resnest_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.avd_layer is not None and self.avd_first:
            x = self.avd_layer(x)
        x = super().forward(x)
        if self.avd_layer is not None and not self.avd_first:
            x = self.avd_layer(x)
        return x


def resnest_init(module: nn.Module) -> None:
    """The official ResNeSt ``ResNet`` init on ``module``'s layers: each conv's weight from
    ``normal(0, sqrt(2 / (k_h * k_w * out_channels)))`` (its bias untouched), each BatchNorm's
    weight 1 and bias 0."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
