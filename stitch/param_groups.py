"""Optimiser parameter groups for fine-tuning a stitched model (``train.optimizer``).

- **Which parameters are the baseline's.** :func:`baseline_names` maps every parameter of a
  stitched model to its name in the un-stitched baseline, or to ``None`` for a parameter of a
  stitched module, adapter or residual scale: inside a wrapper (:mod:`stitch.wrappers`) only
  ``base`` is the baseline's, and a ``replace`` point holds a new module altogether.
- **No weight decay on norm and bias parameters** (``decay_norm_bias: false``, the default):
  every parameter with at most one dimension (norm weights and biases, biases, the residual
  scale) or named ``bias`` trains without weight decay. The rule is timm's
  (``timm.optim.param_groups_weight_decay``) written out here, so a timm release cannot change
  a run's training (and so its meaning under the same run id); timm's helper also groups by
  decay only, and the learning-rate multipliers need a second split.
- **Learning-rate multipliers** (``lr_mult: {backbone: 0.1}``): each key is a module-path
  prefix of the baseline (``backbone``, ``roi_heads.box_head``, a parameter name), a hook-point
  alias (``c4``, ``enc1``), or ``inserted`` for every stitched module and adapter. A baseline
  parameter takes the multiplier of its longest matching key (1 when none matches); stitched
  parameters take ``inserted`` (1 when not given), whatever baseline module they sit in. A key
  that matches no parameter is a one-line error naming the valid prefixes.

Without either option (``decay_norm_bias: true``, no ``lr_mult``) the optimiser gets the plain
list of trainable parameters, exactly as before these options existed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from stitch.errors import StitchError, did_you_mean
from stitch.wrappers import After, Before, Residual

if TYPE_CHECKING:
    from stitch.build import BuiltModel
    from stitch.config import Experiment, OptimizerCfg

#: The ``lr_mult`` key of every stitched module and adapter.
INSERTED = "inserted"
#: Wrappers whose ``base`` child is the baseline's module and every other parameter stitched.
WRAPPER_TYPES = (After, Before, Residual)


class ParamGroupError(StitchError):
    """An ``lr_mult`` key that matches nothing (``key`` names it, ``detail`` says why)."""

    def __init__(self, key: str, detail: str) -> None:
        self.key, self.detail = key, detail
        super().__init__(f"train.optimizer.lr_mult.{key}: {detail}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def baseline_names(model: nn.Module, replaced: Iterable[str] = ()) -> dict[str, str | None]:
    """Each parameter name of ``model`` -> its name in the un-stitched baseline, or ``None`` when
    it belongs to a stitched module, adapter or residual scale. ``replaced`` are the points of
    ``replace`` insertions (baseline module paths)."""
    replaced = tuple(replaced)
    found: dict[int, str | None] = {}

    def walk(module: nn.Module, base: str | None) -> None:
        wrapper = isinstance(module, WRAPPER_TYPES)
        for name, p in module.named_parameters(recurse=False):
            found.setdefault(id(p), None if base is None or wrapper else _join(base, name))
        for name, child in module.named_children():
            if base is None:
                walk(child, None)
            elif wrapper:
                walk(child, base if name == "base" else None)
            else:
                path = _join(base, name)
                walk(child, None if any(_inside(path, r) for r in replaced) else path)

    walk(model, "")
    return {name: found[id(p)] for name, p in model.named_parameters()}


def stitched_parameter_names(built: BuiltModel) -> list[str]:
    """Names of the parameters that belong to stitched modules and adapters."""
    replaced = [a.point for a in built.applied if a.mode == "replace"]
    return [n for n, base in baseline_names(built.model, replaced).items() if base is None]


def _known(path: str, own: list[str], removed: tuple[str, ...]) -> bool:
    """Whether ``path`` holds a parameter of ``own`` or lies in a module this variant removed."""
    return any(_inside(b, path) for b in own) or any(_inside(path, r) for r in removed)


def lr_multipliers(
    names: Mapping[str, str | None],
    lr_mult: Mapping[str, float],
    aliases: Callable[[], Mapping[str, str]] = dict,
    baseline: str = "baseline",
    removed: Iterable[str] = (),
) -> dict[str, float]:
    """Each parameter's learning-rate multiplier (see the module docstring). ``names`` is
    :func:`baseline_names`; ``aliases()`` gives the baseline's hook-point aliases, asked only for
    a key that is not a module path; ``removed`` are the baseline modules this variant replaced
    or absorbed (a key inside one is valid and matches nothing here). Raises
    :class:`ParamGroupError` for a key that matches no parameter, or two keys naming the same
    module."""
    own = [b for b in names.values() if b is not None]
    removed = tuple(removed)
    prefixes: dict[str, str] = {}  # key -> baseline path it stands for
    table: Mapping[str, str] | None = None
    for key in lr_mult:
        if key == INSERTED:
            continue
        path = key
        if not _known(key, own, removed):
            table = aliases() if table is None else table
            path = table.get(key, key)
            if not _known(path, own, removed):
                raise ParamGroupError(key, _no_match(key, own, table, baseline, path != key))
        same = [k for k, p in prefixes.items() if p == path]
        if same:
            raise ParamGroupError(key, f"names the same module as {same[0]!r} ({path}); keep one of them")
        prefixes[key] = path
    inserted = float(lr_mult.get(INSERTED, 1.0))
    out = {}
    for name, base in names.items():
        if base is None:
            out[name] = inserted
            continue
        hits = [k for k, p in prefixes.items() if _inside(base, p)]
        out[name] = float(lr_mult[max(hits, key=lambda k: len(prefixes[k]))]) if hits else 1.0
    return out


def _no_match(key: str, own: list[str], aliases: Mapping[str, str], baseline: str, is_alias: bool) -> str:
    """Why ``key`` is not an ``lr_mult`` key, with the keys that are (``own``: baseline paths)."""
    tops = list(dict.fromkeys(b.split(".")[0] for b in own))
    # aliases that are other names than their module path (U-Net: stem; Mask R-CNN: c2 … fpn …)
    usable = [a for a, p in aliases.items() if a != p and any(_inside(b, p) for b in own)]
    shown = ", ".join(usable[:12]) + (", …" if len(usable) > 12 else "")
    what = f"hook point {key!r} ({aliases[key]}) holds" if is_alias else f"{key!r} matches"
    return (
        f"{what} no parameter of the {baseline} baseline; keys are module-path prefixes "
        f"({', '.join(tops)}), "
        + (f"hook-point aliases ({shown}) " if usable else "")
        + f"or {INSERTED!r} (the stitched modules)"
        + did_you_mean(key, [*tops, *usable, INSERTED])
    )


def plain(cfg: OptimizerCfg) -> bool:
    """Whether ``cfg`` asks for no parameter groups (every parameter decayed alike, one rate)."""
    return not cfg.lr_mult and (cfg.decay_norm_bias or cfg.weight_decay == 0)


def no_decay(name: str, p: nn.Parameter) -> bool:
    """Whether a parameter is a norm or bias parameter (at most one dimension, or a ``bias``)."""
    return p.ndim <= 1 or name.endswith(".bias")


def param_groups(
    model: nn.Module,
    cfg: OptimizerCfg,
    names: Mapping[str, str | None],
    aliases: Callable[[], Mapping[str, str]] = dict,
    baseline: str = "baseline",
    removed: Iterable[str] = (),
) -> list[Any]:
    """What the optimiser is given for ``model``'s trainable parameters: the plain list when
    :func:`plain`, else groups ``{"params", "lr", "weight_decay", "lr_mult"}`` in the order their
    first parameter appears in ``model.parameters()``. ``names`` is :func:`baseline_names`; for
    ``aliases`` and ``removed`` see :func:`lr_multipliers`."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if plain(cfg):
        return [p for _, p in trainable]
    mults = lr_multipliers(names, cfg.lr_mult, aliases, baseline, removed)
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p in trainable:
        decay = 0.0 if not cfg.decay_norm_bias and no_decay(name, p) else cfg.weight_decay
        key = (mults[name], decay)
        if key not in groups:
            groups[key] = {"params": [], "lr": cfg.lr * key[0], "weight_decay": decay, "lr_mult": key[0]}
        groups[key]["params"].append(p)
    return list(groups.values())


def optimizer_params(exp: Experiment, built: BuiltModel, seed: int = 0) -> list[Any]:
    """:func:`param_groups` of a built variant under the experiment's ``train.optimizer``; a bad
    ``lr_mult`` key is a one-line error at its line of the experiment file. Aliases come from the
    baseline built afresh under ``seed`` (only when a key is not a module path): a stitched
    model's own structure no longer has every aliased module where the alias expects it."""
    from stitch.build import build_baseline

    cfg = exp.cfg.train.optimizer
    replaced = [a.point for a in built.applied if a.mode == "replace"]
    removed = replaced + [path for a in built.applied for path in a.absorbed]
    spec = built.baseline

    def aliases() -> Mapping[str, str]:
        return spec.aliases(build_baseline(exp, seed, spec))

    try:
        names = baseline_names(built.model, replaced)
        return param_groups(built.model, cfg, names, aliases, spec.name, removed)
    except ParamGroupError as exc:
        raise exp.source.error(("train", "optimizer", "lr_mult", exc.key), exc.detail) from None
