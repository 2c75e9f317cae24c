"""FINN's IODMA overlays with pynq alone: the stream formats in numpy, the buffers and registers.

finn-plus-driver cannot be installed on a PYNQ image for the ZedBoard: its ``get_driver_class``
imports the whole ``overlays`` package, which imports qonnx (hence onnx, which PyPI does not build
for armv7l) and matplotlib (HARDWARE.md). What the board needs of it is small and is written here
against FINN's documented formats:

- :func:`pack` / :func:`unpack`: FINN's packed stream layout, as ``finn.util.data_packing``'s
  ``finnpy_to_packed_bytearray`` / ``packed_bytearray_to_finnpy`` make it with the flags the
  driver uses (``reverse_inner=True, reverse_endian=True``): the innermost (folded) dimension
  of ``n`` values of ``b`` bits is one little-endian word ``sum(v[i] << (i * b))`` (two's
  complement for signed types), padded to whole bytes. Vectorized: one shift-and-or over the
  array for widths dividing 8, one ``packbits`` for the others; a host test checks them bit for
  bit against FINN's.
- :class:`PynqDmaOverlay`: the overlay's IODMA register maps and CMA buffers through ``pynq``
  (``pynq.Overlay``, ``pynq.allocate``), with :mod:`fpga.board.accel`'s ``DmaOverlay``
  interface, so :class:`fpga.board.accel.DmaEngine` drives it with FINN's register sequence.
  ``allocate`` and ``ip`` can be given instead of pynq (a stand-in of the PL's registers).

Runs on the board: standard library and numpy (>= 1.21); pynq only when an overlay is opened.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fpga.board.errors import BoardError

log = logging.getLogger(__name__)


class FinnIoError(BoardError):
    """A FINN stream or overlay cannot be packed, unpacked or opened (one line)."""


@dataclass(frozen=True)
class StreamType:
    """A FINN integer ``DataType`` as the driver's settings name it (``DataType['UINT4']``)."""

    name: str
    bits: int
    signed: bool

    @classmethod
    def parse(cls, text: str) -> StreamType:
        name = str(text)
        if "[" in name:  # settings.json stores "DataType['UINT4']"
            name = name[name.index("[") + 1 : name.index("]")].strip("'\"")
        if name == "BINARY":
            return cls(name, 1, False)
        if name == "BIPOLAR":
            return cls(name, 1, True)
        for prefix, signed in (("UINT", False), ("INT", True)):
            digits = name[len(prefix) :]
            if name.startswith(prefix) and digits.isdigit() and 1 <= int(digits) <= 32:
                return cls(name, int(digits), signed)
        raise FinnIoError(
            f"stream datatype {text!r} is not BINARY, BIPOLAR, INTk or UINTk (k <= 32); the "
            "board's packer handles FINN's integer streams only"
        )

    @property
    def low(self) -> int:
        return -1 if self.name == "BIPOLAR" else (-(1 << (self.bits - 1)) if self.signed else 0)

    @property
    def high(self) -> int:
        if self.name == "BIPOLAR":
            return 1
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


def _container(bits: int) -> type:
    return np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32


def _words(values: np.ndarray, t: StreamType) -> np.ndarray:
    """Integer values -> their ``bits``-wide unsigned patterns (the smallest uint container),
    checked integer and in range."""
    v = np.asarray(values)
    if v.size:
        low, high = v.min(), v.max()
        if low < t.low or high > t.high:
            raise FinnIoError(
                f"values span [{low:.0f}, {high:.0f}], outside {t.name}'s [{t.low}, {t.high}]"
            )
        if v.dtype.kind == "f" and not np.array_equal(v, np.rint(v)):
            raise FinnIoError(f"values for a {t.name} stream are not integers")
    ints = v.astype(np.int16 if t.bits <= 8 else np.int64)
    if t.name == "BIPOLAR":
        ints = (ints + 1) // 2
    return (ints & ((1 << t.bits) - 1)).astype(_container(t.bits))


def packed_bytes(n: int, bits: int) -> int:
    """Bytes of one packed word of ``n`` values of ``bits`` bits."""
    return (n * bits + 7) // 8


