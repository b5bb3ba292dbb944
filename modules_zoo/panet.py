"""PANet: bottom-up path augmentation, adaptive feature pooling, fully-connected fusion.

Paper: Shu Liu, Lu Qi, Haifang Qin, Jianping Shi, Jiaya Jia, "Path Aggregation Network for Instance
Segmentation", CVPR 2018 (arXiv:1803.01534). Official code: https://github.com/ShuLiu1993/PANet
(built on Detectron.pytorch): ``lib/modeling/FPN.py`` (``fpn(..., panet_buttomup=True)``),
``lib/modeling/fast_rcnn_heads.py`` (``roi_Xconv1fc_gn_head_panet``, ``roi_2mlp_head_gn_panet``),
``lib/modeling/mask_rcnn_heads.py`` (``mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff``,
``mask_rcnn_outputs``), ``lib/modeling/model_builder.py`` (``roi_feature_transform(panet=True)``),
``configs/panet/e2e_panet_R-50-FPN_2x_mask.yaml``.

Four zoo modules for torchvision's Mask R-CNN, each written from reading the official code:

* :class:`PAFPN` (``replace`` at ``fpn``): torchvision's top-down ``FeaturePyramidNetwork`` plus
  the bottom-up path; :class:`BottomUpPath` (``after`` at ``fpn``): the bottom-up path alone, on
  the output of the network's own (possibly pretrained) FPN.
* :class:`AdaptiveFeaturePooling` (``replace`` at ``box_roi_pool`` or ``mask_roi_pool``): every
  RoI pooled from every level, one first head layer per level, element-wise max. It *absorbs* the
  head's first layer (``box_head.fc6`` of ``TwoMLPHead``, ``box_head.0`` of
  ``FastRCNNConvFCHead``, ``mask_head.0`` of ``MaskRCNNHeads`` / :class:`FullyConnectedFusion`),
  which becomes ``nn.Identity``.
* :class:`FullyConnectedFusion` (``replace`` at ``mask_head``, absorbs ``mask_predictor``): the
  FCN mask branch plus a class-agnostic fc branch added to every class's logits.

What the official code does (and we follow)
-------------------------------------------
* Bottom-up path (``FPN.py``): ``N2 = P2``; ``N_{i+1} = conv2(conv1_s2(N_i) + P_{i+1})`` with
  3x3 convs (``conv1`` stride 2), each ``Conv(bias=True) -> GroupNorm(32) -> ReLU`` when
  ``FPN.USE_GN`` (the PANet configs set it); *without* GN the official convs are plain
  ``Conv2d`` with no ReLU, although the paper says "ReLU after each convolution layer". Hence
  ``relu=True`` by default (paper, official GN code) and ``relu=False`` for the official no-GN code.
  The downsampling conv reads ``N_i`` after its fusion conv (the recursion runs on outputs).
* The extra coarsest level (P6, torchvision's ``'pool'``): the official ``maxpool_p6``
  (``MaxPool2d(1, stride=2)``) is applied to ``fpn_output_blobs[0]`` *after* the bottom-up path,
  i.e. to **N5**, not P5. Both necks therefore recompute ``'pool'`` from N5 (torchvision's
  ``LastLevelMaxPool`` of the replaced / wrapped FPN subsamples P5). The RPN sees N2..N6, as in the
  official code, where the RPN reads the neck's output.
* GroupNorm: ``get_group_gn`` with Detectron's defaults (``NUM_GROUPS=32``, ``DIM_PER_GP=-1``,
  ``EPSILON=1e-5``): always 32 groups, also for the 128-channel ``mask_conv5_fc``.
* Adaptive feature pooling (``model_builder.roi_feature_transform(panet=True)``): every RoI is
  RoIAligned on every RoI level (P2..P5, not P6) at that level's scale, ``sampling_ratio=2``,
  7x7 (box) / 14x14 (mask); each level has its own first layer, fused by ``torch.max`` after the
  layer's ReLU. Box head in the PANet configs: ``roi_Xconv1fc_gn_head_panet`` (4 convs + 1 fc,
  fuses after the first conv: ``conv1_head[level]`` = ``Conv(bias=False) -> GN -> ReLU``); the
  ``_2fc`` config uses ``roi_2mlp_head_gn_panet`` (fuses after ``fc1[level]`` = ``Linear -> ReLU``,
  no GN; its fc2 has GN, torchvision's ``fc7`` has none). Mask head: ``mask_conv1[level]``.
* Fully-connected fusion (``mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff``): conv1 (per level with
  AFP), conv2, conv3; FCN branch conv4 -> deconv 2x2 -> ReLU -> 1x1 per-class conv
  (``mask_rcnn_outputs.classify``); fc branch from conv3: ``mask_conv4_fc`` (3x3, 256),
  ``mask_conv5_fc`` (3x3, 128), ``mask_fc`` = ``Linear(128*14*14, 28*28)`` **followed by ReLU**
  (in the code, not in the paper), reshaped to 1x28x28 and repeated over classes, then added.
  ``mask_fc`` init: normal(std=0.01), bias 0; convs MSRAFill (= kaiming normal, fan_out).

Where we differ from the official code
--------------------------------------
* ``norm="auto"`` (default) uses the normalisation of the part being replaced/extended
  (torchvision v1: none, v2: BatchNorm), so an ablation changes only the PANet structure; the
  official PANet configs are ``norm: gn``. With ``gn`` the layers match the official ones
  parameter for parameter (``tests/test_panet.py``).
* torchvision's RoIAlign is the ``aligned=False`` variant its ``MultiScaleRoIAlign`` uses, like
  Detectron's ``RoIAlign``; scales are inferred from feature and image sizes like
  ``MultiScaleRoIAlign`` does. Level count, output size and sampling ratio come from the pooler.
* Adaptive pooling adapts to the head it finds: fuse after ``fc6`` for ``TwoMLPHead`` (the
  official ``_2fc`` variant), after the first conv for conv heads (official default).
* Official PANet initialises new layers with Detectron's XavierFill / MSRAFill; we use
  torchvision's initialisation of the same layer types (kaiming normal fan_out for head convs,
  PyTorch defaults for the neck, as torchvision's FPN) except ``mask_fc`` (official normal 0.01).

mmdetection's ``PAFPN`` (``mmdet/models/necks/pafpn.py``) differs from the official code:
* its recursion runs on the *pre-conv* sums: ``inter[i+1] += downsample(inter[i])`` and the outputs
  are ``pafpn_conv(inter[i])`` on the side, so the stride-2 conv reads ``P_i + down(...)``, not
  ``N_i`` (the official code and the paper downsample ``N_i``);
* by default no norm and no activation (``act_cfg=None``) in the bottom-up convs;
* extra levels: max-pool of the last output (N5) like the official code, or extra convs.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial, reduce
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import roi_align
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d
from torchvision.ops.poolers import MultiScaleRoIAlign

from .registry import Site, SiteError, register

__all__ = [
    "PAFPN",
    "BottomUpPath",
    "AdaptiveFeaturePooling",
    "FullyConnectedFusion",
    "GN_GROUPS",
]

#: Detectron's GroupNorm defaults (``GROUP_NORM.NUM_GROUPS``, ``DIM_PER_GP=-1``, ``EPSILON``).
GN_GROUPS = 32
GN_EPS = 1e-5
#: torchvision's name for the extra max-pooled level (``LastLevelMaxPool``).
POOL_KEY = "pool"

Norm = Literal["auto", "none", "gn", "bn"]
REFERENCE = (
    "Liu, Qi, Qin, Shi, Jia, 'Path Aggregation Network for Instance Segmentation', CVPR 2018, "
    "arXiv:1803.01534; official code github.com/ShuLiu1993/PANet, "
)


# ----------------------------------------------------------------------------------- helpers
def _norm_factory(norm: str) -> Callable[[int], nn.Module] | None:
    """``channels -> norm layer`` for ``gn`` (32 groups, as official), ``bn``, or None."""
    if norm == "gn":
        return partial(nn.GroupNorm, GN_GROUPS, eps=GN_EPS)
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "none":
        return None
    raise ValueError(f"norm must be 'none', 'gn' or 'bn' here, not {norm!r}")


def norm_of(module: nn.Module) -> str:
    """``gn``, ``bn`` or ``none``: the first normalisation layer inside ``module``."""
    for m in module.modules():
        if isinstance(m, nn.GroupNorm):
            return "gn"
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
            return "bn"
    return "none"


def _resolve_norm(norm: str, site_norm: str) -> str:
    return site_norm if norm == "auto" else norm


def _conv_norm_act(
    cin: int, cout: int, norm: str, stride: int = 1, dilation: int = 1, relu: bool = True, bias: bool | None = None
) -> nn.Sequential:
    """3x3 conv -> [norm] -> [ReLU], laid out like torchvision's ``Conv2dNormActivation`` (so a
    state dict of the same layers loads). ``bias`` defaults to "no norm" (torchvision's rule)."""
    if bias is None:
        bias = norm == "none"
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=bias)]
    factory = _norm_factory(norm)
    if factory is not None:
        layers.append(factory(cout))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _kaiming_convs(module: nn.Module) -> None:
    """torchvision's RoI-head conv init (= Detectron's MSRAFill): kaiming normal, fan_out; bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_out(size: int) -> int:
    """Spatial size after a 3x3 stride-2 conv with padding 1 (= ``max_pool2d(1, 2)``)."""
    return (size - 1) // 2 + 1


# ----------------------------------------------------------------------------------- bottom-up path
class BottomUpPath(nn.Module):
    """PANet's bottom-up path augmentation on an FPN's output (official ``FPN.py``,
    ``panet_buttomup``): ``N_1 = P_1``; ``N_{i+1} = fuse_i(down_i(N_i) + P_{i+1})`` with 3x3 convs
    (``down`` stride 2), each ``conv -> [norm] -> [ReLU]``.

    Takes and returns an ordered dict of feature maps with the same keys in the same order. The
    first ``num_levels`` keys are the pyramid levels (finest first); every key after them (torchvision's
    ``'pool'``) is recomputed as ``max_pool2d(kernel 1, stride 2)`` of the previous output level, so
    ``'pool'`` is a subsampled N5 as in the official code (not P5).

    Args:
        channels: width of every level (the FPN's ``out_channels``).
        num_levels: number of pyramid levels (4 for P2..P5).
        norm: ``none``, ``gn`` (GroupNorm, 32 groups, official) or ``bn``.
        relu: ReLU after each conv (paper; official GN code). The official no-GN code has none.
    """

    def __init__(self, channels: int, num_levels: int = 4, norm: str = "gn", relu: bool = True) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"the bottom-up path needs at least 2 levels, got {num_levels}")
        _norm_factory(norm)  # validates
        self.num_levels = num_levels
        bias = norm != "bn"  # official: bias=True also with GN
        self.downsample = nn.ModuleList(
            _conv_norm_act(channels, channels, norm, stride=2, relu=relu, bias=bias) for _ in range(num_levels - 1)
        )
        self.fuse = nn.ModuleList(
            _conv_norm_act(channels, channels, norm, stride=1, relu=relu, bias=bias) for _ in range(num_levels - 1)
        )

    def aggregate(self, levels: Sequence[Tensor]) -> list[Tensor]:
        """``[P2, .., P5] -> [N2, .., N5]``."""
        if len(levels) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} pyramid levels, got {len(levels)}")
        out = [levels[0]]
        for down, fuse, p in zip(self.downsample, self.fuse, levels[1:]):
            out.append(fuse(down(out[-1]) + p))
        return out

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        names = list(features)
        if len(names) < self.num_levels:
            raise ValueError(f"expected at least {self.num_levels} feature levels, got keys {names}")
        n = self.aggregate([features[k] for k in names[: self.num_levels]])
        out: OrderedDict[str, Tensor] = OrderedDict(zip(names[: self.num_levels], n))
        last = n[-1]
        for k in names[self.num_levels:]:
            last = F.max_pool2d(last, kernel_size=1, stride=2, padding=0)
            out[k] = last
        return out


class PAFPN(nn.Module):
    """FPN with PANet's bottom-up path: torchvision's ``FeaturePyramidNetwork`` (top-down, the
    same class the baseline uses; with ``norm`` its 1x1/3x3 convs get GroupNorm/BatchNorm and no
    bias, as the official ``FPN.USE_GN`` layers) -> :class:`BottomUpPath` -> ``'pool'`` =
    subsampled N5 (official ``maxpool_p6`` on the bottom-up output).

    Input: the backbone's ordered dict (``'0'..'3'``); output: the same keys plus ``'pool'``,
    every level ``out_channels`` wide, as torchvision's FPN with ``LastLevelMaxPool`` returns.

    Args:
        in_channels_list: channels of each input level (finest first).
        out_channels: pyramid width (256).
        norm: ``none``, ``gn`` (official PANet configs) or ``bn``; used in the top-down FPN and
            the bottom-up path alike, as the official ``FPN.USE_GN``.
        relu: ReLU after the bottom-up convs (see :class:`BottomUpPath`).
        pool: add the ``'pool'`` level.
    """

    def __init__(
        self, in_channels_list: Sequence[int], out_channels: int, norm: str = "gn", relu: bool = True, pool: bool = True
    ) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels_list), out_channels, extra_blocks=None, norm_layer=_norm_factory(norm))
        self.bottom_up = BottomUpPath(out_channels, len(in_channels_list), norm=norm, relu=relu)
        self.pool = pool

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        p = self.fpn(x)
        out: OrderedDict[str, Tensor] = OrderedDict(zip(p.keys(), self.bottom_up.aggregate(list(p.values()))))
        if self.pool:
            out[POOL_KEY] = F.max_pool2d(next(reversed(out.values())), kernel_size=1, stride=2, padding=0)
        return out


def _pyramid_levels(site: Site, levels: dict[str, Any], what: str) -> int:
    """How many leading keys of ``levels`` are pyramid levels; checks that they halve in size and
    that any extra key fits a stride-2 subsample of the last level."""
    names = list(levels)
    n = len([k for k in names if k != POOL_KEY])
    if names[n:] != [POOL_KEY] * (len(names) - n) or n < 2:
        raise SiteError(f"{what} expects pyramid levels followed by torchvision's {POOL_KEY!r} level; this point has {names}")
    sizes = [tuple(levels[k][2:]) for k in names]
    for a, b, ka, kb in zip(sizes, sizes[1:], names, names[1:]):
        if b != (_conv_out(a[0]), _conv_out(a[1])):
            raise SiteError(
                f"{what} needs pyramid levels that halve in size (a stride-2 conv links them), but level "
                f"{ka!r} is {a[0]}x{a[1]} and {kb!r} is {b[0]}x{b[1]}; use a backbone with stride-doubling levels (ResNet)"
            )
    widths = {levels[k][1] for k in names}
    if len(widths) != 1:
        raise SiteError(f"{what} needs levels of one width; this point's levels have {sorted(widths)} channels")
    return n


def _fpn_fit(site: Site) -> dict[str, Any]:
    ins = list(site.inputs[0])
    outs = list(site.output)
    if outs != ins + [POOL_KEY]:
        raise SiteError(f"PAFPN returns the input's keys plus {POOL_KEY!r} (torchvision's FPN with LastLevelMaxPool), but this point maps {ins} to {outs}")
    _pyramid_levels(site, dict(site.output), "PAFPN")
    return {"site_norm": norm_of(site.module)}


def _bottom_up_fit(site: Site) -> dict[str, Any]:
    return {"num_levels": _pyramid_levels(site, dict(site.output), "BottomUpPath"), "site_norm": norm_of(site.module)}


@register(
    "PAFPN",
    kind="neck",
    reference=REFERENCE + "lib/modeling/FPN.py (fpn, panet_buttomup=True)",
    summary="FPN + PANet bottom-up path augmentation (N_{i+1} = conv(P_{i+1} + conv_s2(N_i))); 'pool' from N5. Replaces fpn.",
    modes=("replace",),
    fit=_fpn_fit,
    fit_args=("site_norm",),
)
def pafpn(in_channels_list: list[int], channels: int, site_norm: str, norm: Norm = "auto", relu: bool = True) -> PAFPN:
    """A new neck: top-down FPN + bottom-up path (stitch with ``mode: replace`` at ``fpn``).

    Args:
        in_channels_list: channels of each backbone level (from the probe).
        channels: pyramid width, torchvision FPN's ``out_channels`` (from the probe).
        site_norm: the replaced FPN's normalisation (from the site; used by ``norm="auto"``).
        norm: ``auto`` (as the replaced FPN: none for torchvision v1, bn for v2), ``none``, ``gn``
            (official PANet configs: GroupNorm(32) in the FPN and the bottom-up path) or ``bn``.
        relu: ReLU after each bottom-up conv (paper; official GN code).
    """
    return PAFPN(in_channels_list, channels, norm=_resolve_norm(norm, site_norm), relu=relu)


@register(
    "BottomUpPath",
    kind="neck",
    reference=REFERENCE + "lib/modeling/FPN.py (panet_buttomup_conv1/conv2_modules)",
    summary="PANet bottom-up path on an existing FPN's output (keeps its weights); 'pool' from N5. mode: after at fpn.",
    modes=("after",),
    fit=_bottom_up_fit,
    fit_args=("num_levels", "site_norm"),
)
def bottom_up_path(channels: int, num_levels: int, site_norm: str, norm: Norm = "auto", relu: bool = True) -> BottomUpPath:
    """The bottom-up path alone, after the network's FPN (stitch with ``mode: after`` at ``fpn``).

    Args:
        channels: pyramid width (from the probe).
        num_levels: pyramid levels before ``'pool'`` (from the site).
        site_norm: the FPN's normalisation (from the site; used by ``norm="auto"``).
        norm: ``auto`` (as the FPN), ``none``, ``gn`` (official) or ``bn``.
        relu: ReLU after each conv (paper; official GN code).
    """
    return BottomUpPath(channels, num_levels, norm=_resolve_norm(norm, site_norm), relu=relu)


# ----------------------------------------------------------------------------------- adaptive pooling
def _rois(boxes: Sequence[Tensor], like: Tensor) -> Tensor:
    """``[K_i x 4]`` per image -> ``[sum K_i x 5]`` rows ``(image index, x1, y1, x2, y2)``, in
    float32 whatever the features' dtype (as ``MultiScaleRoIAlign``: under AMP, float16 would
    round coordinates of large images by up to a pixel)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    rows = [
        torch.cat([torch.full((len(b), 1), float(i), dtype=dtype, device=like.device), b.to(device=like.device, dtype=dtype)], dim=1)
        for i, b in enumerate(boxes)
    ]
    return torch.cat(rows, dim=0) if rows else torch.zeros((0, 5), dtype=dtype, device=like.device)


