"""Every registry of the harness, in one place (after mmengine's ``registry/root.py``).

A :class:`Registry` maps a name used in the experiment file to an object: a baseline spec, a
dataset module, a task factory, an optimiser, a sampler or pruner factory. Entries are named here
as ``"module:attribute"`` locations that are imported on first use (or added at run time with
:meth:`Registry.add` / the :meth:`Registry.register` decorator), so reading the registry costs
no heavy imports and this module imports nothing of the rooms it serves. The module zoo keeps its own registry
(:mod:`modules_zoo.registry`) so that ``modules_zoo`` does not depend on ``stitch``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from stitch.errors import StitchError, did_you_mean

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Names to objects of one kind, in registration order; a read-only mapping.

    ``registry[name]`` raises ``KeyError`` for an unknown name (so ``in`` and ``.get`` work as for
    a dict); :meth:`lookup` raises a one-line :class:`~stitch.errors.StitchError` naming the
    choices instead.
    """

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._lazy: dict[str, str] = dict(lazy or {})
        for name in self._lazy:
            self._entries[name] = None  # keeps the declared order

    def add(self, name: str, obj: T, replace: bool = False) -> T:
        """Register ``obj`` under ``name`` (a name declared lazily is filled in); returns ``obj``.

        A second, different object under a taken name is a ``ValueError`` unless ``replace``.
        """
        if not replace and self._entries.get(name) is not None and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj
        self._lazy.pop(name, None)
        return obj

    def remove(self, name: str) -> None:
        """Forget ``name`` (an entry added at run time, e.g. by a test); unknown names are ignored."""
        self._entries.pop(name, None)
        self._lazy.pop(name, None)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda obj: self.add(name, obj)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(name)
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            loaded = importlib.import_module(module)
            obj = getattr(loaded, attr) if attr else loaded
            self._entries[name] = obj
            self._lazy.pop(name, None)
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def lookup(self, name: str) -> T:
        """``self[name]``, or a one-line error listing the known names."""
        if name not in self._entries:
            hint = did_you_mean(name, list(self._entries)) or f"; expected one of {', '.join(self._entries)}"
            raise StitchError(f"unknown {self.kind} {name!r}{hint}")
        return self[name]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


#: ``baseline.model`` -> :class:`~stitch.baselines.base.BaselineSpec`
BASELINES: Registry[Any] = Registry(
    "baseline",
    {
        "unet": "stitch.baselines.unet:UNET",
        "maskrcnn": "stitch.baselines.maskrcnn:MASKRCNN",
        "timm_unet": "stitch.baselines.timm_unet:TIMM_UNET",
        **{
            name: f"stitch.baselines.torchvision_seg:{name.upper()}"
            for name in (
                "fcn_resnet50",
                "deeplabv3_resnet50",
                "deeplabv3_mobilenet_v3_large",
                "lraspp_mobilenet_v3_large",
            )
        },
    },
)
#: ``data.dataset`` -> a module of :mod:`stitch.data` with ``build(cfg, cache_dir)`` (and, for
#: datasets with object instances, ``build_instance(cfg, cache_dir)``)
DATASETS: Registry[Any] = Registry(
    "dataset",
    {name: f"stitch.data.{name}" for name in ("folder", "voc", "coco", "nuclei", "shapes", "brain")},
)
#: ``task`` -> a factory ``(data bundle, train.loss) -> Task``
TASKS: Registry[Any] = Registry(
    "task",
    {
        "segmentation": "stitch.tasks.segmentation:make_segmentation_task",
        "instance": "stitch.tasks.instance:make_instance_task",
    },
)
#: ``train.optimizer.name`` -> ``(parameters, OptimizerCfg) -> torch.optim.Optimizer``
OPTIMIZERS: Registry[Any] = Registry(
    "optimizer",
    {
        "sgd": "stitch.optimizers:sgd",
        "adam": "stitch.optimizers:adam",
        "adamw": "stitch.optimizers:adamw",
    },
)
#: ``sweep.sampler`` -> ``(sweep cfg, seed, multi_objective) -> optuna sampler``
SAMPLERS: Registry[Any] = Registry(
    "sampler", {name: f"stitch.sweep.samplers:{name}_sampler" for name in ("tpe", "random", "grid", "nsga2")}
)
#: ``sweep.pruner`` -> ``(epochs) -> optuna pruner``
PRUNERS: Registry[Any] = Registry(
    "pruner", {name: f"stitch.sweep.samplers:{name}_pruner" for name in ("median", "hyperband", "none")}
)