def pack(values: np.ndarray, datatype: StreamType | str) -> np.ndarray:
    """Folded integer values ``(..., n)`` -> FINN's packed bytes ``(..., ceil(n * b / 8))``."""
    t = datatype if isinstance(datatype, StreamType) else StreamType.parse(datatype)
    u = _words(values, t)
    lead, n = u.shape[:-1], u.shape[-1]
    nbytes = packed_bytes(n, t.bits)
    if 8 % t.bits == 0:  # 1, 2, 4, 8 bits: k whole values per byte
        k = 8 // t.bits
        out = u[..., 0::k].copy()  # (..., nbytes): byte i holds values i*k .. i*k + k - 1
        for j in range(1, min(k, n)):  # a few whole-array shifts: faster than a reduce over k
            part = u[..., j::k]  # the last byte may lack value j (padding bits stay 0)
            out[..., : part.shape[-1]] |= part << np.uint8(j * t.bits)
        return out
    # any other width: every value's bits, least significant first, then one packbits
    u = u.astype(np.uint64)
    bits = (u[..., None] >> np.arange(t.bits, dtype=np.uint64)) & np.uint64(1)
    flat = np.zeros((*lead, nbytes * 8), dtype=np.uint8)
    flat[..., : n * t.bits] = bits.reshape(*lead, n * t.bits)
    return np.packbits(flat, axis=-1, bitorder="little")


Stream = tuple[str, tuple[int, ...]]
"""A packed word format: the datatype's name and the folded shape of one image
(:meth:`PynqDmaOverlay.stream`)."""


def same_bytes(a: Stream | None, b: Stream | None) -> bool:
    """Whether the same values packed in word formats ``a`` and ``b`` are the same bytes:
    equal formats, or one datatype, the same number of values per image and words of whole
    bytes without padding bits in both. :func:`pack` (FINN's ``finnpy_to_packed_bytearray``
    with the driver's ``reverse_inner`` and ``reverse_endian``) puts a word's values least
    significant first and its bytes little-endian, so such words concatenate: one 64-bit word
    of 16 UINT4 values is the bytes of four 16-bit words of 4 values. Folding (how many values
    a word holds) then changes the shape of the bytes, not the bytes."""
    if a is None or b is None:
        return False
    if a == b:
        return True
    (name_a, fold_a), (name_b, fold_b) = a, b
    if name_a != name_b or math.prod(fold_a) != math.prod(fold_b):
        return False
    bits = StreamType.parse(name_a).bits
    return all(fold and fold[-1] * bits % 8 == 0 for fold in (fold_a, fold_b))


def reword(packed: np.ndarray, stream: Stream) -> np.ndarray:
    """Packed bytes ``(N, ...)`` of a format :func:`same_bytes` as ``stream``, in ``stream``'s
    word shape ``(N, *folded[:-1], bytes per word)`` (a view where the bytes are contiguous)."""
    name, folded = stream
    words = packed_bytes(folded[-1], StreamType.parse(name).bits)
    return packed.reshape(len(packed), *folded[:-1], words)


def padding_mask(datatype: StreamType | str, n: int) -> np.ndarray | None:
    """Per byte of a packed word of ``n`` values, the bits that hold values (:func:`pack`
    writes zeros in the rest); None when the word has no padding bits. ``packed & mask`` makes
    bytes written by the PL, whose padding bits FINN does not specify, equal to :func:`pack`'s."""
    t = datatype if isinstance(datatype, StreamType) else StreamType.parse(datatype)
    used = (n * t.bits) % 8
    if not used:
        return None
    mask = np.full(packed_bytes(n, t.bits), 0xFF, dtype=np.uint8)
    mask[-1] = (1 << used) - 1
    return mask


