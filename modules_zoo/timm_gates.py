"""Gates over strips or regions that timm implements: ELA, Strip, GE (gather-excite).

Wrapped, not rewritten: each builder picks the timm class that ``timm.layers.create_attn`` returns
for ``'ela'``, ``'strip'``, ``'ge'`` and names the user knobs; every forward is timm's (timm 1.0.31).
Defaults are timm's. Papers, official code and where timm differs from them:

* ELA: Xu, Wan, "ELA: Efficient Local Attention for Deep Convolutional Neural Networks", 2024,
  arXiv:2403.01123; no official code was found (the paper's listing: one depthwise
  ``Conv1d(C, C, 7, groups=C, bias=False)`` and one ``GroupNorm(16, C)``, shared by the H and W
  branches, sigmoid, ``x * a_h * a_w``). timm's ``EfficientLocalAttn`` has separate convs and norms
  per axis (twice the paper's parameters; it cannot share them), ``GroupNorm`` with one group and
  a SiLU before the sigmoid. ``norm_groups: 16, activation: false`` is the closest to the paper.
* Strip: timm's own "minimal strip attention" (``StripAttn``, no paper), after strip pooling:
  Hou, Zhang, Cheng, Feng, "Strip Pooling: Rethinking Spatial Pooling for Scene Parsing", CVPR
  2020, arXiv:2003.13328 (official code github.com/Andrew-Qibin/SPNet). SPNet's module has BN after
  its 1D convs and a 1x1 fusion conv; timm's sums the two strip profiles and gates with a sigmoid.
* GE: Hu, Shen, Albanie, Sun, Vedaldi, "Gather-Excite: Exploiting Feature Context in CNNs", NeurIPS
  2018, arXiv:1810.12348; official code github.com/hujie-frank/GENet (partial: Caffe prototxts).
  timm's ``GatherExcite`` is Ross Wightman's reimplementation. The paper's variants: GE-θ⁻ =
  ``extra_params: false, use_mlp: false`` (no parameters), GE-θ = ``extra_params: true, use_mlp:
  false``, GE-θ⁺ = ``extra_params: true, use_mlp: true``; ``extent`` 2, 4, 8 (0 = global). With
  ``extra_params`` timm gathers with ``log2(extent)`` stride-2 depthwise 3x3 convs + BN (the paper's
  GE-θ); at global extent with ``extra_params`` the gather is a depthwise conv whose kernel is the
  whole map, so that module takes one fixed input size (the probe's, given by the ``fit`` hook;
  refused in one line where inputs vary in size, the instance task). timm pads that conv by
  ``(k - 1) // 2`` per side as for any conv, so its gather is an (H - 1 + H % 2) x (W - 1 + W % 2)
  map resized back to H x W, not the paper's one value per channel (the zoo keeps timm's).

timm 1.0.31 bug: ``GatherExcite`` passes its ``{'device', 'dtype'}`` dict as ``*dd`` (the two key
strings as positional arguments) to ``ConvMlp``, ``create_conv2d`` and ``nn.BatchNorm2d``, so it
fails to construct with ``use_mlp`` or ``extra_params`` (the first two raise a TypeError; the
norm silently gets ``eps='device', momentum='dtype'`` and fails in forward). The earlier timm
file (no ``dd``) built fine. :class:`RepairedGatherExcite` runs timm's constructor unchanged while
:func:`positional_dd_dropped` replaces the two module-level names it calls with versions that drop
those strings, then gives such norms PyTorch's defaults (``eps=1e-5, momentum=0.1``). A test fails
once timm builds ``GatherExcite`` itself: then this workaround goes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import timm.layers.gather_excite as timm_gather_excite
import torch
from timm.layers import GatherExcite
from timm.layers.coord_attn import EfficientLocalAttn, StripAttn
from torch import nn

from .feature_size import check_fixed_size, fixed_size_fit
from .registry import register

__all__ = ["RepairedGatherExcite", "ela", "ge", "positional_dd_dropped", "strip"]

_DD_KEYS = ("device", "dtype")


def _without_dd_strings(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` called without positional arguments that are the strings 'device' / 'dtype'."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*[a for a in args if not (isinstance(a, str) and a in _DD_KEYS)], **kwargs)

    return call


@contextmanager
def positional_dd_dropped() -> Iterator[None]:
    """While open, timm's ``gather_excite`` module calls ``ConvMlp`` and ``create_conv2d`` without
    the stray positional ``'device'`` / ``'dtype'`` strings of its ``*dd`` bug (timm 1.0.31)."""
    # Build-time only, not thread-safe: another thread building a timm GE meanwhile sees the swap.
    saved = timm_gather_excite.ConvMlp, timm_gather_excite.create_conv2d
    timm_gather_excite.ConvMlp = _without_dd_strings(saved[0])  # type: ignore[misc,assignment]
    timm_gather_excite.create_conv2d = _without_dd_strings(saved[1])
    try:
        yield
    finally:
        timm_gather_excite.ConvMlp, timm_gather_excite.create_conv2d = saved  # type: ignore[misc]


class RepairedGatherExcite(GatherExcite):
    """timm ``GatherExcite`` built around its timm-1.0.31 ``*dd`` bug (module docstring); the
    forward is timm's, after a one-line size check when the gather is built for one input size."""

    def __init__(self, channels: int, feat_size: tuple[int, int] | None = None, **kwargs: Any) -> None:
        with positional_dd_dropped():
            super().__init__(channels, feat_size=feat_size, **kwargs)
        for norm in self.modules():  # nn.BatchNorm2d(channels, *dd) took the strings as eps, momentum
            if isinstance(norm, nn.BatchNorm2d) and isinstance(norm.eps, str):
                norm.eps, norm.momentum = 1e-5, 0.1
        fixed = kwargs.get("extra_params", False) and kwargs.get("extent", 0) == 0
        self.fixed_size: tuple[int, int] | None = tuple(feat_size) if fixed and feat_size else None  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_size is not None:
            check_fixed_size("GE (global extent, extra_params)", x.shape[-2], x.shape[-1], self.fixed_size)
        return super().forward(x)


