"""YAML text shared by several test files (a module, so parametrize lists can use it)."""

TINY_UNET = """\
name: tiny
task: segmentation
baseline:
  model: unet
  args: {in_channels: 3, num_classes: 3, base_width: 8}
probe: {image_size: [32, 32]}
"""


def tiny_shapes_unet(name: str, data_root: object, epochs: int = 2) -> str:
    """Header of a trainable experiment: a width-4 U-Net on 16 generated 32x32 ``shapes``
    images (cached under ``data_root``), deterministic; callers append insertions, sweep …"""
    return f"""\
name: {name}
task: segmentation
baseline:
  model: unet
  args: {{base_width: 4}}
data:
  dataset: shapes
  root: {data_root}
  num_images: 16
  image_size: [32, 32]
  num_classes: 3
train:
  epochs: {epochs}
  batch_size: 4
  deterministic: true
"""
