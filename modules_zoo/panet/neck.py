"""PANet's necks: :class:`PAFPN` (FPN + bottom-up path, ``replace`` at ``fpn``) and
:class:`BottomUpPath` (the bottom-up path alone, ``after`` at ``fpn``); see :mod:`modules_zoo.panet`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from ..registry import Site, SiteError, register
from .layers import (
    POOL_KEY,
    REFERENCE,
    Init,
    Norm,
    check_init,
    conv_norm_act,
    conv_out,
    norm_factory,
    norm_of,
    resolve_norm,
    xavier_fill,
)


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
        init: ``official`` (the official ``fpn._init_weights``: every conv XavierFill, ``U(+-sqrt(3
            / fan_in))`` = ``kaiming_uniform_(a=1)``, what torchvision's FPN uses too, bias 0) or
            ``pytorch`` (PyTorch's ``Conv2d`` default, stitch before issue 16).
    """

    def __init__(
        self, channels: int, num_levels: int = 4, norm: str = "gn", relu: bool = True, init: Init = "official"
    ) -> None:
        super().__init__()
        check_init(init)
        if num_levels < 2:
            raise ValueError(f"the bottom-up path needs at least 2 levels, got {num_levels}")
        norm_factory(norm)  # validates
        self.num_levels = num_levels
        bias = norm != "bn"  # official: bias=True also with GN
        self.downsample = nn.ModuleList(
            conv_norm_act(channels, channels, norm, stride=2, relu=relu, bias=bias)
            for _ in range(num_levels - 1)
        )
        self.fuse = nn.ModuleList(
            conv_norm_act(channels, channels, norm, stride=1, relu=relu, bias=bias)
            for _ in range(num_levels - 1)
        )
        if init == "official":
            xavier_fill(self)  # official FPN._init_weights: XavierFill, bias 0 (norm layers keep 1, 0)

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
        for k in names[self.num_levels :]:
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
        init: of the bottom-up convs (see :class:`BottomUpPath`); the top-down FPN is torchvision's,
            initialised as the official one.
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        norm: str = "gn",
        relu: bool = True,
        pool: bool = True,
        init: Init = "official",
    ) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(
            list(in_channels_list), out_channels, extra_blocks=None, norm_layer=norm_factory(norm)
        )
        self.bottom_up = BottomUpPath(out_channels, len(in_channels_list), norm=norm, relu=relu, init=init)
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
        raise SiteError(
            f"{what} expects pyramid levels followed by torchvision's {POOL_KEY!r} level; "
            f"this point has {names}"
        )
    sizes = [tuple(levels[k][2:]) for k in names]
    for a, b, ka, kb in zip(sizes, sizes[1:], names, names[1:]):
        if b != (conv_out(a[0]), conv_out(a[1])):
            raise SiteError(
                f"{what} needs pyramid levels that halve in size (a stride-2 conv links them), but level "
                f"{ka!r} is {a[0]}x{a[1]} and {kb!r} is {b[0]}x{b[1]}; "
                "use a backbone with stride-doubling levels (ResNet)"
            )
    widths = {levels[k][1] for k in names}
    if len(widths) != 1:
        raise SiteError(
            f"{what} needs levels of one width; this point's levels have {sorted(widths)} channels"
        )
    return n


def _fpn_fit(site: Site) -> dict[str, Any]:
    ins = list(site.inputs[0])
    outs = list(site.output)
    if outs != [*ins, POOL_KEY]:
        raise SiteError(
            f"PAFPN returns the input's keys plus {POOL_KEY!r} (torchvision's FPN with LastLevelMaxPool), "
            f"but this point maps {ins} to {outs}"
        )
    _pyramid_levels(site, dict(site.output), "PAFPN")
    return {"site_norm": norm_of(site.module)}


def _bottom_up_fit(site: Site) -> dict[str, Any]:
    return {
        "num_levels": _pyramid_levels(site, dict(site.output), "BottomUpPath"),
        "site_norm": norm_of(site.module),
    }


