# ddi-fpga: every target creates the project virtual environment (.venv) by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/table1
TRAIN_OUT ?= runs/resnet8-w4a4

.PHONY: setup test lint format reproduce train bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: nothing later may replace it with another (e.g. multi-GB CUDA) build.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,finn]'
	# FINN without its own pins (brevitas 0.13.0, CUDA torch); its run-time deps are in [finn].
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps finn-plus==1.6.1
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

reproduce: $(STAMP)  ## the main job: Table I on the emulated board and simulated meter
	$(PY) -m measurements.reproduce --out $(OUT)

train: $(STAMP)  ## train + evaluate the small default models afresh (~55 min on 2 cores)
	$(PY) -m train.reproduce --out $(TRAIN_OUT)

bench: $(STAMP)  ## benchmarks; results under measurements/bench/
	$(PY) -m train.bench --out measurements/bench
	$(PY) -m export.bench --out measurements/bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
