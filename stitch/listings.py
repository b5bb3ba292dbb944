"""What the inspection commands print: ``stitch validate`` (the checked variants), ``stitch points``
(hook points with shapes) and ``stitch zoo`` (the stitchable modules), as rich tables or JSON, and
the zoo's Markdown table of docs/zoo.md."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

import modules_zoo
from modules_zoo.registry import FIDELITY_LEVELS, ZooEntry
from stitch.build import list_points
from stitch.config import Experiment, load_experiment
from stitch.errors import StitchError, one_line_message
from stitch.fileio import write_text
from stitch.model_notes import model_notes
from stitch.plan import plan_variants
from stitch.plugins import import_plugin, load_plugins
from stitch.points import format_shape
from stitch.runs import fit_baseline_to_data
from stitch.seed_advice import seed_advice
from stitch.validate import human_count, validate_experiment


def make_console() -> Console:
    """A rich console (200 columns when not a terminal, so CI logs do not wrap tables)."""
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def make_table(title: str, columns: Sequence[str]) -> Table:
    """A plain table with a left-aligned title and folding columns."""
    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    return t


def print_validation(path: str, out: str | Path = "runs", overrides: Sequence[str] = ()) -> None:
    """Check the experiment file ``path`` with command-line ``overrides`` (every variant built,
    probed, run forward and backward) and print its variants, insertions, adapters and parameter
    counts, and, when ``out`` holds earlier Baseline runs of it, the seeds the design needs
    (:mod:`stitch.seed_advice`); a mistake raises before anything is printed."""
    console = make_console()
    exp = load_experiment(path, overrides)
    plugins = load_plugins(exp)
    exp, data_line, num_classes = fitted_to_data(exp)
    cfg = exp.cfg
    variants = plan_variants(cfg)
    checks = validate_experiment(exp, num_classes)  # before printing anything: a mistake is one line only
    sweep_line = None
    if cfg.sweep is not None:
        from stitch.sweep import check_sweep  # optuna only for sweep files

        sweep_line = check_sweep(exp)
    console.print(
        f"[bold]{cfg.name}[/bold] ({path}): {cfg.task}, baseline {cfg.baseline.model} "
        f"{cfg.baseline.args or ''}, design {cfg.ablation.design}: "
        f"{plural(len(variants), 'variant')} x {plural(len(cfg.seeds), 'seed')} {cfg.seeds} = "
        f"{plural(len(variants) * len(cfg.seeds), 'run')}"
    )
    for note in dict.fromkeys(n for c in checks for n in model_notes(c.built.model)):
        console.print(f"baseline {cfg.baseline.model}: {note}")
    for plugin in plugins:
        registered = plugin.modules + [f"baseline {b}" for b in plugin.baselines]
        console.print(
            f"plugin: {plugin.ref}"
            + ("" if shown_origin(plugin.origin) == plugin.ref else f" ({shown_origin(plugin.origin)})")
            + " imported"
            + (f", registers {', '.join(registered)}" if registered else ", registers nothing")
        )
    console.print(data_line)
    advice = seed_advice(exp, out) if cfg.sweep is None else None
    if advice:
        console.print(advice)
    if sweep_line is not None:
        console.print(sweep_line)
    elif not cfg.insertions:
        console.print("note: no insertions, so the design is the baseline alone")
    base_params = checks[0].built.baseline_params
    table = make_table(
        "",
        [
            "variant",
            "insertion",
            "module",
            "mode",
            "module paths",
            "adapters",
            "params",
            "delta vs baseline",
        ],
    )
    for check in checks:
        b = check.built
        first = True
        rows = group_applied(b.applied) or [("—", "—", "—", "—", "—")]
        for ins, module, mode, points, adapters in rows:
            table.add_row(
                check.variant.name if first else "",
                ins,
                module,
                mode,
                points,
                adapters,
                human_count(b.params) if first else "",
                ("+" if b.params >= base_params else "")
                + f"{human_count(b.params - base_params)} ({b.params - base_params:+,})"
                if first and b.applied
                else ("" if not first else "—"),
            )
            first = False
    console.print(table)
    adapted = {(a.insertion, a.alias or a.point): a for c in checks for a in c.built.applied if a.adapter}
    for (name, point), a in adapted.items():
        console.print(
            f"  adapter: {name} at {point}: {a.adapter} (+{a.adapter_params:,} params) "
            f"makes {a.module}'s output fit what follows"
        )
    absorbed = {(a.insertion, a.alias or a.point): a for c in checks for a in c.built.applied if a.absorbed}
    for (name, point), a in absorbed.items():
        console.print(f"  absorbed: {name} at {point}: {a.module} {a.describe_absorbed()}")
    console.print(
        f"[green]ok[/green]: {plural(len(checks), 'variant')} built, probed, forward and backward on a dummy "
        f"batch (CPU, {sum(c.seconds for c in checks):.1f} s)"
    )


def shown_origin(origin: str) -> str:
    """A module's origin as shown: ``zoo``, a module name, or a file relative to the working
    directory when it lies inside it."""
    path = Path(origin)
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return origin
    return origin


def fitted_to_data(exp: Experiment) -> tuple[Experiment, str, int | None]:
    """``exp`` with the baseline's class count and channels taken from its data (so the printed
    parameter counts are the trained model's), and a line saying what was read. Data that cannot
    be read is not a validation error (the run reports it); the line says so instead."""
    if exp.cfg.data is None:
        return exp, "data: none in the file; built with the baseline's own arguments", None
    from stitch.data import build_data

    try:
        data = build_data(exp.cfg.data, task=exp.cfg.task)
    except StitchError as exc:
        return (
            exp,
            f"data: could not read the {exp.cfg.data.dataset} data ({one_line_message(exc)}); "
            "built with the baseline's own class count and channels",
            None,
        )
    fitted = fit_baseline_to_data(exp, data.num_classes, data.in_channels)
    return (
        fitted,
        f"data: {exp.cfg.data.dataset}, {plural(data.num_classes, 'class')}, "
        f"{plural(data.in_channels, 'channel')}: every variant is built for it",
        data.num_classes,
    )


def plural(n: int, word: str) -> str:
    """``1 run``, ``3 runs``, ``2 classes``."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