#: fidelity of PAFPN and BottomUpPath (the same bottom-up path) and the tests backing it
BOTTOM_UP_FIDELITY = (
    "`norm: gn` is the official GN code; `norm: none, relu: false` the official non-GN code; "
    "the default `relu: true` follows the paper"
)
BOTTOM_UP_TESTED_BY = (
    "tests/test_panet.py::test_pafpn_and_bottom_up_outputs_equal_the_official_forward",
    "tests/test_panet.py::test_neck_parameter_counts_match_official",
    "tests/test_panet.py::test_bottom_up_convs_and_afp_convs_use_the_official_fills",
)


@register(
    "PAFPN",
    kind="neck",
    reference=REFERENCE + "lib/modeling/FPN.py (fpn, panet_buttomup=True)",
    summary="FPN + PANet bottom-up path augmentation (N_{i+1} = conv(P_{i+1} + conv_s2(N_i))); "
    "'pool' from N5. Replaces fpn.",
    modes=("replace",),
    fit=_fpn_fit,
    fit_args=("site_norm",),
    fidelity="official-output",
    fidelity_note=BOTTOM_UP_FIDELITY,
    tested_by=BOTTOM_UP_TESTED_BY,
)
def pafpn(
    in_channels_list: list[int],
    channels: int,
    site_norm: str,
    norm: Norm = "auto",
    relu: bool = True,
    init: Init = "official",
) -> PAFPN:
    """A new neck: top-down FPN + bottom-up path (stitch with ``mode: replace`` at ``fpn``).

    Args:
        in_channels_list: channels of each backbone level (from the probe).
        channels: pyramid width, torchvision FPN's ``out_channels`` (from the probe).
        site_norm: the replaced FPN's normalisation (from the site; used by ``norm="auto"``).
        norm: ``auto`` (as the replaced FPN: none for torchvision v1, bn for v2), ``none``, ``gn``
            (official PANet configs: GroupNorm(32) in the FPN and the bottom-up path) or ``bn``.
        relu: ReLU after each bottom-up conv (paper; official GN code).
        init: ``official`` (XavierFill, bias 0) or ``pytorch`` (PyTorch's default: stitch before
            issue 16) for the bottom-up convs.
    """
    return PAFPN(in_channels_list, channels, norm=resolve_norm(norm, site_norm), relu=relu, init=init)


@register(
    "BottomUpPath",
    kind="neck",
    reference=REFERENCE + "lib/modeling/FPN.py (panet_buttomup_conv1/conv2_modules)",
    summary="PANet bottom-up path on an existing FPN's output (keeps its weights); 'pool' from N5. "
    "mode: after at fpn.",
    modes=("after",),
    fit=_bottom_up_fit,
    fit_args=("num_levels", "site_norm"),
    fidelity="official-output",
    fidelity_note=BOTTOM_UP_FIDELITY,
    tested_by=BOTTOM_UP_TESTED_BY,
)
def bottom_up_path(
    channels: int,
    num_levels: int,
    site_norm: str,
    norm: Norm = "auto",
    relu: bool = True,
    init: Init = "official",
) -> BottomUpPath:
    """The bottom-up path alone, after the network's FPN (stitch with ``mode: after`` at ``fpn``).

    Args:
        channels: pyramid width (from the probe).
        num_levels: pyramid levels before ``'pool'`` (from the site).
        site_norm: the FPN's normalisation (from the site; used by ``norm="auto"``).
        norm: ``auto`` (as the FPN), ``none``, ``gn`` (official) or ``bn``.
        relu: ReLU after each conv (paper; official GN code).
        init: ``official`` (XavierFill, bias 0) or ``pytorch`` (PyTorch's default: stitch before
            issue 16).
    """
    return BottomUpPath(channels, num_levels, norm=resolve_norm(norm, site_norm), relu=relu, init=init)
