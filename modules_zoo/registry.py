"""The module zoo's registry: name -> how to build a stitchable module and where it comes from.

Every zoo family file registers its builders with :func:`register`. The harness never imports a
module class directly; it asks the registry by name, so the YAML, ``stitch zoo`` and the sweep
space all see the same list.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

Kind = Literal["unary", "fusion", "neck", "roi_head"]

#: How closely an entry follows the paper's official code; ``""`` is unknown (a plugin may leave it
#: unset, a zoo entry may not).
Fidelity = Literal["", "official-output", "official-params", "variant", "control"]

#: What each fidelity level promises, as ``stitch zoo`` and the docs' zoo table print it.
FIDELITY_LEVELS: dict[str, str] = {
    "official-output": "matches official code output-for-output",
    "official-params": "matches official parameter count",
    "variant": "variant",
    "control": "stitch control",
    "": "unknown",
}

#: A ``tested_by`` item: a pytest node id of a test function, ``tests/file.py::test_name``.
TEST_ID = re.compile(r"tests/[\w/]+\.py::test_\w+")

#: Constructor arguments the harness fills in from the shape probe when the user has not set them.
#: ``in_channels_list`` is the channel count of each level of an ordered dict of feature maps (a
#: neck's input); for such points ``in_channels`` / ``out_channels`` are the common width of the
#: input / output levels (None when they differ) and ``channels`` the width of the output levels.
PROBE_ARGS: tuple[str, ...] = ("channels", "in_channels", "out_channels", "stride", "in_channels_list")

#: Stitching modes each kind of module can take (the first is the default). A neck either replaces
#: the neck (``replace``) or refines its output (``after``); each neck registers the one it supports.
DEFAULT_MODES: dict[str, tuple[str, ...]] = {
    "unary": ("after", "before", "residual", "replace"),
    "fusion": ("replace",),
    "neck": ("replace", "after"),
    "roi_head": ("replace",),
}


class SiteError(ValueError):
    """Raised by an entry's ``absorbs`` / ``fit`` hook: the module cannot be stitched at this site.
    The message is one line and names the fix; the harness reports it as a stitching error."""


@dataclass(frozen=True)
class Site:
    """Where a module is about to be stitched, as an entry's ``absorbs`` and ``fit`` hooks see it.

    ``module`` is what sits at the point now (after deeper stitches), ``parent`` the module holding
    it (paths in ``absorbs`` are relative to it), ``inputs`` / ``output`` the probe's shape
    description of the point's first call (``stitch.points.describe``). ``absorbed`` maps each
    absorbed sibling path (relative to ``parent``) to its module and ``absorbed_outputs`` to the
    shape the probe saw it return; both are empty while ``absorbs`` itself is being evaluated.
    ``args`` are the constructor arguments the user set (the insertion's ``args:``), so a hook can
    follow a module option (SplitAttention's ``bottleneck``). ``inputs_vary`` says that the
    baseline's input size changes from batch to batch (the instance task: its images keep their own
    sizes and Mask R-CNN resizes each one), so the probe's size is not the only one the point sees;
    a module built for one input size refuses such a site. ``input_size`` is (H, W) of the largest
    4-D tensor any layer took in the probe: the input as the model's layers see it (Mask R-CNN: the
    resized and padded batch), so a hook can tell the point's stride; None when there is none.
    """

    path: str
    mode: str
    module: nn.Module
    parent: nn.Module
    inputs: Any
    output: Any
    absorbed: Mapping[str, nn.Module] = field(default_factory=dict)
    absorbed_outputs: Mapping[str, Any] = field(default_factory=dict)
    args: Mapping[str, Any] = field(default_factory=dict)
    inputs_vary: bool = False
    input_size: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        """The point's attribute name in ``parent`` (``box_roi_pool``)."""
        return self.path.rsplit(".", 1)[-1]


