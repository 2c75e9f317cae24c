"""The host's board client packs bundles with the archive format of export/ (export/archive.py),
not with the board's store: importing the host's harness loads no board-side module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_host_harness_imports_no_board_module_to_pack_bundles():
    code = (
        "import json, sys\n"
        "import host.board, host.measure, measurements.run_measurement\n"
        "from export.archive import pack_bundle\n"
        "assert host.board.pack_bundle is pack_bundle\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('fpga'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    # The wire contract the host shares with the board is its own package (wire/).
    assert not {m for m in loaded if m.startswith("fpga.board")}, sorted(loaded)
