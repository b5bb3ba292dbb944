"""Module arguments added after run ids were first recorded.

A run's id hashes its resolved configuration, which fills in every default of a zoo builder's
arguments. A builder that gains an argument names it (with its default) here, so that the
resolved configuration can leave the argument out while it has that default: experiments
written before the argument existed keep their run ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["added_arguments", "added_defaults"]

F = TypeVar("F", bound=Callable[..., Any])

_ATTRIBUTE = "added_arguments"


def added_arguments(**defaults: Any) -> Callable[[F], F]:
    """Decorator recording that ``defaults`` (argument name -> default) were added to a builder
    later; put it below ``@register``."""

    def deco(fn: F) -> F:
        fn.__dict__[_ATTRIBUTE] = dict(defaults)
        return fn

    return deco


def added_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The later-added arguments of ``fn`` with their defaults (empty when there are none)."""
    return dict(getattr(fn, _ATTRIBUTE, {}))
