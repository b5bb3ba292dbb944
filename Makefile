# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both install into the active Python 3.11 environment (a venv is recommended).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STITCH := $(PYTHON) -m stitch

.PHONY: setup setup-test demo test test-fast

# torch/torchvision first and pinned exactly, so no resolver ever pulls another torch.
setup:
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e .

# resnest is the official ResNeSt package, used only to check SplitAttention against it; --no-deps
# because its metadata asks for nose and an unpinned torch.
setup-test: setup
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps resnest==0.0.5

demo: setup
	$(STITCH) zoo
	$(STITCH) points unet --arg base_width=32 --size 128 128
	$(STITCH) points maskrcnn --arg backbone=resnet50 --arg min_size=256 --arg max_size=256 --size 256 256
	$(STITCH) validate experiments/*.yaml

test: setup-test
	$(PYTHON) -m pytest -q

test-fast: setup-test
	$(PYTHON) -m pytest -q -m "not slow"
