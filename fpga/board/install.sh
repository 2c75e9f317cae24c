#!/usr/bin/env bash
# Install the ddi-fpga board runtime on a PYNQ 3.0.1/3.1 image (Ubuntu 22.04 armhf), as root:
#
#   sudo bash ddi-fpga/fpga/board/install.sh      (from the folder the archive was unpacked in)
#
# numpy comes from apt (python3-numpy 1.21; PyPI has no armv7l wheel to rely on), pyserial and
# the pynqmetadata pin from PyPI (pure Python), into PYNQ's virtual environment, which sees the
# system packages. Then the systemd unit, enabled but not started: free the UART first
# (docs/board.md), then `systemctl start ddi-board`. Finally `python -m fpga.board doctor`.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/../.." && pwd)"          # the unpacked ddi-fpga folder
VENV="${PYNQ_VENV:-/usr/local/share/pynq-venv}"
if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo bash $0)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python3" ]; then
    echo "install.sh: no PYNQ virtual environment at $VENV; is this a PYNQ 3.x image? (PYNQ_VENV=...)" >&2
    exit 1
fi
apt-get install -y python3-numpy
"$VENV/bin/python3" -m pip install pyserial==3.5 pynqmetadata==0.1.5
if [ "$HERE" != /home/xilinx/ddi-fpga ]; then
    sed "s#/home/xilinx/ddi-fpga#$HERE#g" "$HERE/fpga/board/ddi-board.service" \
        > /etc/systemd/system/ddi-board.service
else
    cp "$HERE/fpga/board/ddi-board.service" /etc/systemd/system/ddi-board.service
fi
systemctl daemon-reload
systemctl enable ddi-board.service
cd "$HERE"
"$VENV/bin/python3" -m fpga.board doctor --store /home/xilinx/ddi-bundles || true
echo "installed; free the UART (docs/board.md), then: sudo systemctl start ddi-board"
