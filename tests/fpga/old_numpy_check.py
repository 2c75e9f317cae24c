"""The board's numpy code on whatever numpy runs it (the oldest that installs here, in
tests/fpga/test_board_old_numpy.py): every numpy program of a real bundle on the inputs the host
recorded, a whole executor run, and FINN's stream packing.

    python old_numpy_check.py BUNDLE RECORDING.npz OUT.npz
"""

from __future__ import annotations

import sys

import numpy as np

from export.executor import BundleExecutor
from export.manifest import load_bundle
from export.program import NumpyBackend
from fpga.board.finnio import pack, unpack


def main(bundle_dir: str, recording: str, out: str) -> None:
    bundle = load_bundle(bundle_dir)
    backend = NumpyBackend(bundle)
    graphs = bundle.manifest.graphs
    results: dict[str, np.ndarray] = {"numpy": np.array(np.__version__)}
    with np.load(recording) as z:
        for j in range(int(z["calls"])):
            name = str(z[f"graph_{j}"])
            inputs = [z[f"in_{j}_{i}"] for i in range(int(z[f"inputs_{j}"]))]
            for i, y in enumerate(backend.run(graphs[name], inputs)):
                results[f"out_{j}_{i}"] = y
        result = BundleExecutor(bundle, backend=backend).run(z["images"], mode="iadi")
        for key in ("predictions", "executed", "channels", "macs", "logits"):
            results[key] = getattr(result, key)
        for name in [str(n) for n in z["stream_types"]]:
            values = z[f"values_{name}"]
            packed = pack(values, name)
            results[f"packed_{name}"] = packed
            results[f"unpacked_{name}"] = unpack(packed, name, values.shape[-1])
    np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:4])
