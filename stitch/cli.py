"""The ``stitch`` command: parses arguments and calls the rooms that do the work.

User mistakes (:class:`~stitch.errors.StitchError`) print one line on stderr and exit with code 2;
``--debug`` shows the traceback instead. ``--debug`` and ``--quiet`` are taken before or after the
subcommand; every ``--help`` ends with examples and the exit codes (:mod:`stitch.cli_options`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stitch import __version__
from stitch.cli_options import add_global_options, finish_commands, positive_int, seconds, seed
from stitch.completion import SHELLS
from stitch.errors import StitchError, one_line_message


def cmd_validate(args: argparse.Namespace) -> int:
    from stitch.config.overrides import is_override
    from stitch.listings import print_validation

    # key=value words among the files are overrides, applied to each file
    words = args.experiments + args.overrides
    overrides = [w for w in words if is_override(w) and not Path(w).exists()]
    files = [w for w in words if w not in overrides]
    if not files:
        raise StitchError("stitch validate: name an experiment file before its KEY=VALUE overrides")
    for path in files:
        print_validation(path, args.out, overrides)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from stitch.config import load_experiment
    from stitch.config.writing import resolved_yaml

    print(resolved_yaml(load_experiment(args.experiment, args.overrides).cfg), end="")
    return 0


def _experiment_with_overrides(args: argparse.Namespace) -> Any:
    """``args.experiment`` with its ``key=value`` overrides, schema-checked, plugins imported."""
    from stitch.plugins import load_experiment_with_plugins

    return load_experiment_with_plugins(args.experiment, args.overrides)


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with ``key=value`` words given after options still taken as
    overrides (argparse alone takes positionals only before the first option)."""
    from stitch.config.overrides import is_override

    args, rest = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        args.overrides += [w for w in rest if is_override(w)]
        rest = [w for w in rest if not is_override(w)]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise StitchError(f"--arg {pair!r} is not KEY=VALUE (for example --arg base_width=32)")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise StitchError(
                f"--arg {pair!r}: the value is not valid YAML (quote strings, write lists as [1, 2])"
            ) from None
    return out


def cmd_points(args: argparse.Namespace) -> int:
    from stitch.baselines import BASELINES
    from stitch.config import (
        BaselineCfg,
        Experiment,
        ExperimentCfg,
        SourceMap,
        with_overrides,
    )
    from stitch.errors import did_you_mean
    from stitch.listings import print_points
    from stitch.plugins import load_experiment_with_plugins

    target = args.target
    if target in BASELINES:
        cfg = ExperimentCfg(name="points", task=BASELINES[target].task, baseline=BaselineCfg(model=target))
        exp = Experiment(cfg=cfg, source=SourceMap(f"<{target}>"))
    elif Path(target).suffix in (".yaml", ".yml") or Path(target).exists():
        exp = load_experiment_with_plugins(target)
    else:
        raise StitchError(
            f"{target!r} is neither a baseline nor an experiment file"
            + (did_you_mean(target, BASELINES) or f" (baselines: {', '.join(BASELINES)})")
        )
    exp = with_overrides(exp, _parse_overrides(args.arg), tuple(args.size) if args.size else None)
    print_points(exp, include_all=args.all, as_json=args.json)
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from stitch.listings import print_zoo

    if args.into and not args.markdown:
        raise StitchError("--into writes the Markdown table: add --markdown")
    print_zoo(as_json=args.json, plugins=args.plugins, markdown=args.markdown, into=args.into)
    return 0


