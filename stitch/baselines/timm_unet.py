"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015, https://arxiv.org/abs/1505.04597) whose encoder
is any timm backbone (Wightman, "PyTorch Image Models", https://github.com/huggingface/pytorch-image-models)
built with ``features_only=True``: ResNet, ConvNeXt, EfficientNet, RegNet, MobileNetV3 …

The decoder follows the U-Net: from the deepest feature, each level up-samples with a transposed
convolution to the width of the encoder feature of that level (as the classic U-Net's ``up*``),
concatenates the two and runs a conv block; a last block (bilinear up-sampling, conv block) brings
the result to the input's resolution, and a 1x1 conv gives the logits.
The named points match :mod:`stitch.baselines.unet`::

    backbone (the timm encoder): enc1 (alias stem) … encN = its feature stages
    up{N-1} -> skip{N-1} -> dec{N-1} -> … -> up1 -> skip1 -> dec1 -> up0 -> dec0 -> head

``enc{i}`` aliases the timm module that produces feature ``i`` (e.g. ``backbone.layer2`` of a
ResNet, ``backbone.stages_1`` of a ConvNeXt, ``backbone.blocks.2`` of an EfficientNet);
``skip{i}`` is a :class:`~stitch.baselines.unet.SkipMerge` so a fusion module can replace it;
``up0``/``dec0`` exist when the first feature is below full resolution (almost always).

Weights (default: none; nothing is ever downloaded): ``encoder_weights`` names a local state-dict
file (``.pth``/``.pt``/``.bin``/``.safetensors``: timm's classification weights, or the
``backbone.*`` of a saved model), or ``pretrained: true`` reads timm's file from the Hugging Face
(or torch hub) cache when it is there. A first convolution with another ``in_channels`` is adapted
as timm does (``adapt_input_conv``).
"""

from __future__ import annotations

import functools
import os
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from timm.models import adapt_input_conv, get_pretrained_cfg
from torch import nn

from stitch.baselines.base import BaselineSpec
from stitch.baselines.factory import spec_from_factory
from stitch.baselines.maskrcnn_weights import check_file_exists, read_state_dict
from stitch.baselines.unet import ConvBlock, SkipMerge
from stitch.errors import did_you_mean, exception_text
from stitch.model_notes import add_note

DEFAULT_ENCODER = "resnet34"
#: file-name prefixes of saved models whose encoder the weights file may hold
ENCODER_PREFIXES = ("backbone.", "encoder.", "model.")


# ----------------------------------------------------------------------------- encoder
def check_encoder_name(encoder: str) -> None:
    """A one-line ``ValueError`` when timm has no model ``encoder`` (with a close name)."""
    if not timm.is_model(encoder):
        hint = did_you_mean(encoder.partition(".")[0], timm.list_models())
        raise ValueError(f"timm has no model {encoder!r}{hint or ' (timm.list_models() lists them)'}")


def create_encoder(encoder: str, in_channels: int) -> nn.Module:
    """``timm.create_model(encoder, features_only=True, in_chans=in_channels)``, random weights."""
    check_encoder_name(encoder)
    try:
        return timm.create_model(encoder, pretrained=False, features_only=True, in_chans=in_channels)
    except Exception as exc:
        raise ValueError(
            f"timm encoder {encoder!r} cannot be built with features_only=True: {exception_text(exc)}"
        ) from None


@functools.lru_cache(maxsize=64)
def encoder_info(encoder: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(channels, reductions)`` of the encoder's feature stages (built once on the meta device)."""
    with torch.device("meta"):
        model = create_encoder(encoder, 3)
    info: Any = model.feature_info
    return tuple(info.channels()), tuple(info.reduction())


def feature_paths(encoder: nn.Module, name: str) -> list[str]:
    """The module path (inside the encoder) of each feature stage: timm names them as in the
    classification model (``stages.1``), its ``FeatureListNet`` flattens them (``stages_1``)."""
    paths = {p for p, _ in encoder.named_modules() if p}
    info: Any = encoder.feature_info
    out = []
    for module_name in info.module_name():
        for candidate in (module_name, module_name.replace(".", "_", 1), module_name.replace(".", "_")):
            if candidate in paths:
                out.append(candidate)
                break
        else:
            raise ValueError(f"timm encoder {name!r}: no module {module_name!r} produces its feature stage")
    return out


# ----------------------------------------------------------------------------- weights
def read_weights(path: str, what: str) -> dict[str, torch.Tensor]:
    """A state_dict from ``path`` (``.safetensors`` through safetensors, else torch with
    ``weights_only=True``, see :func:`~stitch.baselines.maskrcnn_weights.read_state_dict`)."""
    if str(path).endswith(".safetensors"):
        check_file_exists(path, what)
        from safetensors.torch import load_file

        try:
            return load_file(os.path.expanduser(path))
        except Exception as exc:
            raise ValueError(f"{what} file {path!r} could not be read: {exception_text(exc)}") from None
    return read_state_dict(path, what)


def normalised(key: str) -> str:
    """A state-dict key with ``_`` and ``.`` made equal (``stages_0.x`` == ``stages.0.x``)."""
    return key.replace("_", ".")


def encoder_part(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` meant for the encoder: the whole file, or its ``backbone.*`` /
    ``encoder.*`` / ``model.*`` part, whichever matches more of the encoder's keys."""
    wanted = {normalised(k) for k in own}
    best, best_hits = state, sum(normalised(k) in wanted for k in state)
    for prefix in ENCODER_PREFIXES:
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        hits = sum(normalised(k) in wanted for k in part)
        if hits > best_hits:
            best, best_hits = part, hits
    return best


def load_encoder_weights(encoder: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Load ``state`` into the timm encoder; returns how many tensors were loaded.

    Keys match with ``_`` and ``.`` made equal; keys the encoder lacks (a classifier) are ignored;
    a missing encoder tensor or another shape is a one-line ``ValueError``, except a first
    convolution made for other input channels, which is adapted as timm does.
    """
    own = encoder.state_dict()
    part = encoder_part(state, own)
    by_norm = {normalised(k): k for k in part}
    loaded: dict[str, torch.Tensor] = {}
    missing, shapes = [], []
    for key, tensor in own.items():
        found = by_norm.get(normalised(key))
        if found is None:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        value = part[found]
        if value.shape != tensor.shape:
            if value.dim() == 4 and value.shape[0] == tensor.shape[0] and value.shape[2:] == tensor.shape[2:]:
                value = adapt_input_conv(tensor.shape[1], value, base_chans=value.shape[1])
            else:
                shapes.append(f"{key} {tuple(value.shape)} vs {tuple(tensor.shape)}")
                continue
        loaded[key] = value.to(tensor.dtype)
    if missing or shapes:
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} of {len(own)} encoder tensors missing (e.g. {', '.join(missing[:3])})"
            )
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches file vs model (e.g. {'; '.join(shapes[:3])})")
        raise ValueError(
            f"{source} does not match the encoder: {'; '.join(problems)} — is it the same timm model?"
        )
    encoder.load_state_dict(loaded, strict=False)
    return len(loaded)


def cached_pretrained_file(encoder: str) -> str:
    """The local file of timm's pretrained weights for ``encoder`` (Hugging Face cache, else torch
    hub cache); a one-line ``ValueError`` saying how to get it when it is not there."""
    cfg = get_pretrained_cfg(encoder)
    if cfg is None:
        raise ValueError(
            f"timm has no pretrained weights for {encoder!r}; pass encoder_weights: a local file"
        )
    tagged = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else encoder
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return found
    if cfg.url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(str(cfg.url)).path))
        if os.path.isfile(path):
            return path
    raise ValueError(
        f"pretrained weights of timm encoder {tagged!r} are not in the local cache and stitch never "
        f"downloads: fetch them once (python -c \"import timm; timm.create_model('{tagged}', "
        'pretrained=True)") or pass encoder_weights: a local .pth/.safetensors file'
    )


# ----------------------------------------------------------------------------- model
def up_projection(in_channels: int, out_channels: int, scale: int) -> nn.Module:
    """The U-Net's learned up-sampling: a ``scale x scale`` transposed conv with stride ``scale``
    (a 1x1 conv when the two levels have the same stride)."""
    if scale == 1:
        return nn.Conv2d(in_channels, out_channels, kernel_size=1)
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=scale, stride=scale)


class TimmUNet(nn.Module):
    """U-Net decoder on a timm feature encoder, with stitch's named points (see the module docstring)."""

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        in_channels: int = 3,
        num_classes: int = 2,
        decoder_channels: list[int] | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
        self.backbone = create_encoder(encoder, in_channels)
        self.feature_paths = feature_paths(self.backbone, encoder)
        info: Any = self.backbone.feature_info
        channels, reductions = list(info.channels()), list(info.reduction())
        n = len(channels)
        self.levels = list(range(n - 1, 0, -1)) + ([0] if reductions[0] > 1 else [])
        default = [16 * 2**k for k in reversed(range(len(self.levels)))]
        widths = decoder_channels or default
        if len(widths) != len(self.levels) or any(w < 1 for w in widths):
            raise ValueError(
                f"decoder_channels needs {len(self.levels)} positive widths for encoder {encoder!r} "
                f"(deepest first, e.g. {default}), got {widths}"
            )
        width = channels[-1]
        for level, out_width in zip(self.levels, widths):
            finer = reductions[level - 1] if level else 1
            scale, rest = divmod(reductions[level], finer)
            if rest:
                raise ValueError(f"timm encoder {encoder!r}: feature strides {reductions} are not multiples")
            if level:  # up-sample to the skip's size and width, so that a fusion module fits the merge
                setattr(self, f"up{level}", up_projection(width, channels[level - 1], scale))
                setattr(self, f"skip{level}", SkipMerge())
                setattr(self, f"dec{level}", ConvBlock(2 * channels[level - 1], out_width))
            else:  # to the input's resolution
                setattr(
                    self, f"up{level}", nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)
                )
                setattr(self, f"dec{level}", ConvBlock(width, out_width))
            width = out_width
        self.head = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        d = features[-1]
        for level in self.levels:
            d = getattr(self, f"up{level}")(d)
            if level:
                d = getattr(self, f"skip{level}")(features[level - 1], d)
            d = getattr(self, f"dec{level}")(d)
        return self.head(d)


def build_timm_unet(
    encoder: str = DEFAULT_ENCODER,
    in_channels: int = 3,
    num_classes: int = 2,
    decoder_channels: list[int] | None = None,
    encoder_weights: str | None = None,
    pretrained: bool = False,
) -> TimmUNet:
    """Build the timm-encoder U-Net.

    Args:
        encoder: a timm model name (``resnet34``, ``convnext_atto``, ``efficientnet_b0``, or with a
            weights tag ``resnet18.a1_in1k``); it must support ``features_only=True``.
        in_channels, num_classes: input channels and classes (filled from the data).
        decoder_channels: widths of the decoder blocks, deepest first (one per ``dec*``); default
            16, 32, 64 … doubling towards the deepest (ResNet: 256, 128, 64, 32, 16).
        encoder_weights: a local state-dict file for the encoder (timm's weights, ``.safetensors``
            or a torch file, or a saved model with ``backbone.*`` keys). Never downloaded.
        pretrained: read timm's pretrained weights from the Hugging Face / torch hub cache when they
            are there (never downloaded; a one-line error says how to fetch them otherwise).
    """
    if encoder_weights and pretrained:
        raise ValueError("give encoder_weights (a local file) or pretrained: true, not both")
    weights_file = cached_pretrained_file(encoder) if pretrained else encoder_weights
    state = read_weights(weights_file, "encoder_weights") if weights_file else None
    model = TimmUNet(encoder, in_channels, num_classes, decoder_channels)
    if state is not None:
        n = load_encoder_weights(model.backbone, state, f"encoder_weights file {weights_file!r}")
        add_note(model, f"loaded {n} encoder tensors from {weights_file}")
    return model


def timm_unet_aliases(model: nn.Module) -> dict[str, str]:
    """``enc{i}`` (and ``stem`` = ``enc1``) -> the timm stage modules; ``up*``, ``skip*``, ``dec*``,
    ``head`` as they are named."""
    assert isinstance(model, TimmUNet)
    aliases = {f"enc{i}": f"backbone.{p}" for i, p in enumerate(model.feature_paths, start=1)}
    for level in model.levels:
        parts = ("up", "skip", "dec") if level else ("up", "dec")
        aliases.update({f"{part}{level}": f"{part}{level}" for part in parts})
    aliases["head"] = "head"
    aliases["stem"] = aliases["enc1"]
    return aliases


def timm_unet_check_input(args: dict[str, Any], size: tuple[int, int]) -> str | None:
    """Why ``size`` cannot work: height and width must be divisible by the encoder's total stride."""
    encoder = str(args.get("encoder", DEFAULT_ENCODER))
    try:
        stride = encoder_info(encoder)[1][-1]
    except ValueError:
        return None  # the build reports the unknown encoder
    h, w = size
    if h % stride or w % stride:
        fit = f"{max(stride, round(h / stride) * stride)}x{max(stride, round(w / stride) * stride)}"
        return (
            f"timm encoder {encoder!r} needs height and width divisible by {stride}, got {h}x{w}; try {fit}"
        )
    return None


TIMM_UNET: BaselineSpec = spec_from_factory(
    "timm_unet",
    build_timm_unet,
    "segmentation",
    aliases=timm_unet_aliases,
    image_size=(64, 64),
    reference="Ronneberger et al., U-Net, MICCAI 2015 (arXiv:1505.04597); encoders from timm (Wightman, "
    "PyTorch Image Models)",
    summary="U-Net decoder on any timm features_only encoder (ResNet, ConvNeXt, EfficientNet …)",
    check_input=timm_unet_check_input,
)
