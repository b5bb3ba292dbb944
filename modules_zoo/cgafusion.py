"""CGA fusion: content-guided-attention mixup fusion of a skip and a decoder feature.

Paper: Zixuan Chen, Zewei He, Zhe-Ming Lu, "DEA-Net: Single image dehazing based on
detail-enhanced convolution and content-guided attention", IEEE Transactions on Image Processing
33, 2024 (doi:10.1109/TIP.2024.3354108, arXiv:2301.04805). Official code:
https://github.com/cecret3350/DEA-Net (``code/model/modules/cga.py`` for the attention parts and
``code/model/modules/fusion.py`` for ``CGAFusion``).

This is our own implementation, written to be layer-for-layer the official module: the same
submodules and state-dict keys (``sa.sa``, ``ca.ca.0``, ``ca.ca.2``, ``pa.pa2``, ``conv``), the same
parameter count and the same output for the same weights, so official weights load with
``strict=True``.

Argument order. In DEA-Net ``CGAFusion.forward(x, y)`` is called as ``mix1(x_down3, x8)`` and
``mix2(x_down2, x_up1)`` (``code/model/backbone.py``): ``x`` is the encoder (low-level, skip)
feature, ``y`` the deeper decoder / up-sampled feature; the gate ``W`` weights ``x`` and ``1 - W``
weights ``y``. The stitch harness calls fusion modules as ``module(skip, up)``, i.e. the same
order: ``x = skip``, ``y = up``.

Differences between the official code and the paper, and what we do:

* **Double sigmoid** (the one that matters). The official ``PixelAttention`` already ends in a
  sigmoid, and ``CGAFusion.forward`` applies ``sigmoid`` again, so the mixing weight is
  ``sigmoid(sigmoid(z))``, confined to (0.5, 0.731): the skip feature always gets at least half the
  weight. The paper has a single sigmoid, ``W = sigma(GC_7x7(CS([X, W_coa])))``; DEA-Net's own
  ``DEABlock`` uses ``PixelAttention`` with the single sigmoid. (The question is open as issue #25
  on the official repository, without a reply from the authors.) Default ``paper_sigmoid=False``
  follows the official code so that released weights behave as trained; ``paper_sigmoid=True``
  gives the paper's single sigmoid. The parameters are the same either way.
* Reflect padding in the two 7x7 convolutions (spatial and pixel attention) is an official-code
  detail the paper does not spell out. Reflect padding needs both spatial sizes >= 4.
* The channel shuffle ``CS`` of the paper is, in code, the interleaving of ``[x, pattn1]``
  channel by channel (einops ``'b c t h w -> b (c t) h w'``); we do the same interleave with
  ``torch.stack(..., dim=2).flatten(1, 2)`` (no einops, ``torch.fx`` traceable).
* ``reduction`` is 8 by default as in ``CGAFusion.__init__``; note that DEA-Net itself builds its
  second (shallower) fusion with ``reduction=4``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import register

__all__ = ["CGAFusion", "ChannelAttention", "PixelAttention", "SpatialAttention", "cga_fusion"]


class SpatialAttention(nn.Module):
    """Spatial importance map: 7x7 reflect-padded conv over [channel mean, channel max] -> 1 map."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.sa = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, padding_mode="reflect", bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x_avg = torch.mean(x, dim=1, keepdim=True)
        x_max = torch.max(x, dim=1, keepdim=True).values
        return self.sa(torch.cat([x_avg, x_max], dim=1))


class ChannelAttention(nn.Module):
    """Channel importance vector: GAP -> 1x1 (dim -> dim // reduction) -> ReLU -> 1x1 back (no gate)."""

    def __init__(self, dim: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = dim // reduction
        if hidden < 1:
            raise ValueError(
                f"ChannelAttention: dim // reduction must be >= 1 (dim={dim}, reduction={reduction})"
            )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.ca = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, padding=0, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, dim, 1, padding=0, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.ca(self.gap(x))


class PixelAttention(nn.Module):
    """Channel-specific refinement: grouped 7x7 reflect conv over interleaved [x, coarse map], sigmoid."""

    def __init__(self, dim: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.pa2 = nn.Conv2d(
            2 * dim, dim, kernel_size, padding=kernel_size // 2, padding_mode="reflect", groups=dim, bias=True
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor, pattn1: Tensor) -> Tensor:
        # [B, C, 2, H, W] -> [B, 2C, H, W] with channels x_0, p_0, x_1, p_1, ...
        x2 = torch.stack([x, pattn1], dim=2).flatten(1, 2)
        return self.sigmoid(self.pa2(x2))


class CGAFusion(nn.Module):
    """DEA-Net CGA-based mixup fusion ``(x, y) -> conv1x1(x + y + W * x + (1 - W) * y)``.

    ``x`` is the encoder skip feature, ``y`` the decoder feature, both ``[B, dim, H, W]``.
    ``W`` is the content-guided attention computed from ``x + y``; see the module docstring for
    ``paper_sigmoid``.
    """

    def __init__(self, dim: int, reduction: int = 8, paper_sigmoid: bool = False) -> None:
        super().__init__()
        self.paper_sigmoid = paper_sigmoid
        self.sa = SpatialAttention()
        self.ca = ChannelAttention(dim, reduction)
        self.pa = PixelAttention(dim)
        self.conv = nn.Conv2d(dim, dim, 1, bias=True)
        # Official code: a second sigmoid on top of PixelAttention's; the paper has only one.
        self.sigmoid = nn.Identity() if paper_sigmoid else nn.Sigmoid()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        initial = x + y
        cattn = self.ca(initial)
        sattn = self.sa(initial)
        pattn1 = sattn + cattn
        pattn2 = self.sigmoid(self.pa(initial, pattn1))
        result = initial + pattn2 * x + (1 - pattn2) * y
        return self.conv(result)

    def extra_repr(self) -> str:
        return f"paper_sigmoid={self.paper_sigmoid}"


@register(
    "CGAFusion",
    kind="fusion",
    reference=(
        "Chen, He, Lu, 'DEA-Net: Single image dehazing based on detail-enhanced convolution and "
        "content-guided attention', IEEE TIP 2024, arXiv:2301.04805; official code "
        "github.com/cecret3350/DEA-Net (code/model/modules/fusion.py, cga.py)"
    ),
    summary=(
        "Content-guided attention mixup fusion of skip x and decoder y: "
        "conv1x1(x + y + W*x + (1-W)*y); official double sigmoid unless paper_sigmoid."
    ),
    fidelity="official-output",
    fidelity_note="the default follows the code's double sigmoid; `paper_sigmoid: true` follows the paper",
    tested_by=("tests/test_zoo.py::test_cgafusion_matches_official",),
)
def cga_fusion(channels: int, reduction: int = 8, paper_sigmoid: bool = False) -> nn.Module:
    """Build :class:`CGAFusion`; called as ``module(skip, up)``.

    Args:
        channels: channels of both inputs and of the output.
        reduction: channel-attention bottleneck ratio (official default 8).
        paper_sigmoid: single sigmoid as in the paper instead of the official code's two.
    """
    return CGAFusion(channels, reduction=reduction, paper_sigmoid=paper_sigmoid)
