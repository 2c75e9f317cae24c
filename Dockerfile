# ddi-fpga: the FINN flow (front end + ZedBoard bitstreams) in a container.
#
# Vivado is NOT in the image: mount the user's installation at run time and set XILINX_VIVADO,
#   docker run --rm -v /tools/Xilinx:/tools/Xilinx:ro \
#     -e XILINX_VIVADO=/tools/Xilinx/Vivado/2022.2 -v "$PWD/runs:/src/ddi-fpga/runs" \
#     ddi-fpga:latest runs/bundle --out runs/bitstream
# (`make bitstream BUNDLE=... VIVADO=...` does this). Without Vivado the entrypoint refuses with
# one line; `--entrypoint python ddi-fpga:latest -m fpga estimate ...` needs no Vivado.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FINN_DEPS=/finn_deps

# Build tools (FINN's XSI binding and cppsim: g++, cmake; `finn deps update`: git) and the
# shared libraries that a mounted Vivado 2022.2 / 2024.2 loads on Debian 12.
# Unpinned on purpose: Debian's point releases replace exact versions (hadolint DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake git make unzip zip locales \
        libtinfo5 libncurses5 libx11-6 libxext6 libxrender1 libxtst6 libxi6 \
        libfreetype6 fontconfig \
    && sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && locale-gen \
    && rm -rf /var/lib/apt/lists/*
ENV LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8

WORKDIR /src/ddi-fpga

# As the Makefile installs, in the same order. torch first, pinned, from PyTorch's CPU index
# (a CI runner has internet): nothing later may replace it with a multi-GB CUDA build.
RUN python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY . .
RUN python -m pip install -e '.[dev,finn]' \
    && python -m pip install --no-deps finn-plus==1.6.1 \
    && python -c "import torch, finn.builder.build_dataflow_config, fpga.bitstream" \
    && mkdir -p "$FINN_DEPS" \
    && chmod -R a+rwX "$FINN_DEPS" "$(python -c 'import finn, os; print(os.path.dirname(finn.__file__))')"

ENTRYPOINT ["python", "-m", "fpga.bitstream"]
CMD ["--help"]