def unpack(
    packed: np.ndarray, datatype: StreamType | str, n: int, dtype: Any = np.float32
) -> np.ndarray:
    """FINN's packed bytes ``(..., nbytes)`` -> ``n`` integer values per word, as float32
    (what FINN's driver returns) or as ``dtype`` (an integer type that holds the datatype: the
    codes without a float pass)."""
    t = datatype if isinstance(datatype, StreamType) else StreamType.parse(datatype)
    p = np.asarray(packed)
    if p.dtype != np.uint8:
        raise FinnIoError(f"packed data must be uint8, not {p.dtype}")
    lead, nbytes = p.shape[:-1], p.shape[-1]
    if nbytes != packed_bytes(n, t.bits):
        raise FinnIoError(
            f"{nbytes} bytes per word cannot hold exactly {n} {t.name} values "
            f"({packed_bytes(n, t.bits)} bytes do)"
        )
    if 8 % t.bits == 0:
        k = 8 // t.bits
        mask = np.uint8((1 << t.bits) - 1)
        u = np.empty((*lead, nbytes * k), dtype=np.int16)
        for j in range(k):
            u[..., j::k] = (p >> np.uint8(j * t.bits)) & mask
        u = u[..., :n]
    else:
        bits = np.unpackbits(p, axis=-1, bitorder="little")[..., : n * t.bits]
        bits = bits.reshape(*lead, n, t.bits).astype(np.int64)
        u = (bits << np.arange(t.bits, dtype=np.int64)).sum(axis=-1)
    if t.name == "BIPOLAR":
        u = 2 * u - 1
    elif t.signed:
        u = np.where(u >= (1 << (t.bits - 1)), u - (1 << t.bits), u)
    return u.astype(dtype, copy=False)


# ----------------------------------------------------------------------------------------------
# The overlay through pynq


SHAPE_KEYS = (
    "ishape_normal",
    "ishape_folded",
    "ishape_packed",
    "oshape_normal",
    "oshape_folded",
    "oshape_packed",
)
"""The shapes of FINN's driver ``io_shape_dict``, one list per key, an entry per DMA."""


def _shapes(io: dict[str, Any], key: str, batch: int) -> list[tuple[int, ...]]:
    return [(batch, *(int(d) for d in s[1:])) for s in io[key]]