# ----------------------------------------------------------------------------- run / show
def cmd_run(args: argparse.Namespace) -> int:
    from stitch.distributed import (
        check_ddp_options,
        check_nproc,
        is_main,
        launch_torchrun,
        world_size_from_env,
    )
    from stitch.run import run_experiment

    jobs, devices = _jobs_and_devices(args)
    nproc = args.nproc_per_node
    if nproc is not None:
        check_nproc(nproc, args.device)
    exp = _experiment_with_overrides(args)
    world = nproc if nproc is not None else world_size_from_env()
    if world > 1:  # refused before any process starts, when launched with --nproc-per-node
        check_ddp_options(world, exp.cfg.train.batch_size, args.jobs, args.devices, args.storage)
    if nproc is not None:  # this command line again, under torchrun
        return launch_torchrun(nproc, args.given, args.device)
    rows = run_experiment(
        exp,
        out=args.out,
        device=args.device,
        epochs=args.epochs,
        seeds=args.seeds,
        force=args.force,
        quiet=args.quiet,
        wait=args.wait,
        jobs=jobs,
        devices=devices,
        storage=args.storage,
    )
    failed = [r for r in rows if r.status == "failed"]
    if is_main():  # rank 0 of a torchrun job, or the only process
        print(f"results: {Path(args.out) / exp.cfg.name} (runs.sqlite, results.csv, log.txt, tb/)")
    return 1 if failed else 0


def _jobs_and_devices(args: argparse.Namespace) -> tuple[int, list[str] | None]:
    """``--jobs`` (default 1, or one per ``--devices`` entry) and ``--devices`` as device names
    (``0,1`` -> ``cuda:0``, ``cuda:1``); a mistake is one line."""
    devices = None
    if args.devices is not None:
        if args.device:
            raise StitchError(
                "--device and --devices: give one of them (--devices spreads workers over several)"
            )
        names = [d.strip() for d in args.devices.split(",")]
        if not all(names):
            raise StitchError(
                f"--devices {args.devices!r}: a comma-separated list such as cuda:0,cuda:1 or 0,1"
            )
        devices = [f"cuda:{d}" if d.isdigit() else d for d in names]
    if args.jobs is None:
        return (len(devices) if devices else 1), devices
    try:
        jobs = int(args.jobs)
    except ValueError:
        raise StitchError(
            f"--jobs {args.jobs!r}: a whole number of worker processes, e.g. --jobs 2"
        ) from None
    if not 1 <= jobs <= 256:
        raise StitchError(f"--jobs {jobs}: must be 1 .. 256 worker processes")
    return jobs, devices


