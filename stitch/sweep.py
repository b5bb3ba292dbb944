"""``stitch sweep``: Optuna chooses where, which module and how to stitch, and training
hyper-parameters; each trial trains through the same path as ``stitch run`` and is a run in the
results database.

- Search space (the experiment's ``sweep:`` block, :class:`stitch.config.SweepCfg`), define-by-run:
  per slot ``<slot>.at`` (a candidate point, or ``none`` when optional), then only if a point was
  taken ``<slot>.module``, ``<slot>.mode`` and ``<slot>.<module>.<arg>``; ``train.<path>`` for
  training hyper-parameters.
- A choice that cannot be stitched (channel mismatch, a fusion module at a one-input point, a mode
  the module cannot take) is found by building and probing the variant before any training; the
  trial is pruned with the reason in its ``invalid`` user attribute and never trains.
- The objective is the primary validation metric at the run's best epoch (maximised), reported
  per epoch so the pruner (median by default, Hyperband) stops weak trials. Several objectives
  (a metric and ``params``, ``flops`` or ``latency_ms``) give a Pareto front (NSGA-II).
- Storage: ``sqlite:///RUN_DIR/sweep.sqlite`` unless ``--storage URL`` (any SQLAlchemy URL, e.g.
  PostgreSQL shared by several workers). Re-running continues the study until ``trials`` trials
  have finished (complete or pruned). A trial whose worker died (no heartbeat) or that was
  interrupted is retried once with the same parameters; its run resumes from its checkpoint, and
  a configuration trained before is never trained again (runs are keyed by their config's hash).
- Outputs in ``RUN_DIR/sweep/``: ``trials.csv``/``trials.md``, ``best.yaml`` (a runnable
  experiment of the best trial) and plots from ``optuna.visualization.matplotlib``.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from stitch.config import TASK_METRICS, Experiment, RangeCfg, SweepCfg, parse_experiment
from stitch.errors import StitchError, one_line_message

#: objectives that are costs of the network, minimised by default
COST_OBJECTIVES = ("params", "flops", "latency_ms")
#: seconds between a running trial's heartbeats, and after how long without one it counts as dead
#: ($STITCH_SWEEP_HEARTBEAT / $STITCH_SWEEP_GRACE change them, e.g. for a quick test of a dead worker)
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


def _heartbeat() -> tuple[int, int]:
    try:
        beat = int(os.environ.get("STITCH_SWEEP_HEARTBEAT", HEARTBEAT_SECONDS))
        grace = int(os.environ.get("STITCH_SWEEP_GRACE", GRACE_SECONDS))
    except ValueError:
        raise StitchError("$STITCH_SWEEP_HEARTBEAT and $STITCH_SWEEP_GRACE are whole seconds") from None
    if beat < 1 or grace <= beat:
        raise StitchError(f"$STITCH_SWEEP_GRACE ({grace}) must exceed $STITCH_SWEEP_HEARTBEAT ({beat}), which must be at least 1")
    return beat, grace
#: how often a worker whose remaining trials run elsewhere looks again, and when it gives up on failures
WAIT_SECONDS = 5
MAX_FAILURES_IN_A_ROW = 3


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "maximize" | "minimize"


def objectives_of(exp: Experiment) -> list[Objective]:
    """The sweep's objectives with their directions (default: the primary metric, maximised)."""
    sweep = _sweep(exp)
    known = TASK_METRICS[exp.cfg.task]
    out = []
    for i, item in enumerate(sweep.objectives or [exp.cfg.primary_metric]):
        name = item if isinstance(item, str) else item.metric
        given = None if isinstance(item, str) else item.direction
        if name not in known and name not in COST_OBJECTIVES:
            raise exp.source.error(("sweep", "objectives", i), f"unknown objective {name!r}: a {exp.cfg.task} metric ({', '.join(known)}) or a cost ({', '.join(COST_OBJECTIVES)})")
        out.append(Objective(name, given or ("minimize" if name in COST_OBJECTIVES else "maximize")))
    if len({o.metric for o in out}) != len(out):
        raise exp.source.error(("sweep", "objectives"), "an objective is listed twice")
    return out


def _sweep(exp: Experiment) -> SweepCfg:
    if exp.cfg.sweep is None:
        raise exp.source.error(("sweep",), "the experiment has no 'sweep:' block; add one (README: stitch sweep)")
    return exp.cfg.sweep


