"""Engines' outputs kept in their DMA buffers and streamed from there (fpga.board.finnio's
``PynqDmaOverlay.keep_output``/``address_of``/``ready_output``, fpga.board.accel's
``DmaEngine``): no copies for an activation that goes from engine to engine whole, and no DMA
ever writes a buffer whose kept output is still held."""

from __future__ import annotations

import gc

import numpy as np

from fpga.board.accel import AP_DONE, AP_IDLE, DMA_COUNT, DmaEngine
from fpga.board.finnio import PynqDmaOverlay, pack
from tests.arm.pl_standin import Buffer, Registers

B = 8  # images per buffer
SHAPE = (4, 4, 8)  # one image: 4x4 pixels of 8 UINT4 channels, one pixel a 32-bit word
INFO = {
    "io_shape_dict": {
        "idt": ["DataType['UINT4']"],
        "odt": ["DataType['UINT4']"],
        "ishape_normal": [(1, *SHAPE)],
        "ishape_folded": [(1, 4, 4, 1, 8)],
        "ishape_packed": [(1, 4, 4, 1, 4)],
        "oshape_normal": [(1, *SHAPE)],
        "oshape_folded": [(1, 4, 4, 1, 8)],
        "oshape_packed": [(1, 4, 4, 1, 4)],
        "idma_names": ["idma0"],
        "odma_names": ["odma0"],
    }
}
PATTERN = np.uint8(0x11)
"""The stand-in engine's output bytes are its input's XOR 0x11: every UINT4 value's low bit
flipped (still UINT4 values, and not the input)."""


class StandIn:
    """Buffers with device addresses and an engine behind idma0/odma0 that writes its input's
    bytes XOR :data:`PATTERN` into the output DMA's buffer."""

    def __init__(self) -> None:
        self.buffers: list[np.ndarray] = []
        self.registers: dict[str, Registers] = {}
        self.inputs_from: list[int] = []
        self.copies_in = 0

    def allocate(self, shape, dtype):
        buffer = np.zeros(shape, dtype).view(Buffer)
        buffer.device_address = 0x1000_0000 + 0x10_0000 * len(self.buffers)
        self.buffers.append(buffer)
        return buffer

    def ip(self, name: str) -> Registers:
        return self.registers.setdefault(name, Registers(self, name))

    def at(self, address: int) -> np.ndarray:
        return next(b for b in self.buffers if b.device_address == address)

    def started(self, dma: Registers) -> None:
        """A DMA was started (tests/arm/pl_standin.py's registers tell it): the input DMA's
        start runs the engine."""
        if dma.name == "idma0":
            self.run()

    def run(self) -> None:
        idma, odma = self.registers["idma0"], self.registers["odma0"]
        n = idma.values[DMA_COUNT]
        assert odma.values[DMA_COUNT] == n and not odma.ctrl & AP_IDLE, "output DMA not ready"
        self.inputs_from.append(idma.address)
        target = self.at(odma.address)
        image = target[0].nbytes  # the input's images are as large as the output's
        memory = np.asarray(self.at(idma.address)).reshape(-1)[: n * image]
        target[:n] = memory.reshape(target[:n].shape) ^ PATTERN
        idma.ctrl = odma.ctrl = AP_DONE | AP_IDLE


class Holder:
    """What keeps an engine's output (the board's :class:`fpga.board.accel.Carried`)."""

    def __init__(self, packed: np.ndarray) -> None:
        self.packed = packed
        self.detached = False

    def detach(self) -> None:
        self.packed = np.array(self.packed)
        self.detached = True


def _engine():
    pl = StandIn()
    overlay = PynqDmaOverlay(INFO, B, allocate=pl.allocate, ip=pl.ip)
    copy_in = overlay.copy_input_data_to_device

    def counted(data, ind=0):
        pl.copies_in += 1
        copy_in(data, ind)

    overlay.copy_input_data_to_device = counted
    return pl, overlay, DmaEngine(overlay, 0, 0)


def _codes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 7, (n, *SHAPE)).astype(np.uint8)


def test_an_output_goes_to_the_next_engine_in_place_and_stays_while_held():
    pl, overlay, engine = _engine()
    codes = _codes(B, 0)
    _, first = engine.run_packed(codes, decode=False)
    want = pack(codes.reshape(B, 4, 4, 1, 8), "UINT4") ^ PATTERN
    np.testing.assert_array_equal(first, want)
    address = overlay.address_of(first)
    assert address is not None and pl.copies_in == 1  # kept in the output buffer
    a = Holder(first)
    engine.claim(a)
    _, second = engine.run_packed(packed_in=first, decode=False)  # read in place
    assert pl.inputs_from[-1] == address and pl.copies_in == 1
    np.testing.assert_array_equal(second, want ^ PATTERN)
    np.testing.assert_array_equal(a.packed, want)  # written elsewhere: a's bytes unchanged
    assert overlay.address_of(second) not in (None, address)
    assert overlay.address_of(np.array(first)) is None  # a host copy is not a DMA buffer
    assert overlay.address_of(first[1:]) is None  # nor are rows from the second on


