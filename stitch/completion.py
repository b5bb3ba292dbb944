"""Shell completion for the ``stitch`` command (``stitch completion bash|zsh|tcsh``), written by
shtab from the argument parser; shtab is the optional extra ``stitch[completion]``."""

from __future__ import annotations

import argparse

from stitch.errors import StitchError

#: the shells shtab writes completion scripts for
SHELLS = ("bash", "zsh", "tcsh")

#: a positional argument whose metavar names this is completed with file names
FILE_METAVAR = "EXPERIMENT.yaml"
#: and one with this metavar with directory names
DIRECTORY_METAVAR = "RUN_DIR"


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` for ``shell``, completing experiment files and run
    directories where the command takes them (it sets their completers on ``parser``); a one-line
    error naming the install command when shtab is missing."""
    try:
        import shtab
    except ImportError:
        raise StitchError(
            "shell completion needs shtab: pip install 'stitch[completion]' (or pip install shtab)"
        ) from None
    if shell not in SHELLS:  # argparse's choices refuse it first; kept for callers from Python
        raise StitchError(f"no completion for shell {shell!r}: one of {', '.join(SHELLS)}")
    for action in walk_actions(parser):
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        if action.option_strings:
            continue
        if FILE_METAVAR in metavar:  # EXPERIMENT.yaml, BASELINE|EXPERIMENT.yaml, ...
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif metavar == DIRECTORY_METAVAR:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    return shtab.complete(parser, shell=shell)


def walk_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action of ``parser`` and of its subcommands' parsers, recursively."""
    actions = []
    for action in parser._actions:
        actions.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # an alias maps to the same parser
                actions += walk_actions(sub)
    return actions