# ----------------------------------------------------------------------------- the search space
def _suggest(trial: Any, name: str, space: Any) -> Any:
    if isinstance(space, RangeCfg):
        if isinstance(space.low, int) and isinstance(space.high, int) and (space.step is None or isinstance(space.step, int)):
            return trial.suggest_int(name, space.low, space.high, step=space.step or 1, log=space.log)
        return trial.suggest_float(name, float(space.low), float(space.high), step=space.step, log=space.log)
    return space[0] if len(space) == 1 else trial.suggest_categorical(name, list(space))


def suggest(trial: Any, sweep: SweepCfg) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The insertions and training overrides of one trial (define-by-run: a slot's module,
    mode and arguments are only asked for when the slot takes a point)."""
    insertions = []
    for slot in sweep.slots:
        at = _suggest(trial, f"{slot.name}.at", list(slot.at) + (["none"] if slot.optional else []))
        if at == "none":
            continue
        module = _suggest(trial, f"{slot.name}.module", slot.modules)
        ins: dict[str, Any] = {"name": slot.name, "module": module, "at": at}
        if slot.modes:
            ins["mode"] = _suggest(trial, f"{slot.name}.mode", slot.modes)
        args = {k: _suggest(trial, f"{slot.name}.{module}.{k}", v) for k, v in slot.args.get(module, {}).items()}
        if args:
            ins["args"] = args
        insertions.append(ins)
    train = {path: _suggest(trial, f"train.{path}", v) for path, v in sweep.train.items()}
    return insertions, train


def grid_space(sweep: SweepCfg) -> dict[str, list[Any]]:
    """Every parameter's values for the grid sampler (ranges need a ``step``)."""
    def values(name: str, space: Any) -> list[Any]:
        if isinstance(space, RangeCfg):
            if space.step is None:
                raise StitchError(f"sweep: {name} is a range without a step; the grid sampler needs a list of values or a step")
            n = int(math.floor((space.high - space.low) / space.step + 1e-9)) + 1
            vals = [space.low + k * space.step for k in range(n)]
            return [int(v) for v in vals] if isinstance(space.step, int) and isinstance(space.low, int) else vals
        return list(space)

    grid: dict[str, list[Any]] = {}
    for slot in sweep.slots:
        grid[f"{slot.name}.at"] = list(slot.at) + (["none"] if slot.optional else [])
        if len(slot.modules) > 1:
            grid[f"{slot.name}.module"] = list(slot.modules)
        if slot.modes and len(slot.modes) > 1:
            grid[f"{slot.name}.mode"] = list(slot.modes)
        for module, args in slot.args.items():
            for k, v in args.items():
                vals = values(f"{slot.name}.{module}.{k}", v)
                if len(vals) > 1 or isinstance(v, RangeCfg):
                    grid[f"{slot.name}.{module}.{k}"] = vals
    for path, v in sweep.train.items():
        vals = values(f"train.{path}", v)
        if len(vals) > 1 or isinstance(v, RangeCfg):  # _suggest asks for every range, even of one value
            grid[f"train.{path}"] = vals
    return grid


def check_train_paths(exp: Experiment) -> None:
    """Each ``sweep.train`` key names a ``train:`` setting (dotted: ``optimizer.lr``)."""
    train = exp.cfg.train.model_dump()
    for path in _sweep(exp).train:
        node: Any = train
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise exp.source.error(("sweep", "train", path), f"{path!r} is not a train setting (e.g. optimizer.lr, optimizer.weight_decay, batch_size)")
            node = node[part]


def trial_experiment(exp: Experiment, insertions: list[dict[str, Any]], train: dict[str, Any], label: str) -> Experiment:
    """The plain experiment one trial runs: the sweep's settings with these insertions and
    training values, one seed (``sweep.seed``), no sweep block. Schema-checked again."""
    sweep = _sweep(exp)
    data = exp.cfg.model_dump(mode="json", exclude={"sweep"})
    data["insertions"] = copy.deepcopy(insertions)
    data["ablation"] = {"design": "none"}
    data["seeds"] = [sweep.seed]
    if sweep.epochs:
        data["train"]["epochs"] = sweep.epochs
    for path, value in train.items():
        node = data["train"]
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return parse_experiment(experiment_yaml(data), label)


def experiment_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)


