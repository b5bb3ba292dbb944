"""PANet's adaptive feature pooling (:class:`AdaptiveFeaturePooling`, ``replace`` at
``box_roi_pool`` or ``mask_roi_pool``; absorbs the head's first layer); see :mod:`modules_zoo.panet`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce
from typing import Any, cast

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import roi_align
from torchvision.ops.poolers import MultiScaleRoIAlign

from ..registry import Site, SiteError, register
from .layers import REFERENCE, Norm, conv_norm_act, kaiming_convs, norm_of, resolve_norm
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
            raise ValueError(
                f"norm={norm!r}: an fc first layer has no norm "
                "(official roi_2mlp_head_gn_panet fc1 is Linear -> ReLU)"
            )
        if not featmap_names:
            raise ValueError("featmap_names must name at least one level")
        self.featmap_names = [str(k) for k in featmap_names]
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.first_layer = first_layer
        layers: list[nn.Module] = []
        for _ in self.featmap_names:
            if first_layer == "fc":
                layers.append(
                    nn.Sequential(
                        nn.Flatten(1),
                        nn.Linear(in_channels * self.output_size**2, width),
                        nn.ReLU(inplace=True),
                    )
                )
            else:
                layers.append(conv_norm_act(in_channels, width, norm, dilation=dilation))
        self.levels = nn.ModuleList(layers)
        if first_layer == "conv":
            kaiming_convs(self.levels)

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
        return reduce(torch.maximum, [layer(x) for layer, x in zip(self.levels, pooled)])


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


def _first_conv_block(head: nn.Module) -> nn.Module | None:
    first = next(iter(head.children()), None)
    if first is None:
        return None
    if isinstance(first, nn.Conv2d) or (
        isinstance(first, nn.Sequential) and isinstance(next(iter(first.children()), None), nn.Conv2d)
    ):
        return first
    return None


def _afp_absorbs(site: Site) -> tuple[str, ...]:
    head_name, head = _afp_branch(site)
    if isinstance(head, TwoMLPHead):
        return (f"{head_name}.fc6",)
    if isinstance(head, (FastRCNNConvFCHead, MaskRCNNHeads, FullyConnectedFusion)):
        return (f"{head_name}.0",)  # its first conv block (checked by the fit hook)
    raise SiteError(
        "AdaptiveFeaturePooling supports torchvision's TwoMLPHead (fuses after fc6), "
        "FastRCNNConvFCHead and MaskRCNNHeads "
        f"(fuse after the first conv) and FullyConnectedFusion, but {head_name} is a {type(head).__name__}; "
        f"use one of those heads or drop AdaptiveFeaturePooling at {site.name}"
    )


def _afp_fit(site: Site) -> dict[str, Any]:
    pooler = cast(MultiScaleRoIAlign, site.module)  # checked by the absorbs hook
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
        if isinstance(conv, nn.Sequential):
            conv = next(iter(conv.children()), None)
        if not isinstance(conv, nn.Conv2d):
            raise SiteError(
                f"AdaptiveFeaturePooling copies the head's first conv per level, but {rel} is a "
                f"{type(layer).__name__} (a head without convs?)"
            )
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.groups != 1:
            raise SiteError(
                f"AdaptiveFeaturePooling copies a 3x3 stride-1 first conv per level, but {rel} is {conv}"
            )
        out.update(first_layer="conv", width=conv.out_channels, dilation=conv.dilation[0])
    return out


@register(
    "AdaptiveFeaturePooling",
    kind="roi_head",
    reference=REFERENCE
    + "lib/modeling/fast_rcnn_heads.py (roi_Xconv1fc_gn_head_panet, roi_2mlp_head_gn_panet), "
    "mask_rcnn_heads.py (mask_conv1), model_builder.py (roi_feature_transform panet=True)",
    summary="Pool each RoI from all FPN levels, per-level first head layer, element-wise max. "
    "At box_roi_pool or mask_roi_pool; absorbs the head's first layer.",
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
    ),
    fidelity="official-params",
    tested_by=(
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
    resolved = (
        resolve_norm(norm, site_norm) if first_layer == "conv" else ("none" if norm == "auto" else norm)
    )
    return AdaptiveFeaturePooling(
        in_channels,
        width,
        first_layer,
        featmap_names,
        output_size,
        sampling_ratio,
        norm=resolved,
        dilation=dilation,
    )
