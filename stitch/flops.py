"""FLOPs in two conventions: PyTorch's (matrix products and convolutions only) and "all ops",
which adds element-wise work, pooling, reductions, normalisation and softmax.

Both are :class:`torch.utils.flop_counter.FlopCounterMode` over one eval-mode, no-grad forward;
"all ops" passes it formulas for more ATen operators (``custom_mapping``), so the same dispatch
trace is counted and nothing is hand-traced. PyTorch's own formulas stay as they are (a
multiply-add = 2 FLOPs; a convolution's or linear layer's bias add is not counted). The added
convention, per operator as PyTorch dispatches it:

- **element-wise** arithmetic and activations (add, sub, mul, div, ReLU, sigmoid, hard-swish,
  GELU, SiLU, tanh, exp, clamp, ...): **1 FLOP per output element**, whatever the operator's
  internal arithmetic (a sigmoid counts like a ReLU);
- **pooling**: 1 FLOP per element of each output's window (``kernel_h x kernel_w`` per output
  element, max or average alike); **adaptive pooling and reductions** (mean, sum, amax, ...):
  1 FLOP per input element;
- **normalisation**: 2 FLOPs per element with fixed statistics (eval-mode batch norm: a folded
  scale and shift), 4 per element when the statistics come from the input (training batch norm,
  group, layer and instance norm: + 1 for the mean, + 1 for the variance);
- **softmax / log-softmax**: 3 FLOPs per element (exponent, sum, division);
- **bilinear interpolation**: 8 FLOPs per output element (4 weighted inputs, a multiply-add =
  2); nearest-neighbour interpolation is a copy (PyTorch decomposes it, and the index arithmetic of
  the decomposition adds a few FLOPs per output row and column);
- not counted: copies, views, concatenation, indexing, padding, random numbers. An operator
  without a formula here that PyTorch decomposes is counted through the operators it decomposes
  into; one that it does not decompose is not counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from stitch.model_mode import eval_mode

aten = torch.ops.aten

#: the convention in one sentence, for a table caption
CAPTION = (
    "FLOPs all ops also count element-wise operators (1 FLOP per output element), pooling windows, "
    "reductions, normalisation (2 FLOPs per element with fixed statistics, 4 otherwise) and softmax "
    "(3 per element)."
)

#: operators counted as 1 FLOP per output element (in-place forms included)
ELEMENTWISE = [
    "add",
    "sub",
    "rsub",
    "mul",
    "div",
    "true_divide",
    "neg",
    "abs",
    "reciprocal",
    "pow",
    "square",
    "sqrt",
    "rsqrt",
    "exp",
    "expm1",
    "log",
    "log1p",
    "log2",
    "log10",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "softplus",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "hardshrink",
    "softshrink",
    "threshold",
    "clamp",
    "clamp_min",
    "clamp_max",
    "clip",
    "maximum",
    "minimum",
    "fmax",
    "fmin",
    "lerp",
    "addcmul",
    "addcdiv",
    "erf",
    "logit",
    "_prelu_kernel",
]
#: reductions: 1 FLOP per input element
REDUCTIONS = ["mean", "sum", "amax", "amin", "prod", "logsumexp", "var", "std", "var_mean", "std_mean"]
ADAPTIVE_POOLS = [
    "_adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "_adaptive_avg_pool3d",
    "adaptive_max_pool3d",
]
WINDOW_POOLS = ["max_pool2d_with_indices", "avg_pool2d", "max_pool3d_with_indices", "avg_pool3d"]
SOFTMAX = ["_softmax", "_log_softmax"]
FIXED_STATS_NORM = ["_native_batch_norm_legit_no_training"]
COMPUTED_STATS_NORM = ["native_group_norm", "native_layer_norm", "_native_batch_norm_legit"]
BILINEAR = ["upsample_bilinear2d", "_upsample_bilinear2d_aa"]


def numel(shape: Any) -> int:
    """Elements of a shape (``torch.Size`` or a tuple of them: the first, the op's main output)."""
    if isinstance(shape, (tuple, list)) and shape and not isinstance(shape[0], int):
        shape = shape[0]
    return math.prod(shape) if shape is not None else 0


def per_output(factor: int) -> Callable[..., int]:
    """A formula: ``factor`` FLOPs per element of the operator's (first) output."""

    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return factor * numel(out_shape)

    return formula


def per_input(factor: int) -> Callable[..., int]:
    """A formula: ``factor`` FLOPs per element of the operator's first (input) argument."""

    def formula(x: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return factor * numel(x) if isinstance(x, torch.Size) else 0

    return formula


def window_pool(x: Any, kernel_size: Sequence[int], *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Pooling: the window's size per output element."""
    return math.prod(kernel_size) * numel(out_shape)


def batch_norm(x: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``native_batch_norm(input, weight, bias, running_mean, running_var, training, ...)``: 2 per
    element with the running statistics, 4 when training computes them."""
    training = args[4] if len(args) > 4 else kwargs.get("training", False)
    return (4 if training else 2) * numel(x)


def formulas() -> dict[Any, Callable[..., int]]:
    """The "all ops" formulas by ATen operator (packets that do not exist in this torch are skipped)."""
    table: list[tuple[list[str], Callable[..., int]]] = [
        (ELEMENTWISE + [n + "_" for n in ELEMENTWISE], per_output(1)),
        (REDUCTIONS + ADAPTIVE_POOLS, per_input(1)),
        (WINDOW_POOLS, window_pool),
        (SOFTMAX, per_output(3)),
        (FIXED_STATS_NORM, per_input(2)),
        (COMPUTED_STATS_NORM, per_input(4)),
        (["native_batch_norm"], batch_norm),
        (BILINEAR, per_output(8)),
    ]
    out: dict[Any, Callable[..., int]] = {}
    for names, formula in table:
        for name in names:
            packet = getattr(aten, name, None)
            if packet is not None:
                out[packet] = formula
    return out


def count_flops(model: nn.Module, inputs: Any, all_ops: bool = False) -> int:
    """FLOPs of one eval-mode, no-grad forward ``model(inputs)`` (train/eval mode restored):
    PyTorch's count, or with ``all_ops`` the convention of this module's docstring."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = formulas() if all_ops else None
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(inputs)
    return int(counter.get_total_flops())
