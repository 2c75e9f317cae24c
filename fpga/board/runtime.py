"""The board runtime: answers every command of docs/protocol.md on the ZedBoard's ARM.

:class:`BoardRuntime` is the handler that :class:`wire.link.Server` calls with each
decoded command; it returns the reply (``None`` = ACK) or raises
:class:`~fpga.board.errors.CommandError` to answer ``ERROR(code)``. It holds

- a :class:`~fpga.board.store.BundleStore` (bundles on disk, loaded over the line as archives,
  verified before use) and the selected bundle's :class:`export.executor.BundleExecutor`;
- the uploaded image batches, within a fixed memory budget (``max_image_bytes``);
- the per-image results of the last run of each batch.

How a batch is run and timed is a :class:`BatchRunner`: on the board :class:`TimedRunner` reads
``time.monotonic_ns()`` right before and after the executor's run (nothing crosses the serial
line in between); the emulated board (:mod:`fpga.emulator.board`) passes a runner that models
time and power instead, and serves this same class.

Which engine runs a graph is the executor's *backend* (``run(graph_spec, inputs)``): ``cpu``
runs the bundle's numpy programs on the ARM (:class:`export.program.NumpyBackend`); ``finn``
(:class:`FinnBackend`) takes a PYNQ overlay and routes the graphs that have an accelerator to it
(blocks with their channel masks: a block's engine streams its mask; quantized gates, a layer
gate's LSTM step then on the ARM), the rest (float gates) to the numpy programs.

Runs on PYNQ: Python 3.10, numpy >= 1.21, pynq (``finn`` only); no onnxruntime, onnx, qonnx,
torch or FINN (PyPI has no armv7l build of onnxruntime or onnx).
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from export.errors import ExportError
from export.executor import BATCH_SIZE, BatchResult, BundleExecutor, assemble_floats
from export.manifest import Bundle, GraphSpec
from export.program import NumpyBackend
from fpga.board import doctor
from fpga.board.accel import (
    AcceleratorError,
    Carried,
    EngineTensor,
    FloatTail,
    OverlaySpec,
    as_floats,
    load_overlay,
)
from fpga.board.errors import BoardError, CommandError
from fpga.board.finnio import buffer_bytes, reword, same_bytes
from fpga.board.store import DEFAULT_MAX_BUNDLE_BYTES, BundleStore, LoadSession
from wire.protocol import (
    MAX_BATCHES_LISTED,
    MAX_BLOCKS,
    MAX_PAYLOAD,
    Ack,
    BatchInfo,
    BoardState,
    BundleRef,
    ErrorCode,
    FetchResults,
    Hello,
    HelloReply,
    LoadBegin,
    LoadChunk,
    LoadEnd,
    Message,
    MessageType,
    Reset,
    Results,
    RunBatch,
    RunDone,
    RunMode,
    SelectBundle,
    Status,
    StatusReply,
    UploadImages,
    pack_executed,
    results_dtype,
    results_per_frame,
)

if TYPE_CHECKING:
    from fpga.board.accel import OverlaySpec

log = logging.getLogger(__name__)

CIFAR_IMAGE_BYTES = 32 * 32 * 3
BACKENDS = ("cpu", "finn")


class BoardRuntimeError(BoardError):
    """The board runtime cannot start or run a bundle (bad configuration, missing backend)."""


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class RuntimeConfig:
    """How the board runtime is set up; every field has a command-line flag (``python -m
    fpga.board serve --help``).

    Attributes:
        store_dir: Folder of the bundle store (created if missing).
        backend: ``cpu`` (numpy programs on the ARM) or ``finn`` (PYNQ overlay + ARM for gates).
        overlays: Deploy folders of FINN overlays for the ``finn`` backend, one per bundle
            (each with its ``accelerators.json``, bitfile and FINN's ``settings.json``).
        overlay_batch: Images per DMA transfer (default: the overlay's ``batch_size``).
        executor_batch: Images the executor takes through the network together (one call per
            graph and batch; default ``export.executor.BATCH_SIZE``). A run's images are cut
            into batches of this many: the ARM's per-call work (the executor's numpy calls, a
            layer gate's LSTM step, an engine call's start) is shared among them, which pays
            where the engines read the batch in place (``overlay_batch`` as large; with
            smaller DMA buffers a call is moved in chunks and copied: docs/board.md); its
            memory is the batch's tensors (the CPU backend's float feature maps, the FINN
            backend's packed codes).
        max_image_bytes: Memory for uploaded images, all batches together (default: 20,000
            CIFAR-10 images, 61.4 MB of the ZedBoard's 512 MB).
        max_bundle_bytes: Largest bundle archive accepted by LOAD_BEGIN.
        max_payload_bytes: Largest frame payload the board accepts (told to the host in HELLO).
        threads: Unused by the numpy backend (numpy's BLAS picks its threads; kept for the
            command line's compatibility).
        identity: The board identity in HELLO_REPLY (default: "ddi-fpga runtime on HOSTNAME").
    """

    store_dir: Path
    backend: str = "cpu"
    overlays: list[Path] = field(default_factory=list)
    overlay_batch: int | None = None
    executor_batch: int = BATCH_SIZE
    max_image_bytes: int = 20_000 * CIFAR_IMAGE_BYTES
    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES
    max_payload_bytes: int = MAX_PAYLOAD
    threads: int | None = None
    identity: str = ""

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir)
        self.overlays = [Path(p) for p in self.overlays]
        if self.backend not in BACKENDS:
            raise BoardRuntimeError(
                f"backend {self.backend!r} is unknown; choose one of {', '.join(BACKENDS)}"
            )
        if (
            isinstance(self.executor_batch, bool)
            or not isinstance(self.executor_batch, int)
            or self.executor_batch < 1
        ):
            raise BoardRuntimeError(
                f"executor_batch={self.executor_batch!r} must be a count of images >= 1 "
                f"(default {BATCH_SIZE})"
            )
        if self.max_image_bytes < CIFAR_IMAGE_BYTES:
            raise BoardRuntimeError(
                f"max_image_bytes={self.max_image_bytes!r} holds not even one CIFAR image "
                f"({CIFAR_IMAGE_BYTES} bytes); raise it"
            )
        if not 1024 <= self.max_payload_bytes <= MAX_PAYLOAD:
            raise BoardRuntimeError(
                f"max_payload_bytes={self.max_payload_bytes!r} must lie in [1024, {MAX_PAYLOAD}]"
            )
        if not self.identity:
            self.identity = f"ddi-fpga runtime on {platform.node() or 'unknown host'}"


# ----------------------------------------------------------------------------------------------
# Backends


class Backend(Protocol):
    """What the executor calls to run one graph: the plug for accelerators."""

    def run(self, graph: GraphSpec, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class Accelerator(Protocol):
    """One FINN engine in the overlay: runs one graph kind on a batch (float32 in and out,
    ``integer * scale`` values as the manifest's datatypes say).

    It may also have ``accepts(inputs) -> bool``: when false, that call runs on the ARM
    (:class:`fpga.board.accel.GraphAccelerator` refuses channel masks that drop channels).
    """

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


def check_finn(overlays: Sequence[str | Path], batch_size: int | None = None) -> list[OverlaySpec]:
    """Raise one line unless pynq can be imported, every overlay folder has its
    ``accelerators.json`` and the CMA pool holds their DMA buffers (the finn backend); return
    them. The bitfile is checked when it is opened."""

    try:
        import pynq  # noqa: F401 - only present on a PYNQ image
    except ImportError:
        raise BoardRuntimeError(
            "the finn backend needs the pynq package, which exists only on a PYNQ board "
            "image; run with --backend cpu here"
        ) from None
    if not overlays:
        raise BoardRuntimeError(
            "the finn backend needs an overlay; pass --overlay DIR (the deploy folder that "
            "`make bitstream` wrote), once per bundle"
        )
    try:
        specs = [OverlaySpec.load(folder) for folder in overlays]
        check_cma(specs, batch_size)
    except AcceleratorError as exc:
        raise BoardRuntimeError(str(exc)) from None
    return specs


def check_cma(
    specs: Sequence[OverlaySpec], batch_size: int | None = None, meminfo: str | None = None
) -> None:
    """Raise one line unless the CMA pool's free bytes hold every overlay's DMA buffers
    (``meminfo``: the text of /proc/meminfo, read when None)."""

    need = sum(
        buffer_bytes(spec.driver_information(), batch_size or spec.batch_size) for spec in specs
    )
    result = doctor.check_cma(need, meminfo)
    if result.status == doctor.FAIL:
        raise BoardRuntimeError(f"CMA: {result.detail}")


GATE_KINDS = ("channel_gate", "layer_gate")
"""Graph kinds of the gates (manifest ``kind``)."""


class _Preprocessed:
    """The float tail of the images' pixels as a stem engine takes them: the manifest's
    preprocessing (uint8 NHWC -> the stem's float input, NCHW), for an
    :class:`fpga.board.accel.EngineTensor` of pixels whose floats the ARM asks for."""

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        return self.preprocess.apply(pixels)


class FinnBackend:
    """Runs the graphs that have a FINN engine in the PYNQ overlay; the rest on the ARM.

    ``accelerators`` maps a graph name of the manifest (``stem``, ``block0``, ``shortcut1``,
    ``head``, ``exit0``...) to an :class:`Accelerator` (on the board the
    :class:`fpga.board.accel.GraphAccelerator`s of :func:`fpga.board.accel.load_overlay`).
    Graphs without one (float gates, which FINN cannot compile), and calls the accelerator
    does not ``accepts`` (a mask that drops channels, on an engine without a mask stream), run
    on the numpy programs, as in ``cpu``. A masked block's engine accepts every mask, so no
    block call of a gated bundle (manifest version 3) runs on the ARM.
    ``overlay`` is kept for the life of the backend (its DMA buffers).

    Quantized gates (their ``finn`` graphs, docs/bundle.md "Gates") may have engines too. A
    channel gate's engine returns one keep bit per channel; the backend answers the executor
    with them as the gate's ``prob`` (1.0 kept, 0.0 dropped), which its ``prob >
    gate_threshold`` (a threshold in [0, 1)) turns into the same mask: the engine decides,
    nothing is recomputed. A layer gate's engine returns its INT8 embedding times its scale
    (the float tail); the rest of the twin, the 10-wide LSTM step and its projection, runs on
    the ARM from that tensor (:meth:`export.program.NumpyBackend.run_from`). Gate engines take
    the block input's carried codes like any engine.

    ``carry`` (default on): activations stay in the engines' integer form. An engine whose
    output is a plain rescale of its codes (the stem, the blocks, the shortcuts) hands the
    executor an :class:`fpga.board.accel.EngineTensor`: its codes, and the packed bytes its
    output DMA wrote. The next engine, or a gate's engine, takes the codes as they are (and, in
    the same word format, the packed bytes): no float -> codes conversion, no folding or
    packing. The executor's gathers (:meth:`take`) and assemblies of rows (:meth:`assemble`: a
    block run by some images and skipped by others) work on the codes and bytes too, so the
    float tail of such an output is applied only where the ARM needs the floats (a graph
    without an engine, or a dense engine refusing a mask); the gates' keep bits and
    embeddings and the classifiers' logits are made floats as before. Results are
    bit-identical either way; ``carry=False`` converts every engine's input from floats and
    applies every tail.
    """

    def __init__(
        self,
        bundle: Bundle,
        accelerators: dict[str, Accelerator],
        *,
        overlay: object | None = None,
        threads: int | None = None,
        carry: bool = True,
    ) -> None:
        self.overlay = overlay
        self.carry = carry
        self.accelerators: dict[str, Accelerator] = dict(accelerators)
        self.cpu = NumpyBackend(bundle)
        graphs = bundle.manifest.graphs
        unknown = sorted(set(self.accelerators) - set(graphs))
        if unknown:
            raise BoardRuntimeError(
                f"accelerators for {unknown!r} match no graph of bundle {bundle.bundle_id!r}"
            )
        float_gates = sorted(
            n for n in self.accelerators if graphs[n].kind in GATE_KINDS and graphs[n].finn is None
        )
        if float_gates:
            raise BoardRuntimeError(
                f"accelerators for {float_gates!r}, gates without a FINN graph in bundle "
                f"{bundle.bundle_id!r}; only quantized gates have engines (re-export them)"
            )
        threshold = bundle.manifest.gate_threshold
        if not 0.0 <= threshold < 1.0 and any(
            graphs[n].kind == "channel_gate" for n in self.accelerators
        ):
            raise BoardRuntimeError(
                f"gate_threshold {threshold!r} of bundle {bundle.bundle_id!r} is outside [0, 1): "
                "a channel gate engine's keep bits (1.0/0.0) cannot stand for its probabilities"
            )
        # the stem's input codes straight from the uint8 images (stem_input), when its engine
        # takes codes: the manifest's preprocessing table, one column per channel
        stem = self.accelerators.get(bundle.manifest.stem)
        self._preprocess = bundle.manifest.preprocess
        self._stem_pixels = getattr(stem, "pixels", False) and hasattr(stem, "pixel_input")
        """The stem's engine takes the images' pixels (and thresholds them itself), carrying
        or not: the ARM does nothing of the preprocessing."""
        self._stem = stem
        self._stem_codes = carry and getattr(stem, "run_carried", None) is not None
        if self._stem_codes:
            datatype = self._preprocess.datatype
            self._stem_scale = np.float32(datatype.scale)
            self._stem_range = datatype.integer_range()
            self._stem_tail = FloatTail(
                [
                    {"op": "Transpose", "perm": [0, 3, 1, 2]},
                    {
                        "op": "Mul",
                        "value": float(self._stem_scale),
                        "shape": [],
                        "const_first": False,
                    },
                ]
            )
        log.info(
            "finn backend: %d graphs accelerated (%s), the rest on the ARM",
            len(self.accelerators),
            ", ".join(sorted(self.accelerators)) or "none",
        )

    def stem_input(self, images: np.ndarray) -> object:
        """The stem's input for uint8 images (N, H, W, C), as the executor asks for it: with
        the stem on its engine and ``carry`` on, its integer codes NHWC as the stem's engine
        takes them, looked up in the manifest's preprocessing table (``lut[c][pixel]``, the
        values the model computes) without a float on the way (an
        :class:`fpga.board.accel.EngineTensor`: its floats are the preprocessed images, made
        only if the ARM needs them); else the preprocessed float images. A stem engine that
        takes pixels (:attr:`fpga.board.accel.GraphAccelerator.pixels`) gets the images as
        they are, whether carrying or not."""
        images = np.asarray(images)
        channels = len(self._preprocess.lut)
        if self._stem_pixels:
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != channels:
                raise BoardRuntimeError(
                    f"images of dtype {images.dtype} and shape {images.shape}: the stem's "
                    f"engine takes uint8 pixels (N, H, W, {channels})"
                )
            return EngineTensor(self._stem.pixel_input(images), _Preprocessed(self._preprocess))
        if (
            not self._stem_codes
            or images.dtype != np.uint8
            or images.ndim != 4
            or images.shape[-1] != channels
        ):
            return self._preprocess.apply(images)
        codes = self._preprocess.nhwc_codes(images)
        low, high = self._stem_range
        carried = Carried(self._stem_scale, low=low, high=high, codes=codes)
        return EngineTensor(carried, self._stem_tail)

    def run(self, graph: GraphSpec, inputs: Sequence[object]) -> list[object]:
        accelerator = self.accelerators.get(graph.name)
        if accelerator is not None and graph.kind in GATE_KINDS:
            return self._run_gate(graph, accelerator, inputs)
        accepts = getattr(accelerator, "accepts", None)
        if accelerator is None or (accepts is not None and not accepts(inputs)):
            return self.cpu.run(graph, [as_floats(x) for x in inputs])
        run_carried = getattr(accelerator, "run_carried", None)
        pixels = getattr(accelerator, "pixels", False)  # takes stem_input's pixels either way
        if run_carried is None or not (self.carry or pixels):
            return accelerator.run([as_floats(x) for x in inputs])
        inputs, carried = self._input(accelerator, inputs)
        outputs, out = run_carried(inputs, carried, floats=not self.carry)
        if not self.carry or out is None:
            return outputs
        return [EngineTensor(out, accelerator.tail)]

    @staticmethod
    def _input(accelerator: Accelerator, inputs: Sequence[object]):
        """The call's inputs and the carried codes the engine takes, else floats and None."""
        x = inputs[0]
        if isinstance(x, EngineTensor) and accelerator.takes(x.carried):
            return [x, *inputs[1:]], x.carried  # x itself is not read: its codes go in
        return [as_floats(v) for v in inputs], None

    def _engine(self, accelerator: Accelerator, x: object) -> np.ndarray:
        """The engine's float output for input ``x`` alone, taking its carried codes."""
        run_carried = getattr(accelerator, "run_carried", None)
        if not self.carry or run_carried is None:
            return accelerator.run([as_floats(x)])[0]
        inputs, carried = self._input(accelerator, [x])
        outputs, _ = run_carried(inputs, carried)
        return outputs[0]

    def _run_gate(
        self, graph: GraphSpec, accelerator: Accelerator, inputs: Sequence[object]
    ) -> list[np.ndarray]:
        """A quantized gate on its engine (see the class docstring); the LSTM step on the ARM."""
        out = self._engine(accelerator, inputs[0])
        if graph.kind == "channel_gate":  # (N, C_out) keep bits
            if out.size and not np.all((out == 0) | (out == 1)):
                raise BoardRuntimeError(
                    f"channel gate {graph.name!r}: its engine returned values other than keep "
                    "bits 0/1; the overlay does not match the bundle (rebuild it)"
                )
            return [np.ascontiguousarray(out, dtype=np.float32)]
        program = self.cpu.programs[graph.name]
        given = [graph.finn.twin_tensor, *program.inputs[1:]]  # the embedding, then h and c
        return self.cpu.run_from(graph, given, [out, *inputs[1:]])

    def device_array(self, shape: tuple[int, ...]) -> tuple[np.ndarray, Any] | None:
        """A ``uint8`` array in one of the overlay's DMA buffers and the function that makes
        its holder the buffer's owner (an engine then streams it in place), or None where the
        overlay keeps no buffers (``PynqDmaOverlay.device_array``)."""
        make = getattr(self.overlay, "device_array", None)
        got = make(shape) if make is not None else None
        if got is None:
            return None
        array, buffer = got
        return array, partial(self.overlay.claim, buffer)

    def _reclaim(self, array: np.ndarray, holder: object) -> None:
        """``holder`` now owns the DMA buffer ``array`` lies in, if it lies in one."""
        claim = getattr(self.overlay, "claim_array", None)
        if claim is not None:
            claim(array, holder)

    def take(self, x: object, rows: np.ndarray) -> object:
        """``x[rows]`` (the executor's gather), in integer form for an engine's output: its
        packed bytes gathered in a DMA buffer, which the engines it feeds read in place."""
        return x.take(rows, self.device_array) if isinstance(x, EngineTensor) else x[rows]

    def assemble(
        self,
        base: object | None,
        shape: tuple[int, ...],
        parts: Sequence[tuple[np.ndarray, object]],
        *,
        consume: bool = False,
    ) -> object:
        """The executor's assembly of a block's output (its default is
        ``export.executor.assemble_floats``): ``base`` (the block input, for a block without
        shortcut; None: zeros) with ``rows`` replaced by each part, in integer form when every
        piece is an engine's output of one scale (the packed bytes in a DMA buffer).
        ``consume``: nothing reads ``base`` again, so its packed bytes may take the parts'
        rows in place (no copy of the rows that skipped the block)."""
        pieces = [t for t in (base, *(t for _, t in parts)) if t is not None]
        if (
            pieces
            and all(isinstance(t, EngineTensor) for t in pieces)
            and len({t.carried.scale for t in pieces}) == 1
        ):
            reuse = self._reclaim if consume else None
            return _assemble_codes(base, shape, parts, pieces, self.device_array, reuse)
        return assemble_floats(
            None if base is None else as_floats(base),
            shape,
            [(rows, as_floats(t)) for rows, t in parts],
        )


def _assemble_codes(
    base: EngineTensor | None,
    shape: tuple[int, ...],
    parts: Sequence[tuple[np.ndarray, EngineTensor]],
    pieces: Sequence[EngineTensor],
    device: Callable[[tuple[int, ...]], Any] | None = None,
    reuse: Callable[[np.ndarray, object], None] | None = None,
) -> EngineTensor:
    """:meth:`FinnBackend.assemble` on the packed bytes where every piece of ``pieces`` (the
    base and the parts) has them in one word format (the codes then unpacked only if asked
    for), else on the codes: the codes and the bytes of zeros are zeros, as a block's
    zero-initialised output. The bytes go into a ``device`` array (a DMA buffer) where one is
    given and free; with ``reuse`` (nothing reads ``base`` again) into the base's own bytes
    where they are writeable, ``reuse(bytes, new carried)`` handing their buffer on."""
    n, c, h, w = shape
    first = pieces[0].carried
    zeros = [0] if base is None else []  # rows no part fills stay zero
    bounds = {
        "low": min([*zeros, *(t.carried.low for t in pieces)]),
        "high": max([*zeros, *(t.carried.high for t in pieces)]),
    }
    dtype = np.result_type(*(t.carried.dtype for t in pieces))
    as_bytes = all(
        t.carried.packed is not None and same_bytes(t.carried.stream, first.stream) for t in pieces
    )  # the same bytes for the same values (words of another size are reshaped)

    def data(t: EngineTensor) -> np.ndarray:
        return reword(t.carried.packed, first.stream) if as_bytes else t.carried.codes

    claim = None
    kept = base.carried.packed if as_bytes and base is not None else None
    in_base = (  # nothing reads the base again: its bytes take the parts' rows in place
        reuse is not None
        and kept is not None
        and len(kept) == n
        and kept.dtype == np.uint8
        and kept.flags.writeable
        and kept.flags.c_contiguous
    )
    if in_base:
        out = kept
    elif as_bytes:  # in a DMA buffer where one is free: the next engines read it in place
        words = (n, *first.packed.shape[1:])
        got = device(words) if device is not None and first.packed.dtype == np.uint8 else None
        out, claim = got if got is not None else (np.empty(words, first.packed.dtype), None)
        if base is not None:
            np.copyto(out, data(base))
        else:
            out.fill(0)
    elif base is not None:
        out = np.array(data(base), dtype=dtype)
    else:
        out = np.zeros((n, h, w, c), dtype=dtype)
    for rows, t in parts:
        out[rows] = data(t)
    stored = {"packed": out, "stream": first.stream} if as_bytes else {"codes": out}
    carried = Carried(first.scale, **bounds, **stored, shape=(h, w, c), dtype=dtype)
    if claim is not None:
        claim(carried)
    elif in_base:
        reuse(out, carried)  # the base's DMA buffer, if it lies in one, is the new tensor's
    return EngineTensor(carried, pieces[0].tail)


def make_backend(config: RuntimeConfig, bundle: Bundle) -> Backend:
    """The executor backend that ``config.backend`` names, for ``bundle``.

    ``finn`` opens the overlay of ``config.overlays`` that was built from ``bundle`` (selecting
    another bundle downloads its overlay's bitstream, outside any measured run).
    """
    if config.backend == "finn":
        built = {
            spec.bundle_id: spec.root for spec in check_finn(config.overlays, config.overlay_batch)
        }
        if bundle.bundle_id not in built:
            raise BoardRuntimeError(
                f"no overlay was built from bundle {bundle.bundle_id!r} (overlays for "
                f"{sorted(built)!r}); build one with `make bitstream BUNDLE=...` and pass it with "
                "--overlay"
            )
        try:
            overlay, accelerators = load_overlay(
                bundle, built[bundle.bundle_id], batch_size=config.overlay_batch
            )
        except AcceleratorError as exc:
            raise BoardRuntimeError(str(exc)) from None
        return FinnBackend(bundle, accelerators, overlay=overlay, threads=config.threads)
    return NumpyBackend(bundle)


# ----------------------------------------------------------------------------------------------
# Running a batch


@dataclass
class RunOutcome:
    """One RUN_BATCH: per-image results and the board-clock times around the run."""

    result: BatchResult
    board_start_ns: int
    board_end_ns: int


class BatchRunner(Protocol):
    """Runs a batch ``repeats`` times and says when it started and ended on the board's clock."""

    def run(
        self,
        executor: BundleExecutor,
        images: np.ndarray,
        mode: str,
        budget_macs: float | None,
        repeats: int,
    ) -> RunOutcome: ...


class TimedRunner:
    """The board's runner: the executor's run, between two readings of the monotonic clock."""

    def __init__(self, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.clock_ns = clock_ns

    def run(
        self,
        executor: BundleExecutor,
        images: np.ndarray,
        mode: str,
        budget_macs: float | None,
        repeats: int,
    ) -> RunOutcome:
        start = self.clock_ns()
        for _ in range(repeats):
            result = executor.run(images, mode=mode, budget_macs=budget_macs)
        end = self.clock_ns()
        return RunOutcome(result, start, end)


def pack_results(result: BatchResult) -> np.ndarray:
    """Executor results -> RESULTS records (:func:`wire.protocol.results_dtype`)."""
    n, n_blocks = result.executed.shape
    records = np.zeros(n, results_dtype(n_blocks))
    records["prediction"] = result.predictions
    records["exit_index"] = result.exits
    records["executed_mask"] = pack_executed(result.executed)
    records["macs"] = result.macs
    records["channels"] = result.channels
    return records


# ----------------------------------------------------------------------------------------------
# The handler


@dataclass
class Batch:
    """An uploaded batch: images (allocated whole at its first upload) and its last results."""

    batch_id: int
    images: np.ndarray  # (batch_size, H, W, C) uint8
    filled_bytes: int = 0  # bytes 0 .. filled_bytes - 1 of the batch have been uploaded
    results: np.ndarray | None = None  # records of the last run, or None
    run_mode: RunMode | None = None

    @property
    def size(self) -> int:
        return len(self.images)

    @property
    def count_uploaded(self) -> int:
        return self.filled_bytes // max(1, self.images[0].nbytes)


def _fail(code: ErrorCode, text: str) -> CommandError:
    return CommandError(code, text)


@dataclass
class _Active:
    bundle: Bundle
    executor: BundleExecutor
    ref: BundleRef = field(init=False)

    def __post_init__(self) -> None:
        self.ref = BundleRef(self.bundle.bundle_id, self.bundle.sha256)


class BoardRuntime:
    """The protocol handler: ``runtime(command) -> reply`` (see the module docstring).

    ``runner`` times batches (default :class:`TimedRunner`), ``clock_ns`` is the board clock of
    HELLO_REPLY (it must be the runner's clock), ``executor_factory(bundle)`` builds the
    executor of a selected bundle (default: the configured backend). ``backend`` is what
    HELLO_REPLY reports runs the graphs (default ``config.backend``; the emulated board and an
    emulated PL say ``emulated``).
    """

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        runner: BatchRunner | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        executor_factory: Callable[[Bundle], BundleExecutor] | None = None,
        backend: str | None = None,
    ) -> None:
        self.config = config
        self.backend = config.backend if backend is None else backend
        self.store = BundleStore(config.store_dir, max_bundle_bytes=config.max_bundle_bytes)
        self.clock_ns = clock_ns
        self.runner: BatchRunner = runner or TimedRunner(clock_ns)
        self._make_executor = executor_factory or (
            lambda bundle: BundleExecutor(
                bundle, backend=make_backend(config, bundle), batch_size=config.executor_batch
            )
        )
        self.active: _Active | None = None
        self.batches: dict[int, Batch] = {}
        self.load: LoadSession | None = None
        self.fault: str | None = None
        self._handlers: dict[MessageType, Callable[[Message], Message | None]] = {
            MessageType.HELLO: self._hello,
            MessageType.LOAD_BEGIN: self._load_begin,
            MessageType.LOAD_CHUNK: self._load_chunk,
            MessageType.LOAD_END: self._load_end,
            MessageType.SELECT_BUNDLE: self._select,
            MessageType.UPLOAD_IMAGES: self._upload,
            MessageType.RUN_BATCH: self._run,
            MessageType.FETCH_RESULTS: self._fetch,
            MessageType.STATUS: self._status,
            MessageType.RESET: self._reset,
        }

    # -- the Server's entry point ---------------------------------------------------------
    def __call__(self, msg: Message) -> Message | None:
        return self._handlers[msg.TYPE](msg)

    def close(self) -> None:
        """Abort a load in progress (its partial archive is deleted)."""
        if self.load is not None:
            self.store.abort(self.load)
            self.load = None

    # -- state ----------------------------------------------------------------------------
    @property
    def state(self) -> BoardState:
        if self.fault is not None:
            return BoardState.FAULT
        if self.load is not None:
            return BoardState.LOADING
        return BoardState.READY if self.active is not None else BoardState.IDLE

    @property
    def bundle_ref(self) -> BundleRef | None:
        return None if self.active is None else self.active.ref

    @property
    def used_image_bytes(self) -> int:
        return sum(b.images.nbytes for b in self.batches.values())

    def activate(self, bundle: Bundle) -> None:
        """Make ``bundle`` the one RUN_BATCH runs (builds its executor); drops old results."""
        n_blocks = len(bundle.manifest.blocks)
        if n_blocks > MAX_BLOCKS:
            raise _fail(
                ErrorCode.UNSUPPORTED,
                f"bundle {bundle.bundle_id!r} has {n_blocks} blocks; results carry at most "
                f"{MAX_BLOCKS}",
            )
        try:
            executor = self._make_executor(bundle)
        except (ExportError, BoardRuntimeError) as exc:
            text = f"cannot run bundle {bundle.bundle_id!r}: {exc}"
            raise _fail(ErrorCode.UNSUPPORTED, text) from None
        self.active = _Active(bundle, executor)
        for batch in self.batches.values():
            batch.results, batch.run_mode = None, None
        log.info("selected bundle %s (%s)", bundle.bundle_id, bundle.sha256[:12])

    # -- commands -------------------------------------------------------------------------
    def _hello(self, msg: Hello) -> HelloReply:
        return HelloReply(
            host_nonce=msg.host_nonce,
            board_identity=self.config.identity,
            board_clock_ns=self.clock_ns(),
            bundle=self.bundle_ref,
            max_payload_bytes=self.config.max_payload_bytes,
            backend=self.backend,
        )

    def _load_begin(self, msg: LoadBegin) -> None:
        if self.load is not None:
            log.warning("LOAD_BEGIN of %s abandons the load of %s", msg.bundle_id, self.load)
            self.close()
        self.load = self.store.begin(msg.bundle_id, msg.total_size_bytes, msg.sha256)
        log.info("loading %s: %d bytes", msg.bundle_id, msg.total_size_bytes)

    def _load_chunk(self, msg: LoadChunk) -> None:
        if self.load is None:
            raise _fail(ErrorCode.BAD_STATE, "LOAD_CHUNK without LOAD_BEGIN; send LOAD_BEGIN first")
        self.load.write(msg.offset_bytes, msg.data)

    def _load_end(self, msg: LoadEnd) -> None:
        if self.load is None:
            raise _fail(ErrorCode.BAD_STATE, "LOAD_END without LOAD_BEGIN; send LOAD_BEGIN first")
        session, self.load = self.load, None
        bundle = self.store.finish(session, msg.bundle_id)  # verified, in place, or raises
        self.activate(bundle)

    def _select(self, msg: SelectBundle) -> None:
        if self.active is not None and self.active.ref == BundleRef(msg.bundle_id, msg.sha256):
            return
        self.activate(self.store.find(msg.bundle_id, msg.sha256))

    def _upload(self, msg: UploadImages) -> None:
        batch = self.batches.get(msg.batch_id)
        shape = msg.image_shape
        if batch is not None and (batch.size != msg.batch_size or batch.images.shape[1:] != shape):
            raise _fail(
                ErrorCode.BAD_RANGE,
                f"batch {msg.batch_id} holds {batch.size} images of {batch.images.shape[1:]!r}, "
                f"this upload says {msg.batch_size} of {shape!r}; RESET or use a new batch id",
            )
        if batch is None:
            if len(self.batches) >= MAX_BATCHES_LISTED:
                raise _fail(
                    ErrorCode.NO_MEMORY,
                    f"the board holds {len(self.batches)} batches, the most it keeps; RESET it",
                )
            need = msg.batch_size * int(np.prod(shape))
            free = self.config.max_image_bytes - self.used_image_bytes
            if need > free:
                raise _fail(
                    ErrorCode.NO_MEMORY,
                    f"batch {msg.batch_id} of {msg.batch_size} images needs {need} bytes, "
                    f"{free} of the board's {self.config.max_image_bytes} image bytes are "
                    "free; RESET the board or upload a smaller batch",
                )
            batch = Batch(msg.batch_id, np.zeros((msg.batch_size, *shape), dtype=np.uint8))
            self.batches[msg.batch_id] = batch
        if msg.offset_bytes > batch.filled_bytes:
            raise _fail(
                ErrorCode.BAD_RANGE,
                f"UPLOAD_IMAGES at byte {msg.offset_bytes} of batch {msg.batch_id} leaves a gap "
                f"after byte {batch.filled_bytes}; send its bytes in order",
            )
        end = msg.offset_bytes + len(msg.data)
        batch.images.reshape(-1)[msg.offset_bytes : end] = np.frombuffer(msg.data, np.uint8)
        batch.filled_bytes = max(batch.filled_bytes, end)
        batch.results, batch.run_mode = None, None

    def _batch(self, batch_id: int) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            known = sorted(self.batches)[:8]
            raise _fail(
                ErrorCode.UNKNOWN_BATCH,
                f"batch {batch_id!r} was never uploaded (the board holds {known!r}); "
                "UPLOAD_IMAGES first",
            )
        return batch

    def _run(self, msg: RunBatch) -> RunDone:
        if self.fault is not None:
            raise _fail(ErrorCode.BAD_STATE, f"the board is in FAULT ({self.fault}); RESET it")
        if self.active is None:
            raise _fail(ErrorCode.BAD_STATE, "no bundle selected; SELECT_BUNDLE or LOAD first")
        batch = self._batch(msg.batch_id)
        if batch.count_uploaded != batch.size:
            raise _fail(
                ErrorCode.BAD_RANGE,
                f"batch {msg.batch_id} has {batch.count_uploaded} of its {batch.size} images; "
                "upload the rest first",
            )
        manifest = self.active.bundle.manifest
        if batch.images.shape[1:] != tuple(manifest.image_shape):
            raise _fail(
                ErrorCode.UNSUPPORTED,
                f"batch {msg.batch_id} holds images of {batch.images.shape[1:]!r}; bundle "
                f"{manifest.bundle_id!r} takes {tuple(manifest.image_shape)!r}",
            )
        mode = RunMode(msg.mode)
        if mode == RunMode.DDI and not manifest.exits:
            raise _fail(
                ErrorCode.UNSUPPORTED,
                f"bundle {manifest.bundle_id!r} has no exit branches; run FULL or IADI",
            )
        if mode != RunMode.DDI and msg.budget_macs:
            raise _fail(
                ErrorCode.UNSUPPORTED,
                f"budget_macs={msg.budget_macs!r} applies to DDI mode only; send 0 with "
                f"{mode.name}",
            )
        budget = (msg.budget_macs or math.inf) if mode == RunMode.DDI else None
        try:
            outcome = self.runner.run(
                self.active.executor, batch.images, mode.name.lower(), budget, msg.repeats
            )
        except CommandError:
            raise
        except ExportError as exc:
            raise _fail(ErrorCode.UNSUPPORTED, str(exc)) from None
        except Exception as exc:
            self.fault = f"{type(exc).__name__}: {exc}"
            raise
        batch.results, batch.run_mode = pack_results(outcome.result), mode
        log.info(
            "batch %d: %d images x %d in %s, %.3f s",
            msg.batch_id,
            batch.size,
            msg.repeats,
            mode.name,
            (outcome.board_end_ns - outcome.board_start_ns) * 1e-9,
        )
        return RunDone(
            msg.batch_id, outcome.board_start_ns, outcome.board_end_ns, batch.size * msg.repeats
        )

    def _fetch(self, msg: FetchResults) -> Results:
        batch = self._batch(msg.batch_id)
        if batch.results is None:
            raise _fail(
                ErrorCode.BAD_RANGE,
                f"batch {msg.batch_id} has no results (not run since its last upload or bundle "
                "selection); RUN_BATCH first",
            )
        end = msg.first_index + msg.count
        if end > batch.size:
            raise _fail(
                ErrorCode.BAD_RANGE,
                f"results {msg.first_index}..{end - 1} lie outside batch {msg.batch_id} of "
                f"{batch.size} images",
            )
        n_blocks = batch.results.dtype["channels"].shape[0]
        per = results_per_frame(n_blocks, self.config.max_payload_bytes)
        if msg.count > per:
            raise _fail(
                ErrorCode.BAD_RANGE,
                f"{msg.count} results do not fit one reply; fetch at most {per} at a time "
                "(fetch_messages splits them)",
            )
        return Results(msg.batch_id, msg.first_index, batch.results[msg.first_index : end])

    def _status(self, msg: Status) -> StatusReply:
        batches = tuple(
            BatchInfo(b.batch_id, b.size, b.count_uploaded) for b in self.batches.values()
        )
        free = max(0, self.config.max_image_bytes - self.used_image_bytes)
        return StatusReply(self.state, free, self.bundle_ref, batches[:MAX_BATCHES_LISTED])

    def _reset(self, msg: Reset) -> Ack:
        self.close()
        self.batches.clear()
        self.fault = None
        log.info("reset: batches, results and any load in progress dropped")
        return Ack(MessageType.RESET)
