"""A stand-in for a FINN DMA overlay on the ZedBoard: the PL's engines behind their IODMAs.

:class:`EmulatedDmaOverlay` offers what the board's FINN backend uses of finn-plus-driver's
``FINNDMAOverlay`` (:class:`fpga.board.accel.DmaOverlay`), built from the overlay's real
``settings.json`` (``io_shape_dict``: datatypes, normal/folded/packed shapes, DMA names):

- device buffers of ``batch_size`` images per input and output, each with a device address;
- folding and bit packing with FINN's own ``finn.util.data_packing`` (the code that
  finn-plus-driver's ``packing`` module is kept in sync with), with the flags the driver uses;
- IODMA register maps: ``ap_ctrl`` at 0x00 (start, done cleared on read, idle), the buffer
  address at 0x10/0x14 and the image count at 0x1C. Starting input DMA ``k`` reads its buffer,
  unpacks the images and runs engine ``k`` (FINN's Python execution of the graph's HW
  partition, as built by the front end), then packs the results into the buffer of the output
  DMA it is wired to, if that DMA was started with that buffer's address and the same count;
  only then is its done bit set. A wrong pair, address or count leaves the output DMA running,
  as the PL would, and the caller's wait times out. A masked block's engine has a second input
  DMA, its mask map's (``mask_inputs``): it must have been started for the same images before
  the engine's input DMA, whose start then runs the engine on both streams. A quantized gate's
engine is one more engine: its FINN graph's HW partition, returning keep bits (a channel gate)
or the embedding's codes (a layer gate's pool and 1x1 conv).

It runs on the development machine (FINN and qonnx); nothing of it goes to the board.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fpga.board.accel import (
    AP_DONE,
    AP_IDLE,
    AP_START,
    DMA_ADDR_HI,
    DMA_ADDR_LO,
    DMA_COUNT,
    DMA_CTRL,
    OverlaySpec,
)
from fpga.board.finnio import FinnIoError

log = logging.getLogger(__name__)

BUFFER_BASE = 0x1000_0000
"""Where the stand-in's buffers start in the 'physical' address space (CMA-like)."""


class DeviceBuffer(np.ndarray):
    """A packed uint8 buffer with a device address, as ``pynq.allocate`` returns."""

    device_address: int = 0

    def flush(self) -> None:
        """Caches are coherent here; kept for the driver's call sequence."""

    def invalidate(self) -> None:
        """See :meth:`flush`."""


class DmaRegisters:
    """An IODMA's register map; starting it tells the overlay."""

    def __init__(self, on_start: Callable[[], None]) -> None:
        self.values: dict[int, int] = {}
        self.ctrl = AP_IDLE
        self._on_start = on_start

    def read(self, offset: int) -> int:
        if offset != DMA_CTRL:
            return self.values.get(offset, 0)
        value = self.ctrl
        self.ctrl &= ~AP_DONE  # ap_done is clear-on-read in HLS's ap_ctrl_hs block
        return value

    def write(self, offset: int, value: int) -> None:
        if offset == DMA_CTRL:
            if value & AP_START:
                self.ctrl &= ~AP_IDLE
                self._on_start()
            return
        self.values[offset] = int(value)

    @property
    def address(self) -> int:
        return self.values.get(DMA_ADDR_LO, 0) | (self.values.get(DMA_ADDR_HI, 0) << 32)

    @property
    def count(self) -> int:
        return self.values.get(DMA_COUNT, 0)

    def finish(self) -> None:
        self.ctrl = AP_DONE | AP_IDLE


Engine = Callable[..., np.ndarray]
"""One image's input codes ``(1, H, W, C)`` (and a masked block's ``(1, H', W', C')`` mask map)
-> its output codes, as the PL computes them."""


