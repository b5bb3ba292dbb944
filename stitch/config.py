"""The experiment YAML: schema, loading, and error messages with line numbers.

Loading is two steps. ``yaml.safe_load`` gives the data and ``yaml.compose`` (same safe loader)
gives the node tree, from which every YAML path gets its line number. The data is then checked by
the pydantic schema below; every error is turned into one line naming the file, the line, the
YAML path and, where the value is one of a known set, the closest valid names. Checks that need
torch (unknown modules, hook points, channels) happen later, in :mod:`stitch.validate`, and report
through the same :class:`SourceMap`.
"""
from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator, model_validator

from stitch.errors import ConfigError, did_you_mean

Mode = Literal["after", "before", "residual", "replace"]
Design = Literal["none", "one-at-a-time", "leave-one-out", "full-factorial", "subsets"]

#: Metric names each task reports (``metrics.primary`` and ``metrics.report`` choose among them).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "segmentation": ("miou", "mdice", "pixel_acc", "mprecision", "mrecall", "fg_iou", "fg_dice"),
    "instance": (
        "segm_ap", "segm_ap50", "segm_ap75", "segm_aps", "segm_apm", "segm_apl", "segm_ar",
        "bbox_ap", "bbox_ap50", "bbox_ap75", "bbox_aps", "bbox_apm", "bbox_apl", "bbox_ar",
    ),
}
DEFAULT_PRIMARY = {"segmentation": "miou", "instance": "segm_ap"}
#: why ``augment.scale`` is refused for the instance task
SCALE_UNDONE_FOR_INSTANCES = (
    "does nothing for Mask R-CNN: the model resizes every image to min_size itself, undoing a random rescale; "
    "for scale jitter give baseline.args.min_size a list, e.g. [96, 112, 128] (torchvision's multi-scale training)"
)


class Strict(BaseModel):
    """Base of every schema block: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- model side
class BaselineCfg(Strict):
    model: str
    args: dict[str, Any] = Field(default_factory=dict)


class NestedInsertionCfg(Strict):
    """A module inserted into a hook point of another zoo module (nesting)."""

    module: str
    args: dict[str, Any] = Field(default_factory=dict)
    at: Union[str, list[str]]
    mode: Optional[Mode] = None
    residual_scale: Optional[float] = None
    nest: list["NestedInsertionCfg"] = Field(default_factory=list)

    @field_validator("at", mode="before")
    @classmethod
    def _at_is_names(cls, v: Any) -> Any:
        if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            raise ValueError(f"must be a hook-point name or pattern, or a list of them (got {v!r}); `stitch points` lists them")
        return v

    @field_validator("at")
    @classmethod
    def _at_not_empty(cls, v: Union[str, list[str]]) -> Union[str, list[str]]:
        if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
            raise ValueError("needs at least one hook point or pattern")
        return v

    @property
    def patterns(self) -> list[str]:
        return [self.at] if isinstance(self.at, str) else list(self.at)


class InsertionCfg(NestedInsertionCfg):
    """One insertion: ``name`` labels it in tables, ``module`` is a zoo name, ``at`` hook points."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=24)]


# ----------------------------------------------------------------------------- data side
class AugmentCfg(Strict):
    """Joint image/mask augmentation of the training split (validation is never augmented).

    Applied in this order: ``rotate90`` (a random multiple of 90 degrees), ``hflip``/``vflip``
    (each with probability 0.5), ``scale`` (resize so the image fits ``image_size`` times a factor
    drawn uniformly from ``[lo, hi]``, then a random crop, padded where the image is smaller),
    ``color_jitter`` (brightness, contrast and, for RGB, saturation by up to this fraction; hue by a
    quarter of it). The mask follows every geometric step (nearest neighbour), never the colour.
    """

    hflip: bool = True
    vflip: bool = False
    rotate90: bool = False
    scale: Optional[tuple[Annotated[float, Field(gt=0, le=8)], Annotated[float, Field(gt=0, le=8)]]] = None
    color_jitter: Annotated[float, Field(ge=0, le=1)] = 0.0

    @field_validator("scale")
    @classmethod
    def _ordered(cls, v: Optional[tuple[float, float]]) -> Optional[tuple[float, float]]:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"scale is [low, high] with low <= high, got {list(v)}")
        return v


