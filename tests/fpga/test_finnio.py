"""The board's FINN stream packing (fpga.board.finnio) bit for bit against FINN's own."""

from __future__ import annotations

import numpy as np
import pytest

from fpga.board.finnio import FinnIoError, StreamType, pack, unpack

data_packing = pytest.importorskip("finn.util.data_packing", reason="finn-plus not installed")
from qonnx.core.datatype import DataType  # noqa: E402 - after the skip

TYPES = [
    "BINARY", "BIPOLAR", "UINT2", "UINT3", "UINT4", "INT4", "INT5", "UINT7", "UINT8", "INT8",
    "UINT12", "INT16", "INT24", "UINT32", "INT32",
]  # fmt: skip


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize(
    "shape", [(4, 8, 8, 2, 9), (3, 1, 10), (2, 5, 16), (1, 7), (2, 3, 1), (5, 3)]
)
def test_pack_and_unpack_equal_finn_data_packing(name, shape):
    t = StreamType.parse(f"DataType['{name}']")
    rng = np.random.default_rng(len(name) * 100 + len(shape))
    values = rng.integers(t.low, t.high + 1, shape, dtype=np.int64)
    if name == "BIPOLAR":
        values = np.where(values == 0, 1, values)
    values = values.astype(np.float32)
    dt = DataType[name]
    want = data_packing.finnpy_to_packed_bytearray(
        values, dt, reverse_inner=True, reverse_endian=True
    )
    got = pack(values, t)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    back = data_packing.packed_bytearray_to_finnpy(
        np.ascontiguousarray(want), dt, shape, reverse_inner=True, reverse_endian=True
    )
    mine = unpack(np.ascontiguousarray(want), t, shape[-1])
    np.testing.assert_array_equal(mine, back)
    np.testing.assert_array_equal(mine, values)


def test_bad_streams_are_one_line():
    with pytest.raises(FinnIoError, match="outside UINT4's") as info:
        pack(np.array([[16.0]]), "UINT4")
    assert "\n" not in str(info.value)
    with pytest.raises(FinnIoError, match="not integers"):
        pack(np.array([[0.5]]), "UINT4")
    with pytest.raises(FinnIoError, match="FIXED"):
        StreamType.parse("DataType['FIXED<8,4>']")
    with pytest.raises(FinnIoError, match="cannot hold exactly 5"):
        unpack(np.zeros((1, 2), np.uint8), "UINT4", 5)


@pytest.mark.parametrize("name", ["UINT4", "INT4", "UINT3", "INT5", "BIPOLAR", "INT8"])
def test_padding_mask_clears_what_the_pl_may_set(name):
    """Bytes with whatever the PL leaves in a word's padding bits, masked, are pack's bytes."""
    from fpga.board.finnio import padding_mask

    t = StreamType.parse(name)
    rng = np.random.default_rng(3)
    values = rng.integers(t.low, t.high + 1, (2, 4, 3)).astype(np.float32)
    if name == "BIPOLAR":
        values = np.where(values == 0, 1, values).astype(np.float32)
    want = pack(values, t)
    mask = padding_mask(t, 3)
    if (3 * t.bits) % 8 == 0:
        assert mask is None
        return
    dirty = want | (~mask & rng.integers(0, 256, want.shape, dtype=np.uint8))
    assert not np.array_equal(dirty, want)
    np.testing.assert_array_equal(dirty & mask, want)
    np.testing.assert_array_equal(unpack(dirty & mask, t, 3), values)


@pytest.mark.parametrize(
    ("name", "wide", "narrow", "same"),
    [
        ("UINT4", (8, 8, 1, 16), (8, 8, 4, 4), True),  # a pixel in one word or in four
        ("INT4", (8, 8, 1, 16), (8, 8, 8, 2), True),
        ("UINT2", (4, 4, 1, 32), (4, 4, 8, 4), True),
        ("INT8", (16, 1, 64), (16, 64, 1), True),
        ("UINT4", (8, 8, 1, 16), (8, 8, 16, 1), False),  # 4-bit words: padded to a byte
        ("UINT3", (4, 4, 1, 8), (4, 4, 2, 4), False),  # 12-bit words: padding bits
        ("UINT4", (8, 8, 1, 16), (8, 8, 2, 4), False),  # another number of values
    ],
)
def test_words_of_whole_bytes_are_the_same_bytes_whatever_the_folding(name, wide, narrow, same):
    """FINN's own packing of one image's values folded two ways: the same bytes exactly when
    `same_bytes` says so, and `reword` gives one word shape from the other."""
    from fpga.board.finnio import reword, same_bytes

    t = StreamType.parse(f"DataType['{name}']")
    rng = np.random.default_rng(len(wide) + 7 * len(narrow))
    values = rng.integers(t.low, t.high + 1, (3, int(np.prod(wide))), dtype=np.int64)
    dt = DataType[name]

    def finn(fold):
        folded = values[:, : int(np.prod(fold))].reshape(3, *fold).astype(np.float32)
        return data_packing.finnpy_to_packed_bytearray(
            folded, dt, reverse_inner=True, reverse_endian=True
        )

    a, b = finn(wide), finn(narrow)
    assert same_bytes((name, wide), (name, narrow)) is same
    assert same_bytes((name, wide), (name, wide)) and not same_bytes((name, wide), None)
    assert not same_bytes((name, wide), ("INT8" if name != "INT8" else "UINT8", wide))
    if same:
        np.testing.assert_array_equal(reword(a, (name, narrow)), b)
        np.testing.assert_array_equal(reword(b, (name, wide)), a)
    elif np.prod(wide) == np.prod(narrow):
        assert a.tobytes() != b.tobytes()
