"""PANet's adaptive feature pooling (:class:`AdaptiveFeaturePooling`, ``replace`` at
``box_roi_pool`` or ``mask_roi_pool``; absorbs the head up to its shared layers); see
:mod:`modules_zoo.panet`."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, cast

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import roi_align
from torchvision.ops.poolers import MultiScaleRoIAlign

from ..registry import Site, SiteError, register
from .layers import (
    REFERENCE,
    Init,
    Norm,
    check_init,
    conv_norm_act,
    fc_norm_act,
    kaiming_convs,
    norm_of,
    resolve_norm,
    xavier_fill,
)
from .mask_head import FullyConnectedFusion


def _rois(boxes: Sequence[Tensor], like: Tensor) -> Tensor:
    """``[K_i x 4]`` per image -> ``[sum K_i x 5]`` rows ``(image index, x1, y1, x2, y2)``, in
    float32 whatever the features' dtype (as ``MultiScaleRoIAlign``: under AMP, float16 would
    round coordinates of large images by up to a pixel)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    rows = [
        torch.cat(
            [
                torch.full((len(b), 1), float(i), dtype=dtype, device=like.device),
                b.to(device=like.device, dtype=dtype),
            ],
            dim=1,
        )
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
    features go through that level's own copy of the head's first layer, the results are fused by
    element-wise max, and the fused features go through the layers the levels share (official
    ``roi_Xconv1fc_gn_head_panet`` ``conv1_head`` + ``convs``, ``roi_2mlp_head_gn_panet`` ``fc1`` +
    ``fc2``, ``mask_rcnn_fcn_head_v1upXconvs_gn_adp*`` ``mask_conv1`` + ``conv_fcn``).

    Called like torchvision's ``MultiScaleRoIAlign``: ``(features, proposals, image_shapes)``;
    returns what the last absorbed head layer returned (``[K, width]`` for an fc first layer,
    ``[K, width, S, S]`` for a conv one), so the absorbed layers must become ``nn.Identity`` (the
    harness does that). ``K = 0`` RoIs give an empty output.

    Args:
        in_channels: channels of the feature levels.
        width: output width of the first layer (fc: ``representation_size``, conv: channels).
        first_layer: ``fc`` (``Linear -> [GroupNorm] -> ReLU`` on the flattened RoI, official since
            commit dac8628) or ``conv`` (3x3 ``conv -> [norm] -> ReLU``).
        featmap_names: the levels to pool from, finest first (``'0'..'3'``; not ``'pool'``).
        output_size: RoIAlign output (7 box, 14 mask).
        sampling_ratio: RoIAlign sampling ratio (2).
        norm: ``none``, ``gn`` (official) or ``bn`` (conv only: the official fc head has
            GroupNorm, and BatchNorm1d over a handful of RoIs has no counterpart anywhere).
        dilation: of a conv first layer.
        shared: the layers after the max, used as given (the builder passes the absorbed conv
            head's remaining blocks, reused or rebuilt). ``None``: for ``fc`` the official fc2,
            ``Linear(width, width) -> [GroupNorm] -> ReLU``; for ``conv`` nothing.
        init: ``official``: as the official heads' ``_init_weights``: convs MSRAFill (kaiming
            normal, fan_out), every Linear XavierFill (``kaiming_uniform_(a=1)``), biases 0, norms
            1 and 0; ``pytorch``: the Linear layers keep PyTorch's default (stitch before issue 16;
            convs MSRAFill either way).
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
        shared: Sequence[nn.Module] | None = None,
        init: Init = "official",
    ) -> None:
        super().__init__()
        check_init(init)
        if first_layer not in ("fc", "conv"):
            raise ValueError(f"first_layer must be 'fc' or 'conv', not {first_layer!r}")
        if first_layer == "fc" and norm == "bn":
            raise ValueError(
                "norm='bn': an fc first layer takes norm 'none' or 'gn' "
                "(official roi_2mlp_head_gn_panet: Linear -> GroupNorm -> ReLU); use norm: gn"
            )
        if not featmap_names:
            raise ValueError("featmap_names must name at least one level")
        self.featmap_names = [str(k) for k in featmap_names]
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.first_layer = first_layer
        if first_layer == "fc":
            flat = in_channels * self.output_size**2
            self.levels = nn.ModuleList(
                nn.Sequential(nn.Flatten(1), *fc_norm_act(flat, width, norm)) for _ in self.featmap_names
            )
            if init == "official":
                xavier_fill(self.levels)
        else:
            self.levels = nn.ModuleList(
                conv_norm_act(in_channels, width, norm, dilation=dilation) for _ in self.featmap_names
            )
            kaiming_convs(self.levels)
        if shared is None and first_layer == "fc":
            self.shared = fc_norm_act(width, width, norm)
            if init == "official":
                xavier_fill(self.shared)
        else:
            self.shared = nn.Sequential(*(shared or ()))

    def pool(
        self, features: dict[str, Tensor], proposals: Sequence[Tensor], image_shapes: Sequence[Sequence[int]]
    ) -> list[Tensor]:
        """RoIAlign of every proposal on every level: one ``[K, C, S, S]`` tensor per level."""
        missing = [k for k in self.featmap_names if k not in features]
        if missing:
            raise KeyError(f"feature levels {missing} missing (have {list(features)})")
        maps = [features[k] for k in self.featmap_names]
        rois = _rois(proposals, maps[0])
        return [
            roi_align(
                m,
                rois,
                (self.output_size, self.output_size),
                spatial_scale=infer_scale(m, image_shapes),
                sampling_ratio=self.sampling_ratio,
                aligned=False,
            )
            for m in maps
        ]

    def forward(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        pooled = self.pool(features, proposals, image_shapes)
        return self.shared(reduce(torch.maximum, [layer(x) for layer, x in zip(self.levels, pooled)]))


def _afp_branch(site: Site) -> tuple[str, nn.Module]:
    if not isinstance(site.module, MultiScaleRoIAlign):
        raise SiteError(
            "AdaptiveFeaturePooling replaces a torchvision MultiScaleRoIAlign "
            f"(box_roi_pool or mask_roi_pool), but this point is a {type(site.module).__name__}; "
            "stitch it at box_roi_pool or mask_roi_pool"
        )
    if not site.name.endswith("_roi_pool") or not hasattr(
        site.parent, site.name[: -len("_roi_pool")] + "_head"
    ):
        raise SiteError(
            "AdaptiveFeaturePooling needs the pooler's head next to it "
            f"(box_roi_pool -> box_head, mask_roi_pool -> mask_head); {site.name!r} has none"
        )
    head_name = site.name[: -len("_roi_pool")] + "_head"
    return head_name, getattr(site.parent, head_name)


def _conv_tower(head: nn.Module) -> list[str]:
    """Names of a torchvision conv head's conv blocks: every child before its ``Flatten``
    (``FastRCNNConvFCHead``) or every child (``MaskRCNNHeads``); the fit hook checks them."""
    names = []
    for name, child in head.named_children():
        if isinstance(child, nn.Flatten):
            break
        names.append(name)
    return names


@dataclass(frozen=True, eq=False)
class HeadTower:
    """The absorbed conv blocks of a conv head after its first one (``box_head.1..3``,
    ``mask_head.1..3``), handed from the fit hook to the builder, which reuses them when the
    norm is unchanged and rebuilds them with the new norm otherwise. Its repr is one line."""

    blocks: tuple[nn.Module, ...]

    @property
    def norm(self) -> str:
        """``gn``, ``bn`` or ``none``: the blocks' normalisation."""
        return norm_of(nn.Sequential(*self.blocks))

    def convs(self) -> list[nn.Conv2d]:
        """The conv of each block."""
        return [_block_conv(b) for b in self.blocks]

    def __repr__(self) -> str:
        return f"HeadTower({len(self.blocks)} conv blocks, norm {self.norm})"


def _block_conv(block: nn.Module, name: str = "a block") -> nn.Conv2d:
    """The conv of a conv block (``Conv2d``, or a ``Sequential`` starting with one)."""
    conv = next(iter(block.children()), None) if isinstance(block, nn.Sequential) else block
    if not isinstance(conv, nn.Conv2d):
        raise SiteError(
            f"AdaptiveFeaturePooling takes over the head's conv blocks, but {name} is a "
            f"{type(block).__name__}; use torchvision's conv head there"
        )
    return conv


def _afp_absorbs(site: Site) -> tuple[str, ...]:
    head_name, head = _afp_branch(site)
    if isinstance(head, TwoMLPHead):
        return (f"{head_name}.fc6", f"{head_name}.fc7")  # official fc1 per level + fc2
    if isinstance(head, FullyConnectedFusion):
        return (f"{head_name}.0",)  # its conv1; the fc branch leaves after conv3
    if isinstance(head, (FastRCNNConvFCHead, MaskRCNNHeads)):
        blocks = _conv_tower(head)
        if blocks:  # the whole conv tower: per-level conv1 + the shared convs, as the official heads
            return tuple(f"{head_name}.{b}" for b in blocks)
    raise SiteError(
        "AdaptiveFeaturePooling supports torchvision's TwoMLPHead (fuses after fc6), "
        "FastRCNNConvFCHead and MaskRCNNHeads "
        f"(fuse after the first conv) and FullyConnectedFusion, but {head_name} is a {type(head).__name__}; "
        f"use one of those heads or drop AdaptiveFeaturePooling at {site.name}"
    )


def _afp_fit(site: Site) -> dict[str, Any]:
    pooler = cast(MultiScaleRoIAlign, site.module)  # checked by the absorbs hook
    (rel, layer), *rest = site.absorbed.items()
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
        width = layer.out_features
        fc2 = [m for _, m in rest]
        if len(fc2) != 1 or not (
            isinstance(fc2[0], nn.Linear) and (fc2[0].in_features, fc2[0].out_features) == (width, width)
        ):
            raise SiteError(
                f"AdaptiveFeaturePooling takes TwoMLPHead's fc7 as the official fc2, a Linear({width}, "
                f"{width}), but it is {fc2[0] if len(fc2) == 1 else rest}"
            )
        out.update(first_layer="fc", width=width)
        return out
    blocks = [layer, *(m for _, m in rest)]
    for name, block in zip([rel, *(r for r, _ in rest)], blocks):
        conv = _block_conv(block, name)
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.groups != 1:
            raise SiteError(f"AdaptiveFeaturePooling rebuilds 3x3 stride-1 head convs, but {name} is {conv}")
    first = _block_conv(layer)
    out.update(first_layer="conv", width=first.out_channels, dilation=first.dilation[0])
    if rest:
        out["tower"] = HeadTower(tuple(blocks[1:]))
    return out


def shared_convs(tower: HeadTower | None, norm: str) -> list[nn.Module]:
    """The conv blocks after the max: ``tower``'s own (copies, pretrained weights kept) when their
    norm is ``norm``, else new ``conv -> [norm] -> ReLU`` blocks of the same shapes (MSRAFill)."""
    if tower is None:
        return []
    if tower.norm == norm:
        return [copy.deepcopy(b) for b in tower.blocks]
    new = nn.Sequential(
        *(conv_norm_act(c.in_channels, c.out_channels, norm, dilation=c.dilation[0]) for c in tower.convs())
    )
    kaiming_convs(new)
    return list(new)


@register(
    "AdaptiveFeaturePooling",
    kind="roi_head",
    reference=REFERENCE
    + "lib/modeling/fast_rcnn_heads.py (roi_Xconv1fc_gn_head_panet, roi_2mlp_head_gn_panet), "
    "mask_rcnn_heads.py (mask_conv1), model_builder.py (roi_feature_transform panet=True)",
    summary="Pool each RoI from all FPN levels, per-level first head layer, element-wise max, then the "
    "head's shared layers. At box_roi_pool or mask_roi_pool; absorbs the head up to those layers.",
    absorbs=_afp_absorbs,
    fit=_afp_fit,
    fit_args=(
        "width",
        "first_layer",
        "featmap_names",
        "output_size",
        "sampling_ratio",
        "site_norm",
        "dilation",
        "tower",
    ),
    fidelity="official-output",
    fidelity_note=(
        "box (4conv1fc and 2fc, commit dac8628) and mask heads; `norm: gn` is the official GN "
        "configuration, `norm: auto` keeps the head's own norm"
    ),
    tested_by=(
        "tests/test_panet.py::test_2fc_afp_output_equals_the_official_head",
        "tests/test_panet.py::test_conv_box_afp_output_equals_the_official_4conv1fc_head",
        "tests/test_panet.py::test_mask_afp_and_ff_output_equal_the_official_ff_head",
        "tests/test_panet.py::test_2fc_afp_parameter_count_and_init_match_official",
        "tests/test_panet.py::test_box_afp_parameter_counts_match_official",
        "tests/test_panet.py::test_mask_afp_and_ff_parameter_counts_match_official",
    ),
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
    tower: HeadTower | None = None,
    norm: Norm = "auto",
    init: Init = "official",
) -> AdaptiveFeaturePooling:
    """Adaptive feature pooling for the box or mask branch (the branch is the point's: ``box_roi_pool``
    or ``mask_roi_pool``). Everything but ``norm`` comes from the pooler and the absorbed layers.

    What it absorbs, per head: ``TwoMLPHead``: ``fc6`` and ``fc7`` (official fc1 per level and fc2;
    fc2 is new, XavierFill); ``FastRCNNConvFCHead`` / ``MaskRCNNHeads``: the whole conv tower (conv1
    per level, the others shared after the max: reused with their weights when the norm is
    unchanged, rebuilt with the new norm otherwise); :class:`FullyConnectedFusion`: its conv1.

    Args:
        in_channels: feature width (probe). width, first_layer, dilation, site_norm: of the
            absorbed first layer; tower: the absorbed conv blocks after it. featmap_names,
            output_size, sampling_ratio: of the pooler.
        norm: norm of the head layers: ``auto`` (as the absorbed first layer), ``none``, ``gn``
            (official), ``bn`` (conv heads only).
        init: ``official`` (XavierFill, bias 0 for the fc layers) or ``pytorch`` (PyTorch's
            ``Linear`` default: stitch before issue 16).
    """
    resolved = resolve_norm(norm, site_norm)
    return AdaptiveFeaturePooling(
        in_channels,
        width,
        first_layer,
        featmap_names,
        output_size,
        sampling_ratio,
        norm=resolved,
        dilation=dilation,
        shared=None if first_layer == "fc" else shared_convs(tower, resolved),
        init=init,
    )