class DataBase(Strict):
    """Keys every dataset takes.

    - ``image_size``: ``[H, W]`` (or one int) of every sample (the U-Net baseline needs both
      divisible by 16; ``stitch validate`` says so). Training crops/pads to it (see ``augment``); validation resizes
      keeping the aspect ratio so the image fits, then pads bottom/right (image 0, mask
      ``ignore_index``).
    - ``normalize``: ``imagenet`` (ImageNet mean/std; for 1-channel images the channel averages
      0.449/0.226), ``none`` (pixels scaled to [0, 1] only), or ``[[mean...], [std...]]`` on the
      [0, 1] scale, one value per image channel.
    - ``ignore_index``: the mask value the loss and metrics skip (padding, VOC borders, COCO crowd
      regions); must not be a class index.

    Instance task (``task: instance``; datasets ``coco``, ``voc``, ``nuclei``, ``shapes``): the
    images are not resized to ``image_size`` (the Mask R-CNN's own ``min_size``/``max_size`` are
    the resize targets; ``shapes`` still generates its images at ``image_size``); validation
    images keep their native size; training images are augmented jointly with their boxes and
    masks (``augment.scale`` resizes by the random factor, without cropping); ``normalize`` and
    ``ignore_index`` are not used (Mask R-CNN normalises inside the model). See
    :mod:`stitch.data.instance`.
    """

    image_size: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] = (128, 128)
    augment: AugmentCfg = Field(default_factory=AugmentCfg)
    normalize: Union[Literal["imagenet", "none"], tuple[list[float], list[float]]] = "imagenet"
    ignore_index: int = 255
    num_workers: Annotated[int, Field(ge=0)] = 0

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @field_validator("normalize")
    @classmethod
    def _mean_std(cls, v: Any) -> Any:
        if isinstance(v, tuple):
            mean, std = v
            if not mean or len(mean) != len(std):
                raise ValueError(f"normalize is [[mean...], [std...]] with one value per channel in each, got {list(v)}")
            if any(s <= 0 for s in std):
                raise ValueError(f"normalize std values must be > 0, got {std}")
            if any(abs(m) > 1 for m in mean) or any(s > 1 for s in std):
                raise ValueError(f"normalize mean/std are on the [0, 1] pixel scale (e.g. 0.485, not 123.7), got {list(v)}")
        return v


class NucleiData(DataBase):
    """Real DSB2018 nuclei sample shipped in the stardist wheel (512x512, 125 nuclei), cut into tiles.

    Split without leakage: rows 0-383 are train (tiles of ``tile`` pixels, stride ``tile // 2``),
    rows 384-511 are val (non-overlapping tiles). Prepared once under the cache directory (``root``,
    else ``$STITCH_DATA``, else ``~/.cache/stitch``). Needs ``pip install --no-deps stardist==0.9.2``.
    Instance task: the COCO JSON files written beside the tiles (one category, RLE masks).
    """

    dataset: Literal["nuclei"]
    root: Optional[str] = None
    tile: Annotated[int, Field(ge=16, le=128)] = 128  # the val band is 128 rows high


class ShapesData(DataBase):
    """Procedurally generated RGB images and index masks (seeded, written once as PNG files).

    Class 0 is background; classes 1.. are, in order: circle, square, triangle, cross, ring, star,
    hexagon (``num_classes`` 2-8). Images are ``image_size``; the last ``val_fraction`` of the
    images (at least one) are the val split. Instance task: a separate set (2-5 possibly
    overlapping objects per image, COCO JSON with RLE masks of the visible parts).
    """

    dataset: Literal["shapes"]
    root: Optional[str] = None
    num_images: Annotated[int, Field(gt=1)] = 64
    num_classes: Annotated[int, Field(ge=2, le=8)] = 3
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25
    seed: int = 0


