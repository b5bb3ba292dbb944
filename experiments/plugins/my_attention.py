"""An example plugin: two modules of "your own" that stitch can place anywhere.

A plugin is a plain Python file listed under ``plugins:`` in an experiment file. stitch imports it
before reading the zoo; whatever it registers with ``stitch.register_module`` is then a module
name like the zoo's. A class that is not registered can still be used as
``module: "my_attention.py:ClassName"``; its kind comes from ``forward``'s arguments.

- ``ECA`` (registered as ``eca``): Efficient Channel Attention, Wang et al., "ECA-Net: Efficient
  Channel Attention for Deep Convolutional Neural Networks", CVPR 2020, arXiv:1910.03151. Global
  average pooling, a 1-D convolution across channels (kernel size from the channel count) and a
  sigmoid gate. Written here from the paper (Eq. 12 for the kernel size); timm has ``EcaModule``.
- ``GatedSkip`` (not registered; used by reference): a two-input gate for a U-Net skip merge,
  ``g * skip + (1 - g) * up`` with ``g = sigmoid(conv1x1([skip, up]))``. A minimal fusion module
  for this example, not from a paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import stitch


@stitch.register_module(
    "eca",
    kind="unary",
    reference="Wang et al., 'ECA-Net: Efficient Channel Attention', CVPR 2020, arXiv:1910.03151",
    summary="Efficient channel attention: global pooling, 1-D conv across channels, sigmoid gate.",
)
class ECA(nn.Module):
    """Efficient Channel Attention; ``channels`` comes from stitch's shape probe."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        k = int(abs(math.log2(channels) / gamma + b / gamma))
        k = k if k % 2 else k + 1  # the nearest odd kernel size (paper, Eq. 12)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3))  # N x C
        w = self.conv(w.unsqueeze(1)).squeeze(1)  # 1-D conv across the channel axis
        return x * torch.sigmoid(w)[:, :, None, None]


class GatedSkip(nn.Module):
    """A learned per-pixel gate between the encoder feature ``skip`` and the decoder feature ``up``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Conv2d(2 * channels, channels, kernel_size=1)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([skip, up], dim=1)))
        return g * skip + (1 - g) * up
