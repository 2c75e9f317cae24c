"""A numpy stand-in of the PL's IODMA registers that answers with engine outputs recorded on the
host (by FINN's execution of each engine, fpga.emulator.overlay). Runs on the emulated ARM: numpy
only. It checks what the board's driver does: the packed input bytes of every call must be the
ones recorded for that engine, the buffers' addresses and image counts must be programmed, the
output DMA started before the input DMA; then it writes the recorded output bytes."""

from __future__ import annotations

import numpy as np

AP_START, AP_DONE, AP_IDLE = 0x1, 0x2, 0x4
CTRL, ADDR_LO, ADDR_HI, COUNT = 0x00, 0x10, 0x14, 0x1C
CALL_ARRAYS = 4
"""Arrays recorded per engine call: ``engine_j``, ``in_j``, ``mask_j`` and ``out_j``."""


def record_calls(emulated):
    """Host side: wrap the emulated overlay's engine runs (fpga.emulator.overlay) so that each
    call's engine, packed input (and mask map) and packed output land in the returned dict,
    in the layout
    :class:`RecordedPL` reads. Returns ``(recording, original_run)``; put ``original_run`` back
    as ``emulated._run`` to stop recording."""
    recording: dict[str, np.ndarray] = {}
    run_engine = emulated._run

    def recorded(k: int) -> None:  # what the PL got and gave, call by call
        n = emulated.idma[k].count
        packed_in = np.array(emulated.ibuf_packed_device[k][:n])
        m = emulated.mask_inputs.get(k, -1)
        packed_mask = np.array(emulated.ibuf_packed_device[m][:n]) if m >= 0 else np.zeros(0)
        run_engine(k)
        o = emulated.engines[k][0]
        j = len(recording) // CALL_ARRAYS
        recording[f"engine_{j}"] = np.array([k, o, n, m])
        recording[f"in_{j}"] = packed_in
        recording[f"mask_{j}"] = packed_mask.astype(np.uint8)
        recording[f"out_{j}"] = np.array(emulated.obuf_packed_device[o][:n])

    emulated._run = recorded
    return recording, run_engine


class Buffer(np.ndarray):
    device_address = 0
    flushed = 0

    def flush(self):
        self.flushed += 1

    def invalidate(self):
        pass


class Registers:
    def __init__(self, pl, name):
        self.pl, self.name, self.values, self.ctrl = pl, name, {}, AP_IDLE

    def read(self, offset):
        if offset != CTRL:
            return self.values.get(offset, 0)
        value = self.ctrl
        self.ctrl &= ~AP_DONE  # clear on read, as HLS's ap_ctrl_hs
        return value

    def write(self, offset, value):
        if offset == CTRL and value & AP_START:
            self.ctrl &= ~AP_IDLE
            self.pl.started(self)
        elif offset != CTRL:
            self.values[offset] = int(value)

    @property
    def address(self):
        return self.values.get(ADDR_LO, 0) | (self.values.get(ADDR_HI, 0) << 32)


class RecordedPL:
    """``recording``: npz with, per call j, ``engine_j`` = (input DMA, output DMA, images, mask
    input DMA or -1), ``in_j``, ``mask_j`` (a masked block's mask map) and ``out_j`` = the packed
    bytes of those images. DMAs are numbered by their place in settings.json's
    ``idma_names``/``odma_names`` (``io``), as FINN's driver numbers them. A mask DMA must be
    started before its engine's input DMA, whose start checks both streams."""

    def __init__(self, recording, io):
        self.index = {name: i for i, name in enumerate(io["idma_names"])}
        self.index.update({name: i for i, name in enumerate(io["odma_names"])})
        self.odma_name = dict(enumerate(io["odma_names"]))
        self.mask_name = dict(enumerate(io["idma_names"]))
        self.calls = {}
        n = len([k for k in recording.files if k.startswith("engine_")])
        self.mask_of = {}
        for j in range(n):
            k, o, images, m = (int(v) for v in recording[f"engine_{j}"])
            key = (k, recording[f"in_{j}"].tobytes(), recording[f"mask_{j}"].tobytes())
            self.calls[key] = (o, images, recording[f"out_{j}"])
            if m >= 0:
                self.mask_of[k] = m
        self.buffers, self.dmas, self.next_address, self.served = [], {}, 0x1000_0000, 0
        self.image_bytes = {
            i: int(np.prod(shape[1:])) for i, shape in enumerate(io["ishape_packed"])
        }

    def allocate(self, shape, dtype):
        buffer = np.zeros(shape, dtype).view(Buffer)
        buffer.device_address = self.next_address
        self.next_address += (buffer.nbytes + 0xFFF) & ~0xFFF
        self.buffers.append(buffer)
        return buffer

    def ip(self, name):
        return self.dmas.setdefault(name, Registers(self, name))

    def _buffer_at(self, address):
        return next(b for b in self.buffers if b.device_address == address)

    def _read(self, address, k, n):
        """The bytes input DMA ``k`` streams for ``n`` images from ``address``: ``n`` images'
        packed bytes in a row, whatever the buffer's shape (as the IODMA reads memory)."""
        memory = np.asarray(self._buffer_at(address)).reshape(-1)
        return memory[: n * self.image_bytes[k]].tobytes()

    def started(self, dma):
        if not dma.name.startswith("idma"):
            return  # an output DMA waits for its engine
        k = self.index[dma.name]
        if k in self.mask_of.values():
            return  # a mask stream flows when its engine's input DMA starts
        n = dma.values.get(COUNT, 0)
        data = self._read(dma.address, k, n)
        mask = b""
        if k in self.mask_of:
            mdma = self.dmas[self.mask_name[self.mask_of[k]]]
            if mdma.ctrl & AP_IDLE or mdma.values.get(COUNT) != n:
                raise AssertionError(f"mask DMA {self.mask_of[k]} is not streaming {n} images")
            mask = self._read(mdma.address, self.mask_of[k], n)
            mdma.ctrl = AP_DONE | AP_IDLE
        found = self.calls.get((k, data, mask))
        if found is None:
            raise AssertionError(f"input DMA {k}: packed bytes of {n} images were not recorded")
        o, images, out = found
        odma = self.dmas[self.odma_name[o]]
        if images != n or odma.ctrl & AP_IDLE or odma.values.get(COUNT) != n:
            raise AssertionError(f"output DMA {o} is not waiting for {n} images")
        target = self._buffer_at(odma.address)
        target[:n] = out.reshape(target[:n].shape)
        dma.ctrl = odma.ctrl = AP_DONE | AP_IDLE
        self.served += 1
