"""Controls for ablations (``ablation.controls``): what a module's gain is measured against.

- ``MatchedBottleneck``: a plain 1x1-conv bottleneck ``C -> r -> C`` (ReLU between, no attention,
  no gating) with the parameter count of another unary module built at the same point (``match``
  with ``match_args``), within 1 %. ``r`` and which of the bias terms and the hidden BatchNorm
  are present are chosen to come closest. With ``skip`` (used in the ``after``, ``before`` and
  ``replace`` modes) it returns ``x + block(x)``, identity-like as the gate ``x * g(x)`` it stands
  in for; in the ``residual`` mode the wrapper adds ``x`` itself and the block is returned alone.
  A module whose size depends on the feature map (``BoT``'s relative positions, ``Lambda`` with
  ``r: null``, ``GE`` with ``extra_params`` at global extent) is counted at the point's size, which
  the ``fit`` hook passes on as ``feat_size``.
- ``Identity``: the placebo: the stitching wrapper with ``nn.Identity`` inside (no parameters).

Not from a paper: a parameter-matched control answers "is it just the extra parameters?".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .added_arguments import added_arguments
from .feature_size import site_feature_size
from .registry import Site, get, register

#: the largest relative difference between a control's parameter count and its target
TOLERANCE = 0.01


def matched_layout(channels: int, target: int) -> tuple[int, bool, bool, bool]:
    """``(r, bias1, norm, bias2)`` of the bottleneck whose parameter count
    ``2*C*r + bias1*r + norm*2r + bias2*C`` is nearest ``target`` (ties: the smaller width)."""
    c = channels
    best: tuple[int, tuple[int, bool, bool, bool]] | None = None
    for r in range(1, max(1, target // (2 * c)) + 2):
        for bias1 in (True, False):
            for norm in (True, False):
                for bias2 in (True, False):
                    n = 2 * c * r + bias1 * r + norm * 2 * r + bias2 * c
                    if best is None or abs(n - target) < best[0]:
                        best = (abs(n - target), (r, bias1, norm, bias2))
    assert best is not None
    return best[1]


def module_params(
    name: str, channels: int, args: dict[str, Any] | None, feat_size: tuple[int, int] | None = None
) -> int:
    """Parameters of the unary zoo module ``name`` built with ``args`` at ``channels`` channels and,
    for a module that takes it, the point's ``feat_size`` (H, W) (built under a forked RNG, so the
    caller's random stream is untouched)."""
    entry = get(name)
    if entry.kind != "unary":
        raise ValueError(
            f"a matched control stands in for a unary module; {name} is a {entry.kind} module (no control)"
        )
    probed: dict[str, Any] = {"channels": channels, "in_channels": channels, "out_channels": channels}
    if feat_size is not None:
        probed["feat_size"] = tuple(feat_size)
    with torch.random.fork_rng(devices=[]):
        module = entry.build(probed, dict(args or {}))
    return sum(p.numel() for p in module.parameters())


class MatchedBottleneck(nn.Module):
    """A plain bottleneck with as many parameters as ``match(**match_args)`` at this point
    (``feat_size``: the point's (H, W), for a module whose parameters depend on it)."""

    def __init__(
        self,
        channels: int,
        match: str = "SE",
        match_args: dict[str, Any] | None = None,
        skip: bool = True,
        feat_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.target_params = module_params(match, channels, match_args, feat_size)
        r, bias1, norm, bias2 = matched_layout(channels, self.target_params)
        self.skip = skip
        self.reduce = nn.Conv2d(channels, r, 1, bias=bias1)
        self.norm = nn.BatchNorm2d(r) if norm else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(r, channels, 1, bias=bias2)
        got = sum(p.numel() for p in self.parameters())
        if abs(got - self.target_params) > TOLERANCE * self.target_params:
            raise ValueError(
                f"no plain bottleneck at {channels} channels comes within 1 % of {match}'s "
                f"{self.target_params} parameters (nearest: {got}); no matched control at this point"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.act(self.norm(self.reduce(x))))
        return x + y if self.skip else y


def point_feature_size(site: Site) -> dict[str, Any]:
    """``fit`` hook: the point's ``feat_size`` (H, W) where the probe saw a 4-D map, else nothing
    (most matched modules do not need it)."""
    size = site_feature_size(site)
    return {} if size is None else {"feat_size": size}


@register(
    "MatchedBottleneck",
    kind="unary",
    reference="stitch control (parameter-matched plain block)",
    summary="1x1 conv bottleneck C->r->C with the parameter count of `match` (within 1 %); ablation.controls",
    fit=point_feature_size,
    fit_args=("feat_size",),
    fidelity="control",
)
@added_arguments(feat_size=None)
def matched_bottleneck(
    channels: int,
    match: str = "SE",
    match_args: dict[str, Any] | None = None,
    skip: bool = True,
    feat_size: tuple[int, int] | None = None,
) -> MatchedBottleneck:
    """A :class:`MatchedBottleneck` (a builder function, so that ``feat_size``, added later, stays
    out of run configurations at its default).

    Args:
        channels: channels at the point (in = out).
        match: the unary zoo module whose parameter count the control matches.
        match_args: that module's arguments (as in its insertion).
        skip: return ``x + block(x)`` (not in the ``residual`` mode, whose wrapper adds ``x``).
        feat_size: (H, W) at the point (filled from the probe) for a size-dependent ``match``.
    """
    return MatchedBottleneck(channels, match, match_args, skip, feat_size)


@register(
    "Identity",
    kind="unary",
    reference="stitch control (placebo)",
    summary="nn.Identity: the stitching wrapper without a module (no parameters); ablation.controls",
    fidelity="control",
)
class Identity(nn.Identity):
    """``nn.Identity`` taking the probe's ``channels`` (ignored)."""

    def __init__(self, channels: int = 0) -> None:
        super().__init__()
