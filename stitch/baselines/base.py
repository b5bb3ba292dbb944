"""What a baseline provides to the harness: a builder, named hook points and a way to run it.

A baseline is plain data (:class:`BaselineSpec`); each baseline file builds one and
:data:`stitch.registry.BASELINES` names them (``stitch.baselines.BASELINES`` is that registry).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class BaselineSpec:
    """One baseline network.

    - ``build(**args)`` returns the un-stitched model (weights none unless ``args`` asks).
    - ``aliases(model)`` maps short hook-point names (``enc1``, ``c4``, ``fpn`` …) to module paths
      of that model; every module path is a hook point too, aliases only name the useful ones.
    - ``example_batch(args, batch_size, image_size)`` makes a small synthetic batch on CPU.
    - ``run(model, batch)`` runs one forward that reaches every hook point (used by the probe,
      under ``torch.no_grad``); ``loss(model, batch)`` returns a scalar to check gradients flow.
    - ``check_input(args, (h, w))`` says why an input size cannot work (U-Net: divisible by 16).
    """

    name: str
    task: str
    reference: str
    summary: str
    build: Callable[..., nn.Module]
    aliases: Callable[[nn.Module], dict[str, str]]
    example_batch: Callable[[dict[str, Any], int, tuple[int, int] | None], Any]
    run: Callable[[nn.Module, Any], Any]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    default_image_size: tuple[int, int]
    #: why an input size cannot work with these arguments (one line), or None
    check_input: Callable[[dict[str, Any], tuple[int, int]], str | None] = lambda args, size: None


def resnet_stage_aliases(body: nn.Module, prefix: str) -> dict[str, str]:
    """Aliases of a torchvision ResNet's stages at ``prefix`` (``"backbone.body."``): ``c2`` … ``c5``
    for ``layer1`` … ``layer4`` (stages the body lacks are left out), every block ``c{i}.{j}`` and
    its ``conv1`` / ``conv2`` / ``conv3``. Mask R-CNN and the torchvision segmentation models share it."""
    aliases: dict[str, str] = {}
    for i in range(2, 6):
        layer = getattr(body, f"layer{i - 1}", None)
        if layer is None:
            continue
        aliases[f"c{i}"] = f"{prefix}layer{i - 1}"
        for j, block in enumerate(layer):
            aliases[f"c{i}.{j}"] = f"{prefix}layer{i - 1}.{j}"
            for conv in ("conv1", "conv2", "conv3"):
                if hasattr(block, conv):
                    aliases[f"c{i}.{j}.{conv}"] = f"{prefix}layer{i - 1}.{j}.{conv}"
    return aliases
