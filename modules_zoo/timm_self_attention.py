"""Self-attention layers that replace a 3x3 conv, as timm implements them: Halo, Lambda, BoT.

Wrapped, not rewritten: each builder picks the timm class that ``timm.layers.create_attn`` returns
for ``'halo'``, ``'lambda'``, ``'bottleneck'`` (timm 1.0.31) and names the user knobs;
forwards are timm's, after a one-line input-size check where timm only asserts without a message
(:mod:`modules_zoo.feature_size`). All three default to mode ``replace`` (they can change channels
and take a stride, as a bottleneck's ``conv2``); defaults are timm's. BoT and Lambda with
``r: null`` take one input size, so they are refused in one line where inputs vary in size (the
instance task: :func:`modules_zoo.feature_size.fixed_size_fit`); there Halo is refused unless the
padding keeps every size a multiple of its ``block_size`` at the point (Mask R-CNN pads batches to
multiples of 32: block 8 only at stride 4; :func:`modules_zoo.feature_size.block_multiple_fit`).
Papers, code, differences:

* Halo: Vaswani, Ramachandran, Srinivas, Parmar, Hechtman, Shlens, "Scaling Local Self-Attention
  for Parameter Efficient Visual Backbones", CVPR 2021, arXiv:2103.12731; no official code (timm's
  ``HaloAttn`` is marked work in progress; its stride 2 subsamples the query blocks, "not clear if
  this is what the paper intended"). H and W must be multiples of ``block_size``; stride 1 or 2.
* Lambda: Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021,
  arXiv:2102.08602; no official code (the paper's listings). timm's ``LambdaLayer`` fixes the
  intra-depth u = 1; ``r`` is the local positional-lambda conv size, ``r: null`` the paper's
  global relative position embeddings (then one fixed input size, the probe's). It keeps the
  channel count (its output is reshaped to the input's); stride 2 is a 2x2 average pool after it.
* BoT: Srinivas, Lin, Parmar, Shlens, Abbeel, Vaswani, "Bottleneck Transformers for Visual
  Recognition", CVPR 2021, arXiv:2101.11605; timm's ``BottleneckAttn`` follows the authors'
  reference gist (gist.github.com/aravindsrinivas/56359b79f0ce4449bcb04ab4b56a57a2): global
  multi-head self-attention with 2D relative positions for ONE input size (the probe's, from the
  ``fit`` hook: the paper's Mask R-CNN runs used fixed 1024x1024 images); stride 2 is a 2x2
  average pool after it.
"""

from __future__ import annotations

import torch
from timm.layers.bottleneck_attn import BottleneckAttn
from timm.layers.halo_attn import HaloAttn
from timm.layers.lambda_layer import LambdaLayer
from torch import nn

from .feature_size import block_multiple_fit, check_block_multiple, check_fixed_size, fixed_size_fit
from .registry import register

__all__ = [
    "CheckedBottleneckAttn",
    "CheckedHaloAttn",
    "CheckedLambdaLayer",
    "bot",
    "halo",
    "lambda_layer",
]

#: conv replacements: ``replace`` first (the default)
CONV_MODES = ("replace", "after", "before", "residual")


class CheckedHaloAttn(HaloAttn):
    """timm ``HaloAttn`` whose forward first checks H and W against the block size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_block_multiple("Halo", x.shape[-2], x.shape[-1], self.block_size)
        return super().forward(x)


class CheckedLambdaLayer(LambdaLayer):
    """timm ``LambdaLayer`` whose forward first checks the size of a relative-position one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feat_size is not None:
            check_fixed_size("Lambda (r: null)", x.shape[-2], x.shape[-1], self.feat_size)
        return super().forward(x)