def group_applied(applied: list[Any]) -> list[tuple[str, str, str, str, str]]:
    """One row per insertion: its points (aliases where they exist) and adapters."""
    rows: dict[str, list[Any]] = {}
    for a in applied:
        rows.setdefault(a.insertion, []).append(a)
    out = []
    for name, items in rows.items():
        points = ", ".join(a.point for a in items)
        n_adapters = sum(1 for a in items if a.adapter)
        adapters = f"{n_adapters} (listed below)" if n_adapters else "—"
        nested = [n for a in items for n in a.nested]
        module = items[0].module + (
            f" ⊃ {', '.join(sorted({n.module + '@' + n.point for n in nested}))}" if nested else ""
        )
        out.append((name, module, items[0].mode, points, adapters))
    return out


def print_points(exp: Experiment, include_all: bool, as_json: bool) -> None:
    """The hook points of ``exp``'s baseline with their shapes: a table, or JSON (every module path)."""
    rows = list_points(exp, include_all=include_all or as_json)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    probe_input = rows[0]["probe_input"] if rows else ""
    title = (
        f"hook points of {exp.cfg.baseline.model} {exp.cfg.baseline.args or ''}, probe input: {probe_input}"
    )
    table = make_table(title, ["alias", "module path", "type", "input", "output", "params"])
    for r in rows:
        table.add_row(
            ", ".join(r["aliases"]) or "",
            r["path"],
            r["type"],
            format_shape(r["inputs"]),
            format_shape(r["output"]),
            human_count(r["params"]),
        )
    make_console().print(table)
    if not include_all:
        print("(aliased points only; --all lists every module path, each of which is a hook point too)")


#: The markers around the generated module table in docs/zoo.md.
ZOO_TABLE_BEGIN = "<!-- zoo-table:begin -->"
ZOO_TABLE_END = "<!-- zoo-table:end -->"
#: What regenerates docs/zoo.md's module table (the Makefile target runs
#: ``stitch zoo --markdown --into docs/zoo.md``).
ZOO_DOCS_COMMAND = "make zoo-docs"


def import_zoo_plugins(plugins: Sequence[str]) -> list[ZooEntry]:
    """Import the ``plugins`` (files relative to the working directory, module names, or
    experiment files whose plugins to import) and return the entries to list: what the plugins
    register first, then the zoo's."""
    for ref in plugins:
        if Path(ref).suffix in (".yaml", ".yml"):  # an experiment file: its plugins
            load_plugins(load_experiment(ref))
        else:
            import_plugin(ref, Path.cwd(), "the working directory")
    entries = modules_zoo.entries()
    if plugins:  # what the plugins register, first
        entries = sorted(entries, key=lambda e: e.origin == "zoo")
    return entries