def check_sweep(exp: Experiment) -> str:
    """Every mistake in the ``sweep:`` block that needs no training (objectives, train paths,
    module names, candidate points of the baseline, the grid); returns a one-line summary."""
    import modules_zoo
    from stitch.build import baseline_of, build_baseline
    from stitch.errors import did_you_mean
    from stitch.points import PointLookupError, resolve_points

    sweep = _sweep(exp)
    objectives = objectives_of(exp)
    check_train_paths(exp)
    if sweep.sampler == "grid":
        grid_space(sweep)
    spec = baseline_of(exp)
    model = build_baseline(exp, 0, spec)
    aliases, paths = spec.aliases(model), [p for p, _ in model.named_modules() if p]
    for i, slot in enumerate(sweep.slots):
        for j, module in enumerate(slot.modules):
            if module not in modules_zoo.names():
                raise exp.source.error(("sweep", "slots", i, "modules", j), f"unknown module {module!r}" + (did_you_mean(module, modules_zoo.names()) or " (`stitch zoo` lists them)"))
        for module, args in slot.args.items():
            if module not in slot.modules:
                raise exp.source.error(("sweep", "slots", i, "args", module), f"arguments for {module!r}, which is not in this slot's modules {slot.modules}")
            known = [a.name for a in modules_zoo.get(module).arguments()]
            for name in args:
                if name not in known:
                    raise exp.source.error(("sweep", "slots", i, "args", module, name), f"{module} has no argument {name!r}" + (did_you_mean(name, known) or f" (arguments: {', '.join(known) or 'none'})"))
        for j, point in enumerate(slot.at):
            try:
                resolve_points([point], aliases, paths)
            except PointLookupError as exc:
                raise exp.source.error(("sweep", "slots", i, "at", j), str(exc)) from None
    choices = 1
    for slot in sweep.slots:
        choices *= len(slot.at) + slot.optional
    return (
        f"sweep: {sweep.trials} trials ({sweep.sampler}, pruner {sweep.pruner}) over {len(sweep.slots)} slot(s) "
        f"({choices} placements) and {len(sweep.train)} training setting(s); objective(s) "
        + ", ".join(f"{o.direction} {o.metric}" for o in objectives)
    )


# ----------------------------------------------------------------------------- running
def _storage(url: str) -> Any:
    import optuna

    import warnings

    beat, grace = _heartbeat()
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=beat, grace_period=grace, heartbeat_stale_trial_callback=_retry,
                    engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
                )
        except Exception as exc:  # a bad URL, a missing driver, a server that refuses
            # Two workers creating Optuna's tables in one new database at once: one of them loses
            # the race (optuna/optuna#1092); the tables exist by the time it tries again.
            if attempt < 2 and ("already exists" in str(exc) or "duplicate key" in str(exc)):
                time.sleep(1.0 + attempt)
                continue
            raise StitchError(f"--storage {url}: cannot open the study storage ({one_line_message(exc)}); use an SQLAlchemy URL such as sqlite:///sweep.sqlite or postgresql+psycopg2://user@host/db") from None
    raise AssertionError("unreachable")


