"""YAML text shared by several test files (a module, so parametrize lists can use it)."""

TINY_UNET = """\
name: tiny
task: segmentation
baseline:
  model: unet
  args: {in_channels: 3, num_classes: 3, base_width: 8}
probe: {image_size: [32, 32]}
"""