class EmulatedDmaOverlay:
    """The PL of an overlay: ``engines[k] = (output index, engine)`` behind input DMA ``k``."""

    platform = "zynq-iodma"

    def __init__(
        self,
        settings: dict[str, Any],
        engines: dict[int, tuple[int, Engine]],
        batch_size: int,
        mask_inputs: dict[int, int] | None = None,
    ) -> None:
        from qonnx.core.datatype import DataType

        shapes = dict(settings["driver_information"]["io_shape_dict"])
        self.shapes = shapes
        self._idt = [DataType[_name(t)] for t in shapes["idt"]]
        self._odt = [DataType[_name(t)] for t in shapes["odt"]]
        self.engines = engines
        self.mask_inputs = dict(mask_inputs or {})
        """Input DMA of an engine -> the input DMA of its mask map (masked blocks)."""
        self.batch_size = int(batch_size)
        self.images_run = {k: 0 for k in engines}
        self.external_weights: list = []
        self.windows: dict[str, Any] = {}
        """AXI-lite windows of shared engines' memories, by ``ip_dict`` key (:meth:`axilite`)."""
        address = BUFFER_BASE
        self.ibuf_packed_device, self.obuf_packed_device = [], []
        for kind, buffers in (
            ("ishape_packed", self.ibuf_packed_device),
            ("oshape_packed", self.obuf_packed_device),
        ):
            for ind in range(len(shapes[kind])):
                buffer = np.zeros(self._shape(kind, ind), np.uint8).view(DeviceBuffer)
                buffer.device_address = address
                address += (buffer.nbytes + 0xFFF) & ~0xFFF
                buffers.append(buffer)
        self.obuf_packed = [np.empty_like(np.asarray(b)) for b in self.obuf_packed_device]
        waits = set(self.mask_inputs.values())  # a mask DMA streams when its engine runs
        self.idma = [
            DmaRegisters((lambda: None) if k in waits else (lambda k=k: self._run(k)))
            for k in range(len(self._idt))
        ]
        self.odma = [DmaRegisters(lambda: None) for _ in range(len(self._odt))]

    @classmethod
    def from_build(cls, out_dir: str | Path, batch_size: int | None = None) -> EmulatedDmaOverlay:
        """The overlay that :func:`fpga.bitstream.overlay.prepare_overlay` (an engine per
        graph: ``out_dir/graphs/<graph>/``) or :func:`fpga.architecture.prepare_shared_overlay`
        (shared engines: ``out_dir/<engine>/``, built from the engine's first graph) prepared
        in ``out_dir``: its deploy folder's settings, each engine that graph's HW partition. A
        shared engine is a :class:`fpga.emulator.weights.RuntimeWeightEngine`: its memories
        are the AXI-lite windows that ``accelerators.json`` names (:meth:`axilite`), filled
        with the bitstream's words (the first graph's)."""
        from qonnx.core.modelwrapper import ModelWrapper

        # qonnx (FINN's stack): loaded only when this runs
        from fpga.bitstream.overlay import DEPLOY_DIR
        from fpga.emulator.weights import RuntimeWeightEngine
        from fpga.finn.frontend import PARENT_FILE, dataflow_model, python_model

        out = Path(out_dir)
        spec = OverlaySpec.load(out / DEPLOY_DIR)
        settings = json.loads((spec.root / spec.settings).read_text())
        engines, masks, windows = {}, {}, {}
        for name, e in spec.engines.items():
            if e.input in engines:  # a shared engine: built once, from its first graph
                continue
            folder = out / "graphs" / name if e.engine is None else out / e.engine
            hw = python_model(dataflow_model(ModelWrapper(str(folder / PARENT_FILE))))
            if e.engine in spec.axilite:
                engine = RuntimeWeightEngine(hw)
                for node, key in spec.axilite[e.engine].items():
                    windows[key] = engine.memories[node]
            else:
                engine = _finn_engine(hw)
            engines[e.input] = (e.output, engine)
            if e.mask_input is not None:
                masks[e.input] = e.mask_input
        overlay = cls(settings, engines, batch_size or spec.batch_size, masks)
        overlay.windows = windows
        return overlay

    def axilite(self, key: str) -> Any:
        """The AXI-lite window ``key`` (``pynq.MMIO``'s stand-in: ``array`` is its ``uint32``
        view), as :meth:`fpga.board.finnio.PynqDmaOverlay.axilite` gives it on the board."""
        try:
            return self.windows[key]
        except KeyError:
            raise FinnIoError(f"the emulated overlay has no AXI-lite window {key!r}") from None

    # --- what the board's DmaEngine calls (FINNDMAOverlay's interface) ---------------------

    def idt(self, ind: int = 0) -> Any:
        return self._idt[ind]

    def odt(self, ind: int = 0) -> Any:
        return self._odt[ind]

    def ishape_normal(self, ind: int = 0) -> tuple[int, ...]:
        return self._shape("ishape_normal", ind)

    def fold_input(self, ibuf_normal: np.ndarray, ind: int = 0) -> np.ndarray:
        assert ibuf_normal.shape == self._shape("ishape_normal", ind), ibuf_normal.shape
        return ibuf_normal.reshape(self._shape("ishape_folded", ind))

    def pack_input(self, ibuf_folded: np.ndarray, ind: int = 0) -> np.ndarray:
        from finn.util.data_packing import finnpy_to_packed_bytearray

        return finnpy_to_packed_bytearray(
            ibuf_folded, self._idt[ind], reverse_inner=True, reverse_endian=True
        )

    def copy_input_data_to_device(self, data: np.ndarray, ind: int = 0) -> None:
        np.copyto(self.ibuf_packed_device[ind], data)

    def copy_output_data_from_device(self, data: np.ndarray, ind: int = 0) -> None:
        np.copyto(data, self.obuf_packed_device[ind])

    def unpack_output(self, obuf_packed: np.ndarray, ind: int = 0) -> np.ndarray:
        from finn.util.data_packing import packed_bytearray_to_finnpy

        return packed_bytearray_to_finnpy(
            obuf_packed,
            self._odt[ind],
            self._shape("oshape_folded", ind),
            reverse_inner=True,
            reverse_endian=True,
        )

    def unfold_output(self, obuf_folded: np.ndarray, ind: int = 0) -> np.ndarray:
        return obuf_folded.reshape(self._shape("oshape_normal", ind))

    # --- the PL ----------------------------------------------------------------------------

    def _unpacked(self, k: int) -> np.ndarray:
        """Input buffer ``k`` as the engine's (batch, H, W, C) values."""
        from finn.util.data_packing import packed_bytearray_to_finnpy

        return packed_bytearray_to_finnpy(
            np.asarray(self.ibuf_packed_device[k]),
            self._idt[k],
            self._shape("ishape_folded", k),
            reverse_inner=True,
            reverse_endian=True,
        ).reshape(self._shape("ishape_normal", k))

    def _shape(self, kind: str, ind: int) -> tuple[int, ...]:
        return (self.batch_size, *(int(d) for d in self.shapes[kind][ind][1:]))

    def _run(self, k: int) -> None:
        """Input DMA ``k`` started: engine ``k`` consumes its buffer and feeds its output DMA."""
        from finn.util.data_packing import finnpy_to_packed_bytearray

        idma = self.idma[k]
        n = idma.count
        if (
            idma.address != self.ibuf_packed_device[k].device_address
            or not 0 < n <= self.batch_size
        ):
            log.warning("input DMA %d started with a bad address or count %d: nothing moves", k, n)
            return  # nothing streams in, so nothing comes out: the output DMA never finishes
        o, engine = self.engines[k]
        streams = [k]
        if k in self.mask_inputs:
            m = self.mask_inputs[k]
            mdma = self.idma[m]
            if (
                mdma.ctrl & AP_IDLE
                or mdma.address != self.ibuf_packed_device[m].device_address
                or mdma.count != n
            ):
                log.warning("engine %d's mask DMA %d is not streaming %d images: stalled", k, m, n)
                return  # the engine waits for its mask stream: the output DMA never finishes
            streams.append(m)
        data = [self._unpacked(d)[:n] for d in streams]
        out = np.zeros(self._shape("oshape_normal", o), np.float32)
        for j in range(n):
            out[j] = engine(*(d[j : j + 1] for d in data))[0]
        for d in streams:
            self.idma[d].finish()
        self.images_run[k] += n
        odma = self.odma[o]
        target = self.obuf_packed_device[o]
        if odma.ctrl & AP_IDLE or odma.address != target.device_address or odma.count != n:
            log.warning("engine %d's output DMA %d is not waiting for %d images: stalled", k, o, n)
            return
        packed = finnpy_to_packed_bytearray(
            out.reshape(self._shape("oshape_folded", o)),
            self._odt[o],
            reverse_inner=True,
            reverse_endian=True,
        )
        target[:n] = packed[:n]  # the DMA writes only the images it moved
        odma.finish()


def _name(datatype: str) -> str:
    """``"DataType['UINT4']"`` (as settings.json stores it) -> ``"UINT4"``."""
    return datatype[datatype.index("[") + 1 : datatype.index("]")].strip("'\"")


def _finn_engine(model: Any) -> Engine:
    """FINN's Python execution of a HW partition, one image at a time: ``run(codes)``, or
    ``run(codes, mask_map)`` for a masked block (its 1-bit input is the mask map)."""
    from qonnx.core.onnx_exec import execute_onnx

    names = [t.name for t in model.graph.input]
    masks = [n for n in names if model.get_tensor_datatype(n).bitwidth() == 1]
    order = [n for n in names if n not in masks] + masks  # the codes, then the mask map
    name_out = model.graph.output[0].name

    def run(*streams: np.ndarray) -> np.ndarray:
        feeds = {n: s.astype(np.float32) for n, s in zip(order, streams, strict=True)}
        return execute_onnx(model, feeds)[name_out]

    return run