def cmd_sweep(args: argparse.Namespace) -> int:
    from stitch.distributed import world_size_from_env
    from stitch.sweep import run_sweep

    if world_size_from_env() > 1:
        raise StitchError(
            "stitch sweep under torchrun: a sweep trains many runs, each on one process; start several "
            "sweep workers instead (docs/sweeps.md)"
        )
    exp = _experiment_with_overrides(args)
    result = run_sweep(
        exp,
        out=args.out,
        n_trials=args.n_trials,
        timeout=args.timeout,
        storage=args.storage,
        study_name=args.study,
        device=args.device,
        quiet=args.quiet,
        wait=args.wait,
    )
    print(f"sweep: {result.run_dir / 'sweep'} ({', '.join(p.name for p in result.written)})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from stitch.run_lock import LOCK_FILE, run_dir_lock

    dirs = [Path(d) for d in args.run_dirs]
    with contextlib.ExitStack() as held:
        # not while another process trains in one (refused, or waited for with --wait); taken in
        # one order, so two reports of the same directories waiting for each other cannot deadlock.
        # Every run and sweep leaves .lock behind: where there is none, none ever worked there
        for d in sorted(dirs, key=lambda d: str(d.resolve())):
            if (d / LOCK_FILE).is_file():
                held.enter_context(run_dir_lock(d, "stitch report", args.wait))
        return _report_dirs(args, dirs)


def _report_dirs(args: argparse.Namespace, dirs: list[Path]) -> int:
    from stitch.devices import pick_device
    from stitch.report import default_out_dir, is_sweep_dir, write_report, write_runs_table

    if len({d.resolve() for d in dirs}) != len(dirs):
        raise StitchError("the same run directory is given twice; name each once")
    out = Path(args.out) if args.out else default_out_dir(dirs)
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise StitchError(f"--out {out}: {blocker} is a file, not a directory")
    device = str(pick_device(args.device or "cpu"))
    sweeps = [d for d in dirs if is_sweep_dir(d)]
    if sweeps:
        if len(dirs) > 1:
            raise StitchError(
                f"{sweeps[0]} is a sweep's run directory: report it on its own"
                " (its trials are not variants of one design)"
            )
        written = write_runs_table(
            dirs[0], Path(args.out) if args.out else dirs[0] / "sweep", standalone=args.standalone
        )
        print(f"wrote {len(written)} files to {written[0].parent}: " + ", ".join(p.name for p in written))
        return 0
    written = write_report(dirs, out, standalone=args.standalone, device=device, latency=not args.no_latency)
    print(f"wrote {len(written)} files to {out}: " + ", ".join(p.name for p in written))
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from stitch.completion import completion_script

    print(completion_script(make_parser(), args.shell), end="")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from stitch.show import show_run

    path = show_run(
        Path(args.run_dir),
        variant=args.variant,
        seed=args.seed,
        n=args.n,
        out=Path(args.output) if args.output else None,
    )
    print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- main
def _training_options(parser: argparse.ArgumentParser) -> None:
    """What every command that trains takes: the experiment, --out, --device."""
    parser.add_argument("experiment", metavar="EXPERIMENT.yaml")
    parser.add_argument(
        "--out", default="runs", help="parent of the run directory runs/<experiment>/ (default: runs)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: CUDA when present, else CPU)")


def _override_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="set a key of the experiment file, e.g. train.epochs=3 seeds=[0,1] insertions.0.at=enc3 "
        "(YAML values; docs/experiment-file.md: Overrides and inheritance)",
    )


