"""Controls for ablations (``ablation.controls``): what a module's gain is measured against.

- ``MatchedBottleneck``: a plain 1x1-conv bottleneck ``C -> r -> C`` (ReLU between, no attention,
  no gating) with the parameter count of another unary module built at the same point (``match``
  with ``match_args``), within 1 %. ``r`` and which of the bias terms and the hidden BatchNorm
  are present are chosen to come closest. With ``skip`` (used in the ``after``, ``before`` and
  ``replace`` modes) it returns ``x + block(x)``, identity-like as the gate ``x * g(x)`` it stands
  in for; in the ``residual`` mode the wrapper adds ``x`` itself and the block is returned alone.
- ``Identity``: the placebo: the stitching wrapper with ``nn.Identity`` inside (no parameters).

Not from a paper: a parameter-matched control answers "is it just the extra parameters?".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import get, register

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


def module_params(name: str, channels: int, args: dict[str, Any] | None) -> int:
    """Parameters of the unary zoo module ``name`` built with ``args`` at ``channels`` channels
    (built under a forked RNG, so the caller's random stream is untouched)."""
    entry = get(name)
    if entry.kind != "unary":
        raise ValueError(
            f"a matched control stands in for a unary module; {name} is a {entry.kind} module (no control)"
        )
    probed = {"channels": channels, "in_channels": channels, "out_channels": channels}
    with torch.random.fork_rng(devices=[]):
        module = entry.build(probed, dict(args or {}))
    return sum(p.numel() for p in module.parameters())


@register(
    "MatchedBottleneck",
    kind="unary",
    reference="stitch control (parameter-matched plain block)",
    summary="1x1 conv bottleneck C->r->C with the parameter count of `match` (within 1 %); ablation.controls",
    fidelity="control",
)
class MatchedBottleneck(nn.Module):
    """A plain bottleneck with as many parameters as ``match(**match_args)`` at this point."""

    def __init__(
        self,
        channels: int,
        match: str = "SE",
        match_args: dict[str, Any] | None = None,
        skip: bool = True,
    ) -> None:
        super().__init__()
        self.target_params = module_params(match, channels, match_args)
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