def _retry(study: Any, trial: Any) -> None:
    """Run a failed or dead (stale heartbeat) trial once more, with the same parameters."""
    if trial.user_attrs.get("retry_of") is not None:
        return  # a retry that failed again is not retried a second time
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def _sampler(name: str, sweep: SweepCfg, multi: bool, shared: bool) -> Any:
    """The sampler, seeded with ``sweep.seed``; on a shared storage each worker adds its process
    id, or every worker would propose the same parameters in the same order."""
    import optuna

    seed = (sweep.seed + 7919 * os.getpid()) % 2**31 if shared else sweep.seed
    if name == "grid":
        return optuna.samplers.GridSampler(grid_space(sweep), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2" or multi:
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(name: str, epochs: int) -> Any:
    """Median: a trial stops when its metric is below the median of earlier trials at the same
    epoch, from the second half of its epochs on and once 3 trials have finished (early epochs of
    a network trained from scratch say little: a U-Net's foreground IoU often stays flat for a few
    epochs, then jumps). Hyperband: optuna's, from 1 epoch to all of them."""
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=epochs // 2 + 1)
    return optuna.pruners.NopPruner()


@dataclass
class SweepResult:
    study: Any
    run_dir: Path
    written: list[Path]


def run_sweep(
    exp: Experiment,
    out: str | Path = "runs",
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    device: str | None = None,
    quiet: bool = False,
) -> SweepResult:
    """Run trials until ``n_trials`` (default ``sweep.trials``) have finished in the study."""
    import optuna

    from stitch.build import stitch_variant
    from stitch.engine import StopTraining, pick_device
    from stitch.plan import Variant
    from stitch.progress import Progress
    from stitch.run import RunPlan, _logger, _train_run, _write_csv, experiment_data, open_run_dir, preflight, resolved_config
    from stitch.store import ResultStore, run_id_of
    from stitch.tasks import make_task

    sweep = _sweep(exp)
    objectives = objectives_of(exp)
    check_sweep(exp)  # every mistake in the sweep block before anything is written
    multi = len(objectives) > 1
    prunable = not multi and objectives[0].metric not in COST_OBJECTIVES  # what the pruner can watch per epoch
    target = n_trials or sweep.trials
    sampler = _sampler(sweep.sampler, sweep, multi, shared=storage is not None)
    if sweep.sampler == "grid":  # exhaustive: never more trials than grid points
        target = min(target, math.prod(len(v) for v in grid_space(sweep).values()))
    dev = pick_device(device)
    data = experiment_data(exp)
    preflight(data, exp.cfg.train.batch_size)
    run_dir = open_run_dir(exp, out)
    url = storage or f"sqlite:///{(run_dir / 'sweep.sqlite').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        storage=_storage(url), study_name=study_name or exp.cfg.name, load_if_exists=True, sampler=sampler,
        pruner=_pruner(sweep.pruner if prunable else "none", sweep.epochs or exp.cfg.train.epochs), directions=[o.direction for o in objectives],
    )
    log = _logger(run_dir)
    task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
    progress = Progress(quiet=quiet, log=log)
    watched = objectives[0].metric
    epochs = sweep.epochs or exp.cfg.train.epochs

    def objective(trial: Any) -> Any:
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is not None and any(
            t.user_attrs.get("retry_of") == retry_of and t.number < trial.number for t in study.get_trials(deepcopy=False)
        ):  # two workers enqueued a retry of the same trial at once: only the first runs
            raise optuna.TrialPruned(f"duplicate retry of trial {retry_of}")
        insertions, train = suggest(trial, sweep)
        trial.set_user_attr("insertions", " ".join(f"{i['name']}:{i['module']}@{i['at']}" + (f"/{i['mode']}" if "mode" in i else "") for i in insertions) or "baseline")
        try:
            texp = trial_experiment(exp, insertions, train, f"{exp.path or exp.cfg.name} (trial {trial.number})")
            variant = Variant(f"trial {trial.number}" if insertions else "Baseline", tuple(i["name"] for i in insertions))
            built = stitch_variant(texp, variant, sweep.seed)  # the dry run: anything that cannot be stitched stops here
        except StitchError as exc:
            reason = one_line_message(exc)
            trial.set_user_attr("invalid", reason)
            progress.message(f"trial {trial.number}: not stitchable, pruned without training: {reason}")
            raise optuna.TrialPruned(reason) from None
        config = resolved_config(texp, variant, sweep.seed, texp.cfg.train.epochs)
        run_id = run_id_of(config)
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("experiment_yaml", experiment_yaml(texp.cfg.model_dump(mode="json", exclude={"sweep"})))
        decision, other = _claim(study, trial, run_id)
        if decision == "reuse":
            trial.set_user_attr("reused", run_id)
            return other.values[0] if len(other.values) == 1 else tuple(other.values)
        if decision != "train":
            trial.set_user_attr("duplicate_of", other.number)
            raise optuna.TrialPruned(f"the same configuration is {decision} in trial {other.number}")
        with ResultStore(run_dir / "runs.sqlite") as store:
            row = store.get(run_id)
            if row is not None and row.status == "diverged":
                trial.set_user_attr("reused", run_id)
                raise optuna.TrialPruned(f"the same configuration diverged before ({row.error})")
            if row is None or row.status != "done":  # new, or unfinished / pruned in another study: train or resume
                def on_record(record: dict[str, Any]) -> None:
                    value = record.get(watched)
                    if not prunable or value is None or (isinstance(value, float) and math.isnan(value)):
                        return
                    trial.report(float(value), int(record["epoch"]))
                    if int(record["epoch"]) < epochs and trial.should_prune():  # never after the last epoch
                        raise StopTraining(f"pruned at epoch {record['epoch']} ({watched} {value:.4f})")

                plan = RunPlan(variant, sweep.seed, run_id, config)
                try:
                    row = _train_run(texp, plan, data, task, run_dir, store, dev, progress, False, None, on_record=on_record, built=built)
                except StopTraining as exc:
                    raise optuna.TrialPruned(exc.reason) from None
                finally:
                    _write_csv(store, run_dir / "results.csv", {run_id})
            else:
                trial.set_user_attr("reused", run_id)
                progress.message(f"trial {trial.number}: configuration trained before (run {run_id[:8]}), result reused")
        if row.status == "diverged":
            raise optuna.TrialPruned(f"diverged: {row.error}")
        if row.status != "done":
            raise RuntimeError(f"run {run_id[:8]} {row.status}: {row.error}")
        values = _values(row, objectives, texp, variant, sweep.seed)
        if any(math.isnan(v) for v in (values if isinstance(values, tuple) else (values,))):
            raise optuna.TrialPruned(f"an objective is undefined (NaN): {dict(zip([o.metric for o in objectives], values if isinstance(values, tuple) else (values,)))}")
        return values

    start = time.monotonic()
    failures = 0

    def fail_stale() -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # workers silent for longer than the grace period: their trials failed

    fail_stale()
    if _finished(study) < target:
        for t in study.get_trials(deepcopy=False):  # interrupted before (Ctrl-C, a crash): once more
            if t.state == optuna.trial.TrialState.FAIL:
                _retry(study, t)
    progress.message(f"sweep {study.study_name}: {_finished(study)} of {target} trials finished, storage {url.split('@')[-1]}")
    with progress:
        while _finished(study) < target:
            if timeout is not None and time.monotonic() - start > timeout:
                progress.message(f"--timeout {timeout:g} s reached")
                break
            fail_stale()
            if _finished(study) + _running(study) >= target and not _waiting(study):
                time.sleep(WAIT_SECONDS)  # the last trials run in other workers: they finish, or go stale and come back as retries
                continue
            before = _count(study, "FAIL")
            study.optimize(objective, n_trials=1, catch=(RuntimeError,))
            failures = failures + 1 if _count(study, "FAIL") > before else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                progress.message(f"stopped: {failures} trials failed in a row (errors in {run_dir / 'log.txt'} and trials.md); fix the cause and run the same command again")
                break
    written = write_outputs(study, exp, run_dir / "sweep", objectives)
    try:
        written += write_runs_table(run_dir, run_dir / "sweep")
    except StitchError as exc:  # e.g. no finished run yet
        progress.message(f"runs table not written: {one_line_message(exc)}")
    progress.message(f"sweep: {_finished(study)} trials finished; outputs in {run_dir / 'sweep'}")
    return SweepResult(study, run_dir, written)