class FolderData(DataBase):
    """``images/`` + ``masks/`` (PNG index masks, paired by file stem), split by list files or a seeded ratio.

    - ``train_list`` / ``val_list``: text files (relative to ``root``), one stem per line; with only
      one of them the other split is every remaining pair. Without lists, ``val_fraction`` of the
      pairs (seeded by ``split_seed``) are val.
    - ``num_classes``: when unset, every mask is read once at build time and the largest label + 1
      is used; when set, labels are checked as each mask is loaded.
    - ``class_names``: optional, ``num_classes`` names (default ``class0``, ``class1`` …).
    - ``channels``: 1 (grey) or 3 (RGB) — every image is converted; default: the first image's.
    """

    dataset: Literal["folder"]
    root: str
    images: str = "images"
    masks: str = "masks"
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    split_seed: int = 0
    num_classes: Optional[Annotated[int, Field(ge=2)]] = None
    class_names: Optional[list[str]] = None
    channels: Optional[Literal[1, 3]] = None

    @model_validator(mode="after")
    def _names_match(self) -> "FolderData":
        if self.class_names is not None and self.num_classes is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}")
        if self.class_names is not None and len(self.class_names) < 2:
            raise ValueError("class_names needs at least two names (background and one class)")
        return self


class VOCData(DataBase):
    """Pascal VOC 2012 segmentation layout (``root`` is ``VOC2012/`` or the ``VOCdevkit/`` above it).

    ``JPEGImages/``, ``{masks}/`` (palette PNGs read as class indices; 255 borders become
    ``ignore_index``), ``ImageSets/Segmentation/{train_split,val_split}.txt``. 21 classes.
    ``masks: SegmentationClassAug`` with ``train_split: train_aug`` reads the SBD-augmented set.
    Instance task: ``{objects}/`` holds the instance-index palette PNGs (255 borders); each
    object's class is the majority class of its pixels in ``{masks}/``.
    """

    dataset: Literal["voc"]
    root: str
    train_split: str = "train"
    val_split: str = "val"
    masks: str = "SegmentationClass"
    objects: str = "SegmentationObject"


class CocoData(DataBase):
    """COCO instances JSON; for segmentation the class masks are rendered with pycocotools.

    Category ids map to 1..K in increasing id order (0 is background); crowd regions become
    ``ignore_index``; larger objects are drawn first so small ones stay visible. Paths are
    relative to ``root``; the defaults fit a COCO 2017 download. Instance task: polygon and RLE
    objects, crowd regions kept for evaluation only (see :mod:`stitch.data.instance`).
    """

    dataset: Literal["coco"]
    root: str
    train_annotations: str = "annotations/instances_train2017.json"
    val_annotations: str = "annotations/instances_val2017.json"
    train_images: str = "train2017"
    val_images: str = "val2017"


class BrainData(DataBase):
    """Axial slices of the MNI ICBM152 2009a template shipped in the nilearn wheel.

    T1 image, labels background / grey matter / white matter (the larger tissue probability when
    above 0.5). Fixed split along z (documented in ``stitch.data.brain``). Needs
    ``pip install --no-deps nilearn==0.14.1`` and ``pip install nibabel``.
    """

    dataset: Literal["brain"]
    root: Optional[str] = None


DataCfg = Annotated[
    Union[NucleiData, ShapesData, FolderData, VOCData, CocoData, BrainData],
    Field(discriminator="dataset"),
]