def infer_scale(feature: Tensor, image_shapes: Sequence[Sequence[int]]) -> float:
    """The level's scale as torchvision's ``MultiScaleRoIAlign`` infers it: ``2 ** round(log2(
    feature height / largest image height))``."""
    if not image_shapes:
        raise ValueError("image_shapes must not be empty")
    max_h = max(int(s[0]) for s in image_shapes)
    return 2.0 ** round(math.log2(feature.shape[-2] / max_h))


class AdaptiveFeaturePooling(nn.Module):
    """PANet's adaptive feature pooling: every RoI is RoIAligned on **all** levels, each level's
    features go through that level's own copy of the head's first layer, and the results are
    fused by element-wise max (official ``roi_Xconv1fc_gn_head_panet.conv1_head`` /
    ``roi_2mlp_head_gn_panet.fc1`` / ``mask_rcnn_fcn_head_v1upXconvs_gn_adp*.mask_conv1``).

    Called like torchvision's ``MultiScaleRoIAlign``: ``(features, proposals, image_shapes)``;
    returns what the head's first layer returned (``[K, width]`` for an fc first layer,
    ``[K, width, S, S]`` for a conv one), so that layer must become ``nn.Identity`` (the harness
    does that: the entry *absorbs* it). ``K = 0`` RoIs give an empty output.

    Args:
        in_channels: channels of the feature levels.
        width: output width of the first layer (fc: ``representation_size``, conv: channels).
        first_layer: ``fc`` (``Linear -> ReLU`` on the flattened RoI) or ``conv`` (3x3
            ``conv -> [norm] -> ReLU``).
        featmap_names: the levels to pool from, finest first (``'0'..'3'``; not ``'pool'``).
        output_size: RoIAlign output (7 box, 14 mask).
        sampling_ratio: RoIAlign sampling ratio (2).
        norm: for a conv first layer: ``none``, ``gn`` (official) or ``bn``.
        dilation: of a conv first layer.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        first_layer: str = "conv",
        featmap_names: Sequence[str] = ("0", "1", "2", "3"),
        output_size: int = 7,
        sampling_ratio: int = 2,
        norm: str = "gn",
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if first_layer not in ("fc", "conv"):
            raise ValueError(f"first_layer must be 'fc' or 'conv', not {first_layer!r}")
        if first_layer == "fc" and norm != "none":
            raise ValueError(f"norm={norm!r}: an fc first layer has no norm (official roi_2mlp_head_gn_panet fc1 is Linear -> ReLU)")
        if not featmap_names:
            raise ValueError("featmap_names must name at least one level")
        self.featmap_names = [str(k) for k in featmap_names]
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.first_layer = first_layer
        layers: list[nn.Module] = []
        for _ in self.featmap_names:
            if first_layer == "fc":
                layers.append(nn.Sequential(nn.Flatten(1), nn.Linear(in_channels * self.output_size**2, width), nn.ReLU(inplace=True)))
            else:
                layers.append(_conv_norm_act(in_channels, width, norm, dilation=dilation))
        self.levels = nn.ModuleList(layers)
        if first_layer == "conv":
            _kaiming_convs(self.levels)

    def pool(self, features: dict[str, Tensor], proposals: Sequence[Tensor], image_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        """RoIAlign of every proposal on every level: one ``[K, C, S, S]`` tensor per level."""
        missing = [k for k in self.featmap_names if k not in features]
        if missing:
            raise KeyError(f"feature levels {missing} missing (have {list(features)})")
        maps = [features[k] for k in self.featmap_names]
        rois = _rois(proposals, maps[0])
        return [
            roi_align(
                m, rois, (self.output_size, self.output_size),
                spatial_scale=infer_scale(m, image_shapes), sampling_ratio=self.sampling_ratio, aligned=False,
            )
            for m in maps
        ]

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        pooled = self.pool(features, proposals, image_shapes)
        return reduce(torch.maximum, [layer(x) for layer, x in zip(self.levels, pooled)])


def _afp_branch(site: Site) -> tuple[str, nn.Module]:
    if not isinstance(site.module, MultiScaleRoIAlign):
        raise SiteError(
            f"AdaptiveFeaturePooling replaces a torchvision MultiScaleRoIAlign (box_roi_pool or mask_roi_pool), "
            f"but this point is a {type(site.module).__name__}; stitch it at box_roi_pool or mask_roi_pool"
        )
    if not site.name.endswith("_roi_pool") or not hasattr(site.parent, site.name[: -len("_roi_pool")] + "_head"):
        raise SiteError(f"AdaptiveFeaturePooling needs the pooler's head next to it (box_roi_pool -> box_head, mask_roi_pool -> mask_head); {site.name!r} has none")
    head_name = site.name[: -len("_roi_pool")] + "_head"
    return head_name, getattr(site.parent, head_name)


def _first_conv_block(head: nn.Module) -> nn.Module | None:
    first = next(iter(head.children()), None)
    if first is None:
        return None
    if isinstance(first, nn.Conv2d) or (isinstance(first, nn.Sequential) and isinstance(next(iter(first.children()), None), nn.Conv2d)):
        return first
    return None


def _afp_absorbs(site: Site) -> tuple[str, ...]:
    head_name, head = _afp_branch(site)
    if isinstance(head, TwoMLPHead):
        return (f"{head_name}.fc6",)
    if isinstance(head, (FastRCNNConvFCHead, MaskRCNNHeads, FullyConnectedFusion)):
        return (f"{head_name}.0",)  # its first conv block (checked by the fit hook)
    raise SiteError(
        f"AdaptiveFeaturePooling supports torchvision's TwoMLPHead (fuses after fc6), FastRCNNConvFCHead and MaskRCNNHeads "
        f"(fuse after the first conv) and FullyConnectedFusion, but {head_name} is a {type(head).__name__}; "
        f"use one of those heads or drop AdaptiveFeaturePooling at {site.name}"
    )


def _afp_fit(site: Site) -> dict[str, Any]:
    pooler = site.module
    ((rel, layer),) = site.absorbed.items()
    size = pooler.output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if size[0] != size[1]:
        raise SiteError(f"AdaptiveFeaturePooling pools square RoIs; this pooler's output size is {size}")
    out: dict[str, Any] = {
        "featmap_names": list(pooler.featmap_names),
        "output_size": int(size[0]),
        "sampling_ratio": int(pooler.sampling_ratio),
        "site_norm": norm_of(layer),
        "dilation": 1,
    }
    if isinstance(layer, nn.Linear):
        out.update(first_layer="fc", width=layer.out_features)
    else:
        conv = _first_conv_block(nn.Sequential(layer))
        conv = conv if isinstance(conv, nn.Conv2d) else next(iter(conv.children()), None) if conv is not None else None
        if conv is None:
            raise SiteError(f"AdaptiveFeaturePooling copies the head's first conv per level, but {rel} is a {type(layer).__name__} (a head without convs?)")
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.groups != 1:
            raise SiteError(f"AdaptiveFeaturePooling copies a 3x3 stride-1 first conv per level, but {rel} is {conv}")
        out.update(first_layer="conv", width=conv.out_channels, dilation=conv.dilation[0])
    return out


@register(
    "AdaptiveFeaturePooling",
    kind="roi_head",
    reference=REFERENCE + "lib/modeling/fast_rcnn_heads.py (roi_Xconv1fc_gn_head_panet, roi_2mlp_head_gn_panet), "
    "mask_rcnn_heads.py (mask_conv1), model_builder.py (roi_feature_transform panet=True)",
    summary="Pool each RoI from all FPN levels, per-level first head layer, element-wise max. At box_roi_pool or mask_roi_pool; absorbs the head's first layer.",
    absorbs=_afp_absorbs,
    fit=_afp_fit,
    fit_args=("width", "first_layer", "featmap_names", "output_size", "sampling_ratio", "site_norm", "dilation"),
)
def adaptive_feature_pooling(
    in_channels: int,
    width: int,
    first_layer: str,
    featmap_names: list[str],
    output_size: int,
    sampling_ratio: int,
    site_norm: str,
    dilation: int,
    norm: Norm = "auto",
) -> AdaptiveFeaturePooling:
    """Adaptive feature pooling for the box or mask branch (the branch is the point's: ``box_roi_pool``
    or ``mask_roi_pool``). Everything but ``norm`` comes from the pooler and the absorbed layer.

    Args:
        in_channels: feature width (probe). width, first_layer, dilation, site_norm: of the
            absorbed first layer. featmap_names, output_size, sampling_ratio: of the pooler.
        norm: per-level conv norm: ``auto`` (as the absorbed layer), ``none``, ``gn`` (official),
            ``bn``. An fc first layer has no norm (official ``roi_2mlp_head_gn_panet``).
    """
    resolved = _resolve_norm(norm, site_norm) if first_layer == "conv" else ("none" if norm == "auto" else norm)
    return AdaptiveFeaturePooling(
        in_channels, width, first_layer, featmap_names, output_size, sampling_ratio, norm=resolved, dilation=dilation
    )


# ----------------------------------------------------------------------------------- fully-connected fusion
class FullyConnectedFusion(nn.Module):
    """PANet's mask head with fully-connected fusion (official
    ``mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff`` + ``mask_rcnn_outputs``), replacing torchvision's
    ``MaskRCNNHeads`` + ``MaskRCNNPredictor``: ``[K, C, S, S]`` RoI features -> ``[K, classes, 2S, 2S]``
    mask logits.

    FCN branch: ``num_convs`` 3x3 conv blocks (children ``'0'..'3'``, torchvision's
    ``MaskRCNNHeads`` layout), ``conv5_mask`` (2x2 deconv) -> ReLU -> ``mask_fcn_logits`` (1x1,
    one channel per class; torchvision's ``MaskRCNNPredictor`` names). fc branch, from the output
    of conv ``num_convs - 1`` (conv3): ``conv4_fc`` (3x3, dim), ``conv5_fc`` (3x3, dim / 2), ``fc``
    (``Linear(dim/2 * S*S, 2S*2S)`` -> ReLU, as the official code), reshaped to ``[K, 1, 2S, 2S]``
    and added to every class channel.

    Args:
        in_channels: RoI feature width (256).
        num_classes: mask classes including background (81 for COCO in Detectron, 91 torchvision).
        roi_size: RoI feature size S (14); masks are 2S.
        dim: conv width (official ``MRCNN.DIM_REDUCED`` 256).
        num_convs: FCN convs before the deconv (official 4).
        norm: ``none``, ``gn`` (official) or ``bn``.
        dilation: of the 3x3 convs (official config: 1).
        deconv_dim: width of the deconv (``dim`` by default).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        roi_size: int = 14,
        dim: int = 256,
        num_convs: int = 4,
        norm: str = "gn",
        dilation: int = 1,
        deconv_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_convs < 2:
            raise ValueError(f"num_convs must be >= 2 (the fc branch leaves before the last conv), not {num_convs}")
        if dim % 2:
            raise ValueError(f"dim must be even (conv5_fc has dim / 2 channels), not {dim}")
        self.num_convs, self.roi_size, self.num_classes = num_convs, roi_size, num_classes
        factory = _norm_factory(norm)
        c = in_channels
        for i in range(num_convs):  # torchvision MaskRCNNHeads: Conv2dNormActivation blocks '0'..'3'
            self.add_module(str(i), Conv2dNormActivation(c, dim, 3, 1, padding=dilation, dilation=dilation, norm_layer=factory))
            c = dim
        self.conv4_fc = Conv2dNormActivation(dim, dim, 3, 1, padding=dilation, dilation=dilation, norm_layer=factory)
        half = dim // 2
        # official: GroupNorm(get_group_gn(dim_inner), dim_inner / 2) -> 32 groups on 128 channels
        self.conv5_fc = Conv2dNormActivation(dim, half, 3, 1, padding=dilation, dilation=dilation, norm_layer=factory)
        self.fc = nn.Linear(half * roi_size * roi_size, (2 * roi_size) ** 2)
        deconv_dim = deconv_dim or dim
        self.conv5_mask = nn.ConvTranspose2d(dim, deconv_dim, 2, 2, 0)
        self.mask_fcn_logits = nn.Conv2d(deconv_dim, num_classes, 1, 1, 0)
        _kaiming_convs(self)
        nn.init.normal_(self.fc.weight, std=0.01)  # official mask_fc init
        nn.init.zeros_(self.fc.bias)

    def fc_branch(self, x: Tensor) -> Tensor:
        """conv3 output -> the class-agnostic ``[K, 1, 2S, 2S]`` map."""
        y = self.conv5_fc(self.conv4_fc(x))
        y = F.relu(self.fc(y.flatten(1)))
        return y.view(-1, 1, 2 * self.roi_size, 2 * self.roi_size)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.num_convs - 1):
            x = getattr(self, str(i))(x)
        ff = self.fc_branch(x)
        x = getattr(self, str(self.num_convs - 1))(x)
        logits = self.mask_fcn_logits(F.relu(self.conv5_mask(x)))
        return logits + ff


