"""Ablation designs: which subsets of the insertions become variants.

Pure data, no torch. With k insertions: ``none`` gives baseline + all (2), ``one-at-a-time``
baseline + each alone + all (k+2), ``leave-one-out`` all + all minus each (k+1),
``full-factorial`` every subset (2^k), ``subsets`` the listed ones. Variants with the same set of
insertions are merged (the first name wins), so k=1 never trains the same network twice.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from stitch.config import ExperimentCfg
from stitch.errors import StitchError, did_you_mean

MINUS = "\u2212"


@dataclass(frozen=True)
class Variant:
    """A named subset of the experiment's insertions (in declaration order)."""

    name: str
    insertions: tuple[str, ...]

    @property
    def is_baseline(self) -> bool:
        return not self.insertions

    @property
    def slug(self) -> str:
        """A file-system friendly id: ``baseline``, ``ca+cga``, ``all-minus-cga``."""
        s = self.name.replace(MINUS, "minus").replace(" ", "-").lower()
        s = re.sub(r"[^a-z0-9+._-]+", "-", s).strip("-")
        return re.sub(r"-?\+", "+", s).lstrip("+") or "baseline"


def _name(chosen: tuple[str, ...]) -> str:
    return "Baseline" if not chosen else " ".join(f"+{n}" for n in chosen)


def plan_variants(cfg: ExperimentCfg) -> list[Variant]:
    """Expand ``cfg.ablation`` into variants (baseline first where the design has it)."""
    names = [i.name for i in cfg.insertions]
    design = cfg.ablation.design
    everything = tuple(names)
    out: list[Variant] = []
    if design == "none":
        out = [Variant(_name(()), ()), Variant(_name(everything), everything)]
    elif design == "one-at-a-time":
        out = [Variant(_name(()), ())] + [Variant(_name((n,)), (n,)) for n in names]
        out.append(Variant(_name(everything), everything))
    elif design == "leave-one-out":
        out = [Variant(_name(everything), everything)]
        out += [Variant(f"all {MINUS} {n}", tuple(m for m in names if m != n)) for n in names]
    elif design == "full-factorial":
        for r in range(len(names) + 1):
            out += [Variant(_name(c), c) for c in itertools.combinations(names, r)]
    else:  # subsets
        for subset in cfg.ablation.subsets:
            chosen = tuple(n for n in names if n in subset)
            out.append(Variant(_name(chosen), chosen))
    seen: set[frozenset[str]] = set()
    merged: list[Variant] = []
    for v in out:
        key = frozenset(v.insertions)
        if key not in seen:
            seen.add(key)
            merged.append(v)
    return merged


def find_variant(cfg: ExperimentCfg, name: str) -> Variant:
    """The planned variant called ``name`` (by display name or slug, case-insensitive)."""
    variants = plan_variants(cfg)
    for v in variants:
        if name.lower() in (v.name.lower(), v.slug):
            return v
    names = [v.name for v in variants]
    hint = did_you_mean(name, names) or f" (variants: {', '.join(names)})"
    raise StitchError(f"no variant {name!r} in experiment {cfg.name!r}" + hint)
