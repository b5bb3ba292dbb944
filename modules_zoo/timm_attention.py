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

Defaults are timm's. ``preset`` rebuilds a released model's module on the same timm class
(:mod:`modules_zoo.presets`): ``CBAM: {preset: official}`` (Jongchan/attention-module),
``ECA: {preset: resnet50}`` (ECANet's released kernel sizes per stage), ``GC``/``GCA: {preset:
mmdet}`` (mmcv's ContextBlock as mmdetection configures it). Each builder's docstring lists where
the paper, the official code, timm and mmdetection differ and which one each setting follows. A
preset fixes what the release fixes (another value is an error); the official code's own
arguments stay free. Arguments added with the presets are declared with
:func:`~modules_zoo.added_arguments.added_arguments` (a run's resolved configuration can leave
them out at their defaults).

Not registered, with timm 1.0.31: GCT (gated channel transformation, Yang et al. CVPR 2020) is not
in timm. timm's other attention layers have their own family files: ELA, Strip and GE
(``timm_gates.py``, which builds ``GatherExcite`` around its timm-1.0.31 construction bug), NonLocal
and BAT (``timm_non_local.py``), SK (``timm_selective_kernel.py``), Halo, Lambda and BoT
(``timm_self_attention.py``).
"""

from __future__ import annotations

from typing import Literal

from timm.layers import CecaModule, EcaModule, EffectiveSEModule, GlobalContext, SEModule
from timm.layers.cbam import CbamModule, LightCbamModule
from torch import nn

from .added_arguments import added_arguments
from .presets import eca_released_kernel, mmdet_context_block, official_cbam
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
    fidelity_note=(
        "timm SEModule; at ResNet widths the official SENet sizes (C // 16 with biases): +2,530,992 "
        "after every bn3 of ResNet-50"
    ),
    tested_by=("tests/test_zoo_presets.py::test_resnet50_parameter_deltas_through_stitching",),
)
def se(
    channels: int, rd_ratio: float = 1.0 / 16, rd_divisor: int = 8, add_maxpool: bool = False
) -> nn.Module:
    """Squeeze-and-Excitation (timm ``SEModule``).

    The paper's SE-ResNet module (Fig. 3): global average pool, FC(C, C/16), ReLU, FC(C/16, C),
    sigmoid, scale, on the residual branch before the sum. timm's 1x1 convs (with biases) have the
    same sizes where ``C / 16`` is a multiple of ``rd_divisor`` (every ResNet width): after every
    ``bn3`` of ResNet-50 they add 2,530,992 parameters. The official release (hujie-frank/SENet) is
    Caffe prototxts, not read for this entry; outputs are not compared.

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
        "official code ignores it and its released ResNet-50 uses 3, 5, 5, 7: `preset: resnet50` (or "
        "another release) matches the official eca_layer output-for-output with the released kernels"
    ),
    tested_by=(
        "tests/test_zoo_presets.py::test_eca_presets_pick_the_released_kernel_per_stage_and_match_eca_layer",
        "tests/test_zoo_presets.py::test_resnet50_parameter_deltas_through_stitching",
    ),
)
@added_arguments(preset=None)
def eca(
    channels: int,
    kernel_size: int | None = None,
    gamma: float = 2.0,
    beta: float = 1.0,
    preset: Literal[
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "maskrcnn_resnet50",
        "maskrcnn_resnet101",
    ]
    | None = None,
) -> nn.Module:
    """Efficient Channel Attention (timm ``EcaModule``).

    Official code: BangguWu/ECANet ``models/eca_module.py`` (``eca_layer``) and
    ``models/eca_resnet.py`` at b332f6b3e6e2afe8a3287dc8ee8440a0fbec74c4: average pool, a bias-free
    ``Conv1d(1, 1, k, padding (k - 1) // 2)`` across channels, sigmoid, ``x * gate``; placed after
    ``bn3`` (``bn2`` in a basic block) before the residual add. timm's ``EcaModule`` computes the same
    (same ``conv.weight`` key and shape, PyTorch's default init in both).

    Where they differ: the paper sizes the kernel adaptively, ``k = odd(|log2(C) + 1| / 2)`` (5, 5, 5, 7
    on ResNet-50's stages, +86 parameters); the official code never applies that rule (``eca_layer``
    ignores ``channel``), takes one size per stage from ``--ksize``, and its released ResNet-50 uses
    3, 5, 5, 7 (``eca_resnet50_k3557``, +80 parameters). ``preset`` picks a release's sizes by the
    block's channels; one ``kernel_size`` per stage (one insertion per stage) does the same by hand.

    Args:
        channels: input (= output) channels.
        kernel_size: fixed odd 1D kernel; ``None`` = the paper's adaptive
            ``k = odd(|log2(channels) + beta| / gamma)`` (at least 3).
        gamma: adaptive kernel-size parameter.
        beta: adaptive kernel-size parameter.
        preset: a released model's kernel size for this block's width (:data:`ECA_RELEASED_KERNELS`:
            ``resnet50`` = 3, 5, 5, 7 on 256, 512, 1024, 2048 channels, ``resnet18``, ``resnet34``,
            ``resnet101``, ``resnet152``, ``maskrcnn_resnet50`` (k3377), ``maskrcnn_resnet101``);
            another width is a one-line error. The preset sets the kernel size, so ``kernel_size``
            may not be set with it.
    """
    if preset is not None:
        if kernel_size is not None:
            raise ValueError(f"set kernel_size or preset, not both (preset {preset!r} sets the kernel size)")
        kernel_size = eca_released_kernel(preset, channels)
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
        "code has MLP biases, (max, mean) and momentum 0.01: `preset: official` matches it "
        "output-for-output (and its initialisation and +2,532,592 on ResNet-50)"
    ),
    tested_by=(
        "tests/test_zoo_presets.py::test_cbam_official_matches_the_official_module_in_eval_and_train",
        "tests/test_zoo_presets.py::test_cbam_official_initialisation_follows_the_official_fill_rules",
        "tests/test_zoo_presets.py::test_resnet50_parameter_deltas_through_stitching",
    ),
)
@added_arguments(preset=None)
def cbam(
    channels: int,
    rd_ratio: float = 1.0 / 16,
    kernel_size: int = 7,
    mlp_bias: bool = False,
    preset: Literal["official"] | None = None,
) -> nn.Module:
    """CBAM (timm ``CbamModule``; timm's spatial conv is conv + BN, as the original ``BasicConv``).

    Official code: Jongchan/attention-module ``MODELS/cbam.py`` and ``MODELS/model_resnet.py`` at
    c06383c514ab0032d044cc6fcd8c8207ea222ea7 (unchanged at HEAD 459efad): ``CBAM(planes * 4, 16)``
    after ``bn3`` of every bottleneck, before the residual add (SE's place). Both gates in the
    paper's order (channel, then spatial) in the official code, timm and here.

    Where they differ (``preset: official`` follows the official code in each; the default, timm):

    * channel MLP: official ``nn.Linear`` with biases and ``C // 16`` hidden units; timm 1x1 convs
      without biases (``mlp_bias``) and the nearest integer to ``C / 16`` (equal at ResNet widths);
      the paper does not say.
    * spatial gate input: official (channel max, channel mean); timm (mean, max), the paper's
      figure order. Official checkpoints load into timm's order with the conv's two input channels
      swapped.
    * spatial BatchNorm momentum: official 0.01, timm 0.1.
    * initialisation: official ResNet re-initialises the module: spatial conv
      ``kaiming_normal_(fan_out)``, spatial BN weight and bias 0, MLP biases 0; timm keeps PyTorch's
      defaults (BN weight 1).

    Parameters: after every ``bn3`` of ResNet-50, ``preset: official`` adds 2,532,592 (the official
    ``ResidualNet(..., 'CBAM')`` count) and the default 2,516,544 (no MLP biases).

    Args:
        channels: input (= output) channels.
        rd_ratio: channel-MLP bottleneck ratio (paper r = 16; the official code's ``reduction_ratio``,
            so it stays free under the preset).
        kernel_size: spatial-attention conv kernel (paper 7; fixed at 7 by the preset).
        mlp_bias: biases in the channel MLP (the original code's ``nn.Linear`` has them; timm: off;
            on under the preset).
        preset: ``official``: the official module, its sizes, order, momentum and initialisation.
            Setting ``kernel_size`` to another value than 7 with it is a one-line error; ``mlp_bias:
            false`` cannot be told from leaving it out and is on.
    """
    if preset == "official":
        if kernel_size != 7:
            raise ValueError(
                f"preset 'official' has a 7x7 spatial conv; leave kernel_size out (got {kernel_size})"
            )
        return official_cbam(channels, rd_ratio)
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
        "uses add fusion, ratio 1/16, eps 1e-5 and a zero-initialised last conv: `preset: mmdet` "
        "matches mmcv's ContextBlock output-for-output (and its initialisation, any fusion)"
    ),
    tested_by=(
        "tests/test_zoo_presets.py::test_gc_mmdet_matches_mmcv_context_block",
        "tests/test_zoo_presets.py::test_gc_mmdet_initialisation_is_mmcvs",
        "tests/test_zoo_presets.py::test_resnet50_parameter_deltas_through_stitching",
    ),
)
@added_arguments(fusion=None, preset=None)
def gc(
    channels: int,
    rd_ratio: float = 1.0 / 8,
    use_attn: bool = True,
    fusion: Literal["mul", "add", "both"] | None = None,
    preset: Literal["mmdet"] | None = None,
) -> nn.Module:
    """Global Context block (timm ``GlobalContext``; default: channel-scale fusion, timm's ``'gc'``).

    Official code: the paper's reference implementation is mmcv's ``ContextBlock``
    (open-mmlab/mmcv ``mmcv/cnn/bricks/context_block.py`` at a8073c74bf83d62ec36a103f835faa4837fb6585),
    which mmdetection's GCNet configs place after ``conv3``/``norm3`` of every bottleneck of stages
    c3 to c5, before the residual add (``configs/gcnet/mask-rcnn_r50-fpn-r16-gcb-c3-c5_1x_coco.py``
    at f688845e8018b442821e00e2ba369fa61235ca98: ``ratio=1./16``, add fusion). Same computation as
    timm's: softmax attention pooling (``conv_mask``/``conv_attn``), then 1x1 conv, LayerNorm, ReLU,
    1x1 conv per fusion branch; multiplication before addition when both are on.

    Where they differ (``preset: mmdet`` follows mmcv/mmdetection in each; the default, timm):

    * fusion: paper and mmdetection add (``GCA``); timm's ``'gc'``, this entry's default, multiplies.
    * bottleneck width: mmcv ``int(C * ratio)``, ratio 1/16 (r16 configs) or 1/4 (r4); timm the
      nearest integer to ``C * ratio``, ratio 1/8.
    * LayerNorm eps: mmcv 1e-5, timm 1e-6 (outputs differ by ~1e-6 with equal weights).
    * initialisation: mmcv zeroes the last conv's weight and bias of every fusion branch (an add
      block is the identity at start) and the pooling conv's bias; timm zeroes only the add
      branch's last weight and keeps PyTorch's default biases.
    * state-dict keys: mmcv ``conv_mask``, ``channel_add_conv.{0,1,3}``, ``channel_mul_conv.*`` (LN
      weight shape ``(p, 1, 1)``); timm ``conv_attn``, ``mlp_add.{fc1,norm,fc2}``, ``mlp_scale.*``
      (LN weight ``(p,)``).

    Parameters: ``preset: mmdet`` after every ``bn3`` of ResNet-50's c3 to c5 adds 2,521,741.

    Args:
        channels: input (= output) channels.
        rd_ratio: bottleneck ratio of the transform MLP (mmcv's ``ratio``; 1/16 under the preset when
            left at its default, so ``rd_ratio: 0.25`` gives mmdetection's r4 configs).
        use_attn: attention (softmax) context pooling; False = global average pooling (mmcv
            ``pooling_type='avg'``).
        fusion: ``mul`` (the default), ``add`` (the default under the preset) or ``both`` (mmcv
            ``fusion_types``; free under the preset).
        preset: ``mmdet``: mmcv's ContextBlock as mmdetection configures it (width, eps, init above).
    """
    if preset == "mmdet":
        ratio = 1.0 / 16 if rd_ratio == 1.0 / 8 else rd_ratio
        return mmdet_context_block(channels, ratio, use_attn, fusion or "add")
    fusion = fusion or "mul"
    return GlobalContext(
        channels,
        use_attn=use_attn,
        fuse_add=fusion in ("add", "both"),
        fuse_scale=fusion in ("mul", "both"),
        rd_ratio=rd_ratio,
    )


