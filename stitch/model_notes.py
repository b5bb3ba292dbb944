"""Notes a baseline builder attaches to the model it returns: one-line facts the user should see,
such as which pretrained tensors were loaded and which were re-initialised.

A builder calls :func:`add_note` on the model it builds; :func:`model_notes` reads them back.
``stitch run`` writes each distinct note once to the run directory's ``log.txt`` and the console
(``baseline <name>: <note>``), and ``stitch validate`` can print them beside the variants. The
notes live in a plain attribute of the root module, so stitching (which swaps submodules, never
the root), ``deepcopy`` and ``state_dict`` leave them alone.
"""

from __future__ import annotations

from torch import nn

#: The attribute of the root module that holds the notes (a list of strings).
NOTES_ATTRIBUTE = "stitch_notes"


def add_note(model: nn.Module, text: str) -> None:
    """Attach the one-line note ``text`` to ``model`` (kept in the order added)."""
    notes = getattr(model, NOTES_ATTRIBUTE, None)
    if not isinstance(notes, list):
        notes = []
        object.__setattr__(model, NOTES_ATTRIBUTE, notes)
    notes.append(" ".join(str(text).split()))


def model_notes(model: nn.Module) -> list[str]:
    """The notes attached to ``model`` by its builder (empty when none)."""
    notes = getattr(model, NOTES_ATTRIBUTE, None)
    return list(notes) if isinstance(notes, list) else []