class CheckedBottleneckAttn(BottleneckAttn):
    """timm ``BottleneckAttn`` whose forward first checks the input is the size it was built for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_fixed_size("BoT", x.shape[-2], x.shape[-1], (self.pos_embed.height, self.pos_embed.width))
        return super().forward(x)


def _check_heads(module: str, out_channels: int, num_heads: int, stride: int) -> None:
    if num_heads < 1 or out_channels % num_heads:
        raise ValueError(f"{module}: num_heads={num_heads} must divide the {out_channels} output channels")
    if stride not in (1, 2):
        raise ValueError(f"{module}: stride must be 1 or 2, got {stride}")


@register(
    "Halo",
    kind="unary",
    modes=CONV_MODES,
    reference=(
        "Vaswani, Ramachandran, Srinivas, Parmar, Hechtman, Shlens, 'Scaling Local Self-Attention for "
        "Parameter Efficient Visual Backbones', CVPR 2021, arXiv:2103.12731; no official code (timm HaloAttn)"
    ),
    summary="Blocked local self-attention with a halo and relative positions; H, W multiples of block_size.",
    fit=block_multiple_fit("Halo", 8),
    fidelity="variant",
    fidelity_note=(
        "timm HaloAttn (work in progress in timm; no official code); its stride-2 query subsampling may not"
        " be the paper's"
    ),
    tested_by=("tests/test_timm_layers.py::test_wraps_timm_unchanged",),
)
def halo(
    in_channels: int,
    out_channels: int | None = None,
    stride: int = 1,
    num_heads: int = 8,
    dim_head: int | None = None,
    block_size: int = 8,
    halo_size: int = 3,
    qk_ratio: float = 1.0,
    qkv_bias: bool = False,
    avg_down: bool = False,
    scale_pos_embed: bool = False,
) -> nn.Module:
    """Halo attention (timm ``HaloAttn``; timm's defaults).

    Args:
        in_channels: input channels.
        out_channels: output channels (default: ``in_channels``; divisible by ``num_heads``).
        stride: 1 or 2 (2: strided query blocks, or a 2x2 average pool with ``avg_down``).
        num_heads: attention heads.
        dim_head: query/key width per head (default: ``out_channels * qk_ratio / num_heads``).
        block_size: query block side; H and W must be multiples of it.
        halo_size: halo around each block (window ``block_size + 2 * halo_size``).
        qk_ratio: query/key width relative to ``out_channels`` when ``dim_head`` is not set.
        qkv_bias: biases in the q and kv projections.
        avg_down: stride 2 by average pooling after attention.
        scale_pos_embed: scale the position logits too.
    """
    out = out_channels or in_channels
    _check_heads("Halo", out, num_heads, stride)
    return CheckedHaloAttn(
        in_channels,
        out,
        stride=stride,
        num_heads=num_heads,
        dim_head=dim_head,
        block_size=block_size,
        halo_size=halo_size,
        qk_ratio=qk_ratio,
        qkv_bias=qkv_bias,
        avg_down=avg_down,
        scale_pos_embed=scale_pos_embed,
    )


@register(
    "Lambda",
    kind="unary",
    modes=CONV_MODES,
    reference=(
        "Bello, 'LambdaNetworks: Modeling Long-Range Interactions Without Attention', ICLR 2021, "
        "arXiv:2102.08602; no official code (timm LambdaLayer)"
    ),
    summary="Lambda layer: content and positional lambdas applied to the queries; keeps the channel count.",
    fit=fixed_size_fit(
        "Lambda (r: null)",
        "Lambda with r: 9",
        fixed=lambda args: "r" in args and args["r"] is None,
    ),
    fit_args=("feat_size",),
    fidelity="variant",
    fidelity_note=("timm LambdaLayer (no official code): intra-depth u = 1, keeps the channel count"),
    tested_by=("tests/test_timm_layers.py::test_wraps_timm_unchanged",),
)
def lambda_layer(
    in_channels: int,
    out_channels: int | None = None,
    stride: int = 1,
    feat_size: tuple[int, int] | None = None,
    num_heads: int = 4,
    dim_head: int = 16,
    r: int | None = 9,
    qk_ratio: float = 1.0,
    qkv_bias: bool = False,
) -> nn.Module:
    """Lambda layer (timm ``LambdaLayer``; timm's defaults).

    Args:
        in_channels: input (= output) channels (divisible by ``num_heads``).
        out_channels: must equal ``in_channels`` (timm reshapes the output to the input's width).
        stride: 1 or 2 (2: a 2x2 average pool after the layer).
        feat_size: (H, W) at the point (filled from the probe; used only with ``r: null``).
        num_heads: query heads.
        dim_head: query/key depth k per head (paper 16).
        r: local positional-lambda conv size (odd); ``null`` = global relative position
            embeddings, built for one input size.
        qk_ratio: query/key depth relative to the channels when ``dim_head`` is 0.
        qkv_bias: bias in the qkv projection.
    """
    if out_channels not in (None, in_channels):
        raise ValueError(
            f"Lambda keeps the channel count (timm reshapes its output to the input's {in_channels}); "
            f"out_channels={out_channels} cannot be built: stitch it where in = out, or use Halo / BoT"
        )
    _check_heads("Lambda", in_channels, num_heads, stride)
    if r is not None and (r < 1 or r % 2 == 0):
        raise ValueError(f"Lambda: r must be an odd size or null (relative positions), got {r}")
    if r is None and not feat_size:
        raise ValueError("Lambda with r: null needs feat_size (H, W); the probe fills it in")
    return CheckedLambdaLayer(
        in_channels,
        None,
        feat_size=tuple(feat_size) if (r is None and feat_size) else None,  # type: ignore[arg-type]
        stride=stride,
        num_heads=num_heads,
        dim_head=dim_head,
        r=r,  # type: ignore[arg-type]  # timm annotates int but takes None (relative positions)
        qk_ratio=qk_ratio,
        qkv_bias=qkv_bias,
    )


@register(
    "BoT",
    kind="unary",
    modes=CONV_MODES,
    reference=(
        "Srinivas, Lin, Parmar, Shlens, Abbeel, Vaswani, 'Bottleneck Transformers for Visual Recognition', "
        "CVPR 2021, arXiv:2101.11605; authors' reference gist (timm BottleneckAttn)"
    ),
    summary="BoTNet multi-head self-attention with 2D relative positions; one fixed input size (the probe's)",
    fit=fixed_size_fit(
        "BoT", "Lambda (r: 9) (Halo only where its block_size divides 32 / stride: block 8 at stride 4)"
    ),
    fit_args=("feat_size",),
    fidelity="variant",
    fidelity_note=(
        "timm BottleneckAttn after the authors' reference gist (no released training code); one fixed input"
        " size"
    ),
    tested_by=("tests/test_timm_layers.py::test_wraps_timm_unchanged",),
)
def bot(
    in_channels: int,
    out_channels: int | None = None,
    stride: int = 1,
    feat_size: tuple[int, int] | None = None,
    num_heads: int = 4,
    dim_head: int | None = None,
    qk_ratio: float = 1.0,
    qkv_bias: bool = False,
    scale_pos_embed: bool = False,
) -> nn.Module:
    """Bottleneck attention (timm ``BottleneckAttn``; timm's defaults).

    Args:
        in_channels: input channels.
        out_channels: output channels (default: ``in_channels``; divisible by ``num_heads``).
        stride: 1 or 2 (2: a 2x2 average pool after attention).
        feat_size: (H, W) of the input (filled from the probe); the only size it takes.
        num_heads: attention heads (paper 4).
        dim_head: query/key width per head (default: ``out_channels * qk_ratio / num_heads``).
        qk_ratio: query/key width relative to ``out_channels`` when ``dim_head`` is not set.
        qkv_bias: bias in the qkv projection.
        scale_pos_embed: scale the position logits too.
    """
    if not feat_size:
        raise ValueError("BoT needs feat_size (H, W), the one input size it takes; the probe fills it in")
    out = out_channels or in_channels
    _check_heads("BoT", out, num_heads, stride)
    return CheckedBottleneckAttn(
        in_channels,
        out,
        feat_size=tuple(feat_size),  # type: ignore[arg-type]
        stride=stride,
        num_heads=num_heads,
        dim_head=dim_head,
        qk_ratio=qk_ratio,
        qkv_bias=qkv_bias,
        scale_pos_embed=scale_pos_embed,
    )
