"""FINN accelerators on PYNQ, adapted to the bundle executor's float graphs.

The executor hands a backend float NCHW tensors (``integer * scale`` values, as the manifest's
datatypes say); a FINN engine in the programmable logic takes integer codes in NHWC and gives
integer codes back. This module is the adapter between the two:

- :class:`OverlaySpec`: ``accelerators.json`` of an overlay's deploy folder, written by the
  build (:mod:`fpga.bitstream.overlay`): which bundle the overlay was built from, its bitfile,
  FINN's driver ``settings.json``, and per bundle graph the engine's DMA pair (the index of its
  input and output in FINN's ``io_shape_dict``) and its float tail; in an overlay of shared
  engines (:mod:`fpga.architecture`), also the engine a graph runs on and that engine's
  runtime-writeable memories (their AXI-lite windows), whose words the board writes before
  the graph runs (:class:`fpga.board.weights.WeightLoader`).
- :func:`open_finn_overlay`: the overlay through pynq alone
  (:class:`fpga.board.finnio.PynqDmaOverlay`: FINN's stream packing in numpy, CMA buffers and
  IODMA registers through pynq), made from FINN's ``settings.json``.
- :class:`DmaEngine`: one engine of that overlay as an :class:`Accelerator`,
  ``execute(codes_nhwc) -> out_nhwc``: FINN's folding and bit packing, then only this engine's
  input and output DMA started.
- :class:`FloatTail`: the float nodes that FINN leaves outside the partition (the output scale
  ``Mul``, the classifier's bias ``Add``, the ``Transpose`` back to NCHW), read once from the
  dataflow parent of :func:`fpga.finn.to_hw` at build time and stored as a small JSON file
  (:meth:`FloatTail.save`), so the board needs neither FINN nor qonnx to apply them.
- :class:`GraphAccelerator`: one bundle graph on one accelerator: float NCHW in ->
  ``rint(x / scale)`` codes (checked integer and in range) -> NHWC -> the accelerator -> the
  float tail -> the twin's float NCHW output. A block's engine (manifest version 3) takes its
  channel mask as a second stream, a 1-bit map of the output's shape (the executor's (N, C)
  mask broadcast over the pixels), through a second input DMA; an engine without one (an
  overlay of a dense graph) :meth:`GraphAccelerator.accepts` only all-ones masks, and
  :class:`fpga.board.runtime.FinnBackend` runs the other calls on the ARM (numpy).
- :class:`Carried`: an engine's output codes (and the packed bytes its output DMA wrote) kept
  beside the float output, so that the next engine takes them as they are
  (:meth:`GraphAccelerator.run_carried`; :class:`fpga.board.runtime.FinnBackend` passes them on).
- :func:`load_overlay`: all of it for one bundle.

Runs on PYNQ (Python 3.10, numpy >= 1.21): only numpy at module level; pynq is imported when an
overlay is opened.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import formats
from fpga.board.errors import BoardError
from fpga.board.finnio import (
    FinnIoError,
    PynqDmaOverlay,
    StreamType,
    pack,
    padding_mask,
    reword,
    same_bytes,
    unpack,
)
from fpga.board.weights import WeightLoader, WeightsError, WeightStore, flush_frame

log = logging.getLogger(__name__)

PARTITION_OP = "StreamingDataflowPartition"
NCHW_TO_NHWC = (0, 2, 3, 1)
TAIL_OPS = ("Mul", "Add", "Sub", "Div", "Transpose", "Reshape", "Flatten")
"""Float nodes a tail may hold (all that FINN leaves after the partition of a bundle graph)."""
_BINARY = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}
CODE_TOLERANCE = 1e-3
"""How far ``x / scale`` may lie from an integer (float32 rounding of the twin's output)."""


class AcceleratorError(BoardError):
    """An accelerator cannot be made or used (pynq or the driver missing, bad input or tail)."""


class Accelerator(Protocol):
    """One FINN dataflow engine in the PL.

    ``execute(codes)`` takes the integer input codes in the layout of FINN's PYNQ driver, NHWC
    with the batch first (``(N, H, W, C)``), and returns the engine's output codes (integers,
    possibly as floats), NHWC, batch first. A masked block's engine has ``mask_shape``
    ``(H, W, C)`` and takes ``execute(codes, mask_map)`` with the (N, H, W, C) 0/1 map.
    """

    def execute(self, codes: np.ndarray, *mask_map: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------
# The overlay's description (accelerators.json)

OVERLAY_FILE = "accelerators.json"
OVERLAY_FORMAT = "ddi-fpga overlay"
OVERLAY_VERSION = 3
"""2: an engine may have a second input DMA, ``mask_input`` (masked blocks). 3: graphs may
share an engine whose weights are written at run time (``engine``, ``runtime_weights``,
``axilite``); a version-2 runtime would run them with the bitstream's weights."""
REBUILD = "rebuild the overlay with this release (make bitstream, or python -m fpga overlay)"
"""What to do with an overlay file of another format or version."""
DEFAULT_BATCH = 64
"""Images per DMA transfer: FINN's driver allocates one buffer of this many images per engine
input and output in the CMA pool (ResNet-8: about 7 MB for all engines)."""


@dataclass(frozen=True)
class EngineSpec:
    """One bundle graph's engine: its DMA pair in ``io_shape_dict`` and its float tail; a
    masked block's engine also has the input DMA of its mask map (``mask_input``). ``engine``
    names the engine when graphs share it (the overlay's ``axilite`` then says whether its
    weights are written at run time); None: the graph's own engine."""

    input: int
    output: int
    tail: str
    mask_input: int | None = None
    engine: str | None = None
    pixels: bool = False
    """The engine takes the images' uint8 pixels and thresholds them to the graph's input
    codes itself (the stem, built with ``FrontendConfig.stem_pixels``)."""


@dataclass(frozen=True)
class OverlaySpec:
    """``accelerators.json`` (docs/board.md): an overlay built for one bundle.

    Paths are relative to the file's folder (the deploy folder). ``settings_origin`` says where
    ``settings.json`` came from: ``finn build`` (FINN's ``step_make_driver`` after synthesis) or
    ``predicted`` (FINN's driver generator run without Vivado, :mod:`fpga.bitstream.overlay`).
    An overlay of shared engines has ``runtime_weights`` (the manifest of
    :mod:`fpga.board.weights`) and ``axilite``: per shared engine, per runtime-writeable layer
    (FINN node name) the key of its AXI-lite interface in the overlay's ``ip_dict``.
    """

    root: Path
    bundle_id: str
    bitfile: str
    settings: str
    settings_origin: str
    engines: dict[str, EngineSpec]
    batch_size: int = DEFAULT_BATCH
    runtime_weights: str | None = None
    axilite: dict[str, dict[str, str]] = field(default_factory=dict)

    def shared(self, graph: str) -> str | None:
        """The shared engine whose weights ``graph`` writes before it runs, else None."""
        name = self.engines[graph].engine
        return name if name in self.axilite else None

    @classmethod
    def load(cls, folder: str | Path) -> OverlaySpec:
        """Read and check ``folder/accelerators.json``; one-line :class:`AcceleratorError`."""
        root = Path(folder)
        path = root / OVERLAY_FILE
        if not path.is_file():
            raise AcceleratorError(
                f"{str(root)!r} holds no {OVERLAY_FILE}; pass the deploy folder that "
                "`make bitstream` (or `python -m fpga overlay`) wrote"
            )
        doc = formats.read(
            path, OVERLAY_FORMAT, OVERLAY_VERSION, error=AcceleratorError, remedy=REBUILD
        )
        try:
            engines = {
                str(name): EngineSpec(
                    int(e["input"]),
                    int(e["output"]),
                    str(e["tail"]),
                    None if e.get("mask_input") is None else int(e["mask_input"]),
                    None if e.get("engine") is None else str(e["engine"]),
                    bool(e.get("pixels", False)),
                )
                for name, e in dict(doc["engines"]).items()
            }
            axilite = {
                str(engine): {str(node): str(key) for node, key in dict(windows).items()}
                for engine, windows in dict(doc.get("axilite") or {}).items()
            }
            weights = doc.get("runtime_weights")
            spec = cls(
                root=root,
                bundle_id=str(doc["bundle_id"]),
                bitfile=str(doc["bitfile"]),
                settings=str(doc["settings"]),
                settings_origin=str(doc.get("settings_origin", "")),
                engines=engines,
                batch_size=int(doc.get("batch_size", DEFAULT_BATCH)),
                runtime_weights=None if weights is None else str(weights),
                axilite=axilite,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AcceleratorError(
                f"cannot read {str(path)!r}: {type(exc).__name__}: {exc}"
            ) from None
        if spec.batch_size < 1:
            raise AcceleratorError(f"{str(path)!r}: batch_size {spec.batch_size} must be >= 1")
        pairs: dict[str, tuple[int, int, int | None]] = {}
        for graph, e in spec.engines.items():
            if e.engine is None:
                continue
            pair = pairs.setdefault(e.engine, (e.input, e.output, e.mask_input))
            if pair != (e.input, e.output, e.mask_input):
                raise AcceleratorError(
                    f"{str(path)!r}: graph {graph!r} runs on engine {e.engine!r} through DMAs "
                    f"{(e.input, e.output, e.mask_input)!r}, another of its graphs through "
                    f"{pair!r}; {REBUILD}"
                )
        orphans = sorted(set(spec.axilite) - set(pairs))
        if orphans:
            raise AcceleratorError(
                f"{str(path)!r} has AXI-lite windows of engines {orphans!r} that no graph runs on; "
                f"{REBUILD}"
            )
        if bool(spec.axilite) != (spec.runtime_weights is not None):
            has, lacks = ("AXI-lite windows", "runtime_weights")[:: 1 if spec.axilite else -1]
            raise AcceleratorError(f"{str(path)!r} has {has} but no {lacks}; {REBUILD}")
        return spec

    def save(self) -> Path:
        doc = {
            "format": OVERLAY_FORMAT,
            "version": OVERLAY_VERSION,
            "bundle_id": self.bundle_id,
            "bitfile": self.bitfile,
            "settings": self.settings,
            "settings_origin": self.settings_origin,
            "batch_size": self.batch_size,
            "engines": {
                n: {
                    "input": e.input,
                    "output": e.output,
                    "tail": e.tail,
                    **({} if e.mask_input is None else {"mask_input": e.mask_input}),
                    **({} if e.engine is None else {"engine": e.engine}),
                    **({"pixels": True} if e.pixels else {}),
                }
                for n, e in self.engines.items()
            },
        }
        if self.runtime_weights is not None:
            doc["runtime_weights"] = self.runtime_weights
            doc["axilite"] = self.axilite
        path = self.root / OVERLAY_FILE
        path.write_text(json.dumps(doc, indent=1) + "\n")
        return path

    def driver_information(self) -> dict[str, Any]:
        """``driver_information`` of FINN's ``settings.json``, checked for a DMA overlay."""
        path = self.root / self.settings
        try:
            info = dict(json.loads(path.read_text())["driver_information"])
            shapes = info["io_shape_dict"]
            n_in, n_out = int(shapes["num_inputs"]), int(shapes["num_outputs"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AcceleratorError(
                f"cannot read FINN's driver settings {str(path)!r}: {type(exc).__name__}: {exc}"
            ) from None
        if info.get("driver_type") != "FINNDMAOverlay" or info.get("platform") != "zynq-iodma":
            raise AcceleratorError(
                f"{str(path)!r} describes a {info.get('driver_type')!r} on "
                f"{info.get('platform')!r}; the board runs FINNDMAOverlay on zynq-iodma "
                "(build without instrumentation)"
            )
        if info.get("external_weights") or int(shapes.get("number_of_external_weights", 0)):
            raise AcceleratorError(
                f"{str(path)!r}: the overlay streams weights from DDR (external weights), "
                "which the board runtime does not drive; build with internal weights"
            )
        for name, e in self.engines.items():
            masks = [] if e.mask_input is None else [e.mask_input]
            if not (all(0 <= i < n_in for i in [e.input, *masks]) and 0 <= e.output < n_out):
                raise AcceleratorError(
                    f"engine {name!r} uses DMA input {e.input} / output {e.output}"
                    + "".join(f" / mask input {m}" for m in masks)
                    + f", but {str(path)!r} has {n_in} inputs and {n_out} outputs"
                )
        return info


# ----------------------------------------------------------------------------------------------
# The overlay (FINN's DMA driver interface)


class DmaOverlay(Protocol):
    """What :class:`DmaEngine` uses of a FINN DMA overlay (the interface of finn-plus-driver's
    ``FINNDMAOverlay``; on the board :class:`fpga.board.finnio.PynqDmaOverlay`).

    ``idma[i]``/``odma[o]`` are the IODMAs' register maps (``read(offset)``,
    ``write(offset, value)``), ``ibuf_packed_device[i]``/``obuf_packed_device[o]`` their
    PYNQ buffers (``device_address``), ``obuf_packed[o]`` host copies; the methods fold, pack,
    copy, unpack and unfold one input or output (``ind``) for ``batch_size`` images.
    """

    batch_size: int
    idma: list[Any]
    odma: list[Any]
    ibuf_packed_device: list[Any]
    obuf_packed_device: list[Any]
    obuf_packed: list[np.ndarray]

    def idt(self, ind: int = 0) -> Any: ...
    def ishape_normal(self, ind: int = 0) -> tuple[int, ...]: ...
    def fold_input(self, ibuf_normal: np.ndarray, ind: int = 0) -> np.ndarray: ...
    def pack_input(self, ibuf_folded: np.ndarray, ind: int = 0) -> np.ndarray: ...
    def copy_input_data_to_device(self, data: np.ndarray, ind: int = 0) -> None: ...
    def copy_output_data_from_device(self, data: np.ndarray, ind: int = 0) -> None: ...
    def unpack_output(self, obuf_packed: np.ndarray, ind: int = 0) -> np.ndarray: ...
    def unfold_output(self, obuf_folded: np.ndarray, ind: int = 0) -> np.ndarray: ...


def open_finn_overlay(
    spec: OverlaySpec, *, batch_size: int | None = None, download: bool = True
) -> DmaOverlay:
    """The overlay through pynq alone (:class:`fpga.board.finnio.PynqDmaOverlay`): downloads
    the bitfile (unless ``download`` is false) and allocates the DMA buffers of ``batch_size``
    images. finn-plus-driver is not used: it imports qonnx, onnx and matplotlib, which a PYNQ
    image for the ZedBoard (armv7l) cannot install.
    """

    try:
        import pynq  # noqa: F401 - only present on a PYNQ image
    except ImportError as exc:
        raise AcceleratorError(
            f"the finn backend needs pynq on the board ({exc}); docs/board.md says how to "
            "install it, or run with --backend cpu"
        ) from None
    bitfile = spec.root / spec.bitfile
    if not bitfile.is_file():
        raise AcceleratorError(
            f"the overlay's bitfile {str(bitfile)!r} is missing; copy the whole deploy folder "
            "that `make bitstream` wrote"
        )
    if spec.settings_origin != "finn build":
        raise AcceleratorError(
            f"{str(spec.root / spec.settings)!r} was {spec.settings_origin or 'not built'}, "
            "not written by FINN's build of this bitfile; rebuild with `make bitstream`"
        )
    info = spec.driver_information()
    weights = spec.root / "runtime_weights"
    if spec.runtime_weights is None and weights.is_dir() and any(weights.iterdir()):
        raise AcceleratorError(
            f"{str(weights)!r} holds runtime weights, but {str(spec.root / OVERLAY_FILE)!r} "
            f"lists no shared engine; {REBUILD}"
        )
    try:
        overlay = PynqDmaOverlay(
            info, batch_size or spec.batch_size, bitfile=bitfile, download=download
        )
    except FinnIoError as exc:
        raise AcceleratorError(str(exc)) from None
    log.info(
        "overlay %s: %d engines, batch %d", bitfile.name, len(spec.engines), overlay.batch_size
    )
    return overlay


AP_START, AP_DONE, AP_IDLE = 0x1, 0x2, 0x4
"""Bits of an HLS block's ``ap_ctrl`` register (offset 0): FINN's IODMAs are HLS blocks."""
DMA_CTRL, DMA_ADDR_LO, DMA_ADDR_HI, DMA_COUNT = 0x00, 0x10, 0x14, 0x1C
"""The IODMA registers FINN's driver programs: control, buffer address, images to move."""


class DmaEngine:
    """One engine of a FINN DMA overlay: input DMA ``input``, output DMA ``output``.

    FINN's ``FINNDMAOverlay.execute`` starts every IODMA of the overlay at once: in an overlay
    with one engine per bundle graph that would run all engines on whatever their buffers hold
    (power drawn, and measured, for work nobody asked for), and it would wait on all outputs.
    So this class uses the overlay's own folding, packing and buffer copies, but programs only
    this engine's two IODMAs, in the order and with the registers FINN's driver uses (output
    first, then input; address, image count, start; done polled on the output).

    A batch larger than the overlay's ``batch_size`` runs in chunks; a shorter chunk is padded
    for packing (unless the overlay has ``partial_batches``: it packs and copies just the images
    it moves), and only its images are moved (the count register).
    """

    def __init__(
        self,
        overlay: DmaOverlay,
        input: int,
        output: int,
        *,
        mask_input: int | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.overlay = overlay
        self.input = input
        self.output = output
        self.mask_input = mask_input
        """The input DMA of a masked block's mask map (1 bit per output value), or None."""
        self.timeout_s = timeout_s
        self._kept_buffer: Any = None
        """The DMA buffer the last call's output was kept in, until :meth:`claim`."""

    def execute(self, codes: np.ndarray, mask_map: np.ndarray | None = None) -> np.ndarray:
        return self.run_packed(codes, mask_map=mask_map)[0]

    @property
    def input_stream(self) -> tuple[Any, ...] | None:
        """The input DMA's packed word format (:meth:`PynqDmaOverlay.stream`), or None."""
        stream = getattr(self.overlay, "stream", None)
        return stream("input", self.input) if stream else None

    @property
    def output_stream(self) -> tuple[Any, ...] | None:
        stream = getattr(self.overlay, "stream", None)
        return stream("output", self.output) if stream else None

    @property
    def mask_shape(self) -> tuple[int, ...] | None:
        """(H, W, C) of the mask map one image streams into :attr:`mask_input`, or None."""
        if self.mask_input is None:
            return None
        return tuple(int(d) for d in self.overlay.ishape_normal(self.mask_input)[1:])

    def mask_words(self, mask: np.ndarray) -> np.ndarray | None:
        """A masked engine's (N, C) 0/1 channel mask -> the packed bytes of its mask map (one
        image's map is the same pixel repeated), made by packing one pixel per image and
        repeating its words (a broadcast view: :meth:`pixel_words` is the pixel): the map is
        never built value by value. None where the overlay does not describe the mask stream as
        whole pixels (then the map is folded and packed)."""
        words = self.pixel_words(mask)
        if words is None:
            return None
        h, w, _ = self.mask_shape
        return np.broadcast_to(words, (len(mask), h, w, *words.shape[3:]))

    def pixel_words(self, mask: np.ndarray) -> np.ndarray | None:
        """The packed bytes of one pixel of each image's mask map, (N, 1, 1, fold, bytes), or
        None (:meth:`mask_words`)."""
        stream = getattr(self.overlay, "stream", None)
        if self.mask_input is None or stream is None:
            return None
        name, folded = stream("input", self.mask_input)
        h, w, c = self.mask_shape
        if len(folded) != 4 or tuple(folded[:2]) != (h, w) or folded[2] * folded[3] != c:
            return None
        m = np.asarray(mask, dtype=np.uint8).reshape(len(mask), 1, 1, folded[2], folded[3])
        return pack(m, StreamType.parse(name))  # (N, 1, 1, fold, bytes)

    def run_packed(
        self,
        codes: np.ndarray | None = None,
        packed_in: np.ndarray | None = None,
        mask_map: np.ndarray | None = None,
        *,
        channel_mask: np.ndarray | None = None,
        decode: bool = True,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``execute`` that can skip folding and packing and keeps what the output DMA wrote.

        ``packed_in``: the input already in this DMA's packed format (another engine's packed
        output with the same :attr:`input_stream`), one row per image; ``codes`` may then be
        None. ``mask_map``: a masked engine's (N, H, W, C) 0/1 map (:attr:`mask_shape`),
        streamed through :attr:`mask_input`; or ``channel_mask``, the (N, C) mask it repeats
        (:meth:`mask_words`). Returns the output codes (None with ``decode=False`` where the
        packed bytes are kept) and, when the overlay describes its streams
        (:attr:`output_stream`), the packed output bytes, one row per image (else None).
        """
        ov, i, o = self.overlay, self.input, self.output
        n_images = len(codes) if codes is not None else len(packed_in)
        fill = getattr(ov, "copy_pixel_words_to_device", None)  # fills the map a word a time
        if channel_mask is not None and mask_map is None:
            words = self.pixel_words(channel_mask)
            if words is None:
                mask_map = _mask_map(channel_mask, self.mask_shape)
            elif fill is None:
                words = self.mask_words(channel_mask)
        else:
            words = None
        masked = mask_map is not None or words is not None
        if masked != (self.mask_input is not None):
            raise AcceleratorError(
                f"engine (DMA {i}->{o}) "
                + (
                    "streams a channel mask map; pass one"
                    if not masked
                    else "takes no channel mask (a dense engine)"
                )
            )
        if mask_map is not None and (
            len(mask_map) != n_images or tuple(mask_map.shape[1:]) != self.mask_shape
        ):
            raise AcceleratorError(
                f"engine (DMA {i}->{o}) takes mask maps of shape {self.mask_shape!r}, got "
                f"{tuple(mask_map.shape)!r} for {n_images} images"
            )
        if words is not None and len(words) != n_images:
            raise AcceleratorError(
                f"engine (DMA {i}->{o}): channel masks for {len(words)} images, {n_images} inputs"
            )
        b = int(ov.batch_size)
        shape = tuple(ov.ishape_normal(i))
        if codes is not None and tuple(codes.shape[1:]) != shape[1:]:
            raise AcceleratorError(
                f"engine (DMA {i}->{o}) takes images of shape {shape[1:]!r}, got "
                f"{tuple(codes.shape[1:])!r}"
            )
        if packed_in is not None:
            word_shape = tuple(ov.ibuf_packed_device[i].shape[1:])
            if len(packed_in) != n_images or tuple(packed_in.shape[1:]) != word_shape:
                raise AcceleratorError(
                    f"engine (DMA {i}->{o}): packed input of shape {tuple(packed_in.shape)!r} "
                    f"for {n_images} images of {word_shape!r} bytes"
                )
        elif codes is None:
            raise AcceleratorError(f"engine (DMA {i}->{o}): pass the input codes or packed bytes")
        else:
            codes = codes.astype(_container(ov.idt(i)), copy=False)
        partial = getattr(ov, "partial_batches", False)  # packs just the images it moves
        keep = self.output_stream is not None
        decode = decode or not keep
        pad = None
        if keep:
            name, folded = self.output_stream
            pad = padding_mask(name, folded[-1])
        # one chunk on an overlay whose buffers can be kept: the input streamed from where an
        # engine left it, the output kept where this one writes it (no copies)
        in_place = getattr(ov, "zero_copy", False) and partial and n_images <= b
        self._kept_buffer = None
        outputs, packed_out = [], []
        for start in range(0, n_images, b):
            n = min(b, n_images - start)
            address = None
            if packed_in is not None:
                data = packed_in[start : start + n]
                if in_place:
                    address = ov.address_of(data)
                if n < b and not partial:
                    data = np.concatenate([data, np.zeros((b - n, *data.shape[1:]), np.uint8)])
            else:
                chunk = codes[start : start + b]
                if n < b and not partial:
                    chunk = np.concatenate([chunk, np.zeros((b - n, *shape[1:]), chunk.dtype)])
                data = ov.pack_input(ov.fold_input(chunk, ind=i), ind=i)
            k = self.mask_input
            if words is not None and fill is not None:
                fill(words[start : start + n], ind=k)
            elif words is not None:
                m = words[start : start + n]
                if n < b and not partial:
                    m = np.concatenate([m, np.zeros((b - n, *m.shape[1:]), np.uint8)])
                ov.copy_input_data_to_device(m, ind=k)
            elif mask_map is not None:
                m = mask_map[start : start + b]
                if n < b and not partial:
                    m = np.concatenate([m, np.zeros((b - n, *m.shape[1:]), m.dtype)])
                ov.copy_input_data_to_device(ov.pack_input(ov.fold_input(m, ind=k), ind=k), ind=k)
            if address is None:
                ov.copy_input_data_to_device(data, ind=i)
            ready = getattr(ov, "ready_output", None)
            if ready is not None:  # not into a buffer that a kept output still holds
                ready(o)
            self._transfer(n, address)
            if in_place and keep and pad is None:  # no padding bits to clear: kept in place
                packed, self._kept_buffer = ov.keep_output(o, n)
                packed_out.append(packed)
            else:
                # partial: the output DMA's bytes copied once, into an array of their own
                packed = np.empty_like(ov.obuf_packed[o][:n]) if partial else ov.obuf_packed[o]
                ov.copy_output_data_from_device(packed, ind=o)
                if keep:  # padding bits cleared as pack's; the host buffer is reused: a copy
                    kept = packed if partial else np.array(packed[:n])
                    if pad is not None:
                        np.bitwise_and(kept, pad, out=kept)
                    packed_out.append(kept)
            if decode:
                out = ov.unfold_output(ov.unpack_output(packed, ind=o), ind=o)
                outputs.append(np.asarray(out)[:n])
        joined = _joined(packed_out) if keep else None
        return (_joined(outputs) if decode else None), joined

    def claim(self, holder: object) -> None:
        """``holder`` keeps the output the last call kept in its DMA buffer (the overlay's
        :meth:`fpga.board.finnio.PynqDmaOverlay.claim`): no DMA writes that buffer while
        ``holder`` lives."""
        if self._kept_buffer is not None:
            self.overlay.claim(self._kept_buffer, holder)
            self._kept_buffer = None

    def _transfer(self, n: int, input_address: int | None = None) -> None:
        """Program and start this engine's DMAs for ``n`` images and wait for the output;
        ``input_address``: stream the input from there instead of the input buffer."""
        ov, i, o = self.overlay, self.input, self.output
        odma, idma = ov.odma[o], ov.idma[i]
        if not odma.read(DMA_CTRL) & AP_IDLE:
            raise AcceleratorError(
                f"output DMA {o} is busy before a transfer; reset the board runtime"
            )
        order = [(odma, int(ov.obuf_packed_device[o].device_address))]  # FINN: output first
        if self.mask_input is not None:
            mask = ov.ibuf_packed_device[self.mask_input]
            order.append((ov.idma[self.mask_input], int(mask.device_address)))
        if input_address is None:
            input_address = int(ov.ibuf_packed_device[i].device_address)
        order.append((idma, input_address))
        for dma, address in order:
            dma.write(DMA_ADDR_LO, address & 0xFFFFFFFF)
            dma.write(DMA_ADDR_HI, (address >> 32) & 0xFFFFFFFF)
            dma.write(DMA_COUNT, n)
            dma.write(DMA_CTRL, AP_START)
        deadline = time.monotonic() + self.timeout_s
        while not odma.read(DMA_CTRL) & AP_DONE:
            if time.monotonic() > deadline:
                raise AcceleratorError(
                    f"engine DMA {i}->{o} did not finish {n} images within {self.timeout_s} s; "
                    "the overlay or accelerators.json does not match (rebuild, reset the board)"
                )


def _mask_map(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An (N, C) 0/1 channel mask broadcast over the pixels: the (N, H, W, C) uint8 map."""
    h, w, c = shape
    codes = np.asarray(mask, dtype=np.uint8)[:, None, None, :]  # (N, 1, 1, C)
    return np.ascontiguousarray(np.broadcast_to(codes, (len(codes), h, w, c)))


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The chunks of one call as one array (the one chunk of a batch as it is: no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _container(datatype: Any) -> type:
    """The numpy dtype FINN's packer takes fastest for a FINN ``DataType``."""
    name = getattr(datatype, "name", str(datatype))
    bits = getattr(datatype, "bits", None) or getattr(datatype, "bitwidth", lambda: 32)()
    if name.startswith("UINT") and bits <= 8:
        return np.uint8
    if name.startswith("INT") and bits <= 8:
        return np.int8
    return np.float32


# ----------------------------------------------------------------------------------------------
# The float tail

TAIL_FORMAT = "ddi-fpga-float-tail"
TAIL_VERSION = 1
"""1: a tail file carries ``format`` and ``version`` (files before them are refused)."""


@dataclass
class FloatTail:
    """The float nodes after a graph's dataflow partition, applied in numpy (float32).

    Saved as ``{"format": "ddi-fpga-float-tail", "version": 1, "ops": [...]}``. ``ops`` is a
    list of ``{"op": "Mul"|"Add"|"Sub"|"Div", "value": nested list, "shape": [...],
    "const_first": bool}``, ``{"op": "Transpose", "perm": [...]}``, ``{"op": "Flatten"}`` (axis
    1) or ``{"op": "Reshape",
    "shape": [...]}``, in graph order. Values are float32, stored exactly (JSON's float64
    round-trips them).
    """

    ops: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_parent(cls, parent: Any) -> FloatTail:
        """The tail of a dataflow parent (a ``ModelWrapper`` from :func:`fpga.finn.to_hw`).

        Checks the parent's shape: one input ``Transpose`` to NHWC, one partition, then a chain
        of :data:`TAIL_OPS`, each with one constant operand.
        """
        nodes = list(parent.graph.node)
        kinds = [n.op_type for n in nodes]
        if kinds.count(PARTITION_OP) != 1:
            raise AcceleratorError(
                f"the parent has {kinds.count(PARTITION_OP)} dataflow partitions, not 1: {kinds!r}"
            )
        at = kinds.index(PARTITION_OP)
        head = nodes[:at]
        inputs = len(parent.graph.input)
        if len(head) != inputs or any(
            n.op_type != "Transpose" or _perm(n) != NCHW_TO_NHWC for n in head
        ):
            raise AcceleratorError(
                f"the parent's nodes before the partition are {kinds[:at]!r}; expected one "
                "Transpose NCHW->NHWC per input (fpga.finn's ChannelsFirstInput)"
            )
        ops: list[dict[str, Any]] = []
        current = nodes[at].output[0]
        for node in nodes[at + 1 :]:
            if node.op_type not in TAIL_OPS or current not in node.input:
                raise AcceleratorError(
                    f"tail node {node.name!r} ({node.op_type}) is not one of {TAIL_OPS!r} "
                    "chained after the partition; the adapter cannot apply it"
                )
            if node.op_type == "Transpose":
                ops.append({"op": "Transpose", "perm": list(_perm(node))})
            elif node.op_type == "Flatten":  # a layer gate's (N, 10, 1, 1) embedding codes
                axis = _int_attribute(node, "axis", 1)
                if axis != 1:
                    raise AcceleratorError(
                        f"tail node {node.name!r} flattens from axis {axis}; the adapter keeps "
                        "the batch axis only (axis 1)"
                    )
                ops.append({"op": "Flatten"})
            else:
                consts = [i for i in node.input if i != current]
                value = parent.get_initializer(consts[0]) if len(consts) == 1 else None
                if value is None:
                    raise AcceleratorError(
                        f"tail node {node.name!r} ({node.op_type}) has no constant operand"
                    )
                if node.op_type == "Reshape":
                    ops.append({"op": "Reshape", "shape": [int(v) for v in value.ravel()]})
                else:
                    value = np.asarray(value, dtype=np.float32)
                    ops.append(
                        {
                            "op": node.op_type,
                            "value": value.tolist(),
                            "shape": list(value.shape),
                            "const_first": node.input[0] != current,
                        }
                    )
            current = node.output[0]
        if current != parent.graph.output[0].name:
            raise AcceleratorError(
                f"the tail ends in {current!r}, not the graph output "
                f"{parent.graph.output[0].name!r}"
            )
        return cls(ops)

    def apply(self, y: np.ndarray) -> np.ndarray:
        """The partition's output (N, H, W, C codes) -> the graph's float output."""
        y = np.asarray(y, dtype=np.float32)
        for op in self.ops:
            kind = op["op"]
            if kind == "Transpose":
                y = np.transpose(y, op["perm"])
            elif kind == "Reshape":
                y = y.reshape([len(y), *op["shape"][1:]])  # the batch is the executor's
            elif kind == "Flatten":
                y = y.reshape(len(y), -1)
            else:
                c = np.asarray(op["value"], dtype=np.float32).reshape(op["shape"])
                a, b = (c, y) if op["const_first"] else (y, c)
                y = _BINARY[kind](a, b)
        return np.ascontiguousarray(y, dtype=np.float32)

    def save(self, path: str | Path) -> None:
        document = {"format": TAIL_FORMAT, "version": TAIL_VERSION, "ops": self.ops}
        Path(path).write_text(json.dumps(document) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FloatTail:
        try:
            document = formats.read(
                path,
                TAIL_FORMAT,
                TAIL_VERSION,
                error=AcceleratorError,
                remedy=REBUILD,
                what="the float tail",
            )
            return cls(list(document["ops"]))
        except (FileNotFoundError, KeyError, TypeError) as exc:
            raise AcceleratorError(
                f"cannot read the float tail {str(path)!r}: {type(exc).__name__}: {exc}"
            ) from None


def _int_attribute(node: Any, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


def _perm(node: Any) -> tuple[int, ...]:
    for attribute in node.attribute:
        if attribute.name == "perm":
            return tuple(int(v) for v in attribute.ints)
    return ()


# ----------------------------------------------------------------------------------------------
# One bundle graph on one accelerator


Allocator = Callable[[tuple[int, ...]], "tuple[np.ndarray, Callable[[object], None]] | None"]
"""``shape -> (array, claim)`` of a ``uint8`` array in a DMA buffer and the function that makes
its holder the buffer's owner, or None (use host memory): :meth:`fpga.board.runtime.
FinnBackend.device_array`."""


class Carried:
    """An engine's output in the form the next engine takes, kept beside its float tensor.

    The float tensor is ``transpose(codes, NHWC->NCHW) * scale`` (float32: the output's tail is
    that ``Mul`` and ``Transpose``). An engine whose input scale is ``scale`` takes ``codes``
    as they are: ``rint(x / scale)`` of that float tensor gives them back exactly (``x / scale``
    lies within 2 float32 ulps of each code), so the float -> codes work is not done. ``packed``
    is what the output DMA wrote, per image, in the word format ``stream``; an input DMA of the
    same format takes those bytes without folding and packing.

    Where the bytes are kept, the codes are made from them only when asked for (:attr:`codes`:
    one unpack, then kept): an activation that goes from engine to engine in one word format is
    only copied on the ARM, never unpacked. ``low``/``high`` bound the codes (the producing
    engine's output datatype, or the data), so a consumer checks its input range without
    reading them.
    """

    __slots__ = (
        "__weakref__",
        "_codes",
        "dtype",
        "high",
        "low",
        "packed",
        "scale",
        "shape",
        "stream",
    )

    def __init__(
        self,
        scale: np.float32,
        *,
        low: int,
        high: int,
        codes: np.ndarray | None = None,
        packed: np.ndarray | None = None,
        stream: tuple[Any, ...] | None = None,
        shape: tuple[int, ...] | None = None,
        dtype: Any = np.int16,
    ) -> None:
        if codes is None and (packed is None or stream is None or shape is None):
            raise ValueError("Carried needs its codes, or packed bytes with their stream and shape")
        self.scale = scale
        self.low, self.high = int(low), int(high)
        self._codes = codes
        self.packed = packed
        self.stream = stream
        self.shape = tuple(codes.shape[1:]) if codes is not None else tuple(shape)
        """(H, W, C) of one image's codes."""
        self.dtype = codes.dtype if codes is not None else np.dtype(dtype)

    def __len__(self) -> int:
        return len(self._codes) if self._codes is not None else len(self.packed)

    @property
    def codes(self) -> np.ndarray:
        """(N, H, W, C) integer codes, unpacked from :attr:`packed` the first time."""
        if self._codes is None:
            name, folded = self.stream
            values = unpack(self.packed, name, folded[-1], dtype=self.dtype)
            self._codes = values.reshape(len(values), *self.shape)
        return self._codes

    def detach(self) -> None:
        """Copy the packed bytes out of the DMA buffer they may lie in (the buffer is needed
        again: :meth:`fpga.board.finnio.PynqDmaOverlay.ready_output`)."""
        if self.packed is not None:
            self.packed = np.array(self.packed)

    def take(self, rows: np.ndarray, device: Allocator | None = None) -> Carried:
        """The rows ``rows`` (sorted indices); ``device`` may give the array their packed
        bytes are gathered in (a DMA buffer, so that the engines it feeds stream it in place)."""
        packed, claim = None, None
        if self.packed is not None:
            got = device((len(rows), *self.packed.shape[1:])) if device is not None else None
            if got is None:
                packed = self.packed[rows]
            else:
                packed, claim = got
                np.take(self.packed, rows, axis=0, out=packed, mode="clip")
        taken = Carried(
            self.scale,
            low=self.low,
            high=self.high,
            codes=None if self._codes is None else self._codes[rows],
            packed=packed,
            stream=self.stream,
            shape=self.shape,
            dtype=self.dtype,
        )
        if claim is not None:
            claim(taken)
        return taken


class EngineTensor:
    """An engine's output kept in the engines' integer form: its :class:`Carried` codes (and
    packed bytes), the float tensor made only if the ARM needs it (:meth:`floats`: the graph's
    float tail on the codes, once).

    :class:`fpga.board.runtime.FinnBackend` hands these to the executor for the outputs of the
    stem, the blocks and the shortcuts; the executor only gathers rows of them and puts rows
    together (``take``, ``assemble``), so an activation that goes from engine to engine, through
    the gates' engines and skipped blocks, is never turned into floats on the ARM.
    """

    __slots__ = ("_floats", "carried", "tail")

    def __init__(self, carried: Carried, tail: FloatTail) -> None:
        self.carried = carried
        self.tail = tail
        self._floats: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.carried)

    def take(self, rows: np.ndarray, device: Allocator | None = None) -> EngineTensor:
        return EngineTensor(self.carried.take(rows, device), self.tail)

    def floats(self) -> np.ndarray:
        """The float tensor (read-only), as the graph's onnxruntime twin returns it."""
        if self._floats is None:
            self._floats = self.tail.apply(self.carried.codes)
            self._floats.flags.writeable = False
        return self._floats


def as_floats(x: Any) -> Any:
    """``x`` as the ARM's numpy programs take it: an :class:`EngineTensor`'s floats."""
    return x.floats() if isinstance(x, EngineTensor) else x


def _code_scale(tail: FloatTail) -> np.float32 | None:
    """``c`` when the tail is exactly ``Mul(c)`` (one scalar) then NHWC -> NCHW, else None."""
    ops = tail.ops
    if len(ops) != 2 or ops[0]["op"] != "Mul" or ops[1]["op"] != "Transpose":
        return None
    value = np.asarray(ops[0]["value"], dtype=np.float32)
    if value.size != 1 or tuple(ops[1]["perm"]) != (0, 3, 1, 2):
        return None
    return np.float32(value.reshape(()))


class GraphAccelerator:
    """Runs one bundle graph (``GraphSpec``) on an :class:`Accelerator` with its float tail.

    ``run(inputs)`` takes the executor's inputs (float NCHW ``x``, and for blocks the channel
    mask) and returns ``[output]`` as the graph's onnxruntime twin does. A masked engine
    (:attr:`masked`: the accelerator streams a mask map) takes every mask: the (N, C) mask
    becomes a (N, H, W, C) 0/1 map of the output's shape. A dense engine ``accepts(inputs)``
    only all-ones masks (the backend runs the other calls on the ARM; logged once per graph).
    """

    def __init__(
        self,
        graph: Any,
        accelerator: Accelerator,
        tail: FloatTail | str | Path,
        *,
        prepare: Callable[[], object] | None = None,
        pixels: bool = False,
    ):
        self.graph = graph
        self.accelerator = accelerator
        self.prepare = prepare
        self.pixels = pixels
        """The engine takes uint8 pixels (NHWC) and makes the graph's input codes itself
        (:attr:`EngineSpec.pixels`): its input is :meth:`pixel_input`, never floats."""
        """Called before every engine call with images (a shared engine: the loader writes
        this graph's weights into it unless it holds them already)."""
        self.tail = tail if isinstance(tail, FloatTail) else FloatTail.load(tail)
        datatype = graph.inputs[0].datatype
        if not datatype.is_integer or not datatype.scale:
            raise AcceleratorError(
                f"graph {graph.name!r} takes {datatype.name} input; an accelerator needs integer "
                "codes with a scale"
            )
        self.scale = float(datatype.scale)
        self.low, self.high = datatype.integer_range()
        if pixels:  # the pixels are the engine's input codes, of scale 1
            self.scale, self.low, self.high = 1.0, 0, 255
        self._warned = False
        self.carry_scale = _code_scale(self.tail)
        """The scale of this graph's output codes when its tail is only ``Mul`` + ``Transpose``
        (blocks, stem, shortcuts): then :meth:`run_carried` returns them as :class:`Carried`."""
        out_type = graph.outputs[0].datatype
        small = out_type.is_integer and out_type.bits <= 15
        self._out_container = np.int16 if small else np.int32
        self.out_range = out_type.integer_range() if out_type.is_integer else None
        """The engine's output codes lie in this range (its output datatype's)."""

    @property
    def masked(self) -> bool:
        """Whether the engine streams the channel mask (a masked block's engine)."""
        return getattr(self.accelerator, "mask_shape", None) is not None

    def _checked_mask(self, mask: np.ndarray) -> np.ndarray:
        """The executor's (N, C) channel mask, checked 0/1 and of the engine's C."""
        m = np.asarray(mask)
        c = self.accelerator.mask_shape[-1]
        if m.ndim != 2 or m.shape[1] != c:
            raise AcceleratorError(
                f"graph {self.graph.name!r}: channel mask of shape {m.shape!r}; the engine "
                f"takes (N, {c})"
            )
        if m.size and not np.all((m == 0) | (m == 1)):
            raise AcceleratorError(f"graph {self.graph.name!r}: the channel mask is not 0/1")
        return m

    def mask_map(self, mask: np.ndarray) -> np.ndarray:
        """The executor's (N, C) 0/1 channel mask -> the engine's (N, H, W, C) uint8 map."""
        return _mask_map(self._checked_mask(mask), self.accelerator.mask_shape)

    def accepts(self, inputs: Sequence[np.ndarray]) -> bool:
        """True for a masked engine; for a dense one when every mask is all ones."""
        if self.masked or all(np.all(np.asarray(m) == 1) for m in inputs[1:]):
            return True
        if not self._warned:
            self._warned = True
            log.info(
                "graph %s: a channel mask drops channels; the dense engine runs only all-ones "
                "masks, so such calls run on the ARM (numpy programs)",
                self.graph.name,
            )
        return False

    def pixel_input(self, images: np.ndarray) -> Carried:
        """uint8 images (N, H, W, C) as the input of an engine that takes pixels
        (:attr:`pixels`): codes of scale 1, and where the input DMA streams bytes of one
        pixel value each (``UINT8``) the images' own bytes as its packed input."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        stream = getattr(self.accelerator, "input_stream", None)
        packed = None
        if (
            stream is not None
            and stream[0] == "UINT8"
            and math.prod(stream[1]) == math.prod(images.shape[1:])
        ):
            packed = images.reshape(len(images), *stream[1])
        return Carried(
            np.float32(1.0),
            low=0,
            high=255,
            codes=images,
            packed=packed,
            stream=stream if packed is not None else None,
            dtype=np.uint8,
        )

    def codes(self, x: np.ndarray) -> np.ndarray:
        """Float NCHW input -> integer codes, NHWC (checked integer and in the datatype's range).

        In float32, in place: the input is ``code * scale`` rounded to float32, so ``x / scale``
        lies within a few float32 ulps of the code (the check allows CODE_TOLERANCE).
        """
        q = np.divide(np.asarray(x, dtype=np.float32), np.float32(self.scale), dtype=np.float32)
        codes = np.rint(q)
        name = self.graph.inputs[0].datatype.name
        if q.size:
            q -= codes
            off = float(np.max(np.abs(q)))
            if off > CODE_TOLERANCE:
                raise AcceleratorError(
                    f"graph {self.graph.name!r}: input / scale {self.scale!r} is not integer "
                    f"(off by {off:.3g}); the input is not {name} codes"
                )
        if q.size and (codes.min() < self.low or codes.max() > self.high):
            raise AcceleratorError(
                f"graph {self.graph.name!r}: input codes span [{codes.min():.0f}, "
                f"{codes.max():.0f}], outside {name}'s [{self.low}, {self.high}]"
            )
        small = self.low >= -(1 << 15) and self.high < (1 << 15)
        return np.ascontiguousarray(
            np.transpose(codes, NCHW_TO_NHWC), dtype=np.int16 if small else np.int32
        )

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.run_carried(inputs)[0]

    def takes(self, carried: Carried) -> bool:
        """Whether ``carried`` are this graph's input codes as they are: the same scale, and
        codes bounded within this input's range (otherwise the float input is converted, and
        refused there if it is not codes). The bound is the producer's, so no code is read."""
        return (
            carried.scale == np.float32(self.scale)
            and len(carried) > 0
            and carried.low >= self.low
            and carried.high <= self.high
        )

    def run_carried(
        self,
        inputs: Sequence[np.ndarray],
        carried: Carried | None = None,
        *,
        floats: bool = True,
    ) -> tuple[list[np.ndarray | None], Carried | None]:
        """:meth:`run`, taking the input as ``carried`` (codes and maybe packed bytes of the
        engine that computed ``inputs[0]``) when :meth:`takes` it, and returning the output's
        :class:`Carried` too (None when the tail is not a plain rescale). ``floats=False``
        skips the float tail where the output is carried: the output is then ``[None]``
        (``inputs[0]`` is read only when ``carried`` is not taken), and where the engine's
        packed bytes are kept its output is not unpacked either (:attr:`Carried.codes` does
        it if something asks)."""
        engine = self.accelerator
        if self.prepare is not None and len(carried if carried is not None else inputs[0]):
            self.prepare()
        run_packed = getattr(engine, "run_packed", None)
        packed_in, codes = None, None
        if carried is not None and self.takes(carried):
            stream = getattr(engine, "input_stream", None)
            if (  # the same bytes, maybe in words of another size: passed on as they are
                run_packed is not None
                and carried.packed is not None
                and same_bytes(carried.stream, stream)
            ):
                packed_in = reword(carried.packed, stream)
            else:
                codes = carried.codes
        elif self.pixels:
            raise AcceleratorError(
                f"graph {self.graph.name!r}: the engine takes the images' uint8 pixels "
                "(pixel_input), not a float tensor"
            )
        else:
            codes = self.codes(inputs[0])
        lazy = not floats and self.carry_scale is not None
        if run_packed is not None:
            mask = {"channel_mask": self._checked_mask(inputs[1])} if self.masked else {}
            out, packed_out = run_packed(codes, packed_in, **mask, decode=not lazy)
            stream = engine.output_stream
        elif self.masked:
            out, packed_out, stream = engine.execute(codes, self.mask_map(inputs[1])), None, None
        else:
            out, packed_out, stream = engine.execute(codes), None, None
        if self.carry_scale is None:
            return [self.tail.apply(out)], None
        low, high = self.out_range
        codes_out = None if out is None else np.asarray(out).astype(self._out_container, copy=False)
        c, h, w = (int(d) for d in self.graph.outputs[0].shape[1:])  # NCHW
        result = Carried(  # kept packed (out is None): the codes are unpacked only if asked for
            self.carry_scale,
            low=low,
            high=high,
            codes=codes_out,
            packed=packed_out,
            stream=stream,
            shape=(h, w, c),
            dtype=self._out_container,
        )
        claim = getattr(engine, "claim", None)
        if claim is not None and packed_out is not None:
            claim(result)  # its packed bytes may be the DMA buffer itself: kept while it lives
        return [self.tail.apply(codes_out) if floats else None], result


# ----------------------------------------------------------------------------------------------
# An overlay for a bundle


def load_overlay(
    bundle: Any,
    folder: str | Path,
    *,
    overlay: DmaOverlay | None = None,
    batch_size: int | None = None,
    download: bool = True,
) -> tuple[DmaOverlay, dict[str, GraphAccelerator]]:
    """The overlay of ``folder`` (its ``accelerators.json``) and a :class:`GraphAccelerator`
    per engine, for ``bundle``.

    The overlay must have been built from this bundle (its weights are in the bitstream, or for
    shared engines in its ``runtime_weights/``): the bundle ids must match. ``overlay``
    replaces :func:`open_finn_overlay` (a stand-in for the PL:
    :class:`fpga.emulator.overlay.EmulatedDmaOverlay`).
    """
    spec = OverlaySpec.load(folder)
    if spec.bundle_id != bundle.bundle_id:
        raise AcceleratorError(
            f"the overlay in {str(spec.root)!r} was built from bundle {spec.bundle_id!r}, not "
            f"{bundle.bundle_id!r}; build one for it (make bitstream BUNDLE=...)"
        )
    graphs = bundle.manifest.graphs
    unknown = sorted(set(spec.engines) - set(graphs))
    if unknown:
        raise AcceleratorError(
            f"{str(spec.root / OVERLAY_FILE)!r} lists {unknown!r}, which bundle "
            f"{bundle.bundle_id!r} does not have"
        )
    if overlay is None:
        overlay = open_finn_overlay(spec, batch_size=batch_size, download=download)
    else:
        spec.driver_information()  # the same checks of settings.json
    for name, e in spec.engines.items():
        if graphs[name].masked != (e.mask_input is not None):
            raise AcceleratorError(
                f"engine {name!r} of {str(spec.root / OVERLAY_FILE)!r} "
                + ("has no" if e.mask_input is None else "has a")
                + f" mask input, but bundle graph {name!r} "
                + ("takes" if graphs[name].masked else "takes no")
                + " mask map; rebuild the overlay for this bundle"
            )
    dmas = {
        name: DmaEngine(overlay, e.input, e.output, mask_input=e.mask_input)
        for name, e in spec.engines.items()
    }
    loader = None if spec.runtime_weights is None else weight_loader(spec, overlay, dmas)
    accelerators = {
        name: GraphAccelerator(
            graphs[name],
            dmas[name],
            spec.root / e.tail,
            prepare=None
            if loader is None or spec.shared(name) is None
            else functools.partial(loader.load, name),
            pixels=e.pixels,
        )
        for name, e in spec.engines.items()
    }
    return overlay, accelerators


def weight_loader(spec: OverlaySpec, overlay: Any, dmas: dict[str, DmaEngine]) -> Any:
    """The :class:`fpga.board.weights.WeightLoader` of an overlay of shared engines: its
    weight files read and checked now (none is read in a timed window), each shared engine's
    memories the overlay's AXI-lite windows (``overlay.axilite(key)``), its flush frame one
    frame through the DMA pair of a graph it serves."""
    folder = (spec.root / str(spec.runtime_weights)).parent
    try:
        store = WeightStore(folder)
        if store.bundle_id != spec.bundle_id:
            raise WeightsError(
                f"the runtime weights in {str(folder)!r} are of bundle {store.bundle_id!r}, the "
                f"overlay of {spec.bundle_id!r}; copy the deploy folder of one build whole"
            )
        store.preload()
        served = {g: spec.shared(g) for g in spec.engines if spec.shared(g) is not None}
        for graph, engine in served.items():
            if store.engine_of(graph) != engine:
                raise WeightsError(
                    f"{graph!r} runs on engine {engine!r} in {OVERLAY_FILE}, on "
                    f"{store.engine_of(graph)!r} in the runtime weights; {REBUILD}"
                )
        memories = {
            engine: {node: overlay.axilite(key) for node, key in windows.items()}
            for engine, windows in spec.axilite.items()
        }
        flush = {}
        for graph, engine in served.items():
            flush.setdefault(engine, flush_frame(dmas[graph]))
        return WeightLoader(store, memories, flush)
    except (WeightsError, FinnIoError) as exc:
        raise AcceleratorError(str(exc)) from None
