"""FINN's runtime weight layout in numpy (fpga/weights.py) against FINN's own weight files.

For MVAUs and RTL thresholding layers of several foldings and datatypes, the words that
:func:`fpga.weights.mvau_words` / :func:`~fpga.weights.threshold_words` compute equal, word for
word, the 32-bit hex lines that FINN's ``make_weight_file(..., "decoupled_runtime", ...)``
writes (what finn-plus-driver's ``load_runtime_weights`` parses on a board), and the inverse
functions give back the values. Exact: integers, no tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("finn", reason="finn-plus not installed (make setup installs it)")

from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.custom_op.registry import getCustomOp

from fpga.finn.errors import GraphError
from fpga.weights import (
    mvau_values,
    mvau_words,
    threshold_values,
    threshold_words,
)


def _finn_words(path) -> np.ndarray:
    lines = path.read_text().split()
    assert all(len(x) == 8 for x in lines), "FINN's runtime file has one 32-bit word a line"
    return np.array([int(x, 16) for x in lines], dtype=np.uint32)


def _random(rng, dt: DataType, shape) -> np.ndarray:
    if dt == DataType["BIPOLAR"]:
        return rng.choice([-1.0, 1.0], size=shape).astype(np.float32)
    return rng.integers(dt.min(), dt.max() + 1, size=shape).astype(np.float32)


@pytest.mark.parametrize(
    ("mw", "mh", "pe", "simd", "wdt"),
    [
        (144, 16, 1, 1, "INT4"),  # one value a line: 4 bits padded to a word
        (144, 16, 4, 9, "INT4"),  # 144 bits: 8 words (a power of two) a line
        (288, 32, 8, 4, "INT4"),  # 128 bits: 4 words
        (64, 10, 2, 16, "INT8"),  # 256 bits
        (48, 6, 3, 3, "UINT3"),  # an odd width across words, 27 bits
        (32, 8, 2, 8, "BIPOLAR"),
    ],
)
def test_mvau_words_equal_finn_weight_file(tmp_path, mw, mh, pe, simd, wdt):
    dt = DataType[wdt]
    node = helper.make_node(
        "MVAU_rtl",
        ["x", "w"],
        ["y"],
        domain="finn.custom_op.fpgadataflow.rtl",
        MW=mw,
        MH=mh,
        PE=pe,
        SIMD=simd,
        inputDataType="UINT4",
        weightDataType=wdt,
        outputDataType="INT32",
        noActivation=1,
        mem_mode="internal_decoupled",
        runtime_writeable_weights=1,
    )
    rng = np.random.default_rng(mw * mh + pe)
    w = _random(rng, dt, (mw, mh))
    path = tmp_path / "w.dat"
    getCustomOp(node).make_weight_file(w, "decoupled_runtime", str(path))
    bipolar = wdt == "BIPOLAR"
    words = mvau_words(w, dt.bitwidth(), pe, simd, bipolar=bipolar)
    np.testing.assert_array_equal(words, _finn_words(path))
    back = mvau_values(
        words, (mw, mh), dt.bitwidth(), pe, simd, signed=dt.signed(), bipolar=bipolar
    )
    np.testing.assert_array_equal(back, w)


@pytest.mark.parametrize(
    ("channels", "pe", "steps", "wdt"),
    [
        (16, 1, 15, "INT10"),  # 4-bit activations: 15 thresholds, 16 slots
        (32, 4, 15, "INT12"),
        (48, 3, 7, "UINT9"),  # PE=3: channel slots padded to 4
        (16, 2, 1, "INT6"),  # one threshold: one slot
        (1, 4, 3, "INT8"),  # one row for every channel, broadcast to PE
    ],
)
def test_threshold_words_equal_finn_weight_file(tmp_path, channels, pe, steps, wdt):
    dt = DataType[wdt]
    num = pe if channels == 1 else channels
    node = helper.make_node(
        "Thresholding_rtl",
        ["x", "t"],
        ["y"],
        domain="finn.custom_op.fpgadataflow.rtl",
        NumChannels=num,
        PE=pe,
        numSteps=steps,
        inputDataType="INT16",
        weightDataType=wdt,
        outputDataType="UINT4" if steps == 15 else ("UINT3" if steps == 7 else "UINT2"),
        runtime_writeable_weights=1,
    )
    rng = np.random.default_rng(channels * steps + pe)
    t = np.sort(_random(rng, dt, (channels, steps)), axis=-1)
    path = tmp_path / "memblock.dat"
    getCustomOp(node).make_weight_file(t, "decoupled_runtime", str(path))
    words = threshold_words(t, dt.bitwidth(), pe)
    np.testing.assert_array_equal(words, _finn_words(path))
    back = threshold_values(words, t.shape, dt.bitwidth(), pe, signed=dt.signed())
    np.testing.assert_array_equal(back, t)


def test_wide_thresholds_are_refused():
    with pytest.raises(GraphError, match="two AXI-lite words"):
        threshold_words(np.zeros((4, 3)), 40, 1)


def test_wrong_word_count_is_refused():
    with pytest.raises(GraphError, match="takes 8 words"):
        mvau_values(np.zeros(15, np.uint32), (16, 4), 4, 4, 4, signed=True)
