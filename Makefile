# ddi-fpga: every target creates the project virtual environment (.venv) by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/table1
TRAIN_OUT ?= measurements/train/resnet20-w4a4

.PHONY: setup test arm-root old-numpy lint format reproduce train bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: nothing later may replace it with another (e.g. multi-GB CUDA) build.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[train,dev,finn]'
	# FINN without its own pins (brevitas 0.13.0, CUDA torch); its run-time deps are in [finn].
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps finn-plus==1.6.1
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP) arm-root old-numpy  ## lint, then the test suite (Vivado/Docker/board/GPU/slow tests deselected)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

arm-root:  ## Debian's armhf python3 + numpy and qemu-arm-static for tests/arm (needs root + apt)
	bash tests/arm/prepare.sh

old-numpy: $(STAMP)  ## a venv with numpy 1.23.2 (the oldest for CPython 3.11) + pyserial (needs PyPI)
	$(PY) -m tests.fpga.old_numpy_env

lint: $(STAMP)
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

reproduce: $(STAMP)  ## the main job: Table I on the emulated board and simulated meter
	$(PY) -m measurements.reproduce --out $(OUT)

train: $(STAMP)  ## the training recipe (docs/training.md): ~5 CPU-hours on 2 cores, resumes where it stopped
	$(PY) -m train.reproduce --out $(TRAIN_OUT)

bench: $(STAMP)  ## benchmarks; results under measurements/bench/
	$(PY) -m train.bench --out measurements/bench
	$(PY) -m export.bench --out measurements/bench
	$(PY) -m wire.bench --out measurements/bench
	$(PY) -m fpga.board.arm_bench --out measurements/bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# --- the overlay bitstream: the FINN flow in Docker with the user's Vivado mounted (docs/bitstream.md) ---
IMAGE ?= ddi-fpga:latest
BUNDLE ?=
VIVADO ?= $(XILINX_VIVADO)
XILINX_ROOT ?= $(abspath $(VIVADO)/../..)
BITSTREAM_OUT ?= runs/bitstream
BITSTREAM_ARGS ?=
.PHONY: docker-image bitstream

docker-image:  ## build the flow's image (Vivado is mounted at run time, not installed)
	@docker info >/dev/null 2>&1 || { echo "Docker not available: install Docker and start its daemon (docker info fails)" >&2; exit 1; }
	docker build -t $(IMAGE) .

bitstream:  ## the ZedBoard overlay of BUNDLE in Docker (BITSTREAM_OUT/deploy goes to the board): make bitstream BUNDLE=dir VIVADO=/tools/Xilinx/Vivado/2022.2
	@test -n "$(BUNDLE)" && test -f "$(BUNDLE)/manifest.json" || { echo "BUNDLE not a bundle folder: make bitstream BUNDLE=runs/bundle VIVADO=/tools/Xilinx/Vivado/2022.2 (python -m export CHECKPOINT --out runs/bundle)" >&2; exit 1; }
	@test -n "$(VIVADO)" && test -x "$(VIVADO)/bin/vivado" || { echo "Vivado not found: set XILINX_VIVADO or mount Vivado in the container (make bitstream VIVADO=/tools/Xilinx/Vivado/2022.2)" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "Docker not available: install Docker and start its daemon (docker info fails)" >&2; exit 1; }
	@docker image inspect $(IMAGE) >/dev/null 2>&1 || docker build -t $(IMAGE) .
	mkdir -p $(BITSTREAM_OUT) runs/finn_deps
	# as Xilinx/finn's run-docker.sh: --init, the caller's uid/gid and its passwd/group, libudev
	docker run --rm --init --user $$(id -u):$$(id -g) -e HOME=/tmp -e SHELL=/bin/bash \
		-v /etc/passwd:/etc/passwd:ro -v /etc/group:/etc/group:ro \
		-e LD_PRELOAD=/lib/x86_64-linux-gnu/libudev.so.1 -e XILINX_LOCAL_USER_DATA=no \
		-v "$(XILINX_ROOT):$(XILINX_ROOT):ro" \
		-e XILINX_VIVADO=$(abspath $(VIVADO)) \
		-v "$(abspath $(BUNDLE)):/in/bundle:ro" -v "$(abspath $(BITSTREAM_OUT)):/out" \
		-v "$(abspath runs/finn_deps):/finn_deps" \
		$(IMAGE) /in/bundle --out /out $(BITSTREAM_ARGS)
