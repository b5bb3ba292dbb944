"""U-Net (Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, https://arxiv.org/abs/1505.04597), laid out for stitching.

Four down and four up levels; a conv block is 2 x (3x3 conv, BN, ReLU) with padding, so the output
has the input's size (the input's height and width must be divisible by 16). Every place a
researcher changes is a named submodule:

    enc1 (alias stem) -> enc2 -> enc3 -> enc4 -> bottleneck
    up4 -> skip4 -> dec4 -> up3 -> skip3 -> dec3 -> ... -> dec1 -> head

``skip{i}`` is the concatenation of the encoder feature with the up-sampled decoder feature, a
module of its own so that a two-input fusion module (``fusion(skip, up)``) can replace it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from stitch.baselines.base import BaselineSpec


class ConvBlock(nn.Sequential):
    """2 x (3x3 conv, BatchNorm, ReLU)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool then a conv block."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), ConvBlock(in_channels, out_channels))


class SkipMerge(nn.Module):
    """The U-Net skip connection: channel concatenation ``[skip, up]``."""

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.cat([skip, up], dim=1)


def _up(in_channels: int, out_channels: int, upsampling: str) -> nn.Module:
    if upsampling == "transpose":
        return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
    )


class UNet(nn.Module):
    """U-Net with named, stitchable parts (see the module docstring)."""

    # Registered in ``__init__`` level by level (up4, skip4, dec4, up3, ...), the state-dict order.
    up4: nn.Module
    up3: nn.Module
    up2: nn.Module
    up1: nn.Module
    skip4: nn.Module
    skip3: nn.Module
    skip2: nn.Module
    skip1: nn.Module
    dec4: nn.Module
    dec3: nn.Module
    dec2: nn.Module
    dec1: nn.Module

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        base_width: int = 64,
        upsampling: Literal["transpose", "bilinear"] = "transpose",
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("base_width", base_width),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if upsampling not in ("transpose", "bilinear"):
            raise ValueError(f"upsampling must be 'transpose' or 'bilinear', not {upsampling!r}")
        w = [base_width * 2**i for i in range(5)]  # 64, 128, 256, 512, 1024
        self.enc1 = ConvBlock(in_channels, w[0])
        self.enc2 = Down(w[0], w[1])
        self.enc3 = Down(w[1], w[2])
        self.enc4 = Down(w[2], w[3])
        self.bottleneck = Down(w[3], w[4])
        for i in (4, 3, 2, 1):
            setattr(self, f"up{i}", _up(w[i], w[i - 1], upsampling))
            setattr(self, f"skip{i}", SkipMerge())
            setattr(self, f"dec{i}", ConvBlock(2 * w[i - 1], w[i - 1]))
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        d = self.bottleneck(e4)
        d = self.dec4(self.skip4(e4, self.up4(d)))
        d = self.dec3(self.skip3(e3, self.up3(d)))
        d = self.dec2(self.skip2(e2, self.up2(d)))
        d = self.dec1(self.skip1(e1, self.up1(d)))
        return self.head(d)


def build_unet(
    in_channels: int = 3,
    num_classes: int = 2,
    base_width: int = 64,
    upsampling: Literal["transpose", "bilinear"] = "transpose",
) -> UNet:
    """Build the U-Net baseline (no pretrained weights exist for it)."""
    return UNet(in_channels, num_classes, base_width, upsampling)


def unet_aliases(model: nn.Module) -> dict[str, str]:
    names = ["enc1", "enc2", "enc3", "enc4", "bottleneck"]
    names += [f"{part}{i}" for i in (4, 3, 2, 1) for part in ("up", "skip", "dec")] + ["head"]
    aliases = {n: n for n in names}
    aliases["stem"] = "enc1"
    return aliases


def unet_example_batch(
    args: dict[str, Any], batch_size: int, image_size: tuple[int, int] | None
) -> dict[str, torch.Tensor]:
    h, w = image_size or UNET.default_image_size
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, args.get("in_channels", 3), h, w, generator=g)
    masks = torch.randint(0, args.get("num_classes", 2), (batch_size, h, w), generator=g)
    return {"image": images, "mask": masks}


def unet_run(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["image"])


def unet_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch["image"]), batch["mask"])


def unet_check_input(args: dict[str, Any], size: tuple[int, int]) -> str | None:
    h, w = size
    if h % 16 or w % 16:
        fit = f"{max(16, round(h / 16) * 16)}x{max(16, round(w / 16) * 16)}"
        return f"the U-Net needs height and width divisible by 16 (4 poolings), got {h}x{w}; try {fit}"
    return None


UNET = BaselineSpec(
    name="unet",
    task="segmentation",
    reference="Ronneberger et al., U-Net, MICCAI 2015 (arXiv:1505.04597)",
    summary="U-Net, 4 down / 4 up levels, skip merges as modules",
    build=build_unet,
    aliases=unet_aliases,
    example_batch=unet_example_batch,
    run=unet_run,
    loss=unet_loss,
    default_image_size=(64, 64),
    check_input=unet_check_input,
)