@register(
    "GCA",
    kind="unary",
    reference=_GC_REF + " (timm GlobalContext, add fusion, the paper's default)",
    summary="Global context block, additive fusion (paper default): x + LN-MLP(context).",
    fidelity="variant",
    fidelity_note=(
        "timm GlobalContext, add fusion, ratio 1/8, LayerNorm eps 1e-6, last conv bias not zeroed; "
        "mmdetection's ContextBlock: ratio 1/16, eps 1e-5, last conv weight and bias zero: `preset: "
        "mmdet` matches it output-for-output"
    ),
    tested_by=(
        "tests/test_zoo_presets.py::test_gc_mmdet_matches_mmcv_context_block",
        "tests/test_zoo_presets.py::test_gc_mmdet_initialisation_is_mmcvs",
    ),
)
@added_arguments(preset=None)
def gca(
    channels: int, rd_ratio: float = 1.0 / 8, use_attn: bool = True, preset: Literal["mmdet"] | None = None
) -> nn.Module:
    """Global Context block with channel-add fusion (timm ``'gca'``; last layer's weight zeroed):
    :func:`gc` with ``fusion: add`` (official code and where timm and mmcv differ: see :func:`gc`).

    Args:
        channels: input (= output) channels.
        rd_ratio: bottleneck ratio of the transform MLP (1/16 under the preset when left at its default).
        use_attn: attention (softmax) context pooling; False = global average pooling.
        preset: ``mmdet``: mmcv's ContextBlock as mmdetection configures it (see :func:`gc`).
    """
    return gc(channels, rd_ratio=rd_ratio, use_attn=use_attn, fusion="add", preset=preset)
