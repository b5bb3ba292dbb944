"""Image grids of input / ground truth / prediction (TensorBoard and ``stitch show``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.utils import make_grid, save_image


def palette(num_classes: int) -> torch.Tensor:
    """Distinct RGB colours in [0, 1] (Pascal VOC's bit-interleaved scheme); class 0 is black."""
    out = torch.zeros(max(num_classes, 256), 3)
    for c in range(out.shape[0]):
        r = g = b = 0
        cid = c
        for shift in range(7, -1, -1):
            r |= ((cid >> 0) & 1) << shift
            g |= ((cid >> 1) & 1) << shift
            b |= ((cid >> 2) & 1) << shift
            cid >>= 3
        out[c] = torch.tensor([r, g, b]) / 255.0
    if num_classes == 2:
        out[1] = torch.tensor([1.0, 1.0, 1.0])  # binary masks: white foreground
    return out


def colorize(mask: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``H x W`` labels -> ``3 x H x W`` colours (ignored pixels grey)."""
    pal = palette(num_classes)
    m = mask.long().cpu()
    ignored = m == ignore_index
    rgb = pal[m.clamp(0, pal.shape[0] - 1)].permute(2, 0, 1)
    rgb[:, ignored] = 0.5
    return rgb


def unnormalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Back to [0, 1] RGB for display (one-channel images become grey RGB)."""
    img = image.detach().cpu().float()
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    img = (img * s + m).clamp(0, 1)
    return img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3]


@torch.no_grad()
def prediction_grid(model: nn.Module, data: Any, n: int = 8, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows of (input, target, prediction) for the first ``n`` validation images."""
    if getattr(data, "coco_gt", None) is not None:
        return instance_grid(model, data, n, device)
    was_training = model.training
    model.eval()
    tiles = []
    for i in range(min(n, len(data.val))):
        item = data.val[i]
        logits = model(item["image"].unsqueeze(0).to(device))
        pred = logits.argmax(1)[0]
        tiles += [
            unnormalize(item["image"], data.mean, data.std),
            colorize(item["mask"], data.num_classes, data.ignore_index),
            colorize(pred, data.num_classes, data.ignore_index),
        ]
    model.train(was_training)
    return make_grid(tiles, nrow=3, padding=2, pad_value=1.0)


def draw_instances(image: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor, labels: list[str]) -> torch.Tensor:
    """``image`` (3xHxW in [0, 1]) with each object's mask filled (alpha 0.45) and its box and
    label drawn, one colour per object; returns 3xHxW in [0, 1]."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = (image.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
    if len(boxes):
        colours = [tuple(int(v * 255) for v in palette(len(boxes) + 2)[k + 1]) for k in range(len(boxes))]
        canvas = draw_segmentation_masks(canvas, masks.cpu().bool(), alpha=0.45, colors=colours)
        canvas = draw_bounding_boxes(canvas, boxes.cpu(), labels=labels, colors=colours, width=1)
    return canvas.float() / 255


@torch.no_grad()
def instance_grid(model: nn.Module, data: Any, n: int = 8, device: torch.device | str = "cpu", score_threshold: float = 0.5) -> torch.Tensor:
    """Rows of (image, ground-truth objects, predicted objects with score >= ``score_threshold``)
    for the first ``n`` validation images of an instance dataset."""
    was_training = model.training
    model.eval()
    names = data.class_names
    tiles = []
    for i in range(min(n, len(data.val))):
        item = data.val[i]
        image, target = item["image"], item["target"]
        out = model([image.to(device)])[0]
        keep = out["scores"].cpu() >= score_threshold
        pred_masks = out["masks"].cpu()[keep][:, 0] > 0.5
        pred_labels = [f"{names[int(c)]} {float(s):.2f}" for c, s in zip(out["labels"].cpu()[keep], out["scores"].cpu()[keep])]
        rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
        tiles += [
            rgb.cpu(),
            draw_instances(rgb, target["boxes"], target["masks"], [names[int(c)] for c in target["labels"]]),
            draw_instances(rgb, out["boxes"].cpu()[keep], pred_masks, pred_labels),
        ]
    model.train(was_training)
    size = max(t.shape[1] for t in tiles), max(t.shape[2] for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, size[1] - t.shape[2], 0, size[0] - t.shape[1]), value=1.0) for t in tiles]
    return make_grid(tiles, nrow=3, padding=2, pad_value=1.0)


def show_run(run_dir: Path, variant: str | None = None, seed: int | None = None, n: int = 8, out: Path | None = None) -> Path:
    """Write a PNG grid of images, ground truth and predictions of a trained variant (best checkpoint)."""
    from stitch.build import stitch_variant
    from stitch.config import load_experiment
    from stitch.errors import StitchError, did_you_mean, exception_text
    from stitch.run import experiment_data, plan_runs
    from stitch.store import ResultStore, run_dir_files

    run_dir = Path(run_dir)
    exp_file, db = run_dir_files(run_dir)
    if out is not None and not out.parent.is_dir():
        raise StitchError(f"--output {out}: the folder {out.parent} does not exist")
    exp = load_experiment(exp_file)
    data = experiment_data(exp)
    # only runs of the experiment file as it is now: an older config's checkpoint would not fit
    plans = {p.run_id: p for p in plan_runs(exp, epochs=None)}
    with ResultStore(db) as store:
        rows = [r for r in store.rows() if r.run_id in plans and (run_dir / "ckpt" / r.run_id / "best.pt").is_file()]
    if not rows:
        raise StitchError(f"{run_dir} has no trained run of its experiment.yaml with a best checkpoint (run `stitch run` first)")
    if variant is not None:
        names = sorted({r.variant for r in rows})
        chosen = [r for r in rows if variant.lower() in (r.variant.lower(), r.variant_slug)]
        if not chosen:
            raise StitchError(f"no trained variant {variant!r} in {run_dir}" + (did_you_mean(variant, names) or f" (variants: {', '.join(names)})"))
        rows = chosen
    if seed is not None:
        rows = [r for r in rows if r.seed == seed]
        if not rows:
            raise StitchError(f"no trained run with seed {seed} for that variant in {run_dir}")
    row = rows[0]
    model = stitch_variant(exp, plans[row.run_id].variant, row.seed).model
    best = run_dir / "ckpt" / row.run_id / "best.pt"
    try:
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["model"])
    except Exception as exc:
        raise StitchError(f"{best}: cannot be read ({exception_text(exc)}); `stitch run --force` retrains it") from None
    grid = prediction_grid(model, data, n=n)
    out = out or run_dir / f"show_{row.variant_slug}_s{row.seed}.png"
    tmp = out.with_name(f".{out.name}.tmp.png")
    save_image(grid, tmp)
    tmp.replace(out)
    return out
