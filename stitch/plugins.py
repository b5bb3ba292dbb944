"""Plugins: the only way an experiment file runs code.

``plugins:`` lists Python files (relative to the experiment file's folder) or importable module
names. They are imported before the zoo is read, inside
:func:`modules_zoo.registry.registering_from`, so every module they register with
:func:`stitch.register_module` records where it came from (``stitch zoo`` shows it). A
``module:`` or ``baseline.model:`` that names ``package.module:Name`` or ``path/file.py:Name``
is resolved here too: an unregistered ``nn.Module`` class becomes a zoo entry under that text,
a factory function a baseline.

Every failure is one line naming the file (and, for an import error, the line) and the fix.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from modules_zoo import registry as zoo_registry
from stitch.config import Experiment, NestedInsertionCfg, load_experiment
from stitch.errors import ConfigError, StitchError, exception_text


class PluginError(StitchError):
    """A plugin that cannot be imported or registers something it may not."""


@dataclass
class LoadedPlugin:
    """One imported plugin: as written, where it was found, and the module names it registered."""

    ref: str
    origin: str
    modules: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)


def names_python_file(ref: str) -> bool:
    """Whether a plugin or object reference names a Python file (``x.py``, ``dir/x.py``)."""
    return ref.endswith(".py") or "/" in ref or "\\" in ref


def base_dir_of(exp: Experiment) -> Path:
    """The folder relative plugin paths are resolved against: the experiment file's own folder
    (for a run directory's copy, the folder it was copied from), else the working directory."""
    return exp.base_dir if exp.base_dir is not None else Path.cwd()


def _file_path(ref: str, base_dir: Path) -> Path:
    path = Path(ref).expanduser()
    return path if path.is_absolute() else (base_dir / path)


def import_file(path: Path, ref: str, relative_to: str = "the experiment file") -> ModuleType:
    """Import the Python file ``path`` once per process (the module name hashes its absolute path).
    Its folder is on ``sys.path`` while it is imported, so it can import files next to it."""
    path = path.resolve()
    if path.is_dir():
        raise PluginError(
            f"plugin {ref!r} is a folder ({path}); name a .py file, or a package by its module name"
        )
    if not path.is_file():
        raise PluginError(f"plugin file {ref!r} does not exist ({path}); paths are relative to {relative_to}")
    name = f"stitch_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {ref!r} cannot be imported (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        with _undone_on_failure(ref, str(path), path):
            spec.loader.exec_module(module)
    except PluginError:
        del sys.modules[name]
        raise
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def import_module(ref: str) -> ModuleType:
    """Import the module ``ref`` (``my_package.attention``) with its registrations recorded."""
    if ref in sys.modules:
        return sys.modules[ref]
    try:
        with _undone_on_failure(ref, ref, None):
            return importlib.import_module(ref)
    except PluginError as exc:
        cause = exc.__cause__
        if isinstance(cause, ModuleNotFoundError) and cause.name and (ref + ".").startswith(cause.name + "."):
            raise PluginError(
                f"plugin module {ref!r} cannot be found (a file needs its .py ending and a path "
                "relative to the experiment file; a module must be importable, e.g. pip install -e .)"
            ) from None
        raise


@contextmanager
def _undone_on_failure(ref: str, origin: str, path: Path | None) -> Iterator[None]:
    """Run an import with its registrations recorded as coming from ``origin``; when it fails,
    undo what it registered (so a fixed plugin imports cleanly in the same process) and raise
    a one-line :class:`PluginError` (chained to the original exception)."""
    from stitch.registry import BASELINES

    modules, baselines = set(zoo_registry.names()), set(BASELINES)
    try:
        with zoo_registry.registering_from(origin):
            yield
    except Exception as exc:
        for name in set(zoo_registry.names()) - modules:
            zoo_registry.unregister(name)
        for name in set(BASELINES) - baselines:
            BASELINES.remove(name)
        if isinstance(exc, zoo_registry.RegistrationError):
            raise PluginError(f"plugin {ref!r}: {exc}") from exc
        raise PluginError(f"plugin {ref!r} fails to import: {_where(exc, path)}") from exc


def _where(exc: BaseException, path: Path | None) -> str:
    """The exception's own message with the file and line it was raised at (the plugin's deepest
    frame when ``path`` is given, else the deepest frame)."""
    text = f"{type(exc).__name__}: {exception_text(exc)}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} ({exc.filename}:{exc.lineno})"
    frames: list[traceback.FrameSummary] = list(traceback.extract_tb(exc.__traceback__))
    if path is not None:
        mine = [f for f in frames if Path(f.filename).resolve() == path]
        frames = mine or frames
    if frames:
        return f"{text} ({frames[-1].filename}:{frames[-1].lineno})"
    return text


def import_plugin(ref: str, base_dir: Path, relative_to: str = "the experiment file") -> ModuleType:
    """Import one entry of ``plugins:``: a file path (relative to ``base_dir``, which is
    ``relative_to`` in words) or a module name."""
    if names_python_file(ref):
        return import_file(_file_path(ref, base_dir), ref, relative_to)
    return import_module(ref)


def resolve_object(ref: str, base_dir: Path, what: str) -> Any:
    """The object ``ref`` names: ``package.module:Name`` or ``path/to/file.py:Name``."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise PluginError(f"{what} {ref!r} is not 'package.module:Name' or 'path/file.py:Name'")
    module = import_plugin(target, base_dir)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise PluginError(
                f"{what} {ref!r}: {target} has no {attr!r}"
                + (f" (it defines {', '.join(names[:8])})" if names else "")
            )
        obj = getattr(obj, part)
    if not target.endswith(".py") and not _builds_modules(obj) and _standard_library(target):
        raise PluginError(
            f"{what} {ref!r} names a function of Python's standard library, which builds no network;"
            " name an nn.Module class or a function of your own that returns one"
        )
    return obj


def _standard_library(module_name: str) -> bool:
    """Whether ``module_name`` belongs to Python's standard library (``os``, ``subprocess``, ...)."""
    return module_name.split(".")[0] in (*sys.stdlib_module_names, "builtins")


def _builds_modules(obj: Any) -> bool:
    """Whether ``obj`` is an ``nn.Module`` class."""
    from torch import nn

    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _insertions(items: list[NestedInsertionCfg]) -> Iterator[NestedInsertionCfg]:
    for ins in items:
        yield ins
        yield from _insertions(ins.nest)


def module_refs(exp: Experiment) -> list[tuple[tuple, str]]:
    """Every ``"x:Name"`` module reference in the experiment, with its YAML path."""
    out: list[tuple[tuple, str]] = []

    def walk(items: list[NestedInsertionCfg], path: tuple) -> None:
        for k, ins in enumerate(items):
            if ":" in ins.module:
                out.append(((*path, k, "module"), ins.module))
            walk(ins.nest, (*path, k, "nest"))

    walk(list(exp.cfg.insertions), ("insertions",))
    if exp.cfg.sweep is not None:
        for j, slot in enumerate(exp.cfg.sweep.slots):
            for k, module in enumerate(slot.modules):
                if ":" in module:
                    out.append((("sweep", "slots", j, "modules", k), module))
    return out


def load_plugins(exp: Experiment) -> list[LoadedPlugin]:
    """Import the experiment's ``plugins:`` and resolve its ``x:Name`` references (modules and
    baseline) into the registries. Idempotent: a plugin is imported once per process."""
    base_dir = base_dir_of(exp)
    loaded = []
    for k, ref in enumerate(exp.cfg.plugins):
        before = set(zoo_registry.names())
        before_baselines = _baseline_names()
        try:
            module = import_plugin(ref, base_dir)
        except PluginError as exc:
            raise _located(exp, ("plugins", k), exc) from None
        origin = getattr(module, "__file__", None) or ref
        mine = [e.name for e in zoo_registry.entries() if e.origin in (origin, ref, str(Path(origin)))]
        loaded.append(
            LoadedPlugin(
                ref,
                str(origin),
                sorted(set(mine) | (set(zoo_registry.names()) - before)),
                sorted(_baseline_names() - before_baselines),
            )
        )
    for path, ref in module_refs(exp):
        try:
            resolve_module_ref(ref, base_dir)
        except PluginError as exc:
            raise _located(exp, path, exc) from None
    if ":" in exp.cfg.baseline.model:
        from stitch.baselines.factory import add_baseline_ref

        try:
            factory = resolve_object(exp.cfg.baseline.model, base_dir, "baseline")
            add_baseline_ref(exp.cfg.baseline.model, factory, exp.cfg.task)
        except StitchError as exc:
            raise _located(exp, ("baseline", "model"), exc) from None
    return loaded


def resolve_module_ref(ref: str, base_dir: Path) -> zoo_registry.ZooEntry:
    """The zoo entry of the class ``ref`` names (registered under the text ``ref``)."""
    cls = resolve_object(ref, base_dir, "module")
    target = ref.rpartition(":")[0]
    origin = str(_file_path(target, base_dir).resolve()) if names_python_file(target) else target
    try:
        return zoo_registry.add_reference(zoo_registry.entry_from_class(ref, cls, origin))
    except zoo_registry.RegistrationError as exc:
        raise PluginError(str(exc)) from None


def _baseline_names() -> set[str]:
    from stitch.registry import BASELINES

    return set(BASELINES)


def _located(exp: Experiment, path: tuple, exc: StitchError) -> ConfigError:
    message = str(exc)
    try:
        return exp.source.error(path, message)
    except Exception:  # no line for this path (an experiment built in code)
        return ConfigError(message, exp.source.file)


def load_experiment_with_plugins(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """:func:`stitch.config.load_experiment` (with ``key.path=value`` ``overrides``, as on the
    command line) followed by :func:`load_plugins` (the public ``stitch.load_experiment``): a
    plugin that cannot be imported fails here."""
    exp = load_experiment(path, overrides)
    load_plugins(exp)
    return exp
