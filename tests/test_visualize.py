"""The TensorBoard / ``stitch show`` image grid: the palette, the overlays, the frame and the
batched prediction pass."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import TypeAdapter
from torch import nn
from torchvision.utils import make_grid

from stitch.config import DataCfg
from stitch.data import build_data
from stitch.visualize import BORDER_VALUE, framed_grid, overlay, palette, prediction_grid, unnormalize


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
            image = unnormalize(item["image"], data.mean, data.std)
            tiles += [
                image,
                overlay(image, item["mask"], data.num_classes, data.ignore_index),
                overlay(image, pred, data.num_classes, data.ignore_index),
            ]
    assert torch.equal(grid, make_grid(tiles, nrow=3, padding=3, pad_value=BORDER_VALUE))


def test_an_all_foreground_binary_prediction_stays_visible_on_a_white_image() -> None:
    """Issue 15: a binary mask used to be drawn white on the grid's white padding. Now the class
    is tinted over the image (background and ignored pixels as the overlay says) and the panels
    are framed in grey."""
    white = torch.ones(3, 4, 4)
    mask = torch.ones(4, 4, dtype=torch.long)
    mask[0, 0], mask[0, 1] = 0, 255
    drawn = overlay(white, mask, num_classes=2)
    assert torch.equal(drawn[:, 0, 0], white[:, 0, 0])  # background: the image as it is
    assert torch.allclose(drawn[:, 0, 1], torch.tensor([0.75, 0.75, 0.75]))  # ignored: grey tint
    foreground = drawn[:, 1:, :].reshape(3, -1)
    assert (foreground[2] < 0.6).all() and (foreground[0] > 0.9).all()  # orange, not white
    grid = framed_grid([white, drawn, drawn])
    frame = torch.cat([grid[:, :3, :].reshape(3, -1), grid[:, :, 7:10].reshape(3, -1)], 1)
    assert torch.equal(frame, torch.full_like(frame, BORDER_VALUE)) and BORDER_VALUE < 1  # grey, not white