#: how long a trial waits for a lower-numbered trial of the same configuration to decide
CLAIM_WAIT_SECONDS = 60


def _claim(study: Any, trial: Any, run_id: str) -> tuple[str, Any]:
    """Decide, across workers, which trial trains configuration ``run_id`` (the study is the
    registry; each worker may have its own --out). ``trial`` has already set its ``run_id``
    attribute, so of two trials that check at the same time at least one sees the other.

    Returns ``("reuse", t)`` when trial ``t`` completed it, ``("pruned", t)`` / ``("being
    trained", t)`` when ``t`` pruned it or claimed it, else ``("train", None)`` after claiming it.
    Among running, undecided trials of one configuration the lowest number claims it; the others
    wait for its decision (at most :data:`CLAIM_WAIT_SECONDS`, after which a silent one counts as
    dead). Trials pruned as duplicates, and failed ones, are not decisions about the configuration."""
    import optuna

    states = optuna.trial.TrialState
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while True:
        others = [
            t for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and t.user_attrs.get("run_id") == run_id and t.user_attrs.get("duplicate_of") is None
        ]
        done = [t for t in others if t.state == states.COMPLETE and t.values is not None]
        if done:
            return "reuse", done[0]
        pruned = [t for t in others if t.state == states.PRUNED]
        if pruned:
            return "pruned", pruned[0]
        running = [t for t in others if t.state == states.RUNNING]
        claimed = [t for t in running if t.user_attrs.get("claim") == "train"]
        if claimed:
            return "being trained", claimed[0]
        if not any(t.number < trial.number for t in running) or time.monotonic() > deadline:
            trial.set_user_attr("claim", "train")
            return "train", None
        time.sleep(0.2)  # a lower-numbered trial of this configuration decides first


