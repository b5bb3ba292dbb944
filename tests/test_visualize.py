"""The TensorBoard / ``stitch show`` image grid: the palette and the batched prediction pass."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import TypeAdapter
from torch import nn
from torchvision.utils import make_grid

from stitch.config import DataCfg
from stitch.data import build_data
from stitch.visualize import colorize, palette, prediction_grid, unnormalize


def test_palette_is_pascal_voc_and_each_call_gets_its_own_copy() -> None:
    voc = palette(21) * 255
    assert voc[0].tolist() == [0, 0, 0]
    assert voc[1].tolist() == [128, 0, 0]  # aeroplane
    assert voc[15].tolist() == [192, 128, 128]  # person
    assert palette(2)[1].tolist() == [1.0, 1.0, 1.0]  # binary: white foreground
    mine = palette(3)
    mine[0] = 0.7
    assert palette(3)[0].tolist() == [0.0, 0.0, 0.0]


def test_the_grid_predicts_in_one_batch_what_each_image_alone_predicts(tmp_path: Path) -> None:
    cfg = TypeAdapter(DataCfg).validate_python(
        {"dataset": "shapes", "num_images": 12, "image_size": 32, "num_classes": 3}
    )
    data = build_data(cfg, tmp_path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1))
    model.train()
    grid = prediction_grid(model, data, n=3)
    assert model.training  # put back as it was
    tiles = []
    with torch.no_grad():
        model.eval()
        for i in range(3):
            item = data.val[i]
            pred = model(item["image"].unsqueeze(0)).argmax(1)[0]
            tiles += [
                unnormalize(item["image"], data.mean, data.std),
                colorize(item["mask"], data.num_classes, data.ignore_index),
                colorize(pred, data.num_classes, data.ignore_index),
            ]
    assert torch.equal(grid, make_grid(tiles, nrow=3, padding=2, pad_value=1.0))
