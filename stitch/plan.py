"""Ablation designs: which subsets of the insertions become variants.

Pure data, no torch. With k insertions: ``none`` gives baseline + all (2), ``one-at-a-time``
baseline + each alone + all (k+2), ``leave-one-out`` all + all minus each (k+1),
``full-factorial`` every subset (2^k), ``subsets`` the listed ones. Variants with the same set of
insertions are merged (the first name wins), so k=1 never trains the same network twice.

``ablation.controls`` adds, after the design's variants, one variant per insertion and control:
``+CA (ctl)`` (the module replaced by a plain block with its parameter count, ``matched``) and
``+CA (id)`` (the stitching wrapper with nothing inside, ``identity``), stitched at the same
points in the same mode (:func:`control_insertions`).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from stitch.config import ExperimentCfg, InsertionCfg
from stitch.errors import StitchError, did_you_mean

MINUS = "\u2212"
#: each kind of ``ablation.controls``: the zoo module it inserts and the tag of its name
CONTROLS: dict[str, tuple[str, str]] = {
    "matched": ("MatchedBottleneck", "ctl"),
    "identity": ("Identity", "id"),
}


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
    out += [Variant(_name((c.name,)), (c.name,)) for _, c in control_insertions(cfg)]
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


def control_insertions(cfg: ExperimentCfg) -> list[tuple[int, InsertionCfg]]:
    """The control insertions ``ablation.controls`` asks for, each with the index of the
    insertion it stands in for (its place in the experiment file).

    A control keeps the insertion's points (``at``), ``mode`` and ``residual_scale``; its name is
    ``CA (ctl)`` / ``CA (id)`` (no declared name can be, spaces are not allowed there). A
    ``matched`` control builds ``MatchedBottleneck`` with ``match``/``match_args`` naming the
    module, whose parameters it counts at each point when it is built; ``skip`` unless the mode is
    ``residual``. Insertions with ``nest`` or mode ``replace`` get none (a fusion module, which
    only replaces, gets none by the same rule when its mode is written out).
    """
    out = []
    for kind in cfg.ablation.controls:
        module, tag = CONTROLS[kind]
        for k, ins in enumerate(cfg.insertions):
            if ins.nest or ins.mode == "replace":
                continue
            args = (
                {"match": ins.module, "match_args": dict(ins.args), "skip": ins.mode != "residual"}
                if kind == "matched"
                else {}
            )
            out.append(
                (k, ins.model_copy(update={"name": f"{ins.name} ({tag})", "module": module, "args": args}))
            )
    return out


def variant_insertions(cfg: ExperimentCfg, variant: Variant) -> list[tuple[int, InsertionCfg]]:
    """The insertions ``variant`` stitches, declared ones and controls, each with the index of
    its place in the experiment file (a control: the insertion it stands in for)."""
    every = list(enumerate(cfg.insertions)) + control_insertions(cfg)
    return [(k, ins) for k, ins in every if ins.name in variant.insertions]
