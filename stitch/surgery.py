"""The stitcher: zoo modules into a network at hook points, with the automatic 1x1 adapters.

A stitched model is a plain ``nn.Module``: the component at a hook point is swapped for a small
wrapper (:mod:`stitch.wrappers`) that holds the original (``base``) and the new module
(``added``), or for the new module itself (``replace``). No forward hooks, so ``state_dict``,
``deepcopy``, ``torch.fx`` and ``torch.compile`` keep working where the modules involved support
them.

Modes: ``after`` (``added(base(x))``), ``before`` (``base(added(x))``), ``residual``
(``y = base(x); y + s * added(y)``, ``s`` a learnable scalar when ``residual_scale`` is set), and
``replace``. Nesting stitches insertions into a zoo module first, with this same code, and then
stitches the composite into the network.

Absorbing: a zoo entry may take over modules next to its point (``ZooEntry.absorbs``, paths
relative to the point's parent; PANet's adaptive feature pooling replaces ``box_roi_pool`` and
absorbs ``box_head.fc6``). Each absorbed module becomes ``nn.Identity``; its parameters count as
removed (``Applied.absorbed_params``), and the new module's trial output is checked against what
the probe saw the last absorbed module return.

Whether a module fits a point, and the arguments and adapter that fit it, is
:mod:`stitch.point_fit`; the shape probe and point names are :mod:`stitch.points`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from typing import Any

import torch
from torch import nn

from modules_zoo import registry
from stitch.config import NestedInsertionCfg
from stitch.errors import StitchingError, check_types, did_you_mean, exception_text
from stitch.hashing import digest
from stitch.model_mode import eval_mode
from stitch.point_fit import check_point_fits, expected_output, fit_output, probe_args, trial_inputs
from stitch.points import (
    PointLookupError,
    PointRecord,
    alias_of,
    describe,
    format_shape,
    probe,
    resolve_points,
)
from stitch.wrappers import WRAPPERS, Adapted, Residual

__all__ = [
    "Applied",
    "Insertion",
    "count_params",
    "instance_seed",
    "stitch",
]


# ----------------------------------------------------------------------------- report
@dataclass
class Applied:
    """One module stitched at one point: what, where, how, and what it cost."""

    insertion: str
    module: str
    mode: str
    point: str
    alias: str | None
    params: int
    removed_params: int = 0
    adapter: str | None = None
    adapter_params: int = 0
    residual_scale: float | None = None
    nested: list[Applied] = field(default_factory=list)
    absorbed: list[str] = field(default_factory=list)  # module paths taken over (now nn.Identity)
    absorbed_params: int = 0

    @property
    def delta(self) -> int:
        """Parameters this stitch adds to the network (nested modules are inside ``params``):
        new module + adapter + residual scale - the replaced module - the absorbed ones."""
        scale = 1 if self.residual_scale is not None else 0
        return self.params + self.adapter_params + scale - self.removed_params - self.absorbed_params

    def describe_absorbed(self) -> str:
        """``absorbs roi_heads.box_head.fc6 (-12.8M... params)`` or an empty string."""
        if not self.absorbed:
            return ""
        return (
            f"absorbs {', '.join(self.absorbed)} ({self.absorbed_params:,} params removed, now nn.Identity)"
        )


def count_params(module: nn.Module) -> int:
    """Every parameter of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- sites and order