def _wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="when another process works in the run directory, wait for it instead of stopping",
    )


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stitch", description="Module-stitching and ablation experiments on PyTorch vision models."
    )
    add_global_options(p)
    p.add_argument("--version", action="version", version=f"stitch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="build every variant and check it, before any training")
    v.add_argument(
        "experiments",
        nargs="+",
        metavar="EXPERIMENT.yaml|KEY=VALUE",
        help="experiment files, and overrides applied to each, e.g. train.epochs=3",
    )
    v.add_argument(
        "--out",
        default="runs",
        help="where `stitch run` writes (default: runs): earlier Baseline runs there size the seeds",
    )
    v.set_defaults(func=cmd_validate, overrides=[])

    pt = sub.add_parser("points", help="list hook points with their shapes")
    pt.add_argument("target", metavar="BASELINE|EXPERIMENT.yaml")
    pt.add_argument("--json", action="store_true", help="every module path, as JSON")
    pt.add_argument("--all", action="store_true", help="every module path, not only aliased points")
    pt.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="baseline argument, e.g. --arg base_width=32",
    )
    pt.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="probe input size")
    pt.set_defaults(func=cmd_points)

    r = sub.add_parser("run", help="train every variant x seed of an experiment and store the results")
    _training_options(r)
    _override_option(r)
    r.add_argument("--epochs", type=positive_int, help="override train.epochs")
    r.add_argument("--seeds", type=seed, nargs="+", help="override seeds")
    r.add_argument("--force", action="store_true", help="retrain runs that are already done")
    r.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="train each run with DistributedDataParallel over N processes on this machine (torchrun)",
    )
    r.add_argument(
        "--jobs",
        metavar="N",
        help="train N runs at once in N worker processes (default 1; CPU threads are split between them)",
    )
    r.add_argument(
        "--devices",
        metavar="LIST",
        help="devices for the workers, round robin: cuda:0,cuda:1 or 0,1 (default: --jobs one per device)",
    )
    r.add_argument(
        "--storage",
        metavar="URL",
        help="share the runs with other workers (each with its own --out) through this SQLAlchemy URL: "
        "postgresql+psycopg2://user@host/db or sqlite:///shared.db",
    )
    _wait_option(r)
    r.set_defaults(func=cmd_run)

    sw = sub.add_parser(
        "sweep", help="Optuna search over insertion points, modules, modes and hyper-parameters"
    )
    _training_options(sw)
    _override_option(sw)
    sw.add_argument(
        "--n-trials",
        type=positive_int,
        help="distinct configurations to decide in the study (default: sweep.trials)",
    )
    sw.add_argument("--timeout", type=seconds, help="stop starting new trials after this many seconds")
    sw.add_argument(
        "--storage",
        help="SQLAlchemy URL of the study (default: sqlite:///RUN_DIR/sweep.sqlite); "
        "share one across workers",
    )
    sw.add_argument("--study", help="study name (default: the experiment's name)")
    _wait_option(sw)
    sw.set_defaults(func=cmd_sweep)

    cf = sub.add_parser(
        "config", help="print the experiment as run: bases merged, overrides set, every default filled"
    )
    cf.add_argument("experiment", metavar="EXPERIMENT.yaml")
    _override_option(cf)
    cf.set_defaults(func=cmd_config)

    rp = sub.add_parser(
        "report",
        help="tables (LaTeX, Markdown, CSV; HTML when report.formats lists it), plots and provenance "
        "from run directories",
    )
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rp.add_argument(
        "--out", help="output folder (default: RUN_DIR/report, or report/ beside the first of several)"
    )
    rp.add_argument(
        "--standalone", action="store_true", help="LaTeX as a full document that compiles with pdflatex"
    )
    rp.add_argument("--device", help="device for the latency measurement (default cpu)")
    rp.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    _wait_option(rp)
    rp.set_defaults(func=cmd_report)

    sh = sub.add_parser("show", help="write a PNG grid of images, ground truth and predictions")
    sh.add_argument("run_dir", metavar="RUN_DIR")
    sh.add_argument("--variant", help="variant name or slug (default: the first trained)")
    sh.add_argument("--seed", type=seed)
    sh.add_argument("--n", type=positive_int, default=8, help="number of validation images")
    sh.add_argument("--output", help="PNG path (default: RUN_DIR/show_<variant>_s<seed>.png)")
    sh.set_defaults(func=cmd_show)

    z = sub.add_parser("zoo", help="list the stitchable modules (the zoo's and the plugins')")
    zoo_format = z.add_mutually_exclusive_group()
    zoo_format.add_argument("--json", action="store_true")
    zoo_format.add_argument(
        "--markdown", action="store_true", help="print the Markdown module table of docs/zoo.md"
    )
    z.add_argument(
        "--into",
        metavar="FILE.md",
        help="with --markdown: write the table between the zoo-table markers of FILE.md instead "
        "(make zoo-docs: docs/zoo.md)",
    )
    z.add_argument(
        "--plugins",
        nargs="+",
        default=[],
        metavar="FILE",
        help="import these plugin files (.py), modules, or the plugins of these experiment files "
        "(.yaml) first and list what they register",
    )
    z.set_defaults(func=cmd_zoo)

    c = sub.add_parser("completion", help="print the shell completion script (needs stitch[completion])")
    c.add_argument("shell", choices=SHELLS)
    c.set_defaults(func=cmd_completion)
    finish_commands(p)  # after every command: examples, exit codes, --debug/--quiet anywhere
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parse_command_line(parser, argv)
    args.given = sys.argv[1:] if argv is None else list(argv)
    try:
        return args.func(args)
    except StitchError as exc:
        if args.debug:
            raise
        print(f"error: {one_line_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from stitch.interrupt import interrupted_message

        resumable = args.func in (cmd_run, cmd_sweep)
        given = sys.argv[1:] if argv is None else list(argv)
        print(interrupted_message(exc, given) if resumable else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
