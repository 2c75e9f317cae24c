# ddi-fpga: every target creates the project virtual environment (.venv) by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/resnet8-w4a4

.PHONY: setup test lint format reproduce bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: nothing later may replace it with another (e.g. multi-GB CUDA) build.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)  ## lint, then the test suite (Vivado/Docker/board/GPU/slow tests deselected)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

reproduce: $(STAMP)  ## the main job (today: train + evaluate the small default models)
	$(PY) -m train.reproduce --out $(OUT)

bench: $(STAMP)  ## benchmarks; results under measurements/bench/
	$(PY) -m train.bench --out measurements/bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
