"""PANet's fully-connected fusion mask head (:class:`FullyConnectedFusion`, ``replace`` at
``mask_head``; absorbs ``mask_predictor``); see :mod:`modules_zoo.panet`."""

from __future__ import annotations

from typing import Any, cast

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops.misc import Conv2dNormActivation

from ..registry import Site, SiteError, register
from .layers import REFERENCE, Norm, kaiming_convs, norm_factory, norm_of, resolve_norm


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
            raise ValueError(
                f"num_convs must be >= 2 (the fc branch leaves before the last conv), not {num_convs}"
            )
        if dim % 2:
            raise ValueError(f"dim must be even (conv5_fc has dim / 2 channels), not {dim}")
        self.num_convs, self.roi_size, self.num_classes = num_convs, roi_size, num_classes
        factory = norm_factory(norm)
        c = in_channels
        for i in range(num_convs):  # torchvision MaskRCNNHeads: Conv2dNormActivation blocks '0'..'3'
            self.add_module(
                str(i),
                Conv2dNormActivation(c, dim, 3, 1, padding=dilation, dilation=dilation, norm_layer=factory),
            )
            c = dim
        self.conv4_fc = Conv2dNormActivation(
            dim, dim, 3, 1, padding=dilation, dilation=dilation, norm_layer=factory
        )
        half = dim // 2
        # official: GroupNorm(get_group_gn(dim_inner), dim_inner / 2) -> 32 groups on 128 channels
        self.conv5_fc = Conv2dNormActivation(
            dim, half, 3, 1, padding=dilation, dilation=dilation, norm_layer=factory
        )
        self.fc = nn.Linear(half * roi_size * roi_size, (2 * roi_size) ** 2)
        deconv_dim = deconv_dim or dim
        self.conv5_mask = nn.ConvTranspose2d(dim, deconv_dim, 2, 2, 0)
        self.mask_fcn_logits = nn.Conv2d(deconv_dim, num_classes, 1, 1, 0)
        kaiming_convs(self)
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
    convs = list(head.children()) if isinstance(head, nn.Sequential) else []
    firsts = [next((c for c in b.modules() if isinstance(c, nn.Conv2d)), None) for b in convs]
    if not isinstance(head, MaskRCNNHeads) or not convs or any(c is None for c in firsts):
        raise SiteError(
            "FullyConnectedFusion replaces torchvision's MaskRCNNHeads (stitch it at mask_head), "
            f"but this point is a {type(head).__name__}"
        )
    (rel,) = site.absorbed
    got = site.absorbed_outputs[rel]
    roi = (
        site.inputs[0][2]
        if site.inputs and isinstance(site.inputs[0], list) and len(site.inputs[0]) == 4
        else None
    )
    if roi is None or not (isinstance(got, list) and len(got) == 4 and got[2] == 2 * roi):
        raise SiteError(
            "FullyConnectedFusion maps [K, C, S, S] RoI features to [K, classes, 2S, 2S] logits; "
            f"here {site.inputs} -> {got}"
        )
    predictor = site.absorbed[rel]
    first = cast(nn.Conv2d, firsts[0])  # not None: checked above
    deconv = next((m for m in predictor.modules() if isinstance(m, nn.ConvTranspose2d)), None)
    return {
        "num_classes": got[1],
        "roi_size": roi,
        "dim": first.out_channels,
        "num_convs": len(convs),
        "dilation": first.dilation[0],
        "deconv_dim": deconv.out_channels if deconv is not None else None,
        "site_norm": norm_of(head),
    }


@register(
    "FullyConnectedFusion",
    kind="roi_head",
    reference=REFERENCE
    + "lib/modeling/mask_rcnn_heads.py (mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff, mask_rcnn_outputs)",
    summary="Mask head with PANet's fully-connected fusion: FCN logits + a class-agnostic fc mask "
    "from conv3. Replaces mask_head, absorbs mask_predictor.",
    absorbs=("mask_predictor",),
    fit=_ff_fit,
    fit_args=("num_classes", "roi_size", "dim", "num_convs", "dilation", "deconv_dim", "site_norm"),
    fidelity="official-output",
    fidelity_note="`norm: gn` is the official GN head (mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff)",
    tested_by=(
        "tests/test_panet.py::test_mask_afp_and_ff_output_equal_the_official_ff_head",
        "tests/test_panet.py::test_mask_afp_and_ff_parameter_counts_match_official",
    ),
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
        in_channels,
        num_classes,
        roi_size,
        dim,
        num_convs,
        norm=resolve_norm(norm, site_norm),
        dilation=dilation,
        deconv_dim=deconv_dim,
    )
