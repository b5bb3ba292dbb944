"""The module zoo's registry: name -> how to build a stitchable module and where it comes from.

Every zoo family file registers its builders with :func:`register`. The harness never imports a
module class directly; it asks the registry by name, so the YAML, ``stitch zoo`` and the sweep
space all see the same list.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from torch import nn

Kind = Literal["unary", "fusion", "neck", "roi_head"]

#: Constructor arguments the harness fills in from the shape probe when the user has not set them.
PROBE_ARGS: tuple[str, ...] = ("channels", "in_channels", "out_channels", "stride")

#: Stitching modes each kind of module can take.
DEFAULT_MODES: dict[str, tuple[str, ...]] = {
    "unary": ("after", "before", "residual", "replace"),
    "fusion": ("replace",),
    "neck": ("replace",),
    "roi_head": ("replace",),
}


@dataclass(frozen=True)
class Argument:
    """One user-settable constructor argument of a zoo module."""

    name: str
    default: Any
    annotation: str
    required: bool


@dataclass(frozen=True)
class ZooEntry:
    """A registered stitchable module.

    ``kind`` says how it is called: ``unary`` is ``x -> x'``, ``fusion`` is ``(x, y) -> z`` (for
    example at a U-Net skip merge), ``neck`` maps an ordered dict of feature levels to another,
    ``roi_head`` replaces a detector's RoI head parts.
    """

    name: str
    kind: Kind
    builder: Callable[..., nn.Module]
    reference: str
    summary: str
    modes: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.builder).parameters)

    def arguments(self) -> list[Argument]:
        """User-settable arguments (the probe-supplied ones are left out)."""
        out = []
        for p in self.parameters().values():
            if p.name in PROBE_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name in ("device", "dtype"):
                continue
            required = p.default is inspect.Parameter.empty
            ann = p.annotation
            ann_s = "" if ann is inspect.Parameter.empty else (ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann)))
            out.append(Argument(p.name, None if required else p.default, ann_s, required))
        return out

    def probe_arguments(self) -> list[str]:
        """Which of :data:`PROBE_ARGS` this builder takes."""
        params = self.parameters()
        return [a for a in PROBE_ARGS if a in params]

    def build(self, probed: Mapping[str, Any], args: Mapping[str, Any]) -> nn.Module:
        """Construct the module: user ``args`` win over values from the probe."""
        kwargs = {k: v for k, v in probed.items() if k in self.probe_arguments() and k not in args}
        kwargs.update(args)
        return self.builder(**kwargs)


_REGISTRY: dict[str, ZooEntry] = {}


def register(
    name: str,
    kind: Kind,
    reference: str,
    summary: str,
    modes: tuple[str, ...] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a module class or builder function under ``name``."""

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"zoo module {name!r} registered twice")
        _REGISTRY[name] = ZooEntry(
            name=name,
            kind=kind,
            builder=builder,
            reference=reference,
            summary=summary,
            modes=tuple(modes) if modes else DEFAULT_MODES[kind],
            aliases=dict(aliases or {}),
        )
        return builder

    return deco


def get(name: str) -> ZooEntry:
    """The entry registered as ``name`` (``KeyError`` if there is none)."""
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


def entries() -> list[ZooEntry]:
    return [_REGISTRY[n] for n in names()]