def _count(study: Any, *states: str) -> int:
    import optuna

    wanted = {getattr(optuna.trial.TrialState, s) for s in states}
    return sum(t.state in wanted for t in study.get_trials(deepcopy=False))


def _finished(study: Any) -> int:
    return _count(study, "COMPLETE", "PRUNED")


def _running(study: Any) -> int:
    return _count(study, "RUNNING")


def _waiting(study: Any) -> int:
    return _count(study, "WAITING")


def _values(row: Any, objectives: Sequence[Objective], exp: Experiment, variant: Any, seed: int) -> Any:
    out = []
    costs = None
    for o in objectives:
        if o.metric == "params":
            out.append(float(row.params))
        elif o.metric in ("flops", "latency_ms"):
            if costs is None:
                from stitch.costs import variant_costs

                costs = variant_costs(exp, variant, seed, latency=o.metric == "latency_ms" or any(x.metric == "latency_ms" for x in objectives))
            value = getattr(costs, o.metric)
            out.append(float("nan") if value is None else float(value))
        else:
            out.append(float((row.best_metrics or {}).get(o.metric, float("nan"))))
    return out[0] if len(out) == 1 else tuple(out)


# ----------------------------------------------------------------------------- outputs
def write_outputs(study: Any, exp: Experiment, out_dir: Path, objectives: Sequence[Objective]) -> list[Path]:
    """``trials.csv``, ``trials.md``, ``best.yaml`` and the plots (each written atomically)."""
    import optuna
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in study.get_trials(deepcopy=False):
        rec: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
        for o, v in zip(objectives, t.values or [None] * len(objectives)):
            rec[o.metric] = v
        rec["insertions"] = t.user_attrs.get("insertions", "")
        rec |= {k: v for k, v in t.params.items()}
        rec["note"] = t.user_attrs.get("invalid") or (f"retry of trial {t.user_attrs['retry_of']}" if t.user_attrs.get("retry_of") is not None else "")
        rec["run_id"] = (t.user_attrs.get("run_id") or "")[:12]
        rec["seconds"] = round(t.duration.total_seconds(), 1) if t.duration else None
        rows.append(rec)
    df = pd.DataFrame.from_records(rows)
    written = [_atomic(out_dir / "trials.csv", df.to_csv(index=False)), _atomic(out_dir / "trials.md", df.to_markdown(index=False) + "\n")]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = _best_trial(study, objectives, complete)
        header = (
            f"# Best trial {best.number} of sweep {study.study_name} ({', '.join(f'{o.metric} {v:.4f}' for o, v in zip(objectives, best.values))}).\n"
            f"# `stitch run` of this file trains the Baseline and this variant with the sweep's seed and epochs.\n"
        )
        best_exp = yaml.safe_load(best.user_attrs["experiment_yaml"])
        best_exp["name"] = f"{exp.cfg.name}_best"  # its own run directory (the name is not part of run ids)
        written.append(_atomic(out_dir / "best.yaml", header + experiment_yaml(best_exp)))
    written += _plots(study, out_dir, objectives, len(complete))
    return written


def _best_trial(study: Any, objectives: Sequence[Objective], complete: list[Any]) -> Any:
    if len(objectives) == 1:
        return study.best_trial
    front = study.best_trials  # the Pareto front: its best in the first objective
    sign = 1 if objectives[0].direction == "maximize" else -1
    return max(front, key=lambda t: sign * t.values[0])


