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

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from modules_zoo import registry
from stitch.config import NestedInsertionCfg
from stitch.errors import StitchingError, check_types, did_you_mean, exception_text
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
    if record.calls > 1:
        return f"this module runs {record.calls} times per forward (a shared module such as a block's ReLU); a stitch here would act at every call; choose a point that runs once"
    n_in = len(record.tensor_inputs())
    if entry.kind == "fusion":
        if n_in != 2:
            return (
                f"{entry.name} is a two-input fusion module but this point takes {n_in} tensor input(s) "
                f"{format_shape(record.inputs)}; fusion modules replace two-input points such as U-Net skip merges"
            )
        return None
    if entry.kind == "unary":
        if mode in ("after", "residual") and not (_is_tensor_desc(record.output) and len(record.output) == 4):
            return f"{entry.name} needs a 4-D feature map (N, C, H, W) but this point outputs {format_shape(record.output)}"
        if mode in ("before", "replace") and (n_in != 1 or len(record.inputs) != 1):
            return f"mode {mode!r} with a one-input module needs a point with one tensor input; this one takes {format_shape(record.inputs)}"
        if mode in ("before", "replace") and len(record.inputs[0]) != 4:
            return f"{entry.name} needs a 4-D feature map (N, C, H, W) but this point takes {format_shape(record.inputs[0])}"
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
    """An insertion with its label (``CA``, ``CA/SE`` for nested ones) and YAML path."""

    label: str
    cfg: NestedInsertionCfg
    yaml_path: tuple = ()


def instance_seed(seed: int, label: str, point: str) -> int:
    """The init seed of one inserted module: the same module at the same point gets the same
    weights in every variant of a seed, whatever else is stitched (paired ablations)."""
    digest = hashlib.sha256(f"{seed}|{label}|{point}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def stitch(
    model: nn.Module,
    aliases: dict[str, str],
    run: Callable[[nn.Module], Any],
    insertions: Sequence[Insertion],
    seed: int = 0,
) -> list[Applied]:
    """Stitch ``insertions`` into ``model`` in place and return what was done.

    ``run(model)`` is one forward pass (used for the probe). Points are resolved on the
    un-stitched model. Deeper points are stitched first, so a wrapper around a parent holds the
    already-stitched child; at one point a ``replace`` comes first and the other insertions wrap
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
            raise StitchingError(ins.label, where, f"unknown module {ins.cfg.module!r}" + (did_you_mean(ins.cfg.module, registry.names()) or " (`stitch zoo` lists them)"), "module", ins.yaml_path) from None
        mode = ins.cfg.mode or entry.modes[0]
        try:
            hits = resolve_points(ins.cfg.patterns, aliases, paths)
        except PointLookupError as exc:
            raise StitchingError(ins.label, where, str(exc), "at", ins.yaml_path) from None
        targets += [(order, ins, entry, mode, p) for p in hits]
    records = probe(model, run, keep_values={t[4] for t in targets})
    targets.sort(key=lambda t: (-t[4].count("."), t[4], t[3] != "replace", t[0]))
    applied: list[Applied] = []
    for _, ins, entry, mode, path in targets:
        rec = records[path]
        shown = alias_of(path, aliases) or path
        if mode not in entry.modes:
            raise StitchingError(ins.label, shown, f"{entry.name} ({entry.kind}) cannot be stitched with mode {mode!r}; it takes: {', '.join(entry.modes)}", "mode", ins.yaml_path)
        reason = _check_point_fits(entry, rec, mode)
        if reason:
            raise StitchingError(ins.label, shown, reason, "at", ins.yaml_path)
        if mode != "residual" and ins.cfg.residual_scale is not None:
            raise StitchingError(ins.label, shown, f"residual_scale only applies to mode 'residual', not {mode!r}", "residual_scale", ins.yaml_path)
        if mode == "replace":
            lost = [a for a in applied if a.point == path or a.point.startswith(path + ".")]
            if lost:
                what = "is already replaced by" if lost[0].point == path else f"would discard what is stitched at {lost[0].alias or lost[0].point!r} by"
                raise StitchingError(ins.label, shown, f"this point {what} insertion {lost[0].insertion!r}; replace a point nothing else is stitched inside", "at", ins.yaml_path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(instance_seed(seed, ins.label, path))
            added, nested = _build_module(ins, entry, rec, mode, shown, seed)
            adapter = _trial_fit(ins, shown, added, rec, mode)
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
        applied.append(record)
    return applied


def _build_module(
    ins: Insertion, entry: registry.ZooEntry, rec: PointRecord, mode: str, shown: str, seed: int
) -> tuple[nn.Module, list[Applied]]:
    """Construct the zoo module with probe-supplied channels, then stitch its nested insertions."""
    takes = entry.probe_arguments()
    probed = {k: v for k, v in _probe_args(rec, mode).items() if v is not None and k in takes}
    for key in ("channels", "in_channels"):
        given, seen = ins.cfg.args.get(key), probed.get(key)
        if given is not None and seen is not None and given != seen:
            raise StitchingError(ins.label, shown, f"channel mismatch: args.{key}={given} but the module receives {seen} channels here (leave {key} out; the probe fills it in)", "args", ins.yaml_path)
    known = [a.name for a in entry.arguments()]
    bad = [a for a in ins.cfg.args if a not in entry.parameters()]
    if bad:
        raise StitchingError(ins.label, shown, f"{entry.name} has no argument {bad[0]!r}" + (did_you_mean(bad[0], known) or f" (arguments: {', '.join(known) or 'none'})"), "args", ins.yaml_path)
    problem = check_types(entry.builder, ins.cfg.args)
    if problem:
        raise StitchingError(ins.label, shown, f"{entry.name}: {problem}", "args", ins.yaml_path)
    try:
        module = entry.build(probed, ins.cfg.args)
    except Exception as exc:  # whatever a constructor raises on these arguments is the user's to fix
        raise StitchingError(ins.label, shown, f"cannot build {entry.name} with {probed | dict(ins.cfg.args)}: {exception_text(exc)}", "args", ins.yaml_path) from None
    nested: list[Applied] = []
    if ins.cfg.nest:
        inputs = _trial_inputs(rec, mode)
        children = [Insertion(f"{ins.label}/{c.module}", c, ins.yaml_path + ("nest", j)) for j, c in enumerate(ins.cfg.nest)]
        nested = stitch(module, dict(entry.aliases), lambda m: m(*inputs), children, seed)
    return module, nested


def _trial_fit(ins: Insertion, path: str, module: nn.Module, rec: PointRecord, mode: str) -> nn.Conv2d | None:
    """Run the new module on the values the probe saw there; return an adapter if one is needed."""
    inputs = _trial_inputs(rec, mode)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(*inputs)
    except Exception as exc:  # any failure here is the module not fitting the point
        raise StitchingError(ins.label, path, f"the module fails on this point's input {format_shape(describe(inputs))}: {exception_text(exc)}", "at", ins.yaml_path) from None
    finally:
        module.train(was_training)
    try:
        return _fit_output(ins.label, path, out, _expected_output(rec, mode))
    except StitchingError as exc:
        exc.yaml_path = ins.yaml_path
        raise