def _parent_path(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _input_size(records: dict[str, PointRecord]) -> tuple[int, int] | None:
    """(H, W) of the largest 4-D tensor any layer took first in the probe (the model's input as its
    layers see it: Mask R-CNN's resized, padded batch), or None."""
    sizes = [
        (d[2], d[3])
        for rec in records.values()
        for d in (rec.inputs or [])[:1]
        if isinstance(d, list) and len(d) == 4 and all(isinstance(v, int) for v in d)
    ]
    return max(sizes, key=lambda hw: hw[0] * hw[1], default=None)


def _site(
    model: nn.Module,
    path: str,
    mode: str,
    rec: PointRecord,
    ins: Insertion,
    inputs_vary: bool,
    input_size: tuple[int, int] | None,
) -> registry.Site:
    parent_path = _parent_path(path)
    return registry.Site(
        path=path,
        mode=mode,
        module=model.get_submodule(path),
        parent=model.get_submodule(parent_path) if parent_path else model,
        inputs=rec.inputs,
        output=rec.output,
        args=dict(ins.cfg.args),
        inputs_vary=inputs_vary,
        input_size=input_size,
    )


def _join(parent_path: str, rel: str) -> str:
    return f"{parent_path}.{rel}" if parent_path else rel


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or a module under it."""
    return path == root or path.startswith(root + ".")


def _stitch_order(
    targets: list,
    model: nn.Module,
    records: dict[str, PointRecord],
    inputs_vary: bool,
    input_size: tuple[int, int] | None,
) -> list:
    """Deeper points first; at one point a ``replace`` first, then declaration order. A module
    that absorbs siblings goes after every stitch at (or around) what it absorbs, so it takes over
    the module that will really be there (PANet's adaptive pooling after a new mask head)."""
    targets = sorted(targets, key=lambda t: (-t[4].count("."), t[4], t[3] != "replace", t[0]))
    absorbed: dict[int, list[str]] = {}
    for i, (_, ins, entry, mode, path) in enumerate(targets):
        if not entry.absorbs:
            continue
        try:
            rel = entry.absorbed_paths(_site(model, path, mode, records[path], ins, inputs_vary, input_size))
        except Exception:  # reported properly when this target is stitched
            continue
        absorbed[i] = [_join(_parent_path(path), r) for r in rel]
    if not absorbed:
        return targets
    out: list = []
    placed: set[int] = set()

    def place(i: int, stack: tuple[int, ...] = ()) -> None:
        if i in placed or i in stack:
            return
        point = targets[i][4]
        for j, t in enumerate(targets):
            inner = j < i and _inside(t[4], point)  # deeper stitches inside this point (already first)
            around = j != i and any(_inside(a, t[4]) for a in absorbed.get(i, []))  # around what i absorbs
            if inner or around:
                place(j, (*stack, i))
        placed.add(i)
        out.append(targets[i])

    for i in range(len(targets)):
        place(i)
    return out


# ----------------------------------------------------------------------------- the stitcher
@dataclass
class Insertion:
    """An insertion with its label (``CA``, ``CA/SE`` for nested ones) and YAML path."""

    label: str
    cfg: NestedInsertionCfg
    yaml_path: tuple = ()

    def error(self, point: str, cause: str, field: str = "at") -> StitchingError:
        """A :class:`~stitch.errors.StitchingError` about this insertion at ``point``."""
        return StitchingError(self.label, point, cause, field, self.yaml_path)


def instance_seed(seed: int, label: str, point: str) -> int:
    """The init seed of one inserted module: the same module at the same point gets the same
    weights in every variant of a seed, whatever else is stitched (paired ablations)."""
    return int.from_bytes(bytes.fromhex(digest(f"{seed}|{label}|{point}", 8)), "little")


def stitch(
    model: nn.Module,
    aliases: dict[str, str],
    run: Callable[[nn.Module], Any],
    insertions: Sequence[Insertion],
    seed: int = 0,
    inputs_vary: bool = False,
) -> list[Applied]:
    """Stitch ``insertions`` into ``model`` in place and return what was done.

    ``run(model)`` is one forward pass (used for the probe). ``inputs_vary``: the model's input
    size changes between batches (the probe's size is one of many; entries' hooks see it as
    :attr:`modules_zoo.registry.Site.inputs_vary`). Points are resolved on the un-stitched model.
    Deeper points are stitched first, so a wrapper around a parent holds the already-stitched
    child; at one point a ``replace`` comes first and the other insertions wrap
    the replacement, in declaration order. Each inserted module is initialised from
    :func:`instance_seed`.
    """
    if not insertions:
        return []
    paths = [p for p, _ in model.named_modules() if p]
    targets: list[tuple[int, Insertion, registry.ZooEntry, str, str]] = []
    for order, ins in enumerate(insertions):
        where = ",".join(ins.cfg.patterns)
        try:
            entry = registry.get(ins.cfg.module)
        except KeyError:
            raise ins.error(
                where,
                f"unknown module {ins.cfg.module!r}"
                + (did_you_mean(ins.cfg.module, registry.names()) or " (`stitch zoo` lists them)"),
                "module",
            ) from None
        mode = ins.cfg.mode or entry.modes[0]
        try:
            hits = resolve_points(ins.cfg.patterns, aliases, paths)
        except PointLookupError as exc:
            raise ins.error(where, str(exc)) from None
        targets += [(order, ins, entry, mode, p) for p in hits]
    records = probe(model, run, keep_values={t[4] for t in targets})
    input_size = _input_size(records)  # once per probe: every site of this model shares it
    targets = _stitch_order(targets, model, records, inputs_vary, input_size)
    applied: list[Applied] = []
    for _, ins, entry, mode, path in targets:
        rec = records[path]
        shown = alias_of(path, aliases) or path
        if mode not in entry.modes:
            raise ins.error(
                shown,
                f"{entry.name} ({entry.kind}) cannot be stitched with mode {mode!r}; "
                f"it takes: {', '.join(entry.modes)}",
                "mode",
            )
        reason = check_point_fits(entry, rec, mode)
        if reason:
            raise ins.error(shown, reason)
        if mode != "residual" and ins.cfg.residual_scale is not None:
            raise ins.error(
                shown, f"residual_scale only applies to mode 'residual', not {mode!r}", "residual_scale"
            )
        gone = [a for a in applied if any(_inside(path, b) for b in a.absorbed)]
        if gone:
            raise ins.error(
                shown,
                f"this point was absorbed by insertion {gone[0].insertion!r} ({gone[0].module}) "
                "and is now an nn.Identity; stitch at another point",
            )
        if mode == "replace":
            lost = [a for a in applied if _inside(a.point, path) or any(_inside(b, path) for b in a.absorbed)]
            if lost:
                if lost[0].point == path:
                    what = "is already replaced by"
                elif _inside(lost[0].point, path):
                    what = f"would discard what is stitched at {lost[0].alias or lost[0].point!r} by"
                else:
                    what = f"holds {', '.join(lost[0].absorbed)}, absorbed by"
                raise ins.error(
                    shown,
                    f"this point {what} insertion {lost[0].insertion!r}; "
                    "replace a point nothing else is stitched inside",
                )
        site = _site(model, path, mode, rec, ins, inputs_vary, input_size)
        absorbed_paths, absorbed_recs, site = _absorbed(ins, entry, shown, site, records, applied)
        fitted = _fit_site(ins, entry, shown, site)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(instance_seed(seed, ins.label, path))
            added, nested = _build_module(ins, entry, rec, mode, shown, seed, fitted, inputs_vary)
            adapter = _trial_fit(ins, shown, added, rec, mode, absorbed_recs)
        record = Applied(
            insertion=ins.label,
            module=entry.name,
            mode=mode,
            point=path,
            alias=alias_of(path, aliases),
            params=count_params(added),
            nested=nested,
            residual_scale=ins.cfg.residual_scale if mode == "residual" else None,
        )
        if adapter is not None:
            record.adapter = f"1x1 conv {adapter.in_channels}->{adapter.out_channels}"
            record.adapter_params = count_params(adapter)
            added = Adapted(added, adapter)
        current = model.get_submodule(path)
        if mode == "replace":
            record.removed_params = count_params(current)
            new = added
        elif mode == "residual":
            new = Residual(current, added, ins.cfg.residual_scale)
        else:
            new = WRAPPERS[mode](current, added)
        model.set_submodule(path, new)
        for ab in absorbed_paths:
            record.absorbed_params += count_params(model.get_submodule(ab))
            model.set_submodule(ab, nn.Identity())
        record.absorbed = list(absorbed_paths)
        applied.append(record)
    return applied


def _absorbed(
    ins: Insertion,
    entry: registry.ZooEntry,
    shown: str,
    site: registry.Site,
    records: dict[str, PointRecord],
    applied: list[Applied],
) -> tuple[list[str], list[PointRecord], registry.Site]:
    """The module paths ``entry`` takes over at ``site``, their probe records, and the site with
    the absorbed modules filled in. Errors name the insertion and the point."""
    if not entry.absorbs:
        return [], [], site
    try:
        rel = entry.absorbed_paths(site)
    except registry.SiteError as exc:
        raise ins.error(shown, str(exc)) from None
    parent_path = _parent_path(site.path)
    paths, recs, modules, outputs = [], [], {}, {}
    for r in rel:
        full = _join(parent_path, r)
        try:
            module = site.parent.get_submodule(r)
        except AttributeError:
            raise ins.error(
                shown,
                f"{entry.name} takes over {r!r} next to this point, "
                f"but {type(site.parent).__name__} has no such submodule",
            ) from None
        taken = [a for a in applied if any(_inside(full, b) or _inside(b, full) for b in a.absorbed)]
        inside = [a for a in applied if _inside(a.point, full)]
        if taken:
            raise ins.error(
                shown,
                f"{entry.name} takes over {full!r}, already absorbed by insertion {taken[0].insertion!r}; "
                "stitch only one of them",
            )
        if inside:
            raise ins.error(
                shown,
                f"{entry.name} takes over {full!r}, where insertion {inside[0].insertion!r} is stitched; "
                "drop one of them",
            )
        rec = records.get(full)
        if rec is None or rec.calls == 0:
            raise ins.error(shown, f"{entry.name} takes over {full!r}, which the probe never reached")
        paths.append(full)
        recs.append(rec)
        modules[r] = module
        outputs[r] = rec.output
    return paths, recs, dataclass_replace(site, absorbed=modules, absorbed_outputs=outputs)


def _fit_site(ins: Insertion, entry: registry.ZooEntry, shown: str, site: registry.Site) -> dict[str, Any]:
    """Constructor arguments from the entry's own ``fit`` hook (empty without one)."""
    if entry.fit is None:
        return {}
    try:
        return dict(entry.fit(site))
    except registry.SiteError as exc:
        raise ins.error(shown, str(exc)) from None


def _required(entry: registry.ZooEntry, name: str) -> bool:
    param = entry.parameters().get(name)
    return param is not None and param.default is param.empty


def _build_module(
    ins: Insertion,
    entry: registry.ZooEntry,
    rec: PointRecord,
    mode: str,
    shown: str,
    seed: int,
    fitted: dict[str, Any] | None = None,
    inputs_vary: bool = False,
) -> tuple[nn.Module, list[Applied]]:
    """Construct the zoo module with probe-supplied channels (and what the entry's ``fit`` hook
    derived from the site), then stitch its nested insertions."""
    takes = entry.probe_arguments()
    probed = {k: v for k, v in probe_args(rec, mode).items() if v is not None and k in takes}
    probed.update({k: v for k, v in (fitted or {}).items() if v is not None and k in takes})
    for key in ("channels", "in_channels"):
        given, seen = ins.cfg.args.get(key), probed.get(key)
        if given is not None and seen is not None and given != seen:
            raise ins.error(
                shown,
                f"channel mismatch: args.{key}={given} but the module receives {seen} channels here "
                f"(leave {key} out; the probe fills it in)",
                "args",
            )
    known = [a.name for a in entry.arguments()]
    bad = [a for a in ins.cfg.args if a not in entry.parameters()]
    if bad:
        raise ins.error(
            shown,
            f"{entry.name} has no argument {bad[0]!r}"
            + (did_you_mean(bad[0], known) or f" (arguments: {', '.join(known) or 'none'})"),
            "args",
        )
    problem = check_types(entry.builder, ins.cfg.args)
    if problem:
        raise ins.error(shown, f"{entry.name}: {problem}", "args")
    unfilled = [a.name for a in entry.arguments() if a.required and a.name not in ins.cfg.args]
    unfilled += [k for k in takes if k not in probed and k not in ins.cfg.args and _required(entry, k)]
    if unfilled:
        raise ins.error(
            shown,
            f"{entry.name} needs constructor argument {unfilled[0]!r}, which the shape probe cannot fill "
            f"(it fills only {', '.join(registry.PROBE_ARGS)}); set it under args:",
            "args",
        )
    try:
        module = entry.build(probed, ins.cfg.args)
    except Exception as exc:  # whatever a constructor raises on these arguments is the user's to fix
        raise ins.error(
            shown,
            f"cannot build {entry.name} with {probed | dict(ins.cfg.args)}: {exception_text(exc)}",
            "args",
        ) from None
    if not isinstance(module, nn.Module):
        raise ins.error(shown, f"{entry.name} returned a {type(module).__name__}, not an nn.Module", "module")
    nested: list[Applied] = []
    if ins.cfg.nest:
        inputs = trial_inputs(rec, mode)
        children = [
            Insertion(f"{ins.label}/{c.module}", c, (*ins.yaml_path, "nest", j))
            for j, c in enumerate(ins.cfg.nest)
        ]
        nested = stitch(module, dict(entry.aliases), lambda m: m(*inputs), children, seed, inputs_vary)
    return module, nested


def _trial_fit(
    ins: Insertion,
    path: str,
    module: nn.Module,
    rec: PointRecord,
    mode: str,
    absorbed: Sequence[PointRecord] = (),
) -> nn.Conv2d | None:
    """Run the new module on the values the probe saw there; return an adapter if one is needed."""
    inputs = trial_inputs(rec, mode)
    try:
        with eval_mode(module), torch.no_grad():
            out = module(*inputs)
    except Exception as exc:  # any failure here is the module not fitting the point
        raise ins.error(
            path,
            f"the module fails on this point's input {format_shape(describe(inputs))}: {exception_text(exc)}",
        ) from None
    try:
        return fit_output(ins.label, path, out, expected_output(rec, mode, absorbed))
    except StitchingError as exc:
        exc.yaml_path = ins.yaml_path
        raise