def _plots(study: Any, out_dir: Path, objectives: Sequence[Objective], n_complete: int) -> list[Path]:
    """Optuna's matplotlib plots as PNG files; one that cannot be drawn (too few trials) is skipped."""
    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    names = [o.metric for o in objectives]
    plots: dict[str, Any] = {}
    if len(objectives) == 1:
        plots["history"] = lambda: ovm.plot_optimization_history(study, target_name=names[0])
        plots["parallel_coordinate"] = lambda: ovm.plot_parallel_coordinate(study, target_name=names[0])
        if n_complete >= 2:
            # PED-ANOVA: optuna's own evaluator (the default, fANOVA, needs scikit-learn)
            plots["importances"] = lambda: ovm.plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target_name=names[0])
    else:
        plots["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=names)
    written: list[Path] = []
    skipped: list[str] = []
    import warnings

    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                ax = draw()
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            path = out_dir / f"{name}.png"
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
            plt.close(fig)
            tmp.replace(path)
            written.append(path)
        except Exception as exc:  # e.g. importances with a single distinct parameter value: leave that plot out
            plt.close("all")
            skipped.append(f"{name}: {one_line_message(exc)}")
    note = out_dir / "plots_not_drawn.txt"
    if skipped:
        written.append(_atomic(note, "\n".join(skipped) + "\n"))
    elif note.exists():
        note.unlink()
    return written


def _atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- the runs table (stitch report)
def is_sweep_dir(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` was written by ``stitch sweep`` (its experiment has a ``sweep:`` block)."""
    path = Path(run_dir) / "experiment.yaml"
    if not path.is_file():
        return False
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and data.get("sweep") is not None


def _describe_insertion(ins: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v}" for k, v in (ins.get("args") or {}).items() if k not in ("channels", "in_channels", "out_channels", "stride"))
    return f"{ins['module']}@{ins['at']}" + (f" {ins['mode']}" if ins.get("mode") else "") + (f" ({args})" if args else "")


def write_runs_table(run_dir: str | Path, out_dir: str | Path, standalone: bool = False) -> list[Path]:
    """The sweep's trained runs from ``runs.sqlite`` as a table (Markdown, CSV, LaTeX): one row
    per distinct configuration, its slot choices, searched training settings, the report metrics
    at its best epoch (in %), parameters, epochs trained and status (done or pruned), best first;
    the best value of each metric column in bold. ``stitch report RUN_DIR`` of a sweep writes it."""
    import pandas as pd

    from stitch.config import load_experiment
    from stitch.store import ResultStore, run_dir_files

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    exp_file, db = run_dir_files(run_dir)
    exp = load_experiment(exp_file)
    sweep = _sweep(exp)
    metrics = list(dict.fromkeys([exp.cfg.primary_metric, *exp.cfg.metrics.report]))
    with ResultStore(db) as store:
        rows = [r for r in store.rows() if r.status in ("done", "pruned")]
    if not rows:
        raise StitchError(f"{run_dir}: no finished trial runs yet (run `stitch sweep {exp_file}`)")
    records = []
    for r in rows:
        rec: dict[str, Any] = {"run": r.variant, "status": r.status}
        by_slot = {i["name"]: i for i in r.config.get("insertions", [])}
        for slot in sweep.slots:
            rec[slot.name] = _describe_insertion(by_slot[slot.name]) if slot.name in by_slot else "–"
        for path in sweep.train:
            node: Any = r.config.get("train", {})
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            rec[path] = node
        for m in metrics:
            value = (r.best_metrics or {}).get(m)
            rec[m] = None if value is None else 100.0 * float(value)
        rec["params (M)"] = None if r.params is None else r.params / 1e6
        rec["epochs"] = r.epochs_done
        rec["run_id"] = r.run_id[:12]
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    df = df.sort_values(by=[exp.cfg.primary_metric, "epochs"], ascending=[False, False], na_position="last").reset_index(drop=True)
    caption = (
        f"Runs of sweep {exp.cfg.name}: one per distinct configuration, metrics (%) at the best validation epoch "
        f"(pruned runs: at the best epoch before they were stopped), seed {sweep.seed}."
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = df.copy()
    for m in metrics:
        done = df.loc[df["status"] == "done", m].dropna()
        best = done.max() if len(done) else None
        shown[m] = [("" if pd.isna(v) else (f"**{v:.2f}**" if best is not None and v == best and st == "done" else f"{v:.2f}")) for v, st in zip(df[m], df["status"])]
    shown["params (M)"] = [f"{v:.3f}" for v in df["params (M)"]]
    written = [
        _atomic(out_dir / "runs.md", f"Table: {caption}\n\n" + shown.to_markdown(index=False) + "\n"),
        _atomic(out_dir / "runs.csv", df.to_csv(index=False)),
    ]
    styler = df.style.format(precision=2, na_rep="–", escape="latex").format_index(escape="latex", axis=1).hide(axis="index")
    done_rows = df.index[df["status"] == "done"]
    for m in metrics:
        if len(done_rows):
            styler = styler.highlight_max(subset=(done_rows, [m]), props="textbf:--rwrap;")
    latex = styler.to_latex(hrules=True, caption=caption.replace("_", r"\_"), label=f"tab:{exp.cfg.name}_runs", position_float="centering")
    if standalone:
        latex = "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]{geometry}\n\\begin{document}\n" + latex + "\\end{document}\n"
    written.append(_atomic(out_dir / "runs.tex", latex))
    return written
