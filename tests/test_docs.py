"""The documentation against the code: the experiment-file reference lists exactly the schema's keys
(with the right defaults and datasets), the README stays short and links every docs page, the
README's command table names real commands and options, and no relative link is broken."""

from __future__ import annotations

import contextlib
import io
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from stitch.config import ExperimentCfg, data_keys_by_dataset, schema_keys

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
REFERENCE = DOCS / "experiment-file.md"
README_MAX_LINES = 250
PAGES = [README, ROOT / "reports" / "README.md", *sorted(DOCS.glob("*.md"))]


# ----------------------------------------------------------------------------- reading Markdown
def split_row(line: str) -> list[str]:
    """The cells of one Markdown table row (``\\|`` inside a cell is not a separator)."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table of ``text`` as (header cells, body rows)."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.fullmatch(r"\|[\s:|-]+\|", lines[i + 1].strip()):
            header = split_row(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(split_row(lines[i]))
                i += 1
            out.append((header, rows))
        else:
            i += 1
    return out


def reference_rows() -> list[dict[str, str]]:
    """Rows of the reference's key tables (first column ``key``), with the key unquoted."""
    rows = []
    for header, body in tables(REFERENCE.read_text(encoding="utf-8")):
        if header[0] != "key":
            continue
        for cells in body:
            row = dict(zip(header, cells))
            match = re.fullmatch(r"`([^`]+)`", row["key"])
            assert match, f"docs/experiment-file.md: the key cell {row['key']!r} is not one `key`"
            row["key"] = match.group(1)
            rows.append(row)
    return rows


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out: set[str] = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            base = slug(m.group(1))
            name, n = base, 0
            while name in out:
                n += 1
                name = f"{base}-{n}"
            out.add(name)
    return out