def _ff_fit(site: Site) -> dict[str, Any]:
    head = site.module
    convs = [m for m in head.children()] if isinstance(head, nn.Sequential) else []
    firsts = [next((c for c in b.modules() if isinstance(c, nn.Conv2d)), None) for b in convs]
    if not isinstance(head, MaskRCNNHeads) or not convs or any(c is None for c in firsts):
        raise SiteError(f"FullyConnectedFusion replaces torchvision's MaskRCNNHeads (stitch it at mask_head), but this point is a {type(head).__name__}")
    (rel,) = site.absorbed
    got = site.absorbed_outputs[rel]
    roi = site.inputs[0][2] if site.inputs and isinstance(site.inputs[0], list) and len(site.inputs[0]) == 4 else None
    if roi is None or not (isinstance(got, list) and len(got) == 4 and got[2] == 2 * roi):
        raise SiteError(f"FullyConnectedFusion maps [K, C, S, S] RoI features to [K, classes, 2S, 2S] logits; here {site.inputs} -> {got}")
    predictor = site.absorbed[rel]
    deconv = next((m for m in predictor.modules() if isinstance(m, nn.ConvTranspose2d)), None)
    return {
        "num_classes": got[1],
        "roi_size": roi,
        "dim": firsts[0].out_channels,
        "num_convs": len(convs),
        "dilation": firsts[0].dilation[0],
        "deconv_dim": deconv.out_channels if deconv is not None else None,
        "site_norm": norm_of(head),
    }