@register(
    "ELA",
    kind="unary",
    reference=(
        "Xu, Wan, 'ELA: Efficient Local Attention for Deep Convolutional Neural Networks', 2024, "
        "arXiv:2403.01123; no official code (timm EfficientLocalAttn)"
    ),
    summary="Efficient local attention: H and W strip means -> depthwise 1D conv -> GroupNorm -> gates.",
    fidelity="variant",
    fidelity_note=(
        "timm EfficientLocalAttn: a conv and a GroupNorm per axis (twice the paper's parameters, which it "
        "cannot share), GroupNorm(1) and SiLU by default; the paper: shared, GroupNorm(16), no activation"
    ),
    tested_by=("tests/test_timm_layers.py::test_wraps_timm_unchanged",),
)
def ela(
    channels: int, kernel_size: int = 7, norm_groups: int = 1, activation: bool = True, bias: bool = False
) -> nn.Module:
    """ELA (timm ``EfficientLocalAttn``; separate conv and norm per axis, as timm builds it).

    Args:
        channels: input (= output) channels.
        kernel_size: 1D depthwise conv kernel (paper 7).
        norm_groups: GroupNorm groups (timm 1; the paper 16, needs ``channels % 16 == 0``).
        activation: SiLU between norm and sigmoid (timm; the paper has none: ``false``).
        bias: conv biases (paper and timm: off).
    """
    if norm_groups < 1:
        raise ValueError(f"norm_groups must be >= 1, got {norm_groups}")
    kwargs: dict[str, Any] = {}
    if norm_groups > 1:
        kwargs["norm_layer"] = partial(nn.GroupNorm, norm_groups)
    if not activation:
        kwargs["act_layer"] = nn.Identity
    return EfficientLocalAttn(channels, kernel_size=kernel_size, bias=bias, **kwargs)