class PynqDmaOverlay:
    """A FINN ``zynq-iodma`` overlay: ``batch_size`` images per buffer, pynq only.

    ``partial_batches``: a call of fewer images than ``batch_size`` is folded, packed and
    copied for just those images (the DMA moves only them: its count register), not padded.

    ``info`` is ``driver_information`` of FINN's ``settings.json``
    (:meth:`fpga.board.accel.OverlaySpec.driver_information`). On the board the bitfile is
    downloaded with ``pynq.Overlay`` (PL clock ``fclk_mhz`` set through ``pynq.Clocks``), buffers
    come from ``pynq.allocate`` (CMA, physically contiguous) and the IODMAs' register maps are
    the overlay's IP objects named in ``idma_names``/``odma_names``. ``allocate(shape, dtype)``
    and ``ip(name)`` replace pynq (a stand-in of the PL).
    """

    def __init__(
        self,
        info: dict[str, Any],
        batch_size: int,
        *,
        bitfile: str | Path | None = None,
        download: bool = True,
        allocate: Callable[..., Any] | None = None,
        ip: Callable[[str], Any] | None = None,
        axilite: Callable[[str], Any] | None = None,
    ) -> None:
        io = dict(info["io_shape_dict"])
        self.batch_size = int(batch_size)
        self._idt = [StreamType.parse(t) for t in io["idt"]]
        self._odt = [StreamType.parse(t) for t in io["odt"]]
        b = self.batch_size
        self._shape = {k: _shapes(io, k, b) for k in SHAPE_KEYS}
        if allocate is None or ip is None:
            allocate, ip, axilite = self._open_pynq(
                bitfile, download, float(info.get("fclk_mhz", 100.0))
            )
        self._axilite = axilite
        try:
            self.idma = [ip(name) for name in io["idma_names"]]
            self.odma = [ip(name) for name in io["odma_names"]]
            self.ibuf_packed_device = [
                allocate(shape=s, dtype=np.uint8) for s in self._shape["ishape_packed"]
            ]
            self.obuf_packed_device = [
                allocate(shape=s, dtype=np.uint8) for s in self._shape["oshape_packed"]
            ]
        except (AttributeError, KeyError) as exc:
            raise FinnIoError(
                f"the overlay lacks an IODMA that settings.json names ({exc}); the bitfile and "
                "settings.json come from different builds"
            ) from None
        except (MemoryError, RuntimeError) as exc:
            need = sum(int(np.prod(s)) for s in self.buffer_shapes())
            raise FinnIoError(
                f"cannot allocate {need / 1e6:.1f} MB of DMA buffers ({type(exc).__name__}: "
                f"{exc}); free CMA (python -m fpga.board doctor) or lower --overlay-batch"
            ) from None
        self.obuf_packed = [np.empty(s, dtype=np.uint8) for s in self._shape["oshape_packed"]]
        self._allocate = allocate
        self._kept: dict[int, tuple[Any, Any]] = {}
        """Output buffers kept in place (:meth:`keep_output`): data address -> (buffer, a
        weak reference to what holds it, or None while unclaimed)."""
        self._spare: dict[int, list[Any]] = {}
        """Per output DMA, the buffers it has written and may write again once their holder
        is gone."""
        self._scratch: list[Any] = []
        """Buffers the ARM gathers or assembles engines' inputs in (:meth:`device_array`)."""
        self._written: set[int] = set()
        """Output buffers the ARM wrote into (:meth:`claim_array`): their cache lines are
        flushed before a DMA writes them again, or an eviction could overwrite its data."""

    partial_batches = True

    zero_copy = True
    """Engines' outputs stay in their DMA buffers (:meth:`keep_output`) and an engine reads
    such a buffer in place (:meth:`address_of`): no copies into or out of the buffers for an
    activation that goes from engine to engine whole."""

    MAX_SPARE = 3
    """Buffers per output DMA beyond its own before a kept output is copied out instead."""

    MAX_SCRATCH = 8
    """Buffers for :meth:`device_array`; when all are held, host memory is used instead."""

    def device_array(self, shape: tuple[int, ...]) -> tuple[np.ndarray, Any] | None:
        """A ``uint8`` array of ``shape`` in a DMA buffer nobody holds, for the ARM to gather
        or assemble an engine's packed input in (the engine then streams it in place,
        :meth:`address_of`), and the buffer, for :meth:`claim`; None when :attr:`MAX_SCRATCH`
        buffers are held or CMA is short (the caller uses host memory)."""
        nbytes = math.prod(shape)
        free = next((b for b in self._scratch if b.nbytes >= nbytes and not self._held(b)), None)
        if free is None:
            if len(self._scratch) >= self.MAX_SCRATCH:
                return None
            largest = max(int(b.nbytes) for b in self.ibuf_packed_device)
            try:
                free = self._allocate(shape=(max(nbytes, largest),), dtype=np.uint8)
            except (MemoryError, RuntimeError):
                return None
            self._scratch.append(free)
        view = np.asarray(free)[:nbytes].reshape(shape)
        self._kept[_pointer(view)] = (free, None)
        return view, free

    def keep_output(self, ind: int, n: int) -> tuple[np.ndarray, Any]:
        """The first ``n`` images of output buffer ``ind`` as the DMA wrote them, in place (no
        copy; the CPU's stale cache lines dropped), and the buffer itself, for :meth:`claim`.
        Until the holder claimed with it is gone, the DMA writes other buffers."""
        buffer = self.obuf_packed_device[ind]
        getattr(buffer, "invalidate", lambda: None)()
        view = np.asarray(buffer)[:n]
        self._kept[_pointer(view)] = (buffer, None)
        return view, buffer

    def claim(self, buffer: Any, holder: Any) -> None:
        """``holder`` (an object that keeps a view of ``buffer``) owns it while it lives."""
        self._kept[_pointer(buffer)] = (buffer, weakref.ref(holder))

    def claim_array(self, data: np.ndarray, holder: Any) -> None:
        """``holder`` owns the kept buffer whose images ``data`` are from the first (the
        tensor that took over another's bytes in place, the ARM having written into them);
        nothing if ``data`` is in none."""
        entry = self._kept.get(_pointer(data))
        if entry is not None:
            self.claim(entry[0], holder)
            self._written.add(id(entry[0]))

    def address_of(self, data: np.ndarray) -> int | None:
        """The device address of ``data`` when it is a kept buffer's images from the first,
        contiguous (an output kept in place, or a :meth:`device_array`: an engine can stream it
        in place; the buffer is flushed from the ARM's cache first), else None."""
        entry = self._kept.get(_pointer(data))
        if entry is None or not data.flags.c_contiguous:
            return None
        buffer = entry[0]
        if data.nbytes > buffer.nbytes:
            return None
        getattr(buffer, "flush", lambda: None)()  # what the ARM wrote there, out of its cache
        return int(buffer.device_address)

    def ready_output(self, ind: int) -> None:
        """Before output DMA ``ind`` writes: if a live holder still keeps its buffer, the
        DMA gets a buffer nobody holds (a spare, or a new one from ``allocate``); with
        :attr:`MAX_SPARE` spares all held, the oldest holder's images are copied out of
        theirs (:meth:`detach` of the holder) and that buffer is written."""
        buffer = self.obuf_packed_device[ind]
        if not self._held(buffer):
            self._clean(buffer)
            return
        spares = self._spare.setdefault(ind, [])
        free = next((b for b in spares if not self._held(b)), None)
        if free is None and len(spares) < self.MAX_SPARE:
            try:
                free = self._allocate(shape=buffer.shape, dtype=np.uint8)
            except (MemoryError, RuntimeError):
                free = None  # CMA is short: copy the oldest holder's images out instead
        if free is None:
            free = spares.pop(0) if spares else buffer
            holder = self._kept[_pointer(free)][1]()
            if holder is not None:
                holder.detach()
            self._kept.pop(_pointer(free), None)
        else:
            spares[:] = [b for b in spares if b is not free]
        if free is not buffer:
            spares.append(buffer)
        self.obuf_packed_device[ind] = free
        self._clean(free)

    def _clean(self, buffer: Any) -> None:
        """Flush what the ARM wrote into ``buffer`` before a DMA writes it."""
        if id(buffer) in self._written:
            self._written.discard(id(buffer))
            getattr(buffer, "flush", lambda: None)()

    def _held(self, buffer: Any) -> bool:
        entry = self._kept.get(_pointer(buffer))
        return entry is not None and entry[1] is not None and entry[1]() is not None

    def buffer_shapes(self) -> list[tuple[int, ...]]:
        return [*self._shape["ishape_packed"], *self._shape["oshape_packed"]]

    @staticmethod
    def _open_pynq(bitfile: Any, download: bool, fclk_mhz: float):
        try:
            import pynq
        except ImportError:
            raise FinnIoError(
                "the finn backend needs the pynq package (a PYNQ image; docs/board.md), or run "
                "with --backend cpu"
            ) from None
        if bitfile is None or not Path(bitfile).is_file():
            raise FinnIoError(f"the overlay's bitfile {str(bitfile)!r} is missing")
        try:
            overlay = pynq.Overlay(str(bitfile), download=download)
            if download:
                pynq.Clocks.fclk0_mhz = fclk_mhz
        except Exception as exc:  # pynq raises RuntimeError, OSError, ValueError...
            raise FinnIoError(
                f"pynq cannot open {str(bitfile)!r}: {type(exc).__name__}: {exc}"
            ) from None

        def axilite(key: str) -> Any:
            entry = overlay.ip_dict.get(key)
            if entry is None:
                have = sorted(k for k in overlay.ip_dict if "axilite" in k)[:6]
                raise FinnIoError(
                    f"the overlay has no AXI-lite interface {key!r} (it has {have!r}...); the "
                    "bitfile and accelerators.json come from different builds"
                )
            return pynq.MMIO(int(entry["phys_addr"]), int(entry["addr_range"]))

        return pynq.allocate, lambda name: getattr(overlay, name), axilite

    def axilite(self, key: str) -> Any:
        """The register window of AXI-lite interface ``key`` of the overlay's ``ip_dict``
        (``pynq.MMIO``: its ``array`` is a ``uint32`` view of the range): a shared engine's
        runtime-writeable memory (:class:`fpga.board.weights.WeightLoader`)."""
        if self._axilite is None:
            raise FinnIoError(f"no AXI-lite windows were given for {key!r}")
        return self._axilite(key)

    def stream(self, side: str, ind: int = 0) -> tuple[str, tuple[int, ...]] | None:
        """The packed word format of input or output DMA ``ind``: its datatype and folded shape
        without the batch. Equal formats have equal bytes for equal values (padding bits
        cleared, :func:`padding_mask`), so an engine's packed output can be another's packed
        input as it is."""
        t = (self._idt if side == "input" else self._odt)[ind]
        folded = self._shape["ishape_folded" if side == "input" else "oshape_folded"][ind]
        return t.name, tuple(int(d) for d in folded[1:])

    # --- fpga.board.accel.DmaOverlay ------------------------------------------------------
    def idt(self, ind: int = 0) -> StreamType:
        return self._idt[ind]

    def odt(self, ind: int = 0) -> StreamType:
        return self._odt[ind]

    def ishape_normal(self, ind: int = 0) -> tuple[int, ...]:
        return self._shape["ishape_normal"][ind]

    def fold_input(self, ibuf_normal: np.ndarray, ind: int = 0) -> np.ndarray:
        x = np.asarray(ibuf_normal)
        return x.reshape(len(x), *self._shape["ishape_folded"][ind][1:])

    def pack_input(self, ibuf_folded: np.ndarray, ind: int = 0) -> np.ndarray:
        return pack(ibuf_folded, self._idt[ind])

    def copy_input_data_to_device(self, data: np.ndarray, ind: int = 0) -> None:
        buffer = self.ibuf_packed_device[ind]
        np.copyto(buffer[: len(data)], data)
        getattr(buffer, "flush", lambda: None)()  # write the CPU cache back before the DMA

    def copy_pixel_words_to_device(self, words: np.ndarray, ind: int = 0) -> None:
        """Input DMA ``ind``'s buffer filled, image by image, with one pixel's packed bytes
        ``words`` ((N, 1, 1, fold, bytes), a masked block's mask: :meth:`fpga.board.accel.
        DmaEngine.pixel_words`) repeated over every pixel, as the DMA streams the map.

        A word of 1, 2, 4 or 8 bytes is stored as one integer: numpy fills a broadcast a
        whole word per element, where copying a broadcast of bytes takes one small loop per
        pixel, a few times slower on the maps of ResNet-8's blocks. Other widths are copied
        byte by byte. Images past ``N`` keep what the buffer held (the DMA streams ``N``)."""
        buffer = self.ibuf_packed_device[ind]
        words = np.ascontiguousarray(words, dtype=np.uint8)
        target = buffer[: len(words)]
        width = words.shape[-1]
        if width in (1, 2, 4, 8) and target.flags.c_contiguous:
            wide = np.dtype(f"u{width}")
            np.copyto(target.view(wide), words.view(wide))
        else:
            np.copyto(target, words)
        getattr(buffer, "flush", lambda: None)()  # write the CPU cache back before the DMA

    def copy_output_data_from_device(self, data: np.ndarray, ind: int = 0) -> None:
        buffer = self.obuf_packed_device[ind]
        getattr(buffer, "invalidate", lambda: None)()  # drop stale cache lines after the DMA
        np.copyto(data, buffer[: len(data)])

    def unpack_output(self, obuf_packed: np.ndarray, ind: int = 0) -> np.ndarray:
        return unpack(obuf_packed, self._odt[ind], self._shape["oshape_folded"][ind][-1])

    def unfold_output(self, obuf_folded: np.ndarray, ind: int = 0) -> np.ndarray:
        y = np.asarray(obuf_folded)
        return y.reshape(len(y), *self._shape["oshape_normal"][ind][1:])


def _pointer(data: np.ndarray) -> int:
    """The address of an array's first byte in this process."""
    return int(np.asarray(data).__array_interface__["data"][0])


def buffer_bytes(info: dict[str, Any], batch_size: int) -> int:
    """CMA bytes the overlay's DMA buffers take at ``batch_size`` images (doctor's check)."""
    io = dict(info["io_shape_dict"])
    shapes: Sequence[tuple[int, ...]] = [
        *_shapes(io, "ishape_packed", batch_size),
        *_shapes(io, "oshape_packed", batch_size),
    ]
    # pynq allocates whole pages per buffer
    return sum(((int(np.prod(s)) + 4095) // 4096) * 4096 for s in shapes)
