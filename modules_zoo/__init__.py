"""stitch's module zoo: attention / fusion modules that can be stitched in at named hook points.

Importing the package imports every family file, which registers its builders in
:mod:`modules_zoo.registry`. Look modules up by name with :func:`get`.
"""

from __future__ import annotations

from . import registry
from .registry import PROBE_ARGS, ZooEntry, entries, get, names, register

# Family files: imported for their registrations.
from . import cgafusion, controls, coordatt, panet, split_attention, timm_attention  # noqa: F401  isort: skip
from . import timm_gates, timm_non_local, timm_selective_kernel, timm_self_attention  # noqa: F401  isort: skip

__all__ = ["PROBE_ARGS", "ZooEntry", "entries", "get", "names", "register", "registry"]