def relative_links(path: Path) -> list[str]:
    """Targets of the Markdown links of ``path`` that are not URLs (code blocks left out)."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


# ----------------------------------------------------------------------------- the schema side
def fields_at(key: str) -> list[Any]:
    """The pydantic fields a key path names (several for a ``data.*`` key many datasets share)."""
    models: list[type[BaseModel]] = [ExperimentCfg]
    fields: list[Any] = []
    for part in key.split("."):
        name = part.removesuffix("[]")
        fields = [m.model_fields[name] for m in models if name in m.model_fields]
        models = [b for f in fields for b in blocks(f.annotation)]
    return fields


def blocks(annotation: Any) -> list[type[BaseModel]]:
    """The schema blocks a field's value (or the items of its list) can be."""
    origin = typing.get_origin(annotation)
    if origin in (Annotated, list) or origin in (Union, types.UnionType):
        return [b for a in typing.get_args(annotation) for b in blocks(a)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def default_of(field: Any) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def as_value(token: str) -> Any:
    """A backticked token of the default column as a value (``1e-3`` is a float, as stitch reads it)."""
    try:
        value = yaml.safe_load(token)
    except yaml.YAMLError:
        return token
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ----------------------------------------------------------------------------- the tests
def test_every_schema_key_is_documented_and_no_other() -> None:
    documented = [row["key"] for row in reference_rows()]
    repeated = sorted({k for k in documented if documented.count(k) > 1})
    assert not repeated, f"docs/experiment-file.md documents these keys twice: {repeated}"
    schema = schema_keys()
    missing = sorted(schema - set(documented))
    unknown = sorted(set(documented) - schema)
    assert not missing, f"schema keys missing from docs/experiment-file.md: {missing}"
    assert not unknown, f"docs/experiment-file.md documents keys the schema does not have: {unknown}"


def test_documented_defaults_are_the_schema_defaults() -> None:
    """Every plain default (number, string, bool, list, mapping) appears, backticked, in the
    default column; a key every block requires says ``required``."""
    wrong = []
    for row in reference_rows():
        fields = fields_at(row["key"])
        cell = row["default"]
        if not fields:
            continue  # not a schema key: the test above says so
        if all(f.is_required() for f in fields):
            if "required" not in cell:
                wrong.append(f"{row['key']}: required, but the default column says {cell!r}")
            continue
        values = [as_value(t) for t in backticked(cell)]
        for f in fields:
            if f.is_required():
                continue
            default = default_of(f)
            if default is None or default is PydanticUndefined or isinstance(default, BaseModel):
                continue
            if plain(default) not in values:
                wrong.append(f"{row['key']}: default {plain(default)!r} is not in {cell!r}")
    assert not wrong, "docs/experiment-file.md defaults differ from the schema:\n" + "\n".join(wrong)


def test_documented_datasets_are_the_ones_that_take_each_key() -> None:
    by_dataset = data_keys_by_dataset()
    every = set.intersection(*by_dataset.values())
    wrong = []
    for row in reference_rows():
        key = row["key"]
        if not key.startswith("data."):
            continue
        takes = {name for name, keys in by_dataset.items() if key in keys}
        if "dataset" in row:
            named = set(backticked(row["dataset"]))
            if named != takes:
                wrong.append(f"{key}: documented for {sorted(named)}, taken by {sorted(takes)}")
        elif key not in every:
            wrong.append(f"{key}: in the table of keys every dataset takes, but only {sorted(takes)} take it")
    assert not wrong, "docs/experiment-file.md dataset columns differ from the schema:\n" + "\n".join(wrong)


def test_readme_is_short_and_links_every_docs_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES}"
    )
    linked = {(README.parent / t.split("#")[0]).resolve() for t in relative_links(README)}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    unlinked = [p.name for p in pages if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link these docs pages: {unlinked}"


def command_help(*words: str) -> str:
    """What ``stitch WORDS --help`` prints."""
    from stitch.cli import make_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        make_parser().parse_args([*words, "--help"])
    return out.getvalue()


def stitch_commands() -> set[str]:
    """The commands ``stitch --help`` lists."""
    choices = re.search(r"\{([a-z,]+)\}", command_help())
    assert choices, "stitch --help lists no commands"
    return set(choices.group(1).split(","))


def test_readme_commands_exist_with_their_options() -> None:
    commands = stitch_commands()
    table = next(
        rows for header, rows in tables(README.read_text(encoding="utf-8")) if header[0] == "command"
    )
    seen = set()
    for cells in table:
        usage = backticked(cells[0])[0]
        name = usage.split()[1]
        assert name in commands, f"README.md documents `stitch {name}`, which does not exist"
        seen.add(name)
        options = set(re.findall(r"--[a-z][a-z-]*", command_help(name)))
        for option in re.findall(r"--[a-z][a-z-]*", usage):
            assert option in options, f"README.md documents `stitch {name} {option}`, which does not exist"
    assert seen == commands, f"README.md's command table lacks {sorted(commands - seen)}"


def file_map() -> set[str]:
    """The files named in the code block under ``## File map`` of docs/architecture.md: a tree,
    two spaces per level, folders ending in ``/``, several files of one folder joined by ``, ``."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"^## File map\n.*?^```\n(.*?)^```", text, re.S | re.M)
    assert block, "docs/architecture.md has no file map (a code block under '## File map')"
    folders: list[str] = []
    files: set[str] = set()
    for line in block.group(1).splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = re.split(r"\s{2,}", line.strip())[0]
        del folders[depth:]
        if names.endswith("/"):
            folders.append(names.rstrip("/"))
        else:
            files.update("/".join([*folders, name]) for name in names.split(", "))
    return files


def test_architecture_file_map_names_every_source_file() -> None:
    actual = {
        path.relative_to(ROOT).as_posix()
        for package in ("stitch", "modules_zoo")
        for path in (ROOT / package).rglob("*.py")
    }
    documented = file_map()
    assert not sorted(actual - documented), (
        f"docs/architecture.md's file map lacks {sorted(actual - documented)}"
    )
    assert not sorted(documented - actual), (
        f"docs/architecture.md's file map names files that do not exist: {sorted(documented - actual)}"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_command_lines_use_real_options(page: Path) -> None:
    """Every ``stitch COMMAND ... --option`` written in the docs names an option COMMAND has."""
    commands = stitch_commands()
    options = {name: set(re.findall(r"--[a-z][a-z-]*", command_help(name))) for name in commands}
    wrong = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for part in re.split(r"&&|;", line):
            for match in re.finditer(r"\bstitch ([a-z]+)\b([^`]*)", part):
                name, rest = match.groups()
                if name not in commands:
                    continue
                for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
                    if option not in options[name]:
                        wrong.append(f"line {number}: `stitch {name} {option}` does not exist")
    assert not wrong, f"{page.relative_to(ROOT)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files_and_headings(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_every_guarantee_names_tests_that_exist() -> None:
    """docs/guarantees.md: each promise (a bullet above "Not promised") names at least one test, and
    every test it names is a test function of that file."""
    text = (DOCS / "guarantees.md").read_text(encoding="utf-8")
    promised = text.split("\n## ", 1)[1].split("\n## Not promised", 1)[0]  # what is not promised has no test
    bullets = re.split(r"\n(?=- )", promised)
    promises = [b for b in bullets if b.startswith("- ")]
    assert promises, "docs/guarantees.md lists no promises"
    unbacked = [b.splitlines()[0] for b in promises if "::test_" not in b]
    assert not unbacked, f"docs/guarantees.md promises without a test: {unbacked}"
    missing = []
    for file, name in re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", text):
        path = ROOT / file
        if not path.is_file() or not re.search(rf"^def {name}\(", path.read_text(encoding="utf-8"), re.M):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"


def test_zoo_table_is_generated_from_registry() -> None:
    """docs/zoo.md's module table is exactly what ``stitch zoo --markdown`` makes of the zoo's
    registry (name, kind, modes, arguments, reference, fidelity), so it cannot go stale."""
    import modules_zoo
    from stitch.listings import ZOO_DOCS_COMMAND, ZOO_TABLE_BEGIN, ZOO_TABLE_END, zoo_markdown

    text = (DOCS / "zoo.md").read_text(encoding="utf-8")
    assert text.count(ZOO_TABLE_BEGIN) == 1 and text.count(ZOO_TABLE_END) == 1, (
        "docs/zoo.md lacks its markers"
    )
    block = text.split(ZOO_TABLE_BEGIN + "\n", 1)[1].split(ZOO_TABLE_END, 1)[0]
    zoo = [e for e in modules_zoo.entries() if e.origin == "zoo"]
    assert block == zoo_markdown(zoo), (
        f"docs/zoo.md's module table is not the registry's: run `{ZOO_DOCS_COMMAND}`"
    )
    assert [row[0].strip("`") for _, rows in tables(block) for row in rows] == [e.name for e in zoo]
