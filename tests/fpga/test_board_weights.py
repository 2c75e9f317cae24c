"""The board's runtime weight loader (fpga/board/weights.py) on the emulated PL's AXI-lite
windows, without FINN: words land in each window by one bulk copy, one flush frame follows each
block's write, a block the engine already holds is not written again, and bad files are refused
with one line. (With FINN, the loaded weights computing each block's output: test_runtime_weights.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fpga.board.weights import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    WeightLoader,
    WeightsError,
    WeightStore,
)
from fpga.emulator.weights import AxiLiteMemory
from fpga.weights import Memory, save_block

SIZES = {"MVAU_rtl_0": 576, "Thresholding_rtl_0": 256}


def _store(folder, blocks=("block0", "block1")):
    rng = np.random.default_rng(0)
    entries, words = {}, {}
    for graph in blocks:
        memories = [
            Memory(node, node.rsplit("_", 1)[0], i, rng.integers(0, 2**32, n, dtype=np.uint32))
            for i, (node, n) in enumerate(SIZES.items())
        ]
        words[graph] = {m.node: m.words for m in memories}
        entries[graph] = {"engine": "e", **save_block(folder, graph, memories)}
    specs = [
        {"node": node, "op_type": node.rsplit("_", 1)[0], "index": i, "words": n}
        for i, (node, n) in enumerate(SIZES.items())
    ]
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "bundle_id": "test",
        "engines": {"e": {"representative": blocks[0], "memories": specs}},
        "blocks": entries,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return words


def _loader(folder):
    windows = {node: AxiLiteMemory(n) for node, n in SIZES.items()}
    flushes = []
    loader = WeightLoader(WeightStore(folder), {"e": windows}, {"e": lambda: flushes.append(1)})
    return loader, windows, flushes


def test_each_block_is_written_once_then_flushed(tmp_path):
    words = _store(tmp_path)
    loader, windows, flushes = _loader(tmp_path)
    assert WeightStore(tmp_path).preload() == 2 * sum(SIZES.values())
    for graph, expected_flushes in (("block0", 1), ("block0", 1), ("block1", 2)):
        report = loader.load(graph)
        assert len(flushes) == expected_flushes
        for node, w in words[graph].items():
            np.testing.assert_array_equal(windows[node].array[: w.size], w)
    assert report.words == sum(SIZES.values()) and report.write_s >= 0
    assert loader.load("block1").words == 0 and loader.words_written == 2 * sum(SIZES.values())
    loader.invalidate()
    assert loader.load("block1").words == sum(SIZES.values()) and len(flushes) == 3
    # the window's register view agrees with the array (byte offsets, 32-bit words)
    w = words["block1"]["MVAU_rtl_0"]
    assert windows["MVAU_rtl_0"].read(4 * 7) == int(w[7])


def test_a_tampered_file_is_refused(tmp_path):
    _store(tmp_path)
    path = tmp_path / "block1.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    loader, _, _ = _loader(tmp_path)
    loader.load("block0")
    with pytest.raises(WeightsError, match="sha256"):
        loader.load("block1")


def test_a_window_smaller_than_the_weights_is_refused(tmp_path):
    _store(tmp_path)
    windows = {node: AxiLiteMemory(n) for node, n in SIZES.items()}
    windows["MVAU_rtl_0"] = AxiLiteMemory(100)
    with pytest.raises(WeightsError, match="maps 128 words, the weights need 576"):
        WeightLoader(WeightStore(tmp_path), {"e": windows}, {"e": lambda: None})


def test_missing_manifest_and_unknown_block_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="is missing"):
        WeightStore(tmp_path)
    _store(tmp_path)
    with pytest.raises(WeightsError, match="no runtime weights"):
        WeightStore(tmp_path).block("block7")


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        ({"version": 99}, "format 'ddi-fpga-runtime-weights' version 99"),
        ({"version": 1, "format": None}, "format None version 1"),  # written before the field
        ({"format": "ddi-fpga-run-config"}, "format 'ddi-fpga-run-config' version 2"),
    ],
)
def test_a_manifest_of_another_format_or_version_is_refused_in_one_line(tmp_path, edit, found):
    _store(tmp_path)
    data = {**json.loads((tmp_path / MANIFEST_FILE).read_text()), **edit}
    data = {k: v for k, v in data.items() if v is not None}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=r"runtime_weights\.json") as e:
        WeightStore(tmp_path)
    assert found in str(e.value) and "rebuild the weights" in str(e.value)
    assert "\n" not in str(e.value)


def test_modelled_load_time_is_words_times_the_axilite_write_plus_the_flush():
    from fpga.emulator import EmulatorError
    from fpga.emulator.timing import AXILITE_S_PER_WORD_RANGE, runtime_weight_load_s

    # ResNet-74 stage 3: 18,448 words; HARDWARE.md's 100-250 ns per word gives 1.8-4.6 ms
    low, high = (runtime_weight_load_s(18_448, s_per_word=s) for s in AXILITE_S_PER_WORD_RANGE)
    assert low == pytest.approx(1.8448e-3) and high == pytest.approx(4.612e-3)
    assert runtime_weight_load_s(1_000, flush_frame_s=3e-4) == pytest.approx(1_000 * 160e-9 + 3e-4)
    assert runtime_weight_load_s(0) == 0.0
    with pytest.raises(EmulatorError, match="words=-1"):
        runtime_weight_load_s(-1)
    with pytest.raises(EmulatorError, match="s_per_word=0"):
        runtime_weight_load_s(10, s_per_word=0)
