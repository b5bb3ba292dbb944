"""Colour jitter on a batch of uint8 images with one factor per sample, in the arithmetic of
torchvision's v2 colour kernels (``torchvision/transforms/v2/functional/_color.py``): each image
comes out bit for bit as the kernel called on it alone, with its own factor, gives it.

The kernels blend two images as ``a.mul(r).add_(b, alpha=1 - r)``. ``add_`` takes ``alpha`` as a
number, not a tensor, and rounds ``a + alpha * b`` once (a fused multiply-add) in torch's
vectorised CPU kernels (AVX2, AVX512) and on CUDA, twice (multiply, then add) elsewhere.
:func:`fused_multiply_add` gives the once-rounded result for per-sample ``alpha`` tensors (float64
product, which is exact, TwoSum error, one correction at float32 rounding ties);
:func:`blend_mode` finds out once per device type which rounding the kernel uses, or that it uses
neither (the caller then runs the colour step per sample).
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

#: the plain kernel's rounding of ``add_(b, alpha=...)``, per device type (see :func:`blend_mode`)
BLEND_MODES: dict[str, str] = {}


def fused_multiply_add(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``a + alpha * b`` for float32 tensors (broadcast), rounded once to float32 (results in
    float32's normal range; smaller ones, here below one grey level, may differ in the last bit)."""
    a64 = a.double()
    p = b.double() * alpha.double()  # exact: 24 + 24 significand bits fit in 53
    s = a64 + p
    bb = s - a64
    err = (a64 - (s - bb)) + (p - bb)  # TwoSum: a + p == s + err exactly
    # s.float() is the right rounding unless s lies exactly halfway between two float32 values (its
    # 29 low significand bits are 1 then 28 zeros) and err is not 0: then s is moved one float64
    # step towards the exact sum, off the tie
    # (arithmetic, not torch.where, which is slow on CPU: a step between neighbours is exact)
    tie = (s.view(torch.int64) & 0x1FFFFFFF) == 0x10000000
    step = torch.nextafter(s, s + err.sign()).sub_(s).mul_(tie)
    return s.add_(step).float()


def blend_mode(device: torch.device) -> str:
    """``"fused"`` or ``"separate"``: how ``Tensor.add_(b, alpha=x)`` rounds on ``device``'s type
    (one probe per device type, cached); ``"unknown"`` when it is neither, or not the same for the
    two shapes the kernels blend."""
    key = device.type
    if key not in BLEND_MODES:
        gen = torch.Generator().manual_seed(14)  # not torch's global RNG: the draws stay untouched
        a = (torch.rand(2, 3, 7, 11, generator=gen) * 255).to(device)
        alpha = torch.tensor([0.1234567, -0.2718281], dtype=torch.float32, device=device).view(2, 1, 1, 1)
        modes = set()
        # the shapes the kernels blend: an image with its luma (1 channel), with its mean (1 value)
        for shape in ((2, 1, 7, 11), (2, 1, 1, 1)):
            b = (torch.rand(shape, generator=gen) * 255).to(device)
            plain = torch.stack([a[i].add(b[i], alpha=float(alpha[i])) for i in range(2)])
            if torch.equal(plain, fused_multiply_add(a, b, alpha)):
                modes.add("fused")
            elif torch.equal(plain, a + b * alpha):
                modes.add("separate")
            else:
                modes.add("unknown")
        BLEND_MODES[key] = modes.pop() if len(modes) == 1 else "unknown"
    return BLEND_MODES[key]


def blend(
    image: torch.Tensor,
    other: torch.Tensor,
    ratio: torch.Tensor,
    alpha: torch.Tensor,
    mode: str,
    exact_sum: bool = False,
) -> torch.Tensor:
    """torchvision's ``_blend`` of uint8 ``image`` with float32 ``other``; ``ratio`` and ``alpha``
    (``float32(1.0 - ratio)``, computed in float64 as the kernel's argument is) per sample.
    ``exact_sum``: the caller knows ``image * ratio + alpha * other`` is exact in float64 (see
    :func:`sum_is_exact`), so rounding it once to float32 is the fused result."""
    scaled = image.mul(ratio)
    if mode != "fused":
        out = scaled + other * alpha
    elif exact_sum:
        out = scaled.double().add_(other.double() * alpha.double()).float()
    else:
        out = fused_multiply_add(scaled, other, alpha)
    return out.clamp_(0, 255).to(image.dtype)


