"""Presets that rebuild the attention modules of released models on timm's layers.

Each preset keeps timm's module classes and state-dict keys and changes only what the released
model does differently (sizes, input order, normalisation settings, initialisation):

* official CBAM (Jongchan/attention-module, ``MODELS/cbam.py`` and ``MODELS/model_resnet.py`` at
  c06383c514ab0032d044cc6fcd8c8207ea222ea7, unchanged at HEAD 459efad0e05ee7dde50c41ca10a3d0800bc3792a);
* ECA's released kernel sizes per stage (BangguWu/ECANet README and ``models/eca_resnet.py`` at
  b332f6b3e6e2afe8a3287dc8ee8440a0fbec74c4);
* GCNet's ContextBlock as mmdetection configures it (open-mmlab/mmcv
  ``mmcv/cnn/bricks/context_block.py`` at a8073c74bf83d62ec36a103f835faa4837fb6585; mmdetection
  ``configs/gcnet/mask-rcnn_r50-fpn-r16-gcb-c3-c5_1x_coco.py`` at f688845e8018b442821e00e2ba369fa61235ca98).

The builders in :mod:`modules_zoo.timm_attention` decide when a preset applies; the functions here
build the preset module from already-resolved arguments.
"""

from __future__ import annotations

import torch
from timm.layers import GlobalContext
from timm.layers.cbam import CbamModule, SpatialAttn
from torch import Tensor, nn

__all__ = [
    "ECA_RELEASED_KERNELS",
    "MaxMeanSpatialAttn",
    "eca_released_kernel",
    "floor_width",
    "mmdet_context_block",
    "official_cbam",
    "zero",
]

#: ECA's released kernel sizes, keyed by preset and then by the channels of each stage's blocks
#: (the ``k3557``-style suffix of the checkpoint names in the ECANet README, one digit per stage).
ECA_RELEASED_KERNELS: dict[str, dict[int, int]] = {
    "resnet18": {64: 3, 128: 5, 256: 7, 512: 7},  # eca_resnet18_k3577
    "resnet34": {64: 3, 128: 3, 256: 5, 512: 7},  # eca_resnet34_k3357
    "resnet50": {256: 3, 512: 5, 1024: 5, 2048: 7},  # eca_resnet50_k3557
    "resnet101": {256: 3, 512: 3, 1024: 5, 2048: 7},  # eca_resnet101_k3357
    "resnet152": {256: 3, 512: 3, 1024: 5, 2048: 7},  # eca_resnet152_k3357
    "maskrcnn_resnet50": {256: 3, 512: 3, 1024: 7, 2048: 7},  # mask_rcnn / RetinaNet ecanet50_k3377
    "maskrcnn_resnet101": {256: 3, 512: 3, 1024: 5, 2048: 7},  # mask_rcnn / RetinaNet ecanet101_k3357
}


def eca_released_kernel(preset: str, channels: int) -> int:
    """The released 1D kernel size of ECA ``preset`` for a block with ``channels`` channels.

    Raises ``ValueError`` (one line) when the released model has no stage of that width.
    """
    table = ECA_RELEASED_KERNELS[preset]
    if channels not in table:
        widths = ", ".join(str(c) for c in table)
        raise ValueError(
            f"ECA preset {preset!r} has kernel sizes for {widths} channels (its stages), not {channels}; "
            "set kernel_size instead"
        )
    return table[channels]


def floor_width(channels: int, ratio: float) -> int:
    """``int(channels * ratio)``, the bottleneck width of the official CBAM (``C // r``) and of mmcv's
    ContextBlock (timm rounds to the nearest integer instead; both agree at ResNet widths with 1/16).

    Raises ``ValueError`` when the width would be 0.
    """
    width = int(channels * ratio + 1e-9)  # 1e-9: 96 * (1 / 3) is 31.99999... in floating point
    if width < 1:
        raise ValueError(f"rd_ratio {ratio} leaves no bottleneck channel for {channels} channels")
    return width


class MaxMeanSpatialAttn(SpatialAttn):
    """timm's CBAM spatial gate fed in the official order: channel max first, then channel mean
    (``ChannelPool`` in Jongchan/attention-module ``MODELS/cbam.py``; timm uses (mean, max)).
    Same submodules and state-dict keys as :class:`timm.layers.cbam.SpatialAttn`."""

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(pooled))


def official_cbam(channels: int, rd_ratio: float) -> CbamModule:
    """CBAM as in the official code, on timm's ``CbamModule`` (state-dict keys unchanged).

    Channel MLP with biases and ``channels // r`` hidden units; spatial gate on (max, mean) with a
    7x7 conv and BatchNorm2d(1, momentum 0.01); the official ResNet's initialisation of the module
    (``ResidualNet``'s loop over its state dict): spatial conv ``kaiming_normal_(fan_out)``, spatial
    BN weight and bias 0 (the spatial gate starts at sigmoid(0) = 0.5), MLP biases 0, MLP weights
    PyTorch's default (the same distribution for ``nn.Linear`` and timm's 1x1 convs).
    """
    module = CbamModule(
        channels, rd_channels=floor_width(channels, rd_ratio), spatial_kernel_size=7, mlp_bias=True
    )
    spatial = MaxMeanSpatialAttn(kernel_size=7)
    spatial.load_state_dict(module.spatial.state_dict())
    module.spatial = spatial
    conv, bn = spatial.conv.conv, spatial.conv.bn
    bn.momentum = 0.01
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    zero(bn.weight, bn.bias, module.channel.fc1.bias, module.channel.fc2.bias)
    return module


def mmdet_context_block(channels: int, rd_ratio: float, use_attn: bool, fusion: str) -> GlobalContext:
    """mmcv's ``ContextBlock(channels, ratio, pooling_type, fusion_types)`` on timm's ``GlobalContext``.

    Width ``int(channels * ratio)``; LayerNorm eps 1e-5 (timm: 1e-6); mmcv's ``reset_parameters``:
    the attention-pooling conv ``kaiming_normal_(fan_in, relu)`` with bias 0, the last conv of each
    fusion branch weight and bias 0 (an add-fusion block is the identity at initialisation; a
    multiplicative one scales by sigmoid(0) = 0.5). ``fusion``: ``add``, ``mul`` or ``both``.
    """
    module = GlobalContext(
        channels,
        use_attn=use_attn,
        fuse_add=fusion in ("add", "both"),
        fuse_scale=fusion in ("mul", "both"),
        rd_channels=floor_width(channels, rd_ratio),
    )
    if module.conv_attn is not None:
        nn.init.kaiming_normal_(module.conv_attn.weight, mode="fan_in", nonlinearity="relu")
        zero(module.conv_attn.bias)
    for mlp in (module.mlp_add, module.mlp_scale):
        if mlp is not None:
            if isinstance(mlp.norm, nn.LayerNorm):  # timm's LayerNorm2d
                mlp.norm.eps = 1e-5
            zero(mlp.fc2.weight, mlp.fc2.bias)
    return module


def zero(*tensors: Tensor | None) -> None:
    """Fill each tensor that exists with 0 (a layer built without bias has ``None``)."""
    for tensor in tensors:
        if tensor is not None:
            nn.init.zeros_(tensor)