def print_zoo(
    as_json: bool, plugins: Sequence[str] = (), markdown: bool = False, into: str | None = None
) -> None:
    """The zoo's modules and those the ``plugins`` register (:func:`import_zoo_plugins`): a table,
    JSON with every argument, hook-point alias and fidelity field, or (``markdown``) the docs'
    module table (:func:`zoo_markdown`), printed or, with ``into``, written between the zoo-table
    markers of that file (:func:`replace_zoo_table`)."""
    entries = import_zoo_plugins(plugins)
    if markdown:
        markdown_table = zoo_markdown(entries)
        if into is None:
            print(markdown_table, end="")
        else:
            replace_zoo_table(Path(into), markdown_table)
            print(f"{into}: module table rewritten ({plural(len(entries), 'module')})")
        return
    if as_json:
        print(json.dumps([zoo_json(e) for e in entries], indent=1, default=str))
        return
    table = make_table(
        "module zoo", ["name", "kind", "modes", "arguments", "reference", "fidelity", "origin"]
    )
    for e in entries:
        arg_text = ", ".join(f"{a.name}={a.default!r}" if not a.required else a.name for a in e.arguments())
        table.add_row(
            e.name,
            e.kind,
            ", ".join(e.modes),
            arg_text,
            e.reference or e.summary,
            e.fidelity or "unknown",
            shown_origin(e.origin),
        )
    make_console().print(table)
    print("channels, in_channels, out_channels, stride and in_channels_list come from the shape probe")


def zoo_json(e: ZooEntry) -> dict[str, Any]:
    """One module as ``stitch zoo --json`` lists it."""
    return {
        "name": e.name,
        "kind": e.kind,
        "modes": list(e.modes),
        "reference": e.reference,
        "summary": e.summary,
        "origin": e.origin,
        "probe_arguments": e.probe_arguments(),
        "arguments": [
            {"name": a.name, "default": a.default, "type": a.annotation, "required": a.required}
            for a in e.arguments()
        ],
        "hook_point_aliases": dict(e.aliases),
        "fidelity": e.fidelity or "unknown",
        "fidelity_note": e.fidelity_note,
        "tested_by": list(e.tested_by),
    }


def fidelity_text(e: ZooEntry) -> str:
    """The entry's fidelity in words (:data:`modules_zoo.registry.FIDELITY_LEVELS`), with its note."""
    label = FIDELITY_LEVELS.get(e.fidelity, e.fidelity)
    return f"{label}: {e.fidelity_note}" if e.fidelity_note else label


def yaml_value(value: Any) -> str:
    """A default as it is written in the experiment file: ``auto``, ``null``, ``true``, ``0.0625``."""
    if isinstance(value, str) and value:
        return value
    return json.dumps(value, default=str)


def markdown_cell(text: str) -> str:
    """``text`` made safe for one cell of a Markdown table (no ``|``, no line breaks)."""
    return " ".join(text.split()).replace("|", "\\|")


def fidelity_index(entries: Sequence[ZooEntry]) -> list[str]:
    """One Markdown list item per fidelity level naming its entries: a short index above the wide
    table, so a reader finds which modules match the official code without scanning its last column."""
    items = []
    for level, label in FIDELITY_LEVELS.items():
        names = [f"`{e.name}`" for e in entries if e.fidelity == level]
        if names:
            items.append(f"- **{label}**: {', '.join(names)}")
    return items


def zoo_markdown(entries: Sequence[ZooEntry]) -> str:
    """The docs' module table, after :func:`fidelity_index`: one row per entry with its name, kind,
    summary, modes (the default first, in bold), user arguments with their defaults, reference and
    fidelity (with its note)."""
    lines = [
        *fidelity_index(entries),
        "",
        "| name | kind | what it does | modes | arguments | reference | fidelity |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        modes = ", ".join(f"**{m}**" if i == 0 else m for i, m in enumerate(e.modes))
        args = ", ".join(
            f"`{a.name}`" if a.required else f"`{a.name}={yaml_value(a.default)}`" for a in e.arguments()
        )
        cells = [f"`{e.name}`", e.kind, e.summary, modes, args or "—", e.reference or "—", fidelity_text(e)]
        lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def replace_zoo_table(path: Path, table: str) -> None:
    """Write ``table`` between the :data:`ZOO_TABLE_BEGIN` / :data:`ZOO_TABLE_END` lines of the
    Markdown file ``path``, leaving the rest of it as it is; a missing file or marker is a
    :class:`StitchError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StitchError(f"--into {path}: cannot read it ({one_line_message(exc)})") from exc
    before, begin, rest = text.partition(ZOO_TABLE_BEGIN + "\n")
    _, end, after = rest.partition(ZOO_TABLE_END)
    if not begin or not end:
        raise StitchError(
            f"--into {path}: it has no '{ZOO_TABLE_BEGIN}' line followed by a '{ZOO_TABLE_END}' line; "
            "add both where the table belongs"
        )
    write_text(path, before + begin + table + end + after)
