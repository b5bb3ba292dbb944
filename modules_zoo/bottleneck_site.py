"""Replacing the 3x3 conv of a torchvision ResNet ``Bottleneck``: which norm the new conv takes over.

Networks built around an attention conv (ResNeSt's split attention, SKNet's selective kernel) put
no BatchNorm after it: the module normalises inside. A ``replace`` of torchvision's
``Bottleneck.conv2`` keeps the block's ``bn2`` unless the zoo entry *absorbs* it; entries such
modules register :func:`absorbs_bn2` as their ``absorbs`` hook.

The user decides with the module argument ``bottleneck`` (read from :attr:`Site.args`):
``"auto"`` (default) absorbs ``bn2`` exactly when the point is a torchvision ``Bottleneck``'s
``conv2`` stitched with ``mode: replace``; ``true`` demands that site; ``false`` keeps ``bn2``.
"""

from __future__ import annotations

from typing import Any, Literal

from torchvision.models.resnet import Bottleneck

from .registry import Site, SiteError

__all__ = ["BottleneckChoice", "absorbs_bn2", "check_bottleneck_choice", "is_bottleneck_conv2"]

#: the ``bottleneck`` module argument: absorb ``bn2`` at a Bottleneck's conv2 (auto), always, never
BottleneckChoice = bool | Literal["auto"]


def is_bottleneck_conv2(site: Site) -> bool:
    """Whether ``site`` replaces the 3x3 conv (``conv2``) of a torchvision ResNet ``Bottleneck``
    (ResNet-50/101/152, ResNeXt and Wide ResNet blocks; subclasses included)."""
    return site.mode == "replace" and site.name == "conv2" and isinstance(site.parent, Bottleneck)


def check_bottleneck_choice(value: Any) -> BottleneckChoice:
    """``value`` if it is a valid ``bottleneck`` argument, else a one-line ``ValueError``."""
    if value is True or value is False or value == "auto":
        return value
    raise ValueError(f"bottleneck must be auto, true or false, not {value!r}")


def absorbs_bn2(site: Site) -> tuple[str, ...]:
    """The ``absorbs`` hook: ``("bn2",)`` where the new conv takes over the Bottleneck's ``bn2``.

    ``bn2`` becomes ``nn.Identity`` (its parameters count as removed). torchvision's block then
    applies its shared ``relu`` to the new conv's output; that ReLU cannot be removed (the block
    uses one ``nn.ReLU`` for all three activations), and it changes nothing for a module whose
    output is non-negative (split attention: a convex combination of ReLU outputs).
    """
    choice = site.args.get("bottleneck", "auto")
    if choice is False:
        return ()
    if is_bottleneck_conv2(site):
        return ("bn2",)
    if choice is True:
        raise SiteError(
            "bottleneck: true needs mode replace at the conv2 of a torchvision ResNet Bottleneck "
            f"(this point is {site.name!r} in a {type(site.parent).__name__}, mode {site.mode}); "
            "use bottleneck: auto or false here"
        )
    return ()
