"""What a variant costs: parameters, FLOPs and inference latency, and the deltas vs the baseline.

- **Parameters**: every parameter of the stitched model (:func:`stitch.surgery.count_params`,
  the number ``stitch validate`` and the results database show).
- **FLOPs**: :class:`torch.utils.flop_counter.FlopCounterMode` over one eval-mode forward under
  ``torch.no_grad`` with **batch size 1** at the experiment's input size: ``data.image_size`` when
  the experiment has data (what training used), else ``probe.image_size``, else the baseline's
  default; channels from ``baseline.args.in_channels`` (U-Net default 3; Mask R-CNN takes RGB).
  PyTorch counts a multiply-add as **2 FLOPs** and counts only operators it has formulas for
  (convolutions, matrix products, attention); element-wise work (BatchNorm, activations, pooling,
  sigmoid gates) is not counted. Tools such as ``thop``/``ptflops`` report MACs, half of this.
- **FLOPs (all ops)** (``flops_all``): the same forward counted with element-wise work, pooling,
  reductions, normalisation and softmax as well, in the convention of :mod:`stitch.flops`
  (1 FLOP per output element of an element-wise operator, ...), so a gate or an attention module
  that adds little convolution work still shows its cost.
- **Latency**: the median wall time of ``repeats`` forwards after ``warmup`` forwards, eval mode,
  ``torch.no_grad``, batch size 1 (stated in every record), on a given device (CUDA is
  synchronised around each forward). CPU latency depends on the machine and on
  ``torch.get_num_threads()``, which is recorded too.
- **Mask R-CNN**: FLOPs are counted for an eval-mode forward on one ``3 x H x W`` image. The
  model's own transform resizes it so the short side is ``min_size`` (800 by default), and the
  RoI heads' cost grows with the number of proposals and detections, which depends on the
  weights: the count is for the seed's initial weights (an untrained model usually returns the
  maximum of 100 detections, so the mask head is counted at its worst case). ``detections`` in the
  record says how many there were. RoIAlign and NMS have no FLOP formula and are not counted.

Costs are computed on the first seed's initialisation; parameters and (for the U-Net) FLOPs do
not depend on the seed. :func:`cached_costs` keeps them in ``costs.json`` in the run directory,
keyed by variant slug and a hash of everything that determines them (experiment settings of the
variant, input size, seed, torch version and, for latency, device, threads, warm-up and repeats),
so a report is cheap to regenerate. Latency is cached with the rest: it is a measurement of the
machine at that moment (another busy process slows it down); delete ``costs.json`` to measure again.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stitch.build import baseline_of, stitch_variant
from stitch.config import Experiment
from stitch.devices import to_device
from stitch.fileio import write_text
from stitch.flops import count_flops
from stitch.hashing import digest
from stitch.model_mode import eval_mode
from stitch.plan import Variant, variant_insertions
from stitch.runs import with_defaults

COSTS_VERSION = 1


@dataclass
class Costs:
    """The costs of one variant (``*_delta`` against the baseline; None where unknown)."""

    variant: str
    params: int
    flops: int | None
    latency_ms: float | None = None
    params_delta: int | None = None
    flops_delta: int | None = None
    flops_all: int | None = None  # FLOPs (all ops): stitch.flops' convention
    flops_all_delta: int | None = None
    latency_delta_ms: float | None = None
    image_size: tuple[int, int] = (0, 0)
    in_channels: int = 3
    batch_size: int = 1
    device: str = "cpu"
    threads: int = 1
    warmup: int = 0
    repeats: int = 0
    detections: int | None = None  # Mask R-CNN: detections in the counted forward
    note: str = ""
    key: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Costs:
        d = dict(d)
        d["image_size"] = tuple(d.get("image_size") or (0, 0))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# --------------------------------------------------------------------------- measuring one model
def measure_latency(
    model: nn.Module, inputs: Any, device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 20
) -> float:
    """Median milliseconds of ``repeats`` forwards after ``warmup`` forwards (eval, no_grad).

    ``model`` and ``inputs`` are moved to ``device`` (the model in place); mode restored.
    """
    dev = torch.device(device)
    model.to(dev)
    x = to_device(inputs, dev)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    times = []
    with eval_mode(model), torch.no_grad():
        for _ in range(max(0, warmup)):
            model(x)
        sync()
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


# --------------------------------------------------------------------------- experiment side
def input_size(exp: Experiment) -> tuple[int, int]:
    """The cost input's (H, W): ``data.image_size``, else ``probe.image_size``, else the default."""
    cfg = exp.cfg
    if cfg.data is not None:
        return tuple(cfg.data.image_size)  # type: ignore[return-value]
    if cfg.probe.image_size:
        return tuple(cfg.probe.image_size)  # type: ignore[return-value]
    return tuple(baseline_of(exp).default_image_size)  # type: ignore[return-value]


def example_input(exp: Experiment, image_size: tuple[int, int] | None = None, batch_size: int = 1) -> Any:
    """What the model's inference forward takes: a ``B x C x H x W`` tensor (segmentation) or a
    list of ``3 x H x W`` images (Mask R-CNN). Deterministic (generator seeded with 0)."""
    h, w = image_size or input_size(exp)
    g = torch.Generator().manual_seed(0)
    if exp.cfg.task == "instance":
        return [torch.rand(3, h, w, generator=g) for _ in range(batch_size)]
    args = with_defaults(baseline_of(exp).build, exp.cfg.baseline.args)  # the builder's own default
    c = int(args.get("in_channels", 3))
    return torch.rand(batch_size, c, h, w, generator=g)