# ----------------------------------------------------------------------------- training side
class OptimizerCfg(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9


class SchedulerCfg(Strict):
    """``step`` multiplies the rate by ``gamma`` every ``step_size`` epochs, or, with
    ``milestones``, after each listed epoch (Detectron's "1x" Mask R-CNN schedule: 12 epochs,
    milestones [8, 11])."""

    name: Literal["none", "cosine", "step", "poly"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    step_size: Annotated[int, Field(gt=0)] = 10
    milestones: Optional[list[Annotated[StrictInt, Field(gt=0)]]] = None
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    power: Annotated[float, Field(gt=0)] = 0.9
    min_lr: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _milestones_for_step(self) -> "SchedulerCfg":
        if self.milestones is not None:
            if self.name != "step":
                raise ValueError(f"milestones are read by the 'step' schedule only, not {self.name!r}")
            if not self.milestones or sorted(set(self.milestones)) != self.milestones:
                raise ValueError(f"milestones must be increasing epoch numbers, got {self.milestones}")
        return self


class TrainCfg(Strict):
    """The training recipe (README: ``train:``)."""

    epochs: Annotated[StrictInt, Field(gt=0)] = 20
    batch_size: Annotated[StrictInt, Field(gt=0)] = 8
    optimizer: OptimizerCfg = Field(default_factory=OptimizerCfg)
    scheduler: SchedulerCfg = Field(default_factory=SchedulerCfg)
    loss: Literal["ce", "dice", "ce+dice"] = "ce"
    grad_accum: Annotated[StrictInt, Field(gt=0)] = 1
    clip_grad_norm: Optional[Annotated[float, Field(gt=0)]] = None
    amp: StrictBool = False
    deterministic: StrictBool = False
    eval_every: Annotated[StrictInt, Field(gt=0)] = 1
    keep_last: Annotated[StrictInt, Field(gt=0)] = 2

    @model_validator(mode="after")
    def _min_lr_below_lr(self) -> "TrainCfg":
        if self.scheduler.min_lr > self.optimizer.lr:
            raise ValueError(f"scheduler.min_lr {self.scheduler.min_lr} is above optimizer.lr {self.optimizer.lr}; the schedule would raise the learning rate")
        return self


# ----------------------------------------------------------------------------- design and report
class AblationCfg(Strict):
    design: Design = "none"
    subsets: list[list[str]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"design": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _subsets_given(self) -> "AblationCfg":
        if self.design == "subsets" and not self.subsets:
            raise ValueError("design 'subsets' needs a 'subsets:' list of insertion-name lists")
        if self.design != "subsets" and self.subsets:
            raise ValueError(f"'subsets' is only read with design 'subsets', not {self.design!r}")
        return self


class MetricsCfg(Strict):
    primary: Optional[str] = None
    report: list[str] = Field(default_factory=list)


class ReportCfg(Strict):
    caption: Optional[str] = None
    label: Optional[str] = None
    formats: list[Literal["latex", "markdown", "csv", "html"]] = Field(
        default_factory=lambda: ["latex", "markdown", "csv"]
    )
    test: Literal["ttest", "wilcoxon"] = "ttest"
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    decimals: Annotated[int, Field(ge=0, le=6)] = 2


class ProbeCfg(Strict):
    """Input used by the dry run (shape probe, ``stitch validate``); defaults to the data size."""

    image_size: Optional[tuple[Annotated[StrictInt, Field(gt=0)], Annotated[StrictInt, Field(gt=0)]]] = None
    batch_size: Annotated[int, Field(ge=2)] = 2  # BatchNorm in training mode needs 2 or more

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) and not isinstance(v, bool) else v


# ----------------------------------------------------------------------------- sweep
class RangeCfg(Strict):
    """A numeric search range: ``{low, high}``, ``log: true`` for a log scale, ``step`` for a grid
    of values; integers when ``low`` and ``high`` are both integers."""

    low: Union[StrictInt, float]
    high: Union[StrictInt, float]
    log: bool = False
    step: Optional[Union[StrictInt, float]] = None

    @model_validator(mode="after")
    def _ordered(self) -> "RangeCfg":
        if self.low >= self.high:
            raise ValueError(f"low must be below high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


#: a searched value: a list of choices (categorical) or a numeric range
SearchValue = Union[list[Any], RangeCfg]


class SlotCfg(Strict):
    """One insertion the sweep chooses: where (``at``, one of the candidates, or none when
    ``optional``), which module (``modules``), how (``modes``) and module arguments per module
    (``args: {SE: {rd_ratio: [0.0625, 0.25]}}``; a parameter exists only when its module is
    chosen)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=24)]
    at: Annotated[list[str], Field(min_length=1)]
    modules: Annotated[list[str], Field(min_length=1)]
    modes: Optional[list[Mode]] = None
    optional: bool = True
    args: dict[str, dict[str, SearchValue]] = Field(default_factory=dict)


class ObjectiveCfg(Strict):
    metric: str
    direction: Optional[Literal["maximize", "minimize"]] = None  # default: maximize metrics, minimize costs


class SweepCfg(Strict):
    """Optuna search over insertion points, modules, modes, module arguments and training
    hyper-parameters (README: ``stitch sweep``)."""

    trials: Annotated[StrictInt, Field(gt=0)] = 20
    epochs: Optional[Annotated[StrictInt, Field(gt=0)]] = None
    seed: Annotated[StrictInt, Field(ge=0, lt=2**31)] = 0
    sampler: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    objectives: list[Union[str, ObjectiveCfg]] = Field(default_factory=list)
    slots: list[SlotCfg] = Field(default_factory=list)
    train: dict[str, SearchValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something_to_search(self) -> "SweepCfg":
        if not self.slots and not self.train:
            raise ValueError("a sweep needs 'slots' (insertions to place) or 'train' (hyper-parameters) to search")
        names = [s.name for s in self.slots]
        if len(set(names)) != len(names):
            raise ValueError(f"slot names repeat: {names}")
        return self


class ExperimentCfg(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    task: Literal["segmentation", "instance"]
    description: str = ""
    baseline: BaselineCfg
    data: Optional[DataCfg] = None
    train: TrainCfg = Field(default_factory=TrainCfg)
    insertions: list[InsertionCfg] = Field(default_factory=list)
    ablation: AblationCfg = Field(default_factory=AblationCfg)
    seeds: Annotated[list[Annotated[StrictInt, Field(ge=0, lt=2**31)]], Field(min_length=1)] = Field(default_factory=lambda: [0])
    metrics: MetricsCfg = Field(default_factory=MetricsCfg)
    report: ReportCfg = Field(default_factory=ReportCfg)
    probe: ProbeCfg = Field(default_factory=ProbeCfg)
    sweep: Optional[SweepCfg] = None

    @property
    def primary_metric(self) -> str:
        return self.metrics.primary or DEFAULT_PRIMARY[self.task]

    @property
    def probe_image_size(self) -> Optional[tuple[int, int]]:
        if self.probe.image_size:
            return self.probe.image_size
        return self.data.image_size if self.data else None


# ----------------------------------------------------------------------------- source map
@dataclass
class SourceMap:
    """Line numbers of every YAML path of one file."""

    file: str
    lines: dict[tuple, int] = field(default_factory=dict)

    def line(self, path: tuple) -> Optional[int]:
        """Line of ``path`` or of its deepest ancestor present in the file."""
        path = tuple(path)
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def error(self, path: tuple, message: str) -> ConfigError:
        return ConfigError(message, self.file, self.line(path), format_path(path))


def format_path(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _node_lines(node: yaml.Node, path: tuple, out: dict[tuple, int], file: str = "") -> None:
    """Record the line of every YAML path; a key given twice in one mapping is an error (PyYAML
    would silently keep the last one, and an insertion list could vanish unnoticed)."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            child = path + (key.value,)
            line = key.start_mark.line + 1
            if key.value in seen:
                where = format_path(child)
                raise ConfigError(f"key {key.value!r} appears twice (also on line {seen[key.value]}); YAML would keep only the last one", file, line, where)
            seen[key.value] = line
            out[child] = line
            _node_lines(value, child, out, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, path + (i,), out, file)


@dataclass
class Experiment:
    """A loaded, schema-checked experiment and where each of its values came from."""

    cfg: ExperimentCfg
    source: SourceMap
    path: Optional[Path] = None

    @property
    def name(self) -> str:
        return self.cfg.name


# ----------------------------------------------------------------------------- error translation
def _data_path(loc: tuple, data: Any) -> tuple:
    """Keep the parts of a pydantic ``loc`` that exist in the data (drops union tags)."""
    out: list = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
    return tuple(out)


def _unwrap(annotation: Any, value: Any) -> Any:
    """The pydantic model (or Literal) an annotation stands for, given the value found there."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0], value)
    if origin in (Union, types.UnionType):
        members = [_unwrap(a, value) for a in typing.get_args(annotation) if a is not type(None)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(models) > 1 and isinstance(value, dict):
            for m in models:
                tag = m.model_fields.get("dataset")
                if tag is not None and value.get("dataset") in typing.get_args(tag.annotation):
                    return m
            return None
        if models:
            return models[0]
        lits = [m for m in members if typing.get_origin(m) is Literal]
        return lits[0] if lits else (members[0] if len(members) == 1 else None)
    return annotation


def _schema_at(loc: tuple, data: Any) -> Any:
    """Walk the schema along a pydantic ``loc``; returns a model class, a Literal, or None.

    Parts that are not fields (discriminated-union tags) are skipped; the data found along the
    way picks the member of a union.
    """
    node: Any = ExperimentCfg
    cur = data
    for part in loc:
        node = _unwrap(node, cur)
        if isinstance(node, type) and issubclass(node, BaseModel) and isinstance(part, str):
            f = node.model_fields.get(part)
            if f is None:
                continue  # a union tag such as 'nuclei'
            node = f.annotation
        elif typing.get_origin(node) in (list, tuple) and isinstance(part, int):
            node = typing.get_args(node)[0]
        else:
            return None
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
        else:
            cur = None
    return _unwrap(node, cur)


def _literal_choices(node: Any) -> list[str]:
    if typing.get_origin(node) is Literal:
        return [str(a) for a in typing.get_args(node)]
    return []


def _describe(err: dict, data: Any) -> tuple[tuple, str]:
    loc = tuple(err["loc"])
    path = _data_path(loc, data)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = loc[-1]
        parent = _schema_at(loc[:-1], data)
        allowed = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        hint = did_you_mean(key, allowed) or (f" (allowed: {', '.join(allowed)})" if allowed else "")
        return path, f"unknown key {key!r}{hint}"
    if kind == "missing":
        return path, f"required key {loc[-1]!r} is missing"
    if kind in ("literal_error", "enum"):
        choices = _literal_choices(_schema_at(loc, data))
        got = err.get("input")
        msg = f"{got!r} is not one of {', '.join(choices)}" if choices else err["msg"]
        if got == "nest" and path[-1:] == ("mode",):
            return path, msg + " — nesting is written as a 'nest:' list of insertions inside the host insertion (see README)"
        return path, msg + (did_you_mean(got, choices) if choices else "")
    if kind == "union_tag_invalid":
        tags = err.get("ctx", {}).get("expected_tags", "")
        got = err.get("ctx", {}).get("tag")
        choices = [t.strip(" '") for t in str(tags).split(",")]
        return path + ("dataset",), f"unknown dataset {got!r}, expected one of {tags}" + did_you_mean(got, choices)
    if kind == "union_tag_not_found":
        return path, "needs a 'dataset:' key (nuclei, shapes, folder, voc, coco or brain)"
    got = err.get("input")
    message = err["msg"].removeprefix("Value error, ").rstrip(".")
    if isinstance(got, (dict, list)) or kind == "value_error":
        return path, message
    return path, f"{message} (got {got!r})"


def parse_experiment(text: str, file: str = "<string>") -> Experiment:
    """Parse and schema-check experiment YAML text; raises :class:`ConfigError`."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"not valid YAML: {problem}", file, mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise ConfigError("the experiment file must be a YAML mapping (name:, task:, baseline: …)", file, 1)
    source = SourceMap(file)
    if root is not None:
        _node_lines(root, (), source.lines, file)
    try:
        cfg = ExperimentCfg.model_validate(data)
    except ValidationError as exc:
        # the first error in file order; an unknown key before a missing one (often its typo)
        errors = sorted(
            exc.errors(),
            key=lambda e: (source.line(_data_path(tuple(e["loc"]), data)) or 0, e["type"] != "extra_forbidden"),
        )
        path, message = _describe(errors[0], data)
        if path[:1] == ("insertions",) and len(path) > 1 and isinstance(data.get("insertions"), list):
            item = data["insertions"][path[1]]
            if isinstance(item, dict) and item.get("name"):
                message = f"insertion {item['name']!r}: {message}"
        more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise source.error(path, message + more) from None
    _check_cross_fields(cfg, source)
    return Experiment(cfg=cfg, source=source)


def _check_cross_fields(cfg: ExperimentCfg, source: SourceMap) -> None:
    seen: dict[str, int] = {}
    for i, ins in enumerate(cfg.insertions):
        if ins.name in seen:
            raise source.error(("insertions", i, "name"), f"insertion name {ins.name!r} is used twice (also insertions[{seen[ins.name]}]); names label table rows and must be unique")
        seen[ins.name] = i
    for i, subset in enumerate(cfg.ablation.subsets):
        for j, n in enumerate(subset):
            if n not in seen:
                raise source.error(("ablation", "subsets", i, j), f"no insertion is named {n!r}" + did_you_mean(n, seen))
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise source.error(("seeds",), f"seeds repeat ({cfg.seeds}); paired statistics need distinct seeds")
    if cfg.task == "instance" and cfg.data is not None and cfg.data.augment.scale is not None:
        raise source.error(("data", "augment", "scale"), SCALE_UNDONE_FOR_INSTANCES)
    known = TASK_METRICS[cfg.task]
    if cfg.metrics.primary is not None and cfg.metrics.primary not in known:
        raise source.error(("metrics", "primary"), f"unknown {cfg.task} metric {cfg.metrics.primary!r}" + did_you_mean(cfg.metrics.primary, known))
    for i, m in enumerate(cfg.metrics.report):
        if m not in known:
            raise source.error(("metrics", "report", i), f"unknown {cfg.task} metric {m!r}" + did_you_mean(m, known))


def with_overrides(exp: Experiment, baseline_args: dict[str, Any] | None = None, probe_size: Optional[tuple[int, int]] = None) -> Experiment:
    """A re-validated copy of ``exp`` with command-line overrides (``--arg``, ``--size``)."""
    data = exp.cfg.model_dump()
    data["baseline"]["args"].update(baseline_args or {})
    if probe_size is not None:
        data["probe"]["image_size"] = list(probe_size)
    try:
        cfg = ExperimentCfg.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{format_path(tuple(err['loc']))}: {err['msg']} (got {err.get('input')!r})", "command line") from None
    return Experiment(cfg=cfg, source=exp.source, path=exp.path)


def load_experiment(path: str | Path) -> Experiment:
    """Read and schema-check an experiment file (model-side checks come in :mod:`stitch.validate`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such experiment file (check the path; `ls experiments/` lists the examples)", str(p))
    exp = parse_experiment(p.read_text(encoding="utf-8"), str(p))
    exp.path = p
    return exp