@register(
    "Strip",
    kind="unary",
    reference=(
        "timm StripAttn (timm's own minimal strip attention, after Hou, Zhang, Cheng, Feng, "
        "'Strip Pooling: Rethinking Spatial Pooling for Scene Parsing', CVPR 2020, arXiv:2003.13328)"
    ),
    summary="Strip attention: row and column means -> optional depthwise 1D convs -> sum -> sigmoid gate.",
    fidelity="variant",
    fidelity_note=(
        "timm's own minimal strip attention; SPNet's strip pooling module adds BN and a 1x1 fusion conv"
    ),
    tested_by=("tests/test_timm_layers.py::test_wraps_timm_unchanged",),
)
def strip(channels: int, use_conv: bool = True, kernel_size: int = 3, bias: bool = False) -> nn.Module:
    """timm's strip attention (``StripAttn``).

    Args:
        channels: input (= output) channels.
        use_conv: depthwise 1D convs on the strip profiles (off: no parameters).
        kernel_size: their kernel size.
        bias: conv biases.
    """
    return StripAttn(channels, use_conv=use_conv, kernel_size=kernel_size, bias=bias)


@register(
    "GE",
    kind="unary",
    reference=(
        "Hu, Shen, Albanie, Sun, Vedaldi, 'Gather-Excite: Exploiting Feature Context in CNNs', "
        "NeurIPS 2018, arXiv:1810.12348; official code github.com/hujie-frank/GENet (Caffe, partial) "
        "(timm GatherExcite)"
    ),
    summary="Gather-excite: gather (mean or strided depthwise convs over an extent) -> MLP -> sigmoid gate.",
    fit=fixed_size_fit(
        "GE (global extent, extra_params)",
        "GE with extent 2, 4 or 8 (or extra_params: false)",
        fixed=lambda args: bool(args.get("extra_params")) and not args.get("extent"),
    ),
    fit_args=("feat_size",),
    fidelity="variant",
    fidelity_note=(
        "timm's reimplementation (the official code is partial Caffe): GE-theta-minus, GE-theta, "
        "GE-theta-plus through extra_params / use_mlp; at global extent timm pads the whole-map gather "
        "conv, so it is not one value per channel"
    ),
    tested_by=(
        "tests/test_timm_layers.py::test_gather_excite_workaround_builds_every_variant",
        "tests/test_timm_layers.py::test_gather_excite_workaround_equals_the_transcription",
    ),
)
def ge(
    channels: int,
    feat_size: tuple[int, int] | None = None,
    extent: int = 0,
    extra_params: bool = False,
    use_mlp: bool = True,
    rd_ratio: float = 1.0 / 16,
    rd_divisor: int = 1,
    add_maxpool: bool = False,
) -> nn.Module:
    """Gather-Excite (timm ``GatherExcite``, built around its 1.0.31 bug; defaults: timm's).

    Args:
        channels: input (= output) channels.
        feat_size: (H, W) at the point (filled from the probe; used only by ``extra_params`` at
            global extent, which then takes that size only).
        extent: gather extent (0 = global; the paper 2, 4, 8).
        extra_params: gather with strided depthwise convs + BN (GE-θ) instead of average pooling.
        use_mlp: excite with a 1x1-conv MLP (GE-θ⁺) instead of the gathered values alone.
        rd_ratio: MLP bottleneck ratio (paper r = 16).
        rd_divisor: MLP width rounded to a multiple of this.
        add_maxpool: timm experiment, 0.5 * (average + max) gather (no ``extra_params``).
    """
    if extent < 0 or extent % 2:
        raise ValueError(f"extent must be 0 (global) or an even number such as 2, 4, 8; got {extent}")
    if extra_params and extent and 2 ** int(math.log2(extent)) != extent:
        raise ValueError(f"with extra_params the extent must be a power of two (2, 4, 8); got {extent}")
    if extra_params and not extent and not feat_size:
        raise ValueError(
            "GE with extra_params at global extent needs feat_size (H, W); the probe fills it in"
        )
    return RepairedGatherExcite(
        channels,
        feat_size=tuple(feat_size) if feat_size else None,  # type: ignore[arg-type]
        extra_params=extra_params,
        extent=extent,
        use_mlp=use_mlp,
        rd_ratio=rd_ratio,
        rd_divisor=rd_divisor,
        add_maxpool=add_maxpool,
    )
