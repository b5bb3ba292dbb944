# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both install into the active Python 3.11 environment (a venv is recommended).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STITCH := $(PYTHON) -m stitch

.PHONY: setup setup-test setup-tex setup-postgres setup-lint demo test test-fast lint report-example bench zoo-docs

# torch/torchvision first and pinned exactly, so no resolver ever pulls another torch.
# stardist and nilearn are installed only as data sources (the DSB2018 nuclei sample and the
# MNI ICBM152 template ship inside their wheels); --no-deps keeps their dependencies (TensorFlow …) out.
setup:
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps stardist==0.9.2 nilearn==0.14.1

# resnest is the official ResNeSt package, used only to check SplitAttention against it; --no-deps
# because its metadata asks for nose and an unpinned torch.
setup-test: setup setup-tex setup-postgres
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps resnest==0.0.5

# PostgreSQL from Debian's packages for the distributed sweep test (the test starts its own
# throwaway server on 127.0.0.1); where it cannot be installed that test is skipped with a message.
setup-postgres:
	@bash .ci/postgres.sh

# TeX and PDF tools for the tests that compile every table in a two-column article and IEEEtran
# (pdflatex, siunitx from texlive-science, IEEEtran from texlive-publishers) and check the figures'
# fonts (pdffonts from poppler-utils); Debian packages, as root. Where they cannot be installed,
# those tests skip with a message (the font check then reads the PDF itself).
setup-tex:
	@{ command -v pdflatex && kpsewhich siunitx.sty && kpsewhich IEEEtran.cls && command -v pdffonts; } >/dev/null 2>&1 \
	  || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	     texlive-latex-base texlive-latex-recommended texlive-science texlive-publishers poppler-utils >/dev/null; } \
	  || echo "TeX or poppler-utils could not be installed: the LaTeX compile tests will be skipped"

# The main job: train the baseline and the CoordAtt U-Net (3 seeds each) on the nuclei sample.
demo: setup
	$(STITCH) validate experiments/*.yaml
	$(STITCH) run experiments/unet_coordatt.yaml --quiet

# Style and types: ruff (lint + format check, settings in pyproject.toml) and mypy over stitch/ and
# modules_zoo/. `ruff format . && ruff check --fix .` mends most of what it reports.
setup-lint: setup
	$(PIP) install -q -e '.[lint]'

lint: setup-lint
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

test: setup-test
	$(PYTHON) -m pytest -q

test-fast: setup-test
	$(PYTHON) -m pytest -q -m "not slow"

# docs/zoo.md's module table, generated from the registry (tests/test_docs.py checks it is current).
zoo-docs:
	$(STITCH) zoo --markdown --into docs/zoo.md

# The example ablation report committed under reports/ (12 runs, then the tables and plots).
report-example: setup
	$(STITCH) run experiments/unet_ablation.yaml --quiet
	$(STITCH) report runs/unet_ablation --out reports/unet_ablation --standalone

# The benchmarks of bench/ on the CPU (minutes; not part of `make test`): harness overhead against a
# hand-written loop, and the data-wait share. Figures and commands: bench/RESULTS.md.
bench: setup
	$(PYTHON) bench/harness_overhead.py
	$(PYTHON) bench/data_wait.py
	$(PYTHON) bench/data_wait.py --cache memory
	$(PYTHON) bench/epoch_costs.py
	$(PYTHON) bench/coco_eval.py
