"""The stitching modes and the automatic 1x1 adapters.

A stitched model is a plain ``nn.Module``: the component at a hook point is swapped for a small
wrapper that holds the original (``base``) and the new module (``added``), or for the new module
itself (``replace``). No forward hooks, so ``state_dict``, ``deepcopy``, ``torch.fx`` and
``torch.compile`` keep working where the modules involved support them.

Modes: ``after`` (``added(base(x))``), ``before`` (``base(added(x))``), ``residual``
(``y = base(x); y + s * added(y)``, ``s`` a learnable scalar when ``residual_scale`` is set), and
``replace``. Nesting stitches insertions into a zoo module first, with this same code, and then
stitches the composite into the network.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from modules_zoo import registry
from stitch.config import NestedInsertionCfg
from stitch.errors import StitchingError, did_you_mean
from stitch.points import (
    PointLookupError,
    PointRecord,
    _is_tensor_desc,
    alias_of,
    describe,
    format_shape,
    probe,
    resolve_points,
)


# ----------------------------------------------------------------------------- wrappers
class After(nn.Module):
    """``added(base(*inputs))``."""

    def __init__(self, base: nn.Module, added: nn.Module) -> None:
        super().__init__()
        self.base, self.added = base, added

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.added(self.base(*args, **kwargs))


class Before(nn.Module):
    """``base(added(x))`` for a point with one tensor input."""

    def __init__(self, base: nn.Module, added: nn.Module) -> None:
        super().__init__()
        self.base, self.added = base, added

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.base(self.added(x), *args, **kwargs)


class Residual(nn.Module):
    """``y = base(x); y + scale * added(y)``; ``scale`` is a learnable scalar or absent (1)."""

    def __init__(self, base: nn.Module, added: nn.Module, scale: float | None = None) -> None:
        super().__init__()
        self.base, self.added = base, added
        self.scale = nn.Parameter(torch.tensor(float(scale))) if scale is not None else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        y = self.base(*args, **kwargs)
        if self.scale is None:
            return y + self.added(y)
        return y + self.scale * self.added(y)


class Adapted(nn.Module):
    """A module followed by the 1x1 conv adapter that makes its output fit what follows."""

    def __init__(self, module: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.module, self.adapter = module, adapter

    def forward(self, *args: Any) -> torch.Tensor:
        return self.adapter(self.module(*args))


WRAPPERS = {"after": After, "before": Before}


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
    nested: list["Applied"] = field(default_factory=list)

    @property
    def delta(self) -> int:
        """Parameters this stitch adds to the network (nested modules are inside ``params``)."""
        scale = 1 if self.residual_scale is not None else 0
        return self.params + self.adapter_params + scale - self.removed_params

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["nested"] = [n.to_dict() for n in self.nested]
        d["delta"] = self.delta
        return d


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- fitting
def _trial_inputs(record: PointRecord, mode: str) -> tuple:
    """The actual values a module stitched at ``record`` with ``mode`` will receive."""
    args, output = record.values
    if mode in ("after", "residual"):
        return (output,)
    if mode == "before":
        return (args[0],)
    return tuple(args)


def _probe_args(record: PointRecord, mode: str) -> dict[str, Any]:
    """Constructor arguments taken from the probe: channels, in/out channels and stride."""
    ins = record.tensor_inputs()
    out = record.output if _is_tensor_desc(record.output) else None
    if mode in ("after", "residual"):
        c = out[1] if out and len(out) >= 2 else None
        return {"channels": c, "in_channels": c, "out_channels": c, "stride": 1}
    cin = ins[0][1] if ins and len(ins[0]) >= 2 else None
    if mode == "before":
        return {"channels": cin, "in_channels": cin, "out_channels": cin, "stride": 1}
    cout = out[1] if out and len(out) >= 2 else None
    stride = 1
    if ins and out and len(ins[0]) == 4 and len(out) == 4 and out[2] and ins[0][2] % out[2] == 0:
        stride = ins[0][2] // out[2]
    return {"channels": cin, "in_channels": cin, "out_channels": cout, "stride": stride}


def _check_point_fits(entry: registry.ZooEntry, record: PointRecord, mode: str) -> str | None:
    """Why ``entry`` cannot be stitched at ``record`` with ``mode`` (None when it can)."""
    if record.calls == 0:
        return "the probe never reached this point (it is not used in the forward pass)"
    if record.shapes_vary:
        return f"this point is called {record.calls} times with different shapes (a shared module); choose a point that runs once"
    n_in = len(record.tensor_inputs())
    if entry.kind == "fusion":
        if n_in != 2:
            return (
                f"{entry.name} is a two-input fusion module but this point takes {n_in} tensor input(s) "
                f"{format_shape(record.inputs)}; fusion modules replace two-input points such as U-Net skip merges"
            )
        return None
    if entry.kind == "unary":
        if mode in ("after", "residual") and not _is_tensor_desc(record.output):
            return f"{entry.name} needs a feature-map tensor but this point outputs {format_shape(record.output)}"
        if mode in ("before", "replace") and (n_in != 1 or len(record.inputs) != 1):
            return f"mode {mode!r} with a one-input module needs a point with one tensor input; this one takes {format_shape(record.inputs)}"
    return None


def _fit_output(label: str, path: str, got: Any, want: Any) -> nn.Module | None:
    """A 1x1 conv adapter when only the channel count differs; an error when nothing fits."""
    g, w = describe(got), want
    if g == w:
        return None
    if _is_tensor_desc(g) and _is_tensor_desc(w) and len(g) == len(w) == 4 and g[0] == w[0] and g[2:] == w[2:]:
        return nn.Conv2d(g[1], w[1], kernel_size=1)
    if _is_tensor_desc(g) and _is_tensor_desc(w) and len(g) == len(w) == 4 and g[2:] != w[2:]:
        raise StitchingError(label, path, f"size mismatch: the module outputs {format_shape(g)} but the network expects {format_shape(w)} here; a 1x1 adapter can only fix channels")
    raise StitchingError(label, path, f"the module outputs {format_shape(g)} but the network expects {format_shape(w)} here")


def _expected_output(record: PointRecord, mode: str) -> Any:
    if mode == "before":
        return record.inputs[0]
    return record.output


# ----------------------------------------------------------------------------- the stitcher
@dataclass
class Insertion:
    """An insertion with its label (``CA``, ``CA/SE`` for nested ones) resolved."""

    label: str
    cfg: NestedInsertionCfg


def stitch(
    model: nn.Module,
    aliases: dict[str, str],
    run: Callable[[nn.Module], Any],
    insertions: Sequence[Insertion],
) -> list[Applied]:
    """Stitch ``insertions`` into ``model`` in place and return what was done.

    ``run(model)`` is one forward pass (used for the probe). Points are resolved on the
    un-stitched model; deeper points are stitched first so a wrapper around a parent holds the
    already-stitched child; insertions at the same point stack in declaration order.
    """
    if not insertions:
        return []
    paths = [p for p, _ in model.named_modules() if p]
    targets: list[tuple[int, Insertion, str]] = []
    for order, ins in enumerate(insertions):
        try:
            entry = registry.get(ins.cfg.module)
        except KeyError:
            raise StitchingError(ins.label, ",".join(ins.cfg.patterns), f"unknown module {ins.cfg.module!r}" + (did_you_mean(ins.cfg.module, registry.names()) or " (`stitch zoo` lists them)"), "module") from None
        try:
            hits = resolve_points(ins.cfg.patterns, aliases, paths)
        except PointLookupError as exc:
            raise StitchingError(ins.label, ",".join(ins.cfg.patterns), str(exc)) from None
        targets += [(order, ins, p) for p in hits]
    records = probe(model, run, keep_values={p for _, _, p in targets})
    # deepest first; at one point, declaration order
    targets.sort(key=lambda t: (-t[2].count("."), t[0]))
    replaced: dict[str, str] = {}
    applied: list[Applied] = []
    for _, ins, path in targets:
        rec = records[path]
        entry = registry.get(ins.cfg.module)
        mode = ins.cfg.mode or entry.modes[0]
        if mode not in entry.modes:
            raise StitchingError(ins.label, alias_of(path, aliases) or path, f"{entry.name} ({entry.kind}) cannot be stitched with mode {mode!r}; it takes: {', '.join(entry.modes)}", "mode")
        reason = _check_point_fits(entry, rec, mode)
        if reason:
            raise StitchingError(ins.label, alias_of(path, aliases) or path, reason)
        if mode == "replace" and path in replaced:
            raise StitchingError(ins.label, path, f"this point is already replaced by insertion {replaced[path]!r}")
        if mode != "residual" and ins.cfg.residual_scale is not None:
            raise StitchingError(ins.label, path, f"residual_scale only applies to mode 'residual', not {mode!r}", "residual_scale")
        added, nested = _build_module(ins, entry, rec, mode, path)
        adapter = _trial_fit(ins.label, path, added, rec, mode)
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
            replaced[path] = ins.label
            new = added
        elif mode == "residual":
            new = Residual(current, added, ins.cfg.residual_scale)
        else:
            new = WRAPPERS[mode](current, added)
        model.set_submodule(path, new)
        applied.append(record)
    return applied


def _build_module(
    ins: Insertion, entry: registry.ZooEntry, rec: PointRecord, mode: str, path: str
) -> tuple[nn.Module, list[Applied]]:
    """Construct the zoo module with probe-supplied channels, then stitch its nested insertions."""
    probed = {k: v for k, v in _probe_args(rec, mode).items() if v is not None}
    for key in ("channels", "in_channels"):
        given, seen = ins.cfg.args.get(key), probed.get(key)
        if key in entry.parameters() and given is not None and seen is not None and given != seen:
            raise StitchingError(ins.label, path, f"channel mismatch: args.{key}={given} but the module receives {seen} channels here (leave {key} out; the probe fills it in)", "args")
    try:
        module = entry.build(probed, ins.cfg.args)
    except TypeError as exc:
        known = [a.name for a in entry.arguments()]
        bad = [a for a in ins.cfg.args if a not in entry.parameters()]
        if bad:
            raise StitchingError(ins.label, path, f"{entry.name} has no argument {bad[0]!r}" + (did_you_mean(bad[0], known) or f" (arguments: {', '.join(known) or 'none'})"), "args") from None
        raise StitchingError(ins.label, path, f"cannot build {entry.name} here: {exc}", "args") from None
    except (ValueError, AssertionError, RuntimeError) as exc:
        raise StitchingError(ins.label, path, f"cannot build {entry.name} with {probed | dict(ins.cfg.args)}: {exc}", "args") from None
    nested: list[Applied] = []
    if ins.cfg.nest:
        inputs = _trial_inputs(rec, mode)
        children = [Insertion(f"{ins.label}/{c.module}", c) for c in ins.cfg.nest]
        nested = stitch(module, dict(entry.aliases), lambda m: m(*inputs), children)
    return module, nested


def _trial_fit(label: str, path: str, module: nn.Module, rec: PointRecord, mode: str) -> nn.Conv2d | None:
    """Run the new module on the values the probe saw there; return an adapter if one is needed."""
    inputs = _trial_inputs(rec, mode)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(*inputs)
    except Exception as exc:  # any failure here is the module not fitting the point
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StitchingError(label, path, f"the module fails on this point's input {format_shape(describe(inputs))}: {cause}") from None
    finally:
        module.train(was_training)
    return _fit_output(label, path, out, _expected_output(rec, mode))
