# ddi-fpga: the FINN flow (front end + ZedBoard bitstreams) in a container.
#
# Vivado is NOT in the image: mount the user's installation at run time and set XILINX_VIVADO.
# `make bitstream BUNDLE=... VIVADO=/tools/Xilinx/Vivado/2022.2` runs it as Xilinx/finn's
# run-docker.sh runs FINN's image: --init (Vivado's child processes are reaped), the caller's
# uid/gid with /etc/passwd and /etc/group mounted read-only, LD_PRELOAD of libudev (FlexLM),
# XILINX_LOCAL_USER_DATA=no. Without Vivado the entrypoint refuses with one line;
# `--entrypoint python ddi-fpga:latest -m fpga estimate ...` needs no Vivado.
#
# Ubuntu 22.04: an OS that Vivado 2022.2 and 2024.2 support (Debian is not on their lists).
FROM ubuntu:22.04

ENV DEBIAN_FRONTEND=noninteractive \
    TZ=Etc/UTC \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FINN_DEPS=/finn_deps \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python 3.11 (finn-plus 1.6.1 needs >= 3.11; its headers for FINN's XSI binding), g++ and
# make (XSI binding, FIFO-sizing simulation), Boost program_options (finn_xsi's CMakeLists),
# git (`finn deps update`), libudev (preloaded as in run-docker.sh), and the shared libraries
# a mounted Vivado 2022.2 / 2024.2 loads on Ubuntu 22.04 (libtinfo5, libncurses5, X11 client
# libraries, fontconfig, an en_US.UTF-8 locale). Unpinned on purpose: Ubuntu's updates replace
# exact versions (hadolint DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev ca-certificates \
        build-essential make git unzip zip locales \
        libboost-program-options-dev libudev1 \
        libtinfo5 libncurses5 libx11-6 libxext6 libxrender1 libxtst6 libxi6 \
        libfreetype6 fontconfig \
    && locale-gen en_US.UTF-8 \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv "$VIRTUAL_ENV"
ENV LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8

WORKDIR /src/ddi-fpga

# As the Makefile installs, in the same order. torch first, pinned, from PyTorch's CPU index
# (a CI runner has internet): nothing later may replace it with a multi-GB CUDA build.
RUN python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# finn_xsi (FINN builds xsi.so into it) and FINN_DEPS must be writable by the caller's uid.
COPY . .
RUN python -m pip install -e '.[train,dev,finn]' \
    && python -m pip install --no-deps finn-plus==1.6.1 \
    && python -c "import torch, finn.builder.build_dataflow_config, fpga.bitstream" \
    && mkdir -p "$FINN_DEPS" \
    && chmod -R a+rwX "$FINN_DEPS" \
        "$(python -c 'import finn, os; print(os.path.dirname(finn.__file__))')" \
        "$(python -c 'import finn_xsi, os; print(os.path.dirname(finn_xsi.__file__))')"

ENTRYPOINT ["python", "-m", "fpga.bitstream"]
CMD ["--help"]
