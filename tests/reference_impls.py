"""Independent functional transcriptions of official forwards, for the zoo fidelity tests.

Written from reading the official code (not copied from it): each function takes a zoo module only
as a bag of tensors (weights, BN statistics) and recomputes the official forward with
``torch.nn.functional``, in eval mode. Also the official parameter counts.

* CoordAtt: github.com/Andrew-Qibin/CoordAttention (houqb/CoordAttention), ``coordatt.py``.
* CGAFusion: github.com/cecret3350/DEA-Net, ``code/model/modules/cga.py`` and ``fusion.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _bn_eval(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def _h_swish(x: Tensor) -> Tensor:
    # official h_swish: x * h_sigmoid(x), h_sigmoid = relu6(x + 3) / 6
    return x * (F.relu6(x + 3.0) / 6.0)


# --------------------------------------------------------------------------------------------
# Coordinate Attention
# --------------------------------------------------------------------------------------------
def coordatt_official_param_count(inp: int, oup: int, reduction: int = 32) -> int:
    mip = max(8, inp // reduction)
    conv1 = inp * mip + mip
    bn1 = 2 * mip
    conv_hw = 2 * (mip * oup + oup)
    return conv1 + bn1 + conv_hw


def coordatt_official_forward(m: nn.Module, x: Tensor) -> Tensor:
    """Official CoordAtt forward (eval), using ``m.conv1``, ``m.bn1``, ``m.conv_h``, ``m.conv_w`` tensors."""
    n, c, h, w = x.shape
    x_h = F.adaptive_avg_pool2d(x, (h, 1))  # pool_h: AdaptiveAvgPool2d((None, 1)) -> [n, c, h, 1]
    x_w = F.adaptive_avg_pool2d(x, (1, w)).permute(0, 1, 3, 2)  # pool_w then permute -> [n, c, w, 1]
    y = torch.cat([x_h, x_w], dim=2)
    y = F.conv2d(y, m.conv1.weight, m.conv1.bias)
    y = _bn_eval(y, m.bn1)
    y = _h_swish(y)
    y_h, y_w = y[:, :, :h], y[:, :, h:]
    y_w = y_w.permute(0, 1, 3, 2)
    a_h = torch.sigmoid(F.conv2d(y_h, m.conv_h.weight, m.conv_h.bias))
    a_w = torch.sigmoid(F.conv2d(y_w, m.conv_w.weight, m.conv_w.bias))
    return x * a_w * a_h


COORDATT_OFFICIAL_KEYS = {
    "conv1.weight", "conv1.bias",
    "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "conv_h.weight", "conv_h.bias",
    "conv_w.weight", "conv_w.bias",
}


# --------------------------------------------------------------------------------------------
# DEA-Net CGAFusion
# --------------------------------------------------------------------------------------------
def cgafusion_official_param_count(dim: int, reduction: int = 8) -> int:
    sa = 2 * 7 * 7 + 1  # Conv2d(2, 1, 7)
    hid = dim // reduction
    ca = (dim * hid + hid) + (hid * dim + dim)  # 1x1 down, 1x1 up, both with bias
    pa = dim * 2 * 7 * 7 + dim  # Conv2d(2*dim, dim, 7, groups=dim): 2 inputs per output channel
    conv = dim * dim + dim
    return sa + ca + pa + conv


CGAFUSION_OFFICIAL_KEYS = {
    "sa.sa.weight", "sa.sa.bias",
    "ca.ca.0.weight", "ca.ca.0.bias", "ca.ca.2.weight", "ca.ca.2.bias",
    "pa.pa2.weight", "pa.pa2.bias",
    "conv.weight", "conv.bias",
}


def _conv_reflect(x: Tensor, conv: nn.Conv2d) -> Tensor:
    p = conv.weight.shape[-1] // 2
    return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), conv.weight, conv.bias, groups=conv.groups)


def cgafusion_official_forward(m: nn.Module, x: Tensor, y: Tensor, sigmoids: int = 2) -> Tensor:
    """Official CGAFusion forward, ``sigmoids=2`` as in the code (1 = the paper's formula)."""
    initial = x + y
    # ChannelAttention: GAP -> 1x1 -> ReLU -> 1x1
    g = initial.mean(dim=(2, 3), keepdim=True)
    cattn = F.conv2d(F.relu(F.conv2d(g, m.ca.ca[0].weight, m.ca.ca[0].bias)), m.ca.ca[2].weight, m.ca.ca[2].bias)
    # SpatialAttention: reflect 7x7 conv on [mean, max] over channels
    s_in = torch.cat([initial.mean(dim=1, keepdim=True), initial.max(dim=1, keepdim=True)[0]], dim=1)
    sattn = _conv_reflect(s_in, m.sa.sa)
    pattn1 = sattn + cattn
    # PixelAttention: channel interleave [initial_0, pattn1_0, initial_1, ...] (einops b c t h w -> b (c t) h w)
    b, c, h, w = initial.shape
    inter = torch.cat([initial.unsqueeze(2), pattn1.unsqueeze(2)], dim=2).reshape(b, 2 * c, h, w)
    z = _conv_reflect(inter, m.pa.pa2)
    for _ in range(sigmoids):
        z = torch.sigmoid(z)
    result = initial + z * x + (1 - z) * y
    return F.conv2d(result, m.conv.weight, m.conv.bias)
