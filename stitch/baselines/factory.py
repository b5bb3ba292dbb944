"""Any function returning an ``nn.Module`` as a baseline: :func:`register_baseline` (public as
``stitch.register_baseline``) and ``baseline: {model: "package.module:factory"}``.

The factory's own signature is the baseline's argument list (``stitch validate`` checks the
YAML's ``args`` against it, and the data fills ``num_classes``/``in_channels`` when the factory
takes them). Every module path of the model it returns is a hook point; ``aliases`` name the
useful ones. What the harness needs besides the builder comes from the task:

- ``segmentation``: the example batch is ``N x C x H x W`` images in [0, 1] (``C`` = the
  factory's ``in_channels`` argument when it has one, else the declared ``in_channels``, else 3)
  and random integer masks; the model must map it to ``N x K x H x W`` logits (a tensor, or a
  dict with them under ``"out"`` as torchvision's segmentation models return). The probe forward
  checks that and says in one line what came out instead.
- ``instance``: the torchvision detection interface of :mod:`stitch.baselines.maskrcnn` (a list of
  ``3 x H x W`` images and targets in, a loss dict out in training mode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from modules_zoo.registry import first_doc_line
from stitch.baselines.base import BaselineSpec
from stitch.errors import StitchError
from stitch.registry import BASELINES, TASKS
from stitch.tasks.segmentation import segmentation_logits

FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])
Aliases = Callable[[nn.Module], dict[str, str]] | Mapping[str, str] | None
ExampleBatch = Callable[[dict[str, Any], int, tuple[int, int] | None], Any]

#: probe image size of a factory baseline that declares none
DEFAULT_IMAGE_SIZE = (64, 64)


def factory_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    """The factory's keyword arguments that have defaults, with them."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return {}
    return {p.name: p.default for p in params if p.default is not p.empty}


