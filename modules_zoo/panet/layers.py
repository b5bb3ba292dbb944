"""Layers and constants the PANet modules share: Detectron's GroupNorm settings, the
``conv -> [norm] -> [ReLU]`` and ``Linear -> [GroupNorm] -> ReLU`` blocks, the official fill rules
(MSRAFill, XavierFill) and the norm of a site."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

#: Detectron's GroupNorm defaults (``GROUP_NORM.NUM_GROUPS``, ``DIM_PER_GP=-1``, ``EPSILON``).
GN_GROUPS = 32
GN_EPS = 1e-5
#: torchvision's name for the extra max-pooled level (``LastLevelMaxPool``).
POOL_KEY = "pool"

Norm = Literal["auto", "none", "gn", "bn"]
#: ``official``: Detectron's fill rules (XavierFill / MSRAFill); ``pytorch``: PyTorch's layer
#: defaults where stitch used them before issue 16 (bottom-up convs, adaptive pooling's fc layers)
Init = Literal["official", "pytorch"]
REFERENCE = (
    "Liu, Qi, Qin, Shi, Jia, 'Path Aggregation Network for Instance Segmentation', CVPR 2018, "
    "arXiv:1803.01534; official code github.com/ShuLiu1993/PANet, "
)


def norm_factory(norm: str) -> Callable[[int], nn.Module] | None:
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


def resolve_norm(norm: str, site_norm: str) -> str:
    """``site_norm`` (the norm of the part being replaced) for ``norm="auto"``, else ``norm``."""
    return site_norm if norm == "auto" else norm


def conv_norm_act(
    cin: int,
    cout: int,
    norm: str,
    stride: int = 1,
    dilation: int = 1,
    relu: bool = True,
    bias: bool | None = None,
) -> nn.Sequential:
    """3x3 conv -> [norm] -> [ReLU], laid out like torchvision's ``Conv2dNormActivation`` (so a
    state dict of the same layers loads). ``bias`` defaults to "no norm" (torchvision's rule)."""
    if bias is None:
        bias = norm == "none"
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=bias)
    ]
    factory = norm_factory(norm)
    if factory is not None:
        layers.append(factory(cout))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def fc_norm_act(fin: int, fout: int, norm: str) -> nn.Sequential:
    """``Linear -> [GroupNorm(32)] -> ReLU`` (official ``roi_2mlp_head_gn_panet`` fc1 / fc2 layout)."""
    if norm not in ("none", "gn"):
        raise ValueError(f"norm must be 'none' or 'gn' for an fc layer, not {norm!r}")
    layers: list[nn.Module] = [nn.Linear(fin, fout)]
    if norm == "gn":
        layers.append(nn.GroupNorm(GN_GROUPS, fout, eps=GN_EPS))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


def kaiming_convs(module: nn.Module) -> None:
    """Detectron's MSRAFill (= torchvision's RoI-head conv init): kaiming normal, fan_out; bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def check_init(init: str) -> None:
    """Raise a one-line ``ValueError`` unless ``init`` is ``official`` or ``pytorch``."""
    if init not in ("official", "pytorch"):
        raise ValueError(f"init must be 'official' or 'pytorch', not {init!r}")


def xavier_fill(module: nn.Module) -> None:
    """Detectron's XavierFill with zero bias for every ``Linear`` and ``Conv2d`` in ``module``
    (official PANet bottom-up convs and box-head fc layers): ``U(-s, s)``, ``s = sqrt(3 / fan_in)``,
    which is ``kaiming_uniform_(a=1)`` (also torchvision's FPN init)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(m.weight, a=1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def conv_out(size: int) -> int:
    """Spatial size after a 3x3 stride-2 conv with padding 1 (= ``max_pool2d(1, 2)``)."""
    return (size - 1) // 2 + 1
