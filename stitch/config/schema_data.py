"""The ``data:`` block: augmentation, the keys every dataset takes, and one class per dataset.

``DataCfg`` is the union of the dataset classes, told apart by their ``dataset:`` key.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from stitch.config.base import Strict

#: the largest image side (pixels) a sample or the probe may have: bigger ones would not fit in memory
MAX_SIDE = 8192


class AugmentCfg(Strict):
    """Joint image/mask augmentation of the training split (validation is never augmented).

    Segmentation applies, in this order: ``rotate90`` (a random multiple of 90 degrees), ``hflip``/``vflip``
    (each with probability 0.5), ``scale`` (resize so the image fits ``image_size`` times a factor
    drawn uniformly from ``[lo, hi]``, then a random crop, padded where the image is smaller),
    ``color_jitter`` (brightness, contrast and, for RGB, saturation by up to this fraction; hue by a
    quarter of it). The mask follows every geometric step (nearest neighbour), never the colour.

    The instance task applies ``rotate90``, the flips and ``color_jitter`` (boxes and masks follow
    the geometric steps) and refuses ``scale``: Mask R-CNN resizes every image to its ``min_size``
    itself, undoing a random rescale; scale jitter there is ``baseline.args.min_size`` given as a
    list (see :data:`stitch.config.SCALE_UNDONE_FOR_INSTANCES`).
    """

    hflip: bool = True
    vflip: bool = False
    rotate90: bool = False
    scale: tuple[Annotated[float, Field(gt=0, le=8)], Annotated[float, Field(gt=0, le=8)]] | None = None
    color_jitter: Annotated[float, Field(ge=0, le=1)] = 0.0

    @field_validator("scale")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"scale is [low, high] with low <= high, got {list(v)}")
        return v


class DataBase(Strict):
    """Keys every dataset takes.

    - ``image_size``: ``[H, W]`` (or one int) of every sample (the U-Net baseline needs both
      divisible by 16; ``stitch validate`` says so). Training crops/pads to it (see ``augment``);
      validation resizes keeping the aspect ratio so the image fits, then pads bottom/right
      (image 0, mask ``ignore_index``).
    - ``normalize``: ``imagenet`` (ImageNet mean/std; for 1-channel images the channel averages
      0.449/0.226), ``none`` (pixels scaled to [0, 1] only), or ``[[mean...], [std...]]`` on the
      [0, 1] scale, one value per image channel.
    - ``ignore_index``: the mask value the loss and metrics skip (padding, VOC borders, COCO crowd
      regions); must not be a class index.
    - ``cache``: ``none`` (read and decode every sample each time it is used), ``memory`` (every
      split decoded once, kept in memory as uint8) or ``device`` (segmentation: the decoded
      training split on the run's device, augmented there in batches; validation and test in
      memory; needs ``num_workers: 0``, whose results it gives). Never changes results or run ids
      (see :mod:`stitch.data.cache`).

    Instance task (``task: instance``; datasets ``coco``, ``voc``, ``nuclei``, ``shapes``): the
    images are not resized to ``image_size`` (the Mask R-CNN's own ``min_size``/``max_size`` are
    the resize targets; ``shapes`` still generates its images at ``image_size``); validation
    images keep their native size; training images are augmented jointly with their boxes and
    masks (``rotate90``, flips, ``color_jitter``; ``augment.scale`` is an error, see
    :class:`AugmentCfg`); ``normalize`` and ``ignore_index`` are not used (Mask R-CNN normalises
    inside the model). See :mod:`stitch.data.instance`.
    """

    image_size: tuple[Annotated[int, Field(gt=0, le=MAX_SIDE)], Annotated[int, Field(gt=0, le=MAX_SIDE)]] = (
        128,
        128,
    )
    augment: AugmentCfg = Field(default_factory=AugmentCfg)
    normalize: Literal["imagenet", "none"] | tuple[list[float], list[float]] = "imagenet"
    ignore_index: int = 255
    num_workers: Annotated[int, Field(ge=0)] = 0
    cache: Literal["none", "memory", "device"] = "none"

    @model_validator(mode="after")
    def _device_cache_without_workers(self) -> DataBase:
        if self.cache == "device" and self.num_workers:
            raise ValueError(
                "cache: device augments in the main process, which draws what num_workers: 0 draws; "
                "set num_workers: 0, or use cache: memory with workers"
            )
        return self

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("normalize", mode="before")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            numbers = [x for part in v if isinstance(part, (list, tuple)) for x in part]
            if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
                raise ValueError(f"normalize mean/std must be finite numbers, got {list(v)}")
        return v

    @field_validator("normalize")
    @classmethod
    def _mean_std(cls, v: Any) -> Any:
        if isinstance(v, tuple):
            mean, std = v
            if not mean or len(mean) != len(std):
                raise ValueError(
                    f"normalize is [[mean...], [std...]] with one value per channel in each, got {list(v)}"
                )
            if any(s <= 0 for s in std):
                raise ValueError(f"normalize std values must be > 0, got {std}")
            if any(abs(m) > 1 for m in mean) or any(s > 1 for s in std):
                raise ValueError(
                    f"normalize mean/std are on the [0, 1] pixel scale (e.g. 0.485, not 123.7), got {list(v)}"
                )
        return v


class NucleiData(DataBase):
    """Real DSB2018 nuclei sample shipped in the stardist wheel (512x512, 125 nuclei), cut into tiles.

    Split without leakage: rows 0-255 are train (tiles of ``tile`` pixels, stride ``tile // 2``),
    rows 256-383 val and rows 384-511 test (non-overlapping tiles); ``test_region: false`` gives
    the first layout (rows 0-383 train, 384-511 val, no test). Prepared once under the cache
    directory (``root``, else ``$STITCH_DATA``, else ``~/.cache/stitch``). Needs
    ``pip install --no-deps stardist==0.9.2``. Instance task: the COCO JSON files written beside
    the tiles (one category, RLE masks).
    """

    dataset: Literal["nuclei"]
    root: str | None = None
    tile: Annotated[int, Field(ge=16, le=128)] = 128  # the val band is 128 rows high
    test_region: bool = True


class ShapesData(DataBase):
    """Procedurally generated RGB images and index masks (seeded, written once as PNG files).

    Class 0 is background; classes 1.. are, in order: circle, square, triangle, cross, ring, star,
    hexagon (``num_classes`` 2-8). Images are ``image_size``; the last ``test_fraction`` of the
    images (at least one when above 0) are the test split, the ``val_fraction`` before them (at
    least one) the val split, the rest train (:meth:`split_counts`). Instance task: a separate set
    (2-5 possibly overlapping objects per image, COCO JSON with RLE masks of the visible parts).
    """

    dataset: Literal["shapes"]
    root: str | None = None
    num_images: Annotated[int, Field(gt=1)] = 64
    num_classes: Annotated[int, Field(ge=2, le=8)] = 3
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.25
    seed: int = 0

    def split_counts(self) -> tuple[int, int, int]:
        """``(train, val, test)`` image counts: test ``round(n * test_fraction)`` (at least one when
        the fraction is above 0), val ``round(n * val_fraction)`` (at least one, at most what leaves
        one train image)."""
        n = self.num_images
        n_test = max(1, round(n * self.test_fraction)) if self.test_fraction > 0 else 0
        n_val = min(n - n_test - 1, max(1, round(n * self.val_fraction)))
        return n - n_val - n_test, n_val, n_test

    @model_validator(mode="after")
    def _train_left(self) -> ShapesData:
        _, n_val, n_test = self.split_counts()
        if n_val < 1:
            raise ValueError(
                f"num_images {self.num_images} with test_fraction {self.test_fraction} ({n_test} test) "
                "leaves no image for train and val; raise num_images or lower test_fraction "
                "(0: no test split)"
            )
        return self


class FolderData(DataBase):
    """``images/`` + ``masks/`` (PNG index masks, paired by file stem), split by list files or a seeded ratio.

    - ``train_list`` / ``val_list``: text files (relative to ``root``), one stem per line; with only
      one of them the other split is every remaining pair. Without lists, ``val_fraction`` of the
      pairs (seeded by ``split_seed``) are val.
    - ``test_list`` (a file like the others) or ``test_fraction`` (seeded by ``split_seed``, drawn
      before ``val_fraction`` is applied to the rest; only without ``train_list``/``val_list``):
      the held-out test split; its stems are never train or val ("every remaining pair" excludes
      them). Default: no test split.
    - ``num_classes``: when unset, every mask is read once at build time and the largest label + 1
      is used; when set, labels are checked as each mask is loaded.
    - ``class_names``: optional, ``num_classes`` names (default ``class0``, ``class1`` …).
    - ``channels``: 1 (grey) or 3 (RGB) — every image is converted; default: the first image's.
    """

    dataset: Literal["folder"]
    root: str
    images: str = "images"
    masks: str = "masks"
    train_list: str | None = None
    val_list: str | None = None
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    split_seed: int = 0
    test_list: str | None = None
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    num_classes: Annotated[int, Field(ge=2)] | None = None
    class_names: list[str] | None = None
    channels: Literal[1, 3] | None = None

    @model_validator(mode="after")
    def _one_test_source(self) -> FolderData:
        if self.test_fraction and self.test_list:
            raise ValueError("give test_list or test_fraction, not both")
        if self.test_fraction and (self.train_list or self.val_list):
            raise ValueError(
                "test_fraction splits by a seeded fraction, train_list/val_list by files; with the lists "
                "give the test stems as a test_list too"
            )
        return self

    @model_validator(mode="after")
    def _names_match(self) -> FolderData:
        if (
            self.class_names is not None
            and self.num_classes is not None
            and len(self.class_names) != self.num_classes
        ):
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}"
            )
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
    Test split (default none; VOC's own test set has no public masks): ``test_split`` (another
    ``ImageSets/Segmentation`` list) or ``test_fraction`` of the train list's images, a fixed
    seeded draw (see :mod:`stitch.data.voc`).
    """

    dataset: Literal["voc"]
    root: str
    train_split: str = "train"
    val_split: str = "val"
    test_split: str | None = None
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    masks: str = "SegmentationClass"
    objects: str = "SegmentationObject"

    @model_validator(mode="after")
    def _one_test_source(self) -> VOCData:
        if self.test_fraction and self.test_split:
            raise ValueError("give test_split or test_fraction, not both")
        return self


class CocoData(DataBase):
    """COCO instances JSON; for segmentation the class masks are rendered with pycocotools.

    Category ids map to 1..K in increasing id order (0 is background); crowd regions become
    ``ignore_index``; larger objects are drawn first so small ones stay visible. Paths are
    relative to ``root``; the defaults fit a COCO 2017 download. Instance task: polygon and RLE
    objects, crowd regions kept for evaluation only (see :mod:`stitch.data.instance`).
    Test split (default none): ``test_annotations`` with its ``test_images`` folder (both needed),
    or ``test_fraction`` of the train file's images, a fixed seeded draw (see :mod:`stitch.data.coco`).
    """

    dataset: Literal["coco"]
    root: str
    train_annotations: str = "annotations/instances_train2017.json"
    val_annotations: str = "annotations/instances_val2017.json"
    train_images: str = "train2017"
    val_images: str = "val2017"
    test_annotations: str | None = None
    test_images: str | None = None
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _one_test_source(self) -> CocoData:
        if bool(self.test_annotations) != bool(self.test_images):
            raise ValueError(
                "test_annotations and test_images go together (the JSON and the folder its file_name paths "
                "are relative to); give both or neither"
            )
        if self.test_fraction and self.test_annotations:
            raise ValueError("give test_annotations/test_images or test_fraction, not both")
        return self


class BrainData(DataBase):
    """Axial slices of the MNI ICBM152 2009a template shipped in the nilearn wheel.

    T1 image, labels background / grey matter / white matter (the larger tissue probability when
    above 0.5). Fixed train/val/test bands along z (documented in ``stitch.data.brain``);
    ``test_region: false`` gives the first layout (train/val only, the run ids of before). Needs
    ``pip install --no-deps nilearn==0.14.1`` and ``pip install nibabel``.
    """

    dataset: Literal["brain"]
    root: str | None = None
    test_region: bool = True


DataCfg = Annotated[
    NucleiData | ShapesData | FolderData | VOCData | CocoData | BrainData,
    Field(discriminator="dataset"),
]
