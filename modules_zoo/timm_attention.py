"""Channel / spatial attention layers that timm already implements, exposed through the registry.

Nothing here is reimplemented: each builder only picks a timm class (the same ones
``timm.layers.create_attn`` returns for ``'se'``, ``'ese'``, ``'eca'``, ``'ceca'``, ``'cbam'``,
``'lcbam'``, ``'gc'``, ``'gca'``) and names the user knobs. Papers:

* SE: Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018, https://arxiv.org/abs/1709.01507
* EffectiveSE: Lee, Park, "CenterMask: Real-Time Anchor-Free Instance Segmentation", CVPR 2020,
  https://arxiv.org/abs/1911.06667
* ECA / CECA: Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
  Networks", CVPR 2020, https://arxiv.org/abs/1910.03151 (CECA: timm's circular-padding variant)
* CBAM: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
  https://arxiv.org/abs/1807.06521 (LightCBAM: timm's lighter experimental variant)
* GC / GCA: Cao, Xu, Lin, Wei, Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
  Beyond", ICCV Workshops 2019, https://arxiv.org/abs/1904.11492

Not registered, with timm 1.0.31: GCT (gated channel transformation, Yang et al. CVPR 2020) is not
in timm. timm's other attention layers have their own family files: ELA, Strip and GE
(``timm_gates.py``, which builds ``GatherExcite`` around its timm-1.0.31 construction bug), NonLocal
and BAT (``timm_non_local.py``), SK (``timm_selective_kernel.py``), Halo, Lambda and BoT
(``timm_self_attention.py``).
"""

from __future__ import annotations

from timm.layers import CecaModule, EcaModule, EffectiveSEModule, GlobalContext, SEModule
from timm.layers.cbam import CbamModule, LightCbamModule
from torch import nn

from .registry import register

__all__ = ["cbam", "ceca", "eca", "effective_se", "gc", "gca", "light_cbam", "se"]

_SE_REF = "Hu, Shen, Sun, 'Squeeze-and-Excitation Networks', CVPR 2018, arXiv:1709.01507 (timm SEModule)"
_ESE_REF = (
    "Lee, Park, 'CenterMask: Real-Time Anchor-Free Instance Segmentation', CVPR 2020, "
    "arXiv:1911.06667 (timm EffectiveSEModule)"
)
_ECA_REF = (
    "Wang, Wu, Zhu, Li, Zuo, Hu, 'ECA-Net: Efficient Channel Attention for Deep Convolutional Neural "
    "Networks', CVPR 2020, arXiv:1910.03151"
)
_CBAM_REF = "Woo, Park, Lee, Kweon, 'CBAM: Convolutional Block Attention Module', ECCV 2018, arXiv:1807.06521"
_GC_REF = (
    "Cao, Xu, Lin, Wei, Hu, 'GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond', "
    "ICCVW 2019, arXiv:1904.11492"
)


@register(
    "SE",
    kind="unary",
    reference=_SE_REF,
    summary="Squeeze-and-excitation channel gate (GAP -> MLP -> sigmoid).",
    fidelity="official-params",
    fidelity_note="timm SEModule; at ResNet widths the official SENet sizes (C // 16 with biases)",
)
def se(
    channels: int, rd_ratio: float = 1.0 / 16, rd_divisor: int = 8, add_maxpool: bool = False
) -> nn.Module:
    """Squeeze-and-Excitation (timm ``SEModule``).

    Args:
        channels: input (= output) channels.
        rd_ratio: bottleneck ratio (paper r = 16).
        rd_divisor: bottleneck width rounded to a multiple of this (timm default 8; 1 ~ paper).
        add_maxpool: timm experiment, squeeze with 0.5 * (avg + max) pooling.
    """
    return SEModule(channels, rd_ratio=rd_ratio, rd_divisor=rd_divisor, add_maxpool=add_maxpool)


@register(
    "EffectiveSE",
    kind="unary",
    reference=_ESE_REF,
    summary="Effective SE (eSE): GAP -> single full-width 1x1 conv -> hard-sigmoid gate.",
    fidelity="variant",
    fidelity_note="timm EffectiveSEModule, not compared with the official VoVNet code",
)
def effective_se(channels: int, add_maxpool: bool = False, gate: str = "hard_sigmoid") -> nn.Module:
    """Effective Squeeze-Excitation from CenterMask/VoVNetV2 (timm ``EffectiveSEModule``).

    Args:
        channels: input (= output) channels.
        add_maxpool: timm experiment, squeeze with 0.5 * (avg + max) pooling.
        gate: gate activation name (paper: ``hard_sigmoid``; ``sigmoid`` also works).
    """
    return EffectiveSEModule(channels, add_maxpool=add_maxpool, gate_layer=gate)


