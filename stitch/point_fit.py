"""Whether a zoo module fits a probed hook point, and how it is fitted there.

From what the probe saw at a point (:class:`~stitch.points.PointRecord`) and the stitching mode:
why a module cannot go there (:func:`check_point_fits`), the constructor arguments the probe
supplies (:func:`probe_args`), the values a trial forward runs on (:func:`trial_inputs`), the
output the network expects back (:func:`expected_output`) and the 1x1 conv adapter that makes a
module's output fit when only its channel count differs (:func:`fit_output`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from modules_zoo import registry
from stitch.errors import StitchingError
from stitch.points import PointRecord, describe, format_shape, is_tensor_desc


def trial_inputs(record: PointRecord, mode: str) -> tuple[Any, ...]:
    """The actual values a module stitched at ``record`` with ``mode`` will receive."""
    args, output = record.values  # type: ignore[misc]  # kept by the probe for every target
    if mode in ("after", "residual"):
        return (output,)
    if mode == "before":
        return (args[0],)
    return tuple(args)


def is_levels_desc(d: Any) -> bool:
    """Whether a shape description is an ordered dict of 4-D feature maps (a neck's levels)."""
    return isinstance(d, dict) and bool(d) and all(is_tensor_desc(v) and len(v) == 4 for v in d.values())


def _common(widths: list[int]) -> int | None:
    return widths[0] if widths and all(w == widths[0] for w in widths) else None


def probe_args(record: PointRecord, mode: str) -> dict[str, Any]:
    """Constructor arguments taken from the probe: channels, in/out channels and stride; for an
    ordered dict of feature levels also ``in_channels_list`` (see ``modules_zoo.registry.PROBE_ARGS``)."""
    first = record.inputs[0] if record.inputs else None
    if is_levels_desc(first) or is_levels_desc(record.output):
        in_list = [v[1] for v in first.values()] if is_levels_desc(first) else None  # type: ignore[union-attr]
        out_list = [v[1] for v in record.output.values()] if is_levels_desc(record.output) else None
        if mode in ("after", "residual"):
            in_list = out_list
        c_out = _common(out_list or [])
        return {
            "channels": c_out if c_out is not None else _common(in_list or []),
            "in_channels": _common(in_list or []),
            "out_channels": c_out,
            "stride": 1,
            "in_channels_list": in_list,
        }
    ins = record.tensor_inputs()
    out = record.output if is_tensor_desc(record.output) else None
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


def check_point_fits(entry: registry.ZooEntry, record: PointRecord, mode: str) -> str | None:
    """Why ``entry`` cannot be stitched at ``record`` with ``mode`` (None when it can)."""
    if record.calls == 0:
        return "the probe never reached this point (it is not used in the forward pass)"
    if record.calls > 1:
        return (
            f"this module runs {record.calls} times per forward (a shared module such as a block's ReLU); "
            "a stitch here would act at every call; choose a point that runs once"
        )
    n_in = len(record.tensor_inputs())
    if entry.kind == "fusion":
        if n_in != 2:
            return (
                f"{entry.name} is a two-input fusion module but this point takes {n_in} tensor input(s) "
                f"{format_shape(record.inputs)}; "
                "fusion modules replace two-input points such as U-Net skip merges"
            )
        return None
    four_d = f"{entry.name} needs a 4-D feature map (N, C, H, W) but this point"
    if entry.kind == "unary":
        if mode in ("after", "residual") and not (is_tensor_desc(record.output) and len(record.output) == 4):
            return f"{four_d} outputs {format_shape(record.output)}"
        if mode in ("before", "replace") and (n_in != 1 or len(record.inputs) != 1):
            return (
                f"mode {mode!r} with a one-input module needs a point with one tensor input; "
                f"this one takes {format_shape(record.inputs)}"
            )
        if mode in ("before", "replace") and len(record.inputs[0]) != 4:
            return f"{four_d} takes {format_shape(record.inputs[0])}"
    if entry.kind == "neck":
        seen = record.output if mode == "after" else (record.inputs[0] if record.inputs else None)
        if not is_levels_desc(seen) or not is_levels_desc(record.output):
            what = "outputs" if mode == "after" else "takes"
            return (
                f"{entry.name} is a neck: it maps an ordered dict of feature maps to another, but this point "
                f"{what} {format_shape(seen)}; stitch it at a feature pyramid (e.g. 'fpn')"
            )
    return None


def fit_output(label: str, path: str, got: Any, want: Any) -> nn.Conv2d | None:
    """A 1x1 conv adapter when only the channel count differs (None when the output fits as it
    is); a :class:`~stitch.errors.StitchingError` when nothing fits."""
    g, w = describe(got), want
    if g == w:
        return None
    four_d = is_tensor_desc(g) and is_tensor_desc(w) and len(g) == len(w) == 4
    if four_d and g[0] == w[0] and g[2:] == w[2:]:
        return nn.Conv2d(g[1], w[1], kernel_size=1)
    mismatch = f"the module outputs {format_shape(g)} but the network expects {format_shape(w)} here"
    if four_d and g[2:] != w[2:]:
        raise StitchingError(label, path, f"size mismatch: {mismatch}; a 1x1 adapter can only fix channels")
    raise StitchingError(label, path, mismatch)


def expected_output(record: PointRecord, mode: str, absorbed: Sequence[PointRecord] = ()) -> Any:
    """The shape description the network expects from a module stitched at ``record``."""
    if absorbed:  # the new module now produces what the last absorbed module used to return
        return absorbed[-1].output
    if mode == "before":
        return record.inputs[0]
    return record.output