def sum_is_exact(ratios: list[float], alphas: list[float]) -> bool:
    """Whether saturation's blend sum is exact in float64 for these factors: with every ratio in
    [0.5, 2**20), ``float32(level * ratio)`` is 0 or a multiple of 2**-24 below 2**28; with every
    alpha a multiple of 2**-24, so is ``luma * alpha`` (luma: an integer below 256, alpha below
    2**20), so their sum has at most 53 significant bits. True for colour jitter up to 0.5."""
    return all(0.5 <= r < 2**20 for r in ratios) and all(
        abs(a) < 2**20 and (a * 2**24).is_integer() for a in alphas
    )


def grey_float(image: torch.Tensor) -> torch.Tensor:
    """The float32 luma of RGB ``image`` (N x 3 x H x W) as N x 1 x H x W, floored (uint8 input)."""
    r, g, b = image.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3).floor_()


def brightness(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``adjust_brightness`` with one factor per sample (``factor``: N x 1 x 1 x 1)."""
    return image.mul(factor).clamp_(0, 255).to(image.dtype)


def contrast(image: torch.Tensor, ratio: torch.Tensor, alpha: torch.Tensor, mode: str) -> torch.Tensor:
    """``adjust_contrast``: blend with the mean of the luma (of the image itself when grey). The
    blend of a sample is a function of the pixel's level alone, so it is worked out for the 256
    levels (a table per sample) and looked up."""
    grey = grey_float(image) if image.shape[-3] == 3 else image.to(torch.float32)
    mean = torch.mean(grey, dim=(-3, -2, -1), keepdim=True)
    n = image.shape[0]
    levels = torch.arange(256, dtype=image.dtype, device=image.device).view(1, 1, 1, 256)
    table = blend(levels, mean, ratio, alpha, mode).view(n, 256)
    return table.gather(1, image.reshape(n, -1).long()).view(image.shape)


def saturation(
    image: torch.Tensor, ratio: torch.Tensor, alpha: torch.Tensor, mode: str, exact_sum: bool = False
) -> torch.Tensor:
    """``adjust_saturation``: blend with the (floored) luma; grey images unchanged."""
    if image.shape[-3] == 1:
        return image
    return blend(image, grey_float(image), ratio, alpha, mode, exact_sum)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """Float RGB in [0, 1] to HSV, the operations of torchvision's ``_rgb_to_hsv``."""
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - image) / divisor).unbind(dim=-3)
    maxc_neq_r = maxc != r
    maxc_eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(maxc_eq_g & maxc_neq_r)
    hr = bc.sub_(gc).mul_(~maxc_neq_r)
    hb = gc.add_(4.0).sub_(rc).mul_(maxc_neq_r.logical_and_(maxc_eq_g.logical_not_()))
    h = hr.add_(hg).add_(hb)
    h = h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


#: which of (v, p, q, t) makes r, g and b in each of the six hue sectors
SECTORS = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))
#: :data:`SECTORS` as a tensor, per device (copied there once)
SECTOR_TENSORS: dict[torch.device, torch.Tensor] = {}


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """HSV to float RGB, the operations of torchvision's ``_hsv_to_rgb`` (N x 3 x H x W)."""
    h, s, v = image.unbind(dim=-3)
    h6 = h.mul(6)
    i = torch.floor(h6)
    f = h6.sub_(i)
    i = i.to(dtype=torch.int32)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    i.remainder_(6)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    if image.device not in SECTOR_TENSORS:
        SECTOR_TENSORS[image.device] = torch.tensor(SECTORS, dtype=torch.long).to(image.device)
    select = SECTOR_TENSORS[image.device]
    return vpqt.gather(-3, select[:, i].moveaxis(0, -3))


def hue(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``adjust_hue`` with one factor per sample (``factor``: N x 1 x 1); grey images unchanged."""
    if image.shape[-3] == 1 or image.numel() == 0:
        return image
    hsv = rgb_to_hsv(F.to_dtype_image(image, torch.float32, scale=True))
    h, s, v = hsv.unbind(dim=-3)
    h.add_(factor).remainder_(1.0)
    rgb = hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return F.to_dtype_image(rgb, image.dtype, scale=True)
