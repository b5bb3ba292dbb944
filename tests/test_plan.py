"""Ablation designs: counts, names and merging of duplicates."""

from __future__ import annotations

import pytest

from stitch.config import parse_experiment
from stitch.plan import plan_variants

MINUS = "\u2212"


def design(ablation: str, names: tuple[str, ...] = ("CA", "CGA", "SE")):
    insertions = "".join(f"  - {{name: {n}, module: SE, at: enc1}}\n" for n in names)
    text = (
        f"name: x\ntask: segmentation\nbaseline: {{model: unet}}\nablation: {ablation}\n"
        f"insertions:\n{insertions}"
    )
    return [(v.name, v.insertions) for v in plan_variants(parse_experiment(text).cfg)]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_counts_for_k_insertions(k: int) -> None:
    names = tuple(f"M{i}" for i in range(k))
    assert len(design("none", names)) == 2
    assert len(design("one-at-a-time", names)) == (k + 2 if k > 1 else 2)  # with k=1, '+M0' is 'all'
    assert len(design("leave-one-out", names)) == (k + 1 if k > 1 else 2)
    assert len(design("full-factorial", names)) == 2**k


def test_names_and_order() -> None:
    assert design("one-at-a-time") == [
        ("Baseline", ()),
        ("+CA", ("CA",)),
        ("+CGA", ("CGA",)),
        ("+SE", ("SE",)),
        ("+CA +CGA +SE", ("CA", "CGA", "SE")),
    ]
    assert design("leave-one-out") == [
        ("+CA +CGA +SE", ("CA", "CGA", "SE")),
        (f"all {MINUS} CA", ("CGA", "SE")),
        (f"all {MINUS} CGA", ("CA", "SE")),
        (f"all {MINUS} SE", ("CA", "CGA")),
    ]
    assert design("full-factorial", ("A", "B")) == [
        ("Baseline", ()),
        ("+A", ("A",)),
        ("+B", ("B",)),
        ("+A +B", ("A", "B")),
    ]


def test_explicit_subsets_keep_declaration_order_and_merge_duplicates() -> None:
    got = design("{design: subsets, subsets: [[], [SE, CA], [CA, SE], [CGA]]}")
    assert got == [("Baseline", ()), ("+CA +SE", ("CA", "SE")), ("+CGA", ("CGA",))]


def test_single_insertion_leave_one_out_merges_all_minus_it_with_nothing() -> None:
    assert design("leave-one-out", ("CA",)) == [("+CA", ("CA",)), (f"all {MINUS} CA", ())]