def takes(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` has a parameter ``name``."""
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def checked_builder(name: str, factory: Callable[..., Any]) -> Callable[..., nn.Module]:
    """``factory`` with a one-line ``TypeError`` when it returns something else than an
    ``nn.Module``; it keeps the factory's signature and annotations (so the harness checks and
    fills arguments as for the built-in baselines)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    target = factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]

    def build(*args: Any, **kwargs: Any) -> nn.Module:
        model = factory(*args, **kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"the factory of baseline {name!r} returned a {type(model).__name__}, not an nn.Module"
            )
        return model

    functools.update_wrapper(build, target)
    build.__name__ = getattr(factory, "__name__", name)
    build.__qualname__ = getattr(factory, "__qualname__", name)
    build.__doc__ = factory.__doc__
    if signature is not None:
        build.__signature__ = signature  # type: ignore[attr-defined]
    return build


def aliases_function(name: str, aliases: Aliases) -> Callable[[nn.Module], dict[str, str]]:
    """``aliases`` as the spec's ``model -> {alias: module path}`` function; every path named must
    exist in the model (else a one-line error)."""

    def of(model: nn.Module) -> dict[str, str]:
        found = aliases(model) if callable(aliases) else dict(aliases or {})
        paths = {p for p, _ in model.named_modules() if p}
        wrong = [f"{a!r} -> {p!r}" for a, p in found.items() if p not in paths]
        if wrong:
            raise StitchError(
                f"baseline {name!r}: alias {wrong[0]} names no module of the model"
                f" ({len(wrong)} in all; `stitch points --all` lists the module paths)"
            )
        return dict(found)

    return of


def image_size_of(image_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int]:
    """A declared image size as ``(h, w)`` (an int is square); the default when None."""
    if image_size is None:
        return DEFAULT_IMAGE_SIZE
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


# ----------------------------------------------------------------------------- segmentation
def segmentation_example_batch(
    factory: Callable[..., Any], in_channels: int | None, default_size: tuple[int, int]
) -> ExampleBatch:
    """The example batch of a segmentation factory: ``{"image": N x C x H x W, "mask": N x H x W,
    "num_classes": K or None}``; ``K`` is the factory's ``num_classes`` (argument or default) when
    it takes one, and the masks are drawn from ``K`` classes (else 2)."""
    defaults = factory_defaults(factory)
    channels_taken = takes(factory, "in_channels")
    classes_taken = takes(factory, "num_classes")

    def example_batch(args: dict[str, Any], batch_size: int, image_size: tuple[int, int] | None) -> Any:
        h, w = image_size or default_size
        given = args.get("in_channels", defaults.get("in_channels")) if channels_taken else None
        c = int(given) if given is not None else (in_channels or 3)
        k = args.get("num_classes", defaults.get("num_classes")) if classes_taken else None
        k = int(k) if isinstance(k, int) and k >= 1 else None
        g = torch.Generator().manual_seed(0)
        images = torch.rand(batch_size, c, h, w, generator=g)
        masks = torch.randint(0, k or 2, (batch_size, h, w), generator=g)
        return {"image": images, "mask": masks, "num_classes": k}

    return example_batch


def describe_output(output: Any) -> str:
    """A short text of what a model returned (shape of a tensor, keys of a dict …)."""
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {list(output.shape)}"
    if isinstance(output, dict):
        return f"a dict with keys {sorted(map(str, output))}"
    if isinstance(output, (list, tuple)):
        return f"a {type(output).__name__} of {len(output)} items"
    return f"a {type(output).__name__}"


def segmentation_run(name: str) -> Callable[[nn.Module, Any], Any]:
    """One forward of a segmentation baseline, checked: ``N x K x H x W`` logits (a tensor, or a
    dict with ``"out"``) for the batch's ``N x C x H x W`` images, with ``K`` = the batch's
    ``num_classes`` when it has one; a one-line ``ValueError`` says what came out instead.
    Returns the model's output as it is."""

    def run(model: nn.Module, batch: dict[str, Any]) -> Any:
        images = batch["image"]
        output = model(images)
        n, c, h, w = images.shape
        try:
            logits: torch.Tensor | None = segmentation_logits(output)
        except TypeError:
            logits = None
        expected = "N x K x H x W logits (a tensor, or a dict with them under 'out')"
        if logits is not None and logits.dim() == 4 and logits.shape[0] == n and logits.shape[2:] == (h, w):
            k = batch.get("num_classes")
            if k is None or logits.shape[1] == k:
                return output
            expected = f"N x {k} x H x W logits (num_classes={k})"
        raise ValueError(
            f"baseline {name!r} must map N x C x H x W images to {expected}; "
            f"for a {n} x {c} x {h} x {w} batch it returned {describe_output(output)}"
        )

    return run


def segmentation_loss(run: Callable[[nn.Module, Any], Any]) -> Callable[[nn.Module, Any], torch.Tensor]:
    """Cross-entropy of the (checked) logits on the example batch; masks are folded into ``K``
    classes when the model has fewer than the batch assumed."""

    def loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        logits = segmentation_logits(run(model, batch))
        return F.cross_entropy(logits.float(), batch["mask"] % logits.shape[1])

    return loss


# ----------------------------------------------------------------------------- instance
def instance_example_batch(factory: Callable[..., Any], default_size: tuple[int, int]) -> ExampleBatch:
    """The Mask R-CNN example batch (:func:`stitch.baselines.maskrcnn.maskrcnn_example_batch`) with
    the factory's default ``num_classes``."""
    defaults = factory_defaults(factory)

    def example_batch(args: dict[str, Any], batch_size: int, image_size: tuple[int, int] | None) -> Any:
        from stitch.baselines.maskrcnn import maskrcnn_example_batch

        merged = {"num_classes": defaults.get("num_classes", 91), **args}
        return maskrcnn_example_batch(merged, batch_size, image_size or default_size)

    return example_batch


def instance_run(model: nn.Module, batch: Any) -> Any:
    """:func:`stitch.baselines.maskrcnn.maskrcnn_run` (train-mode forward with targets)."""
    from stitch.baselines.maskrcnn import maskrcnn_run

    return maskrcnn_run(model, batch)


def instance_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """:func:`stitch.baselines.maskrcnn.maskrcnn_loss` (sum of the detector's training losses)."""
    from stitch.baselines.maskrcnn import maskrcnn_loss

    return maskrcnn_loss(model, batch)


# ----------------------------------------------------------------------------- specs
#: the options a factory was registered with, so that naming it as ``pkg.mod:factory`` keeps them
DECLARED: weakref.WeakKeyDictionary[Any, BaselineSpec] = weakref.WeakKeyDictionary()


def spec_from_factory(
    name: str,
    factory: Callable[..., Any],
    task: str = "segmentation",
    *,
    aliases: Aliases = None,
    example_batch: ExampleBatch | None = None,
    image_size: int | tuple[int, int] | list[int] | None = None,
    in_channels: int | None = None,
    reference: str = "",
    summary: str = "",
    check_input: Callable[[dict[str, Any], tuple[int, int]], str | None] | None = None,
) -> BaselineSpec:
    """The :class:`BaselineSpec` of a factory (see the module docstring).

    Args:
        name: the baseline's name (``baseline.model``).
        factory: a function (or ``nn.Module`` class) returning the un-stitched model; its
            signature is the baseline's argument list.
        task: ``segmentation`` or ``instance``.
        aliases: short hook-point names: ``{alias: module path}`` or a function of the model
            returning that; every module path is a hook point anyway.
        example_batch: ``(args, batch_size, image_size) -> batch`` instead of the task's default
            (segmentation: a dict with ``"image"`` N x C x H x W and ``"mask"`` N x H x W, and
            optionally ``"num_classes"``, the K the output is checked against; instance:
            ``{"images": [3 x H x W], "targets": [{boxes, labels, masks}]}``).
        image_size: the probe's default image size, ``(h, w)`` or one int.
        in_channels: channels of the example images when the factory takes no ``in_channels``.
        reference, summary: shown by ``stitch points``; summary defaults to the docstring's first line.
        check_input: ``(args, (h, w)) -> why that size cannot work, or None``.
    """
    if isinstance(factory, nn.Module) or not callable(factory):
        raise StitchError(
            f"baseline {name!r} names a {type(factory).__name__}; it needs a function (or nn.Module "
            "class) that returns the model"
        )
    if task not in ("segmentation", "instance"):
        known = ", ".join(n for n in TASKS if n in ("segmentation", "instance"))
        raise StitchError(f"baseline {name!r}: task {task!r} has no factory support (tasks: {known})")
    size = image_size_of(image_size)
    if task == "segmentation":
        batch = example_batch or segmentation_example_batch(factory, in_channels, size)
        run = segmentation_run(name)
        loss = segmentation_loss(run)
    else:
        batch = example_batch or instance_example_batch(factory, size)
        run, loss = instance_run, instance_loss
    return BaselineSpec(
        name=name,
        task=task,
        reference=reference,
        summary=summary or first_doc_line(factory) or f"{getattr(factory, '__module__', '?')}:{name}",
        build=checked_builder(name, factory),
        aliases=aliases_function(name, aliases),
        example_batch=batch,
        run=run,
        loss=loss,
        default_image_size=size,
        check_input=check_input or (lambda args, size: None),
    )


def register_baseline(
    name: str,
    *,
    task: str = "segmentation",
    aliases: Aliases = None,
    example_batch: ExampleBatch | None = None,
    image_size: int | tuple[int, int] | list[int] | None = None,
    in_channels: int | None = None,
    reference: str = "",
    summary: str = "",
) -> Callable[[FactoryT], FactoryT]:
    """Decorator: make a function returning an ``nn.Module`` the baseline ``name``
    (``baseline: {model: name}``); the function is returned unchanged. Options as in
    :func:`spec_from_factory`. A name that is taken (a built-in baseline or an earlier
    registration) is a one-line :class:`~stitch.errors.StitchError`.

    Example (in a plugin file)::

        @stitch.register_baseline("my_net", aliases={"stem": "features.0"})
        def my_net(in_channels: int = 3, num_classes: int = 2) -> nn.Module: ...
    """

    def decorate(factory: FactoryT) -> FactoryT:
        if name in BASELINES:
            raise StitchError(f"baseline {name!r} is already registered; choose another name for {factory!r}")
        spec = spec_from_factory(
            name,
            factory,
            task,
            aliases=aliases,
            example_batch=example_batch,
            image_size=image_size,
            in_channels=in_channels,
            reference=reference,
            summary=summary,
        )
        BASELINES.add(name, spec)
        with contextlib.suppress(TypeError):  # not weakly referenceable: by reference, the defaults
            DECLARED[factory] = spec
        return factory

    return decorate


def add_baseline_ref(ref: str, factory: Callable[..., Any], task: str) -> None:
    """Add (or replace) the baseline named by the text ``ref`` (``pkg.mod:factory`` or
    ``path/file.py:factory``) for the experiment's ``task``; a factory registered with
    :func:`register_baseline` keeps the options it was registered with."""
    try:
        declared = DECLARED.get(factory)
    except TypeError:
        declared = None
    spec = dataclasses.replace(declared, name=ref) if declared else spec_from_factory(ref, factory, task)
    BASELINES.add(ref, spec, replace=True)