@register(
    "FullyConnectedFusion",
    kind="roi_head",
    reference=REFERENCE + "lib/modeling/mask_rcnn_heads.py (mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff, mask_rcnn_outputs)",
    summary="Mask head with PANet's fully-connected fusion: FCN logits + a class-agnostic fc mask from conv3. Replaces mask_head, absorbs mask_predictor.",
    absorbs=("mask_predictor",),
    fit=_ff_fit,
    fit_args=("num_classes", "roi_size", "dim", "num_convs", "dilation", "deconv_dim", "site_norm"),
)
def fully_connected_fusion(
    in_channels: int,
    num_classes: int,
    roi_size: int,
    dim: int,
    num_convs: int,
    dilation: int,
    deconv_dim: int | None,
    site_norm: str,
    norm: Norm = "auto",
) -> FullyConnectedFusion:
    """Fully-connected fusion mask head (``replace`` at ``mask_head``; absorbs ``mask_predictor``).
    Widths, conv count, class count and RoI size come from the replaced head and predictor.

    Args:
        norm: ``auto`` (as the replaced head: none for torchvision v1, bn for v2), ``none``,
            ``gn`` (official PANet) or ``bn``.
    """
    return FullyConnectedFusion(
        in_channels, num_classes, roi_size, dim, num_convs, norm=_resolve_norm(norm, site_norm),
        dilation=dilation, deconv_dim=deconv_dim,
    )
