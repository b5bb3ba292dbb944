"""The search space of a sweep (its ``sweep:`` block), define-by-run: per slot ``<slot>.at`` (a
candidate point, or ``none`` when optional), then only if a point was taken ``<slot>.module``,
``<slot>.mode`` and ``<slot>.<module>.<arg>``; ``train.<path>`` for training hyper-parameters.
Also the same space as a grid, and the plain experiment that one trial's choices make.

Nothing here imports Optuna: a trial is any object with its ``suggest_*`` methods.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import yaml

from stitch.config import Experiment, RangeCfg, SlotCfg, SweepCfg, parse_experiment, sweep_of
from stitch.errors import StitchError

if TYPE_CHECKING:
    from optuna.trial import Trial


def suggest_value(trial: Trial, name: str, space: Any) -> Any:
    """One parameter: an int or float from a range, a choice from a list (a list of one value
    is that value, not a parameter)."""
    if isinstance(space, RangeCfg):
        low, high, step = space.low, space.high, space.step
        if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
            return trial.suggest_int(name, low, high, step=step or 1, log=space.log)
        return trial.suggest_float(name, float(space.low), float(space.high), step=space.step, log=space.log)
    return space[0] if len(space) == 1 else trial.suggest_categorical(name, list(space))


def suggest(trial: Trial, sweep: SweepCfg) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The insertions and training overrides of one trial (define-by-run: a slot's module,
    mode and arguments are only asked for when the slot takes a point)."""
    insertions = []
    for slot in sweep.slots:
        at = suggest_value(trial, f"{slot.name}.at", list(slot.at) + (["none"] if slot.optional else []))
        if at == "none":
            continue
        module = suggest_value(trial, f"{slot.name}.module", slot.modules)
        ins: dict[str, Any] = {"name": slot.name, "module": module, "at": at}
        if slot.modes:
            ins["mode"] = suggest_value(trial, f"{slot.name}.mode", slot.modes)
        args = {
            k: suggest_value(trial, f"{slot.name}.{module}.{k}", v)
            for k, v in slot.args.get(module, {}).items()
        }
        if args:
            ins["args"] = args
        insertions.append(ins)
    train = {path: suggest_value(trial, f"train.{path}", v) for path, v in sweep.train.items()}
    return insertions, train


def insertions_label(insertions: list[dict[str, Any]]) -> str:
    """A trial's insertions in one short line (``A:SE@enc1/parallel``), or ``baseline``."""
    return (
        " ".join(
            f"{i['name']}:{i['module']}@{i['at']}" + (f"/{i['mode']}" if "mode" in i else "")
            for i in insertions
        )
        or "baseline"
    )


def _grid_values(name: str, space: Any) -> list[Any]:
    if isinstance(space, RangeCfg):
        if space.step is None:
            raise StitchError(
                f"sweep: {name} is a range without a step; the grid sampler needs a list of values or a step"
            )
        n = math.floor((space.high - space.low) / space.step + 1e-9) + 1
        vals = [space.low + k * space.step for k in range(n)]
        return [int(v) for v in vals] if isinstance(space.step, int) and isinstance(space.low, int) else vals
    return list(space)


def grid_space(sweep: SweepCfg) -> dict[str, list[Any]]:
    """Every parameter's values for the grid sampler (ranges need a ``step``)."""
    grid: dict[str, list[Any]] = {}
    for slot in sweep.slots:
        grid[f"{slot.name}.at"] = list(slot.at) + (["none"] if slot.optional else [])
        if len(slot.modules) > 1:
            grid[f"{slot.name}.module"] = list(slot.modules)
        if slot.modes and len(slot.modes) > 1:
            grid[f"{slot.name}.mode"] = list(slot.modes)
        for module, args in slot.args.items():
            for k, v in args.items():
                vals = _grid_values(f"{slot.name}.{module}.{k}", v)
                if len(vals) > 1 or isinstance(v, RangeCfg):
                    grid[f"{slot.name}.{module}.{k}"] = vals
    for path, v in sweep.train.items():
        vals = _grid_values(f"train.{path}", v)
        if len(vals) > 1 or isinstance(v, RangeCfg):  # suggest_value asks for every range, even of one value
            grid[f"train.{path}"] = vals
    return grid


def grid_size(sweep: SweepCfg) -> int:
    """How many points the grid has (an exhaustive sweep never runs more trials)."""
    return math.prod(len(v) for v in grid_space(sweep).values())


#: the most configurations :func:`configurations` lists (a larger space is treated as unbounded)
MAX_LISTED_CONFIGURATIONS = 100_000


def _choices(space: Any) -> list[Any] | None:
    """The values :func:`suggest_value` can return for ``space``; None for a float range without a step."""
    if isinstance(space, RangeCfg):
        low, high, step = space.low, space.high, space.step
        whole = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
        if step is None and not whole:
            return None
        if (high - low) / (step or 1) >= MAX_LISTED_CONFIGURATIONS:  # treated as unbounded
            return None
        return list(range(int(low), int(high) + 1, int(step or 1))) if whole else _grid_values("", space)
    return list(space)


