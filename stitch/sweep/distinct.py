"""The configurations a study has decided, which is what a sweep's target counts: a trial that
completed or was pruned decides its configuration (its run id; for a choice that cannot be
stitched, its parameters), unless it was pruned as a duplicate of another trial. A trial that
reused the result of a configuration decided before adds nothing, so a resumed or repetitive
sampler never fills the target with repeats. Also: the next configuration of a finite space that
no trial has evaluated or is evaluating, for when the sampler only repeats itself."""

from __future__ import annotations

import random
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from stitch.hashing import canonical_json
from stitch.sweep.study import proposed_params

#: states of a trial that has decided its configuration
DECIDED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def configuration_key(t: FrozenTrial) -> str | None:
    """The configuration trial ``t`` decided (its run id, or ``invalid:`` and its parameters for a
    choice that cannot be stitched), or None when it decided none (unfinished, failed, pruned as a
    duplicate of another trial or as a second retry)."""
    if t.state not in DECIDED_STATES or t.user_attrs.get("duplicate_of") is not None:
        return None
    if t.user_attrs.get("run_id"):
        return str(t.user_attrs["run_id"])
    if t.user_attrs.get("invalid"):
        return "invalid:" + canonical_json(t.params)
    return None


def decided_configurations(study: optuna.Study) -> set[str]:
    """The keys (:func:`configuration_key`) of every configuration the study has decided."""
    keys = (configuration_key(t) for t in study.get_trials(deepcopy=False))
    return {k for k in keys if k is not None}


def distinct_finished(study: optuna.Study) -> int:
    """How many distinct configurations the study has decided (what a sweep's target counts)."""
    return len(decided_configurations(study))


def next_unevaluated(study: optuna.Study, space: list[dict[str, Any]], seed: int) -> dict[str, Any] | None:
    """One configuration of ``space`` (every configuration of a finite space, as Optuna params)
    that no trial has proposed (decided, evaluating, waiting, or failed: a failed one is the
    retries' business), in an order drawn from ``seed``; None when there is none left."""
    seen = {canonical_json(proposed_params(t)) for t in study.get_trials(deepcopy=False)}
    order = list(range(len(space)))
    random.Random(seed).shuffle(order)
    return next((space[i] for i in order if canonical_json(space[i]) not in seen), None)