def costs_key(
    exp: Experiment,
    variant: Variant,
    seed: int,
    image_size: tuple[int, int],
    device: str,
    latency: bool,
    warmup: int,
    repeats: int,
) -> str:
    """``<slug>:<hash>``: the hash covers everything that changes the numbers."""
    cfg = exp.cfg.model_dump(mode="json")
    what = {
        "version": COSTS_VERSION,
        "task": cfg["task"],
        "baseline": cfg["baseline"],
        "insertions": [i.model_dump(mode="json") for _, i in variant_insertions(exp.cfg, variant)],
        "probe": cfg["probe"],
        "seed": seed,
        "image_size": list(image_size),
        "latency": [device, warmup, repeats, torch.get_num_threads()] if latency else None,
        "torch": torch.__version__,
    }
    return f"{variant.slug}:{digest(what, 16)}"


def variant_costs(
    exp: Experiment,
    variant: Variant,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    device: str = "cpu",
    latency: bool = True,
    warmup: int = 3,
    repeats: int = 20,
) -> Costs:
    """Build ``variant`` under ``seed`` (:func:`stitch.build.stitch_variant`) and measure it (no deltas)."""
    size = tuple(image_size or input_size(exp))
    built = stitch_variant(exp, variant, seed)
    model = built.model.eval()
    x = example_input(exp, size)  # type: ignore[arg-type]
    out = Costs(
        variant=variant.name,
        params=built.params,
        flops=None,
        image_size=size,  # type: ignore[arg-type]
        in_channels=3 if exp.cfg.task == "instance" else int(exp.cfg.baseline.args.get("in_channels", 3)),
        device=device,
        threads=torch.get_num_threads(),
    )
    notes = []
    try:
        out.flops = count_flops(model, x)
        out.flops_all = count_flops(model, x, all_ops=True)
    except Exception as exc:  # an operator FlopCounterMode cannot trace: keep the rest
        notes.append(f"FLOPs not counted: {type(exc).__name__}: {exc}")
    if exp.cfg.task == "instance":
        with torch.no_grad():
            dets = model(x)
        out.detections = len(dets[0]["boxes"]) if dets and "boxes" in dets[0] else None
        notes.append(
            f"Mask R-CNN FLOPs at {out.detections} detections; the input is resized to min_size by the model"
        )
    if latency:
        out.latency_ms = measure_latency(model, x, device, warmup, repeats)
        out.warmup, out.repeats = warmup, repeats
    out.note = "; ".join(notes)
    return out


def flops_all(exp: Experiment, variant: Variant, seed: int, image_size: tuple[int, int]) -> int | None:
    """FLOPs (all ops) of ``variant`` built under ``seed`` (None when they cannot be counted)."""
    model = stitch_variant(exp, variant, seed).model
    try:
        return count_flops(model, example_input(exp, image_size), all_ops=True)
    except Exception:  # as in variant_costs: an operator FlopCounterMode cannot trace
        return None


def with_deltas(costs: dict[str, Costs], reference: str | None) -> dict[str, Costs]:
    """Fill ``*_delta`` of every entry against ``costs[reference]`` (in place; returned)."""
    ref = costs.get(reference) if reference else None
    if ref is None:
        return costs
    for c in costs.values():
        c.params_delta = c.params - ref.params
        c.flops_delta = None if c.flops is None or ref.flops is None else c.flops - ref.flops
        c.flops_all_delta = (
            None if c.flops_all is None or ref.flops_all is None else c.flops_all - ref.flops_all
        )
        c.latency_delta_ms = (
            None if c.latency_ms is None or ref.latency_ms is None else c.latency_ms - ref.latency_ms
        )
    return costs


def cached_costs(
    exp: Experiment,
    variants: Sequence[Variant],
    cache: Path,
    seed: int = 0,
    reference: str | None = "Baseline",
    image_size: tuple[int, int] | None = None,
    device: str = "cpu",
    latency: bool = True,
    warmup: int = 3,
    repeats: int = 20,
) -> tuple[dict[str, Costs], dict[str, str]]:
    """Costs of every variant (by name), read from / added to the JSON file ``cache``, with deltas
    against ``reference``; and ``{variant: why its costs are missing}`` for variants whose model
    cannot be built or measured (they are left out, the rest goes on)."""
    size = tuple(image_size or input_size(exp))
    store: dict[str, Any] = {"version": COSTS_VERSION, "entries": {}}
    if cache.is_file():
        try:
            loaded = json.loads(cache.read_text())
            if (
                isinstance(loaded, dict)
                and loaded.get("version") == COSTS_VERSION
                and isinstance(loaded.get("entries"), dict)
            ):
                store = loaded
        except (OSError, ValueError):
            pass  # a damaged cache (or one of another shape) is recomputed
    out: dict[str, Costs] = {}
    errors: dict[str, str] = {}
    changed = False
    for v in variants:
        key = costs_key(exp, v, seed, size, device, latency, warmup, repeats)  # type: ignore[arg-type]
        entry = store["entries"].get(key)
        if entry is None:
            try:
                c = variant_costs(exp, v, seed, size, device, latency, warmup, repeats)  # type: ignore[arg-type]
            except Exception as exc:
                errors[v.name] = f"{type(exc).__name__}: {exc}"
                continue
            c.key = key
            store["entries"][key] = c.to_json()
            changed = True
        else:
            c = Costs.from_json(entry)
            if "flops_all" not in entry:  # written before FLOPs (all ops) existed: add them
                c.flops_all = flops_all(exp, v, seed, size)  # type: ignore[arg-type]
                entry["flops_all"] = c.flops_all
                changed = True
        c.variant = v.name
        out[v.name] = c
    if changed:
        write_text(cache, json.dumps(store, indent=1, sort_keys=True))
    return with_deltas(out, reference), errors