#: Sibling paths a stitched module takes over: a fixed tuple or a function of the site.
Absorbs = tuple[str, ...] | Callable[[Site], tuple[str, ...]]


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

    ``absorbs``: modules next to the point that the new module takes over, as paths relative to
    the point's parent (``("box_head.fc6",)``) or a function of the :class:`Site` returning them.
    The harness replaces each by ``nn.Identity`` after stitching, counts their parameters as
    removed, and checks the new module's output against what the probe saw the *last* absorbed
    module return (the new module now produces what used to come out of it). Used by modules
    that fuse a layer into the step before it (PANet's adaptive feature pooling takes the first
    layer of the box head into the RoI pooler).

    ``fit``: a function of the :class:`Site` returning constructor arguments the site determines
    (feature-level names, RoI sizes, class counts, the absorbed layer's width and type); raises
    :class:`SiteError` when the module cannot go there. ``fit_args`` names the arguments it may
    fill: like :data:`PROBE_ARGS` they are not user settings (``stitch zoo`` leaves them out).

    ``fidelity``: how closely the module follows the official code (:data:`FIDELITY_LEVELS`):
    ``official-output`` (same outputs as the official code with copied weights), ``official-params``
    (same parameter count), ``variant`` (``fidelity_note`` says of what and how it differs) or
    ``control`` (stitch's own controls); ``""`` is unknown. ``tested_by`` names the tests backing it.
    """

    name: str
    kind: Kind
    builder: Callable[..., nn.Module]
    reference: str
    summary: str
    modes: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    absorbs: Absorbs = ()
    fit: Callable[[Site], dict[str, Any]] | None = None
    fit_args: tuple[str, ...] = ()
    #: how closely it follows the official code (a key of :data:`FIDELITY_LEVELS`)
    fidelity: Fidelity = ""
    #: what the fidelity claim covers, or for a variant: of what and how it differs
    fidelity_note: str = ""
    #: the tests backing the claim, ``tests/file.py::test_name``
    tested_by: tuple[str, ...] = ()
    #: where the entry comes from: ``"zoo"``, or the plugin file / module that registered it
    origin: str = "zoo"

    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.builder).parameters)

    def arguments(self) -> list[Argument]:
        """User-settable arguments (the probe-supplied ones are left out)."""
        out = []
        for p in self.parameters().values():
            if p.name in PROBE_ARGS or p.name in self.fit_args or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name in ("device", "dtype"):
                continue
            required = p.default is inspect.Parameter.empty
            ann = p.annotation
            ann_s = (
                ""
                if ann is inspect.Parameter.empty
                else (ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann)))
            )
            out.append(Argument(p.name, None if required else p.default, ann_s, required))
        return out

    def probe_arguments(self) -> list[str]:
        """Which of :data:`PROBE_ARGS` (and of its own ``fit_args``) this builder takes."""
        params = self.parameters()
        return [a for a in PROBE_ARGS + tuple(self.fit_args) if a in params]

    def absorbed_paths(self, site: Site) -> tuple[str, ...]:
        """The sibling paths (relative to ``site.parent``) this module takes over at ``site``."""
        paths = self.absorbs(site) if callable(self.absorbs) else self.absorbs
        return tuple(paths)

    def build(self, probed: Mapping[str, Any], args: Mapping[str, Any]) -> nn.Module:
        """Construct the module: user ``args`` win over values from the probe."""
        kwargs = {k: v for k, v in probed.items() if k in self.probe_arguments() and k not in args}
        kwargs.update(args)
        return self.builder(**kwargs)


_REGISTRY: dict[str, ZooEntry] = {}
#: the origin recorded for registrations made now (``"zoo"`` unless a plugin is being imported)
_origin: list[str] = ["zoo"]


class RegistrationError(ValueError):
    """A name registered twice; the one-line message names both origins."""


@contextmanager
def registering_from(origin: str) -> Iterator[None]:
    """Record ``origin`` (a plugin file or module) on every entry registered inside the block."""
    _origin.append(origin)
    try:
        yield
    finally:
        _origin.pop()


def register(
    name: str,
    kind: Kind,
    reference: str = "",
    summary: str = "",
    modes: tuple[str, ...] | None = None,
    aliases: Mapping[str, str] | None = None,
    absorbs: Absorbs = (),
    fit: Callable[[Site], dict[str, Any]] | None = None,
    fit_args: tuple[str, ...] = (),
    fidelity: Fidelity = "",
    fidelity_note: str = "",
    tested_by: tuple[str, ...] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a module class or builder function under ``name`` (``absorbs``,
    ``fit``, ``fit_args``, ``fidelity``, ``fidelity_note`` and ``tested_by``: see :class:`ZooEntry`)."""

    if kind not in DEFAULT_MODES:
        raise RegistrationError(f"module {name!r}: kind {kind!r} is not one of {', '.join(DEFAULT_MODES)}")
    if fidelity not in FIDELITY_LEVELS:
        levels = ", ".join(repr(k) for k in FIDELITY_LEVELS if k)
        raise RegistrationError(f"module {name!r}: fidelity {fidelity!r} is not one of {levels} (or unset)")
    if isinstance(tested_by, str):
        tested_by = (tested_by,)
    malformed = [t for t in tested_by if not TEST_ID.fullmatch(t)]
    if malformed:
        raise RegistrationError(
            f"module {name!r}: tested_by {malformed[0]!r} is not a test id like 'tests/test_x.py::test_name'"
        )

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        origin = _origin[-1]
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            first = _REGISTRY[name].origin
            where = "the zoo" if first == "zoo" else first
            both = f"twice in {origin}" if first == origin else f"twice ({where} and {origin})"
            raise RegistrationError(
                f"module name {name!r} is registered {both}; "
                + ("choose another name" if first == "zoo" else "rename one of them")
            )
        _REGISTRY[name] = ZooEntry(
            name=name,
            kind=kind,
            builder=builder,
            reference=reference,
            summary=summary or first_doc_line(builder),
            modes=tuple(modes) if modes else DEFAULT_MODES[kind],
            aliases=dict(aliases or {}),
            absorbs=absorbs if callable(absorbs) else tuple(absorbs),
            fit=fit,
            fit_args=tuple(fit_args),
            fidelity=fidelity,
            fidelity_note=fidelity_note,
            tested_by=tuple(tested_by),
            origin=origin,
        )
        return builder

    return deco


def first_doc_line(obj: Any) -> str:
    """The first line of ``obj``'s docstring, or '' (an entry's default summary)."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def entry_from_class(name: str, cls: Any, origin: str) -> ZooEntry:
    """An entry for an unregistered ``nn.Module`` class named in the YAML as ``name``
    (``"pkg.mod:Class"``): its kind comes from ``forward``'s required positional arguments (one
    tensor: unary; two: fusion). Raises :class:`RegistrationError` with a one-line reason."""
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        what = f"a {type(cls).__name__}" if not inspect.isclass(cls) else f"class {cls.__name__}"
        raise RegistrationError(f"{name!r} is {what}, not an nn.Module subclass")
    params = list(inspect.signature(cls.forward).parameters.values())[1:]  # without self
    required = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(required) not in (1, 2):
        raise RegistrationError(
            f"{name!r}: forward takes {len(required)} required tensor argument(s); a unary module "
            "takes one (x), a fusion module two (x, y); register other kinds with stitch.register_module"
        )
    kind: Kind = "unary" if len(required) == 1 else "fusion"
    return ZooEntry(
        name=name,
        kind=kind,
        builder=cls,
        reference="",
        summary=first_doc_line(cls),
        modes=DEFAULT_MODES[kind],
        origin=origin,
    )


def add_reference(entry: ZooEntry) -> ZooEntry:
    """Add (or refresh) the entry of a ``"pkg.mod:Class"`` reference; references name their
    class exactly, so a later resolution of the same text replaces an earlier one."""
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove ``name`` (a plugin's entry; tests use it to undo a plugin)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> ZooEntry:
    """The entry registered as ``name`` (``KeyError`` if there is none)."""
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


def entries() -> list[ZooEntry]:
    return [_REGISTRY[n] for n in names()]
