"""Hook points: their names (aliases, module paths, glob patterns) and the shape probe.

Every submodule path of a model is a hook point; a baseline (or a zoo module, for nesting) adds
short aliases for the useful ones. The probe runs one forward on a small input with temporary
forward hooks and records, for every module, its inputs and outputs; the hooks are removed before
the probe returns, so stitched models never carry hooks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from stitch.errors import did_you_mean
from stitch.model_mode import eval_mode

GLOB_CHARS = set("*?[")


# ----------------------------------------------------------------------------- shapes
def describe(value: Any) -> Any:
    """A JSON-friendly shape summary: tensors become lists of ints, containers keep their shape."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if hasattr(value, "tensors") and isinstance(value.tensors, torch.Tensor):
        return {"ImageList": list(value.tensors.shape)}  # torchvision ImageList
    return type(value).__name__


def format_shape(desc: Any) -> str:
    """Compact text of :func:`describe` output: ``[2, 64, 32, 32]``, ``{0: [..], 1: [..]}`` …"""
    if isinstance(desc, list) and all(isinstance(d, int) for d in desc):
        return "[" + ", ".join(str(d) for d in desc) + "]" if desc else "[]"
    if isinstance(desc, list):
        if len(desc) > 3 and all(d == desc[0] for d in desc):
            return f"{len(desc)} x {format_shape(desc[0])}"
        return "(" + ", ".join(format_shape(d) for d in desc) + ")"
    if isinstance(desc, dict):
        return "{" + ", ".join(f"{k}: {format_shape(v)}" for k, v in desc.items()) + "}"
    return str(desc)


# ----------------------------------------------------------------------------- records
@dataclass
class PointRecord:
    """What the probe saw at one module path (its first call; ``calls`` counts them all)."""

    path: str
    type: str
    params: int
    inputs: list[Any] = field(default_factory=list)  # describe() of each positional input
    output: Any = None  # describe() of the output
    calls: int = 0
    shapes_vary: bool = False  # called more than once with different shapes
    values: tuple[tuple, Any] | None = None  # (inputs, output) of the first call, when kept

    def tensor_inputs(self) -> list[list[int]]:
        return [d for d in self.inputs if is_tensor_desc(d)]


def is_tensor_desc(d: Any) -> bool:
    """Whether a :func:`describe` result is a tensor's shape (a list of ints)."""
    return isinstance(d, list) and all(isinstance(x, int) for x in d)


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((k, _detach(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value


def probe(
    model: nn.Module, run: Callable[[nn.Module], Any], keep_values: Iterable[str] = ()
) -> dict[str, PointRecord]:
    """Run ``run(model)`` once under ``no_grad`` in eval mode and record every module's I/O.

    ``keep_values`` names module paths whose actual first-call inputs and output are kept (for
    trial runs of modules about to be stitched there). Buffers (BatchNorm statistics) and the
    train/eval mode are restored afterwards, so probing never changes the model.
    """
    keep = set(keep_values)
    records: dict[str, PointRecord] = {}
    handles = []

    def make_hook(path: str) -> Callable[[nn.Module, tuple, Any], None]:
        def hook(_mod: nn.Module, args: tuple, output: Any) -> None:
            rec = records[path]
            ins, out = [describe(a) for a in args], describe(output)
            if rec.calls == 0:
                rec.inputs, rec.output = ins, out
                if path in keep:
                    rec.values = (_detach(args), _detach(output))
            elif (ins, out) != (rec.inputs, rec.output):
                rec.shapes_vary = True
            rec.calls += 1

        return hook

    for path, module in model.named_modules():
        if not path:
            continue
        records[path] = PointRecord(
            path=path,
            type=type(module).__name__,
            params=sum(p.numel() for p in module.parameters()),
        )
        handles.append(module.register_forward_hook(make_hook(path)))
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        with eval_mode(model), torch.no_grad():
            run(model)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in saved:
                    b.copy_(saved[name])
    return records


# ----------------------------------------------------------------------------- names and globs
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a hook-point glob. ``*`` and ``?`` stay inside one path segment, ``**`` crosses
    dots, ``[34]`` is a character class. (``fnmatch`` lets ``*`` cross dots, so ``enc*`` would
    also match every module inside the encoder blocks; hence this small translator.)"""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + r"[^.]*", i + 1
        elif c == "?":
            out, i = out + r"[^.]", i + 1
        elif c == "[":
            j = pattern.find("]", i)
            if j < 0:
                raise ValueError(f"bad pattern {pattern!r}: unclosed '['")
            body = pattern[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out, i = out + "[" + body + "]", j + 1
        else:
            out, i = out + re.escape(c), i + 1
    try:
        return re.compile(out + r"\Z")
    except re.error as exc:
        raise ValueError(f"bad pattern {pattern!r}: {exc}") from None


class PointLookupError(LookupError):
    """A hook point or pattern that names nothing."""


def resolve_points(patterns: Iterable[str], aliases: dict[str, str], paths: list[str]) -> list[str]:
    """Module paths named by ``patterns`` (aliases, paths or globs), in model order, no repeats."""
    path_set = set(paths)
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern in aliases:
            chosen.add(aliases[pattern])
        elif pattern in path_set:
            chosen.add(pattern)
        elif GLOB_CHARS & set(pattern):
            try:
                rx = glob_to_regex(pattern)
            except ValueError as exc:
                raise PointLookupError(str(exc)) from None
            hits = {aliases[a] for a in aliases if rx.match(a)} | {p for p in paths if rx.match(p)}
            if not hits:
                raise PointLookupError(
                    f"pattern {pattern!r} matches no hook point (`stitch points` lists them; "
                    "'*' stays within one dotted segment, '**' crosses segments)"
                )
            chosen |= hits
        else:
            hint = did_you_mean(pattern, list(aliases) + paths)
            raise PointLookupError(f"no hook point {pattern!r}{hint or ' (`stitch points` lists them)'}")
    missing = [p for p in chosen if p not in path_set]
    if missing:
        raise PointLookupError(f"alias points at a missing module path {missing[0]!r}")
    return [p for p in paths if p in chosen]


def alias_of(path: str, aliases: dict[str, str]) -> str | None:
    """The first alias naming ``path`` (aliases keep their declared order)."""
    for a, p in aliases.items():
        if p == path:
            return a
    return None