def test_a_buffer_nobody_holds_is_written_again_and_held_ones_are_copied_out_at_the_limit():
    pl, overlay, engine = _engine()
    _, out = engine.run_packed(_codes(B, 1), decode=False)
    first = overlay.address_of(out)
    del out
    gc.collect()
    _, out = engine.run_packed(_codes(B, 2), decode=False)  # unclaimed: the same buffer
    assert overlay.address_of(out) == first
    held = []
    for seed in range(3, 3 + overlay.MAX_SPARE + 2):
        _, out = engine.run_packed(_codes(B, seed), decode=False)
        h = Holder(out)
        engine.claim(h)
        held.append((h, np.array(out)))
    # one buffer of its own and MAX_SPARE spares: the oldest holder was copied out
    assert len(pl.buffers) == 1 + 1 + overlay.MAX_SPARE  # the input buffer, the outputs
    assert held[0][0].detached and not held[-1][0].detached
    for h, bytes_then in held:
        np.testing.assert_array_equal(h.packed, bytes_then)  # every holder's bytes intact
    assert overlay.address_of(held[0][0].packed) is None


def test_a_call_of_more_images_than_a_buffer_copies_as_before():
    pl, overlay, engine = _engine()
    codes = _codes(B + 3, 9)
    _, out = engine.run_packed(codes, decode=False)
    assert overlay.address_of(out) is None and pl.copies_in == 2  # two chunks, joined
    want = pack(codes.reshape(B + 3, 4, 4, 1, 8), "UINT4") ^ PATTERN
    np.testing.assert_array_equal(out, want)


def _tensor(packed: np.ndarray):
    from fpga.board.accel import Carried, EngineTensor

    stream = ("UINT4", (4, 4, 1, 8))
    carried = Carried(
        1.0, low=0, high=15, packed=packed, stream=stream, shape=SHAPE, dtype=np.uint8
    )
    return EngineTensor(carried, tail=None)


def test_a_block_output_takes_the_rows_in_its_input_only_when_nothing_reads_the_input_again():
    """The executor's assembly (FinnBackend.assemble through _assemble_codes): with ``reuse``
    (no exit saved the block input) the parts' rows are written into the input's bytes and the
    new tensor owns its buffer; without, a new array and the input unchanged."""
    from fpga.board.runtime import _assemble_codes

    rng = np.random.default_rng(5)
    before = rng.integers(0, 256, (6, 4, 4, 1, 4), dtype=np.uint8)
    part = _tensor(rng.integers(0, 256, (2, 4, 4, 1, 4), dtype=np.uint8))
    rows = np.array([1, 4])
    want = before.copy()
    want[rows] = part.carried.packed
    shape = (6, SHAPE[2], *SHAPE[:2])  # (N, C, H, W)
    base = _tensor(before.copy())
    kept = _assemble_codes(base, shape, [(rows, part)], [base, part])
    assert kept.carried.packed is not base.carried.packed
    np.testing.assert_array_equal(base.carried.packed, before)  # untouched
    np.testing.assert_array_equal(kept.carried.packed, want)
    claimed = []
    base = _tensor(before.copy())
    placed = _assemble_codes(
        base, shape, [(rows, part)], [base, part], None, lambda a, h: claimed.append((a, h))
    )
    assert placed.carried.packed is base.carried.packed  # in place: no copy of the other rows
    np.testing.assert_array_equal(placed.carried.packed, want)
    assert claimed == [(placed.carried.packed, placed.carried)]
    frozen = before.copy()
    frozen.flags.writeable = False  # bytes that cannot be written are copied as before
    base = _tensor(frozen)
    copied = _assemble_codes(base, shape, [(rows, part)], [base, part], None, claimed.append)
    assert copied.carried.packed is not frozen and len(claimed) == 1
    np.testing.assert_array_equal(copied.carried.packed, want)


def test_what_the_arm_wrote_into_a_kept_buffer_is_flushed_before_a_dma_writes_it_again():
    """A block output assembled in its input's bytes (claim_array) leaves the ARM's cache
    lines dirty: they are written back before the output DMA writes that buffer again, so
    that no eviction lands on the engine's data afterwards."""
    _, overlay, engine = _engine()
    _, out = engine.run_packed(_codes(B, 11), decode=False)
    buffer = overlay.obuf_packed_device[0]
    holder = Holder(out)
    out[:2] = 0  # the ARM writes rows into it in place, then hands it on
    overlay.claim_array(out, holder)
    flushed = buffer.flushed
    del holder, out
    gc.collect()
    engine.run_packed(_codes(B, 12), decode=False)  # the same buffer, written again
    assert buffer.flushed == flushed + 1
    engine.run_packed(_codes(B, 13), decode=False)  # not written by the ARM since: no flush
    assert buffer.flushed == flushed + 1
    assert overlay.obuf_packed_device[0] is buffer
