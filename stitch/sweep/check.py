"""``check_sweep``: every mistake in a ``sweep:`` block that needs no training, found before a
sweep writes anything (``stitch validate`` of a sweep experiment runs it too)."""

from __future__ import annotations

import modules_zoo
from stitch.build import baseline_of, build_baseline
from stitch.config import Experiment, SlotCfg, sweep_of
from stitch.errors import did_you_mean
from stitch.points import PointLookupError, resolve_points
from stitch.sweep.objectives import objectives_of
from stitch.sweep.space import check_train_paths, grid_space


def _check_modules(exp: Experiment, i: int, slot: SlotCfg) -> None:
    names = modules_zoo.names()
    for j, module in enumerate(slot.modules):
        if module not in names:
            hint = did_you_mean(module, names) or " (`stitch zoo` lists them)"
            raise exp.source.error(("sweep", "slots", i, "modules", j), f"unknown module {module!r}" + hint)
    for module, args in slot.args.items():
        if module not in slot.modules:
            raise exp.source.error(
                ("sweep", "slots", i, "args", module),
                f"arguments for {module!r}, which is not in this slot's modules {slot.modules}",
            )
        known = [a.name for a in modules_zoo.get(module).arguments()]
        for name in args:
            if name not in known:
                hint = did_you_mean(name, known) or f" (arguments: {', '.join(known) or 'none'})"
                raise exp.source.error(
                    ("sweep", "slots", i, "args", module, name), f"{module} has no argument {name!r}" + hint
                )


def check_sweep(exp: Experiment) -> str:
    """Every mistake in the ``sweep:`` block that needs no training (objectives, train paths,
    module names, candidate points of the baseline, the grid); returns a one-line summary."""
    sweep = sweep_of(exp)
    objectives = objectives_of(exp)
    check_train_paths(exp)
    if sweep.sampler == "grid":
        grid_space(sweep)
    spec = baseline_of(exp)
    model = build_baseline(exp, 0, spec)
    aliases, paths = spec.aliases(model), [p for p, _ in model.named_modules() if p]
    for i, slot in enumerate(sweep.slots):
        _check_modules(exp, i, slot)
        for j, point in enumerate(slot.at):
            try:
                resolve_points([point], aliases, paths)
            except PointLookupError as exc:
                raise exp.source.error(("sweep", "slots", i, "at", j), str(exc)) from None
    choices = 1
    for slot in sweep.slots:
        choices *= len(slot.at) + slot.optional
    return (
        f"sweep: {sweep.trials} trials ({sweep.sampler}, pruner {sweep.pruner}) "
        f"over {len(sweep.slots)} slot(s) "
        f"({choices} placements) and {len(sweep.train)} training setting(s); objective(s) "
        + ", ".join(f"{o.direction} {o.metric}" for o in objectives)
    )
