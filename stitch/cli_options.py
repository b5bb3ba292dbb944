"""Pieces of the ``stitch`` argument parser that every command shares: the argument types (whole
numbers, seconds, seeds), ``--debug``/``--quiet`` before or after the command, and each command's
description and ``--help`` epilog."""

from __future__ import annotations

import argparse
import math
from typing import Any

from stitch.cli_help import epilog


def positive_int(text: str) -> int:
    """A whole number 1 .. 100000 (epochs, trials, images)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > 100_000:
        raise argparse.ArgumentTypeError(f"must be at most 100000, got {value}")
    return value


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text}")
    return value


def seed(text: str) -> int:
    """A seed, 0 .. 2^31-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"seeds are 0 .. 2^31-1, got {value}")
    return value


def add_global_options(parser: argparse.ArgumentParser, default: Any = False) -> None:
    """``--debug`` and ``--quiet``: on ``stitch`` itself with ``default`` False, and on every
    command with ``default`` SUPPRESS, so that one given before the command is not reset after it."""
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks for user errors"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        default=default,
        help="plain log lines instead of a progress bar (run, sweep; automatic when not a terminal)",
    )


def finish_commands(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` (``stitch``) and each of its commands the ``--help`` epilog (examples, exit
    codes), a description (the command's one-line help) and ``--debug``/``--quiet``."""
    parser.epilog = epilog("")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, command in action.choices.items():
            command.description = command.description or helps.get(name)
            command.epilog = epilog(name)
            command.formatter_class = argparse.RawDescriptionHelpFormatter
            add_global_options(command, default=argparse.SUPPRESS)