@register(
    "ECA",
    kind="unary",
    reference=_ECA_REF + " (timm EcaModule)",
    summary="Efficient channel attention: GAP -> 1D conv across channels -> sigmoid.",
    fidelity="variant",
    fidelity_note=(
        "the default kernel follows the paper's adaptive rule (5, 5, 5, 7 on ResNet-50's stages); the "
        "official code ignores it and its released ResNet-50 uses 3, 5, 5, 7 (`kernel_size` per stage)"
    ),
)
def eca(channels: int, kernel_size: int | None = None, gamma: float = 2.0, beta: float = 1.0) -> nn.Module:
    """Efficient Channel Attention (timm ``EcaModule``).

    Args:
        channels: input (= output) channels.
        kernel_size: fixed odd 1D kernel; ``None`` = the paper's adaptive
            ``k = odd(|log2(channels) + beta| / gamma)`` (at least 3).
        gamma: adaptive kernel-size parameter.
        beta: adaptive kernel-size parameter.
    """
    if kernel_size is None:
        return EcaModule(channels, gamma=gamma, beta=beta)
    return EcaModule(None, kernel_size=kernel_size)


@register(
    "CECA",
    kind="unary",
    reference=_ECA_REF + "; circular-padding variant from timm (CecaModule)",
    summary="ECA with circular padding of the channel axis in the 1D conv.",
    fidelity="variant",
    fidelity_note="timm's circular-padding ECA (no official code)",
)
def ceca(channels: int, kernel_size: int | None = None, gamma: float = 2.0, beta: float = 1.0) -> nn.Module:
    """Circular ECA (timm ``CecaModule``); arguments as :func:`eca`."""
    if kernel_size is None:
        return CecaModule(channels, gamma=gamma, beta=beta)
    return CecaModule(None, kernel_size=kernel_size)


@register(
    "CBAM",
    kind="unary",
    reference=_CBAM_REF + " (timm CbamModule)",
    summary="CBAM: channel attention (avg+max MLP) then spatial attention (7x7 conv on [mean, max]).",
    fidelity="variant",
    fidelity_note=(
        "timm CbamModule: MLP without biases, spatial input (mean, max), BN momentum 0.1; the official "
        "code has MLP biases, (max, mean) and momentum 0.01"
    ),
)
def cbam(
    channels: int, rd_ratio: float = 1.0 / 16, kernel_size: int = 7, mlp_bias: bool = False
) -> nn.Module:
    """CBAM (timm ``CbamModule``; timm's spatial conv is conv + BN, as the original ``BasicConv``).

    Args:
        channels: input (= output) channels.
        rd_ratio: channel-MLP bottleneck ratio (paper r = 16).
        kernel_size: spatial-attention conv kernel (paper 7).
        mlp_bias: biases in the channel MLP (the original code's ``nn.Linear`` has them; timm: off).
    """
    return CbamModule(channels, rd_ratio=rd_ratio, spatial_kernel_size=kernel_size, mlp_bias=mlp_bias)


@register(
    "LightCBAM",
    kind="unary",
    reference=_CBAM_REF + "; lighter experimental variant from timm (LightCbamModule)",
    summary="CBAM with avg and max pooling summed before one MLP pass / a 1-channel spatial conv.",
    fidelity="variant",
    fidelity_note="timm's lighter CBAM (no official code)",
)
def light_cbam(
    channels: int, rd_ratio: float = 1.0 / 16, kernel_size: int = 7, mlp_bias: bool = False
) -> nn.Module:
    """timm's light CBAM (``LightCbamModule``); arguments as :func:`cbam`."""
    return LightCbamModule(channels, rd_ratio=rd_ratio, spatial_kernel_size=kernel_size, mlp_bias=mlp_bias)


@register(
    "GC",
    kind="unary",
    reference=_GC_REF + " (timm GlobalContext, scale fusion)",
    summary="Global context block, multiplicative fusion: softmax-pooled context -> LN MLP -> sigmoid gate.",
    fidelity="variant",
    fidelity_note=(
        "timm GlobalContext, multiplicative fusion, ratio 1/8, LayerNorm eps 1e-6; mmdetection's GCNet "
        "uses add fusion (`GCA`), ratio 1/16, eps 1e-5 and a zero-initialised last conv"
    ),
)
def gc(channels: int, rd_ratio: float = 1.0 / 8, use_attn: bool = True) -> nn.Module:
    """Global Context block with channel-scale fusion (timm ``'gc'``).

    Args:
        channels: input (= output) channels.
        rd_ratio: bottleneck ratio of the transform MLP.
        use_attn: attention (softmax) context pooling; False = global average pooling.
    """
    return GlobalContext(channels, use_attn=use_attn, fuse_add=False, fuse_scale=True, rd_ratio=rd_ratio)


@register(
    "GCA",
    kind="unary",
    reference=_GC_REF + " (timm GlobalContext, add fusion, the paper's default)",
    summary="Global context block, additive fusion (paper default): x + LN-MLP(context).",
    fidelity="variant",
    fidelity_note=(
        "timm GlobalContext, add fusion, ratio 1/8, LayerNorm eps 1e-6, last conv bias not zeroed; "
        "mmdetection's ContextBlock: ratio 1/16, eps 1e-5, last conv weight and bias zero"
    ),
)
def gca(channels: int, rd_ratio: float = 1.0 / 8, use_attn: bool = True) -> nn.Module:
    """Global Context block with channel-add fusion (timm ``'gca'``; last layer zero-initialised).

    Args:
        channels: input (= output) channels.
        rd_ratio: bottleneck ratio of the transform MLP.
        use_attn: attention (softmax) context pooling; False = global average pooling.
    """
    return GlobalContext(channels, use_attn=use_attn, fuse_add=True, fuse_scale=False, rd_ratio=rd_ratio)