def _product(parts: list[list[dict[str, Any]] | None], limit: int) -> list[dict[str, Any]] | None:
    """Every merge of one partial parameter set from each of ``parts``; None when a part is
    unbounded (None) or there are more than ``limit``."""
    if any(p is None for p in parts) or math.prod(len(p or []) for p in parts) > limit:
        return None
    out: list[dict[str, Any]] = [{}]
    for part in parts:
        out = [a | b for a in out for b in part or []]
    return out


def _options(name: str, space: Any, limit: int) -> list[dict[str, Any]] | None:
    """One parameter's possible Optuna params (``[{}]`` when it is not a parameter)."""
    values = _choices(space)
    if values is None or len(values) > limit:
        return None
    if len(values) == 1 and not isinstance(space, RangeCfg):
        return [{}]  # a list of one value is that value, not a parameter
    return [{name: v} for v in values]


def _slot_configurations(slot: SlotCfg, limit: int) -> list[dict[str, Any]] | None:
    """Every choice of one slot as Optuna params (a slot left empty: no module, mode or arguments)."""
    out: list[dict[str, Any]] = []
    at_options = _options(f"{slot.name}.at", list(slot.at) + (["none"] if slot.optional else []), limit)
    for at_param in at_options or []:
        if at_param.get(f"{slot.name}.at", slot.at[0] if slot.at else "none") == "none":
            out.append(at_param)
            continue
        for module_param in _options(f"{slot.name}.module", slot.modules, limit) or []:
            module = module_param.get(f"{slot.name}.module", slot.modules[0])
            parts: list[list[dict[str, Any]] | None] = [
                [at_param | module_param],
                _options(f"{slot.name}.mode", slot.modes, limit) if slot.modes else [{}],
                *(
                    _options(f"{slot.name}.{module}.{k}", v, limit)
                    for k, v in slot.args.get(module, {}).items()
                ),
            ]
            merged = _product(parts, limit - len(out))
            if merged is None:
                return None
            out += merged
    return out


def configurations(sweep: SweepCfg, limit: int = MAX_LISTED_CONFIGURATIONS) -> list[dict[str, Any]] | None:
    """Every configuration of the define-by-run space, as the Optuna params :func:`suggest` asks
    for; None when the space is unbounded (a float range without a step) or holds more than
    ``limit`` configurations."""
    parts: list[list[dict[str, Any]] | None] = [_slot_configurations(slot, limit) for slot in sweep.slots]
    parts += [_options(f"train.{path}", v, limit) for path, v in sweep.train.items()]
    return _product(parts, limit)


def set_dotted(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set ``tree``'s value at the dotted ``path`` (``optimizer.lr``); the parents must exist."""
    *parents, last = path.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value


def check_train_paths(exp: Experiment) -> None:
    """Each ``sweep.train`` key names a ``train:`` setting (dotted: ``optimizer.lr``), and each of
    its values (every choice; a range's ends) is one ``train:`` itself accepts."""
    from pydantic import ValidationError

    from stitch.config import TrainCfg

    train = exp.cfg.train.model_dump()
    for path, search in sweep_of(exp).train.items():
        node: Any = train
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise exp.source.error(
                    ("sweep", "train", path),
                    f"{path!r} is not a train setting "
                    "(e.g. optimizer.lr, optimizer.weight_decay, batch_size)",
                )
            node = node[part]
        values = search if isinstance(search, list) else [search.low, search.high]
        for value in values:
            trial = copy.deepcopy(train)
            set_dotted(trial, path, value)
            try:
                TrainCfg.model_validate(trial)
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                raise exp.source.error(
                    ("sweep", "train", path), f"{value!r} is not a valid {path} ({reason})"
                ) from None


def trial_experiment(
    exp: Experiment, insertions: list[dict[str, Any]], train: dict[str, Any], label: str
) -> Experiment:
    """The plain experiment one trial runs: the sweep's settings with these insertions and
    training values, one seed (``sweep.seed``), no sweep block. Schema-checked again."""
    sweep = sweep_of(exp)
    data = exp.cfg.model_dump(mode="json", exclude={"sweep"})
    data["insertions"] = copy.deepcopy(insertions)
    data["ablation"] = {"design": "none"}
    data["seeds"] = [sweep.seed]
    if sweep.epochs:
        data["train"]["epochs"] = sweep.epochs
    for path, value in train.items():
        set_dotted(data["train"], path, value)
    texp = parse_experiment(experiment_yaml(data), label)
    texp.base_dir = exp.base_dir  # its plugin paths are the sweep file's
    return texp


def experiment_yaml(data: dict[str, Any]) -> str:
    """An experiment (as a plain dict) written as the YAML of an experiment file."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
