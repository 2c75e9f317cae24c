"""Benchmark: the ARM's work per image on a ZedBoard, and the numpy CPU backend's speed.

    python -m fpga.board.arm_bench --out measurements/bench          (make bench runs it)

For the ResNet-8 IADI bundle (the recorded MGL2S IADI-60 run with quantized gates, whose blocks
and gates all have engines) in ``iadi`` mode on real CIFAR-10 test images (one executor batch,
256, by default: the board shares each call's overhead among a batch's images), with the FINN
backend as the board runs it (fpga.board.finnio's ``PynqDmaOverlay``, the DMA engines of
fpga.board.accel, the numpy programs for everything the PL does not run), it times on this x86
machine, per image:

- ``gates``: what the ARM computes of the gates: the layer gates' LSTM steps after their
  engines (numpy), and any gate without an engine;
- ``marshalling``: the images to the stem's input (``preprocess``: the stem's engine takes
  the images' uint8 pixels and thresholds them itself, so this is a view of the images; an
  overlay built without ``stem_pixels`` needs the codes from the manifest's preprocessing
  table, or the float images without carrying), float -> integer codes, FINN folding and
  packing, unpacking, buffer copies (a masked block's mask map filled a pixel's word at a
  time);
- ``driver``: the IODMA register sequence of each engine call (the PL's own time excluded);
- ``tails``: the float tails after each engine;
- ``masked_blocks``: block calls that ran on the ARM's numpy programs, reported apart, since
  they are not the adapter's overhead but work the PL does not do. An overlay built from a
  bundle of manifest version 3 streams every block's channel mask into its engine, so no block
  runs there (0); an engine without a mask stream runs only all-ones masks.

``marshalling`` is all of an engine call's ARM work but the driver and the tail (its listed
parts and the rest: casts, the kept packed output, the carry's bookkeeping); ``executor`` is
the rest of the run (the executor's bookkeeping, splitting the batch, assembling a block's
output): with it, ``arm_total`` is all of the ARM's work. Each timed run follows an untimed
one on the same images, so what the runtime reads on its first use of a graph (read once per
LOAD on the board) is not counted per batch. ``arm_model`` fits the parts that
:class:`fpga.architecture.ArmWork` charges in the shared-engine cost model to the headline
run and to the same way in executor batches of 32 (the same images) and of 1,024 (as many
images) (:func:`fit_arm_model`), and shows the model against each. The FINN path runs
with the engines passing their output codes on to the next engine (``--carry on``, the board's
default, :class:`fpga.board.runtime.FinnBackend`) and without (``off``), in ``iadi`` mode and in
``full`` mode (every block dense on its engine), interleaved, ``--repeats`` times each (median
per category): the marshalling both ways, side by side, with the results checked bit-identical.
The headline table is ``iadi`` with the last way run (``on`` by default).

The PL is a stand-in whose engines are FINN's Python execution of each HW partition (the
emulated overlay); its time is measured and subtracted. In the timed run it replays the output
bytes it wrote in the untimed run, call by call (:class:`Replay`), so that its own memory
traffic does not evict the ARM's caches, as the board's DMAs do not. The PL time per image is
modelled from FINN's estimates: each engine call costs its ``max_cycles`` per image at the
overlay's clock (engines stream a batch at their bottleneck rate), summed over the calls the
run made.

x86 -> Cortex-A9 at 667 MHz: the larger of two factors measured in the same run against cited
Cortex-A9 figures. Compute: the single-thread float32 matrix-multiply rate of this machine
(numpy, a 512x512 product) over the Cortex-A9's NEON peak of 4 float32 flops per cycle (2.67
GFLOP/s at 667 MHz; measured 3.999 GFLOP/s at 1 GHz on a PandaBoard's Cortex-A9:
http://gruntthepeon.free.fr/blog/index.php/2011/05/26/54-arm-cortex-a9-peak-flops); real code
reaches less than peak. Memory: this machine's copy of a 256 KB buffer over an i.MX6 Cortex-A9's
800 MB/s at 1 GHz in the same test (https://github.com/c2h2/arm_c_benchmark), scaled to 667 MHz.
The ARM's work here is mostly copies and small numpy calls; no cited figure covers Python's
interpreter on a Cortex-A9, so neither factor is exact for it, and the larger one is used.

Same run: images/s of the numpy CPU backend against onnxruntime's on this machine. Everything
runs on one thread (numpy's BLAS limited with threadpoolctl, onnxruntime with one intra-op
thread).
Writes ``arm_work.json`` and ``arm_work.md`` into ``--out``; figures are measured on this
machine (x86) or modelled (Cortex-A9 scaling, PL time from FINN estimates), and say which.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from export.executor import BATCH_SIZE, BundleExecutor
from export.manifest import load_bundle
from export.program import NumpyBackend
from fpga.board import accel
from fpga.board.accel import AP_DONE, AP_IDLE, AP_START, DMA_COUNT, DMA_CTRL
from fpga.board.finnio import PynqDmaOverlay, StreamType, pack, unpack
from fpga.board.runtime import FinnBackend
from fpga.emulator.overlay import EmulatedDmaOverlay

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "measurements" / "train" / "resnet8-w4a4" / "iadi-mgl2s-60" / "final.pt"
"""ResNet-8 MGL2S IADI-60 with quantized gates: every block and gate has an engine, and the
overlay fits the ZedBoard's interconnect (the ResNet-20 models' does not: one engine per graph
needs more AXI masters than the HP ports take)."""
A9_CLOCK_HZ = 667e6
A9_FLOPS_PER_CYCLE = 4.0
"""Cortex-A9 NEON: one 4-wide float32 multiply-accumulate every 2 cycles = 4 flops/cycle."""
MARSHALLING = ("preprocess", "codes", "fold", "pack", "copies", "unpack", "carry", "other")
IN_PLACE = "carry on, in place"
"""The way with DMA buffers of one executor batch (``--overlay-batch 256`` on the board): every
engine call is one transfer, so an engine's output stays in its buffer for the next engine,
and the rows the gates select are gathered into a buffer the engines read in place."""
SMALL_BATCH = 32
"""Executor batch of one of the ARM-work model's runs besides the headline one (the same images
in calls of fewer images)."""
LARGE_BATCH = 1024
"""Executor batch, DMA buffers (where the way has them) and images of the third of the model's
runs: calls of more images, as a board running a host window of 1,000 images whole makes."""
ADAPTER = ("gates", "marshalling", "driver", "tails")
"""The adapter's work around the engines; with ``executor`` (the rest of the run) all of the
ARM's work per image."""
A9_SOURCE = (
    "Cortex-A9 NEON peak 4 float32 flop/cycle (3.999 GFLOP/s measured at 1 GHz, "
    "http://gruntthepeon.free.fr/blog/index.php/2011/05/26/54-arm-cortex-a9-peak-flops)"
)


A9_MEMCPY_MB_S = 800.0 * A9_CLOCK_HZ / 1e9
"""A Cortex-A9's memcpy of 256 KB: 800 MB/s on an i.MX6 at 1 GHz (A9_MEMCPY_SOURCE), scaled
to 667 MHz by the clock (the buffer sits in the 1 MB L2, which runs with the core)."""
A9_MEMCPY_SOURCE = (
    "memcpy of 256 KB at 800 MB/s on a 1 GHz i.MX6 Cortex-A9 "
    "(https://github.com/c2h2/arm_c_benchmark, README), scaled to 667 MHz"
)


def memcpy_mb_s(nbytes: int = 256 * 1024, repeats: int = 200) -> float:
    """This machine's copy rate of ``nbytes`` buffers (numpy ``copyto``, median of
    ``repeats``), the benchmark of :data:`A9_MEMCPY_SOURCE`."""
    src = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return nbytes / float(np.median(times)) / 1e6


def sgemm_gflops(n: int = 512, repeats: int = 20) -> float:
    """This machine's float32 matrix-multiply rate (median of ``repeats`` products of two
    independent n x n matrices; call it under ``threadpool_limits(1)`` for one thread)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    a @ b  # warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times)) / 1e9


class Clock:
    """Seconds spent per category; ``exclude`` time is subtracted from the running category."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.excluded = 0.0

    def wrap(self, obj: Any, name: str, category: str) -> None:
        original = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            before = self.excluded
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t - (self.excluded - before)
                self.seconds[category] += spent

        setattr(obj, name, timed)


class Replay:
    """What the stand-in PL does with a call: ``record`` runs the engine (FINN's Python
    execution on the bytes the input DMA streams) and keeps what the output DMA wrote, call by
    call; ``replay`` writes the kept bytes of the same call again, and nothing else.

    Why a timed run replays: the stand-in's own work (unpacking the streamed input, looking up
    or computing its answer, packing the output) moves megabytes through this machine's caches
    in the excluded span, and the ARM's code then resumes with cold caches, which no board
    does: the PL's DMAs reach the DDR through the HP ports, past the ARM's caches, which the
    ARM finds as it left them (only the output buffers it invalidates are read from memory).
    Measured side by side, the stand-in's traffic made the ARM's work about 30% slower than
    replaying. A replayed call must be the recorded call's engine with as many images (else
    :class:`AssertionError`); the bytes it streams were checked when it was recorded, and a
    timed run's results are checked bit-identical with the recorded run's and the numpy
    executor's."""

    def __init__(self) -> None:
        self.replaying = False
        self.calls: list[tuple[int, int, np.ndarray]] = []  # (input DMA, images, output bytes)
        self.next = 0

    def start(self) -> None:
        """Replay from the first recorded call on (the timed run after its recorded run)."""
        self.replaying, self.next = True, 0

    def replayed(self, k: int, n: int) -> np.ndarray:
        dma, images, written = self.calls[self.next]
        assert (dma, images) == (k, n), (
            f"replayed call {self.next} is DMA {k} with {n} images; recorded: {dma} with {images}"
        )
        self.next += 1
        return written


def _pl(
    emulated: Any,
    io: dict[str, Any],
    clock: Clock,
    outputs: dict[tuple[Any, ...], Any],
    replay: Replay | None = None,
):
    """(allocate, ip) for :class:`fpga.board.finnio.PynqDmaOverlay`, backed by ``emulated``'s
    engines; the engine's time is excluded from the ARM's. ``outputs``: the engines' answers
    by call, kept across runs; ``replay``: records the calls, and replays them once started
    (:class:`Replay`)."""

    buffers: list[Any] = []
    index = {n: i for i, n in enumerate(io["idma_names"])}
    idma_of = dict(enumerate(io["idma_names"]))
    mask_of = dict(getattr(emulated, "mask_inputs", {}))  # masked blocks' mask-map DMAs
    odma_of = dict(enumerate(io["odma_names"]))
    registers: dict[str, Any] = {}

    class Buffer(np.ndarray):
        device_address = 0

    class Registers:
        def __init__(self, name: str) -> None:
            self.name, self.values, self.ctrl = name, {}, AP_IDLE

        def read(self, offset: int) -> int:
            if offset != DMA_CTRL:
                return self.values.get(offset, 0)
            value = self.ctrl
            self.ctrl &= ~AP_DONE
            return value

        def write(self, offset: int, value: int) -> None:
            if offset == DMA_CTRL and value & AP_START:
                self.ctrl &= ~AP_IDLE
                if self.name in index and index[self.name] not in mask_of.values():
                    run(self)  # a mask map streams when its engine's input DMA starts
            elif offset != DMA_CTRL:
                self.values[offset] = int(value)

    def allocate(shape: Any, dtype: Any) -> Any:
        buffer = np.zeros(shape, dtype).view(Buffer)
        buffer.device_address = 0x1000_0000 + 0x100_0000 * len(buffers)
        buffers.append(buffer)
        return buffer

    def ip(name: str) -> Any:
        return registers.setdefault(name, Registers(name))

    def at(address: int) -> Any:
        return next(b for b in buffers if b.device_address == address)

    def streamed(dma: Any, k: int, n: int) -> np.ndarray:
        """The values input DMA ``k`` streams: ``n`` images' packed bytes in a row from its
        address, whatever the buffer's shape (as the IODMA reads memory)."""
        address = dma.values.get(0x10, 0) | (dma.values.get(0x14, 0) << 32)
        folded, packed = io["ishape_folded"][k], io["ishape_packed"][k]
        words = np.asarray(at(address)).reshape(-1)[: n * math.prod(packed[1:])]
        data = unpack(words.reshape(n, *packed[1:]), StreamType.parse(io["idt"][k]), folded[-1])
        return data.reshape(n, *io["ishape_normal"][k][1:])

    def run(idma: Any) -> None:
        t = time.perf_counter()
        k = index[idma.name]
        n = idma.values[DMA_COUNT]
        o, engine = emulated.engines[k]
        odma = registers[odma_of[o]]
        target = at(odma.values.get(0x10, 0) | (odma.values.get(0x14, 0) << 32))
        if replay is not None and replay.replaying:
            target[:n] = replay.replayed(k, n)
            if k in mask_of:
                registers[idma_of[mask_of[k]]].ctrl = AP_DONE | AP_IDLE
            idma.ctrl = odma.ctrl = AP_DONE | AP_IDLE
            clock.excluded += time.perf_counter() - t
            return
        streams = [streamed(idma, k, n)]
        if k in mask_of:
            mdma = registers[idma_of[mask_of[k]]]
            streams.append(streamed(mdma, mask_of[k], n))
            mdma.ctrl = AP_DONE | AP_IDLE
        # FINN's Python execution is slow and deterministic: a call seen before (another
        # repeat, the other carrying) is answered from its first run (its time is excluded)
        key = (k, *(d.tobytes() for d in streams))
        if key not in outputs:
            outputs[key] = np.concatenate(
                [engine(*(d[j : j + 1] for d in streams)) for j in range(n)]
            )
        out = outputs[key]
        shape = (n, *io["oshape_folded"][o][1:])
        target[:n] = pack(out.reshape(shape), StreamType.parse(io["odt"][o])).reshape(
            target[:n].shape
        )
        if replay is not None:
            replay.calls.append((k, n, np.array(target[:n])))
        idma.ctrl = odma.ctrl = AP_DONE | AP_IDLE
        # the stand-in's own arrays are freed here, not in the caller's time: returning large
        # arrays to the system (unmapping them) is the stand-in's work, not the ARM's
        del streams, out, key
        clock.excluded += time.perf_counter() - t

    return allocate, ip


MODES = ("iadi", "full")
"""``iadi``: the bundle as measured (gates on the ARM, blocks with their masks on the PL);
``full``: every block dense, so every engine runs and each one's output feeds the next
engine."""


def finn_work(
    bundle: Any,
    build: Any,
    emulated: Any,
    imgs: np.ndarray,
    mode: str,
    carry: bool,
    answers: dict[tuple[Any, ...], Any] | None = None,
    batch_size: int = BATCH_SIZE,
    dma_batch: int | None = None,
) -> dict[str, Any]:
    """One run of the FINN backend as the board runs it, its ARM time per image by category
    (the stand-in PL's time excluded), in executor batches of ``batch_size``, with DMA
    buffers of ``dma_batch`` images (default: the overlay's ``batch_size``). ``answers``: the
    stand-in's engine outputs by call, shared by the runs of one benchmark."""

    spec = accel.OverlaySpec.load(build.deploy)
    info = spec.driver_information()
    clock = Clock()
    replay = Replay()
    allocate, ip = _pl(
        emulated, info["io_shape_dict"], clock, {} if answers is None else answers, replay
    )
    overlay = PynqDmaOverlay(info, dma_batch or spec.batch_size, allocate=allocate, ip=ip)
    overlay, accelerators = accel.load_overlay(bundle, build.deploy, overlay=overlay)
    backend = FinnBackend(bundle, accelerators, overlay=overlay, carry=carry)
    kind = {name: g.kind for name, g in bundle.manifest.graphs.items()}
    calls: dict[str, int] = defaultdict(int)
    graph_s: dict[str, float] = defaultdict(float)  # each graph's engine calls, PL excluded
    graph_calls: dict[str, int] = defaultdict(int)
    numpy_run = backend.cpu.run

    def cpu_run(graph: Any, inputs: Any) -> Any:
        gate = kind[graph.name] in ("layer_gate", "channel_gate")
        t = time.perf_counter()
        try:
            return numpy_run(graph, inputs)
        finally:
            clock.seconds["gates" if gate else "masked_blocks"] += time.perf_counter() - t

    backend.cpu.run = cpu_run
    clock.wrap(backend.cpu, "run_from", "gates")  # a layer gate's LSTM step after its engine
    for name, acc in accelerators.items():
        engine = acc.accelerator
        clock.wrap(acc, "codes", "marshalling: codes")
        clock.wrap(acc.tail, "apply", "tails")
        clock.wrap(engine, "_transfer", "driver")
        clock.wrap(acc, "run_carried", "engine calls")  # all of a call's ARM work
        original = acc.run_carried

        def counted(
            inputs: Any, *args: Any, _name: str = name, _run: Any = original, **kw: Any
        ) -> Any:
            calls[_name] += len(inputs[0])
            graph_calls[_name] += 1
            before, t = clock.excluded, time.perf_counter()
            try:
                return _run(inputs, *args, **kw)
            finally:
                graph_s[_name] += time.perf_counter() - t - (clock.excluded - before)

        acc.run_carried = counted
    for method, part in (
        ("fold_input", "fold"),
        ("pack_input", "pack"),
        ("copy_input_data_to_device", "copies"),
        ("copy_pixel_words_to_device", "copies"),
        ("copy_output_data_from_device", "copies"),
        ("unpack_output", "unpack"),
        ("unfold_output", "fold"),
    ):
        clock.wrap(overlay, method, f"marshalling: {part}")
    take = accel.Carried.take
    clock.wrap(accel.Carried, "take", "marshalling: carry")  # rows of carried codes
    # the images -> the stem's input: its codes from the preprocessing table (carry on), or
    # the preprocessed floats that the stem's engine then turns into codes (carry off)
    clock.wrap(backend, "stem_input", "marshalling: preprocess")
    executor = BundleExecutor(bundle, backend=backend)
    try:
        # a warm-up run on the same images: what the runtime reads on its first use of a
        # graph (tails' and gates' arrays) is read once at LOAD on the board, not per batch;
        # the stand-in records its calls, and the timed run replays them (Replay: the
        # stand-in's own memory traffic is not the board's)
        recorded = executor.run(imgs, mode=mode, batch_size=batch_size)
        replay.start()
        clock.seconds.clear()
        clock.excluded = 0.0
        for counts in (calls, graph_s, graph_calls):
            counts.clear()
        t = time.perf_counter()
        result = executor.run(imgs, mode=mode, batch_size=batch_size)
        wall = time.perf_counter() - t - clock.excluded
    finally:
        accel.Carried.take = take
    assert replay.next == len(replay.calls), "the timed run made fewer engine calls"
    for field in ("predictions", "logits", "macs", "executed", "channels"):
        assert np.array_equal(getattr(result, field), getattr(recorded, field)), field
    per_image = {k: v / len(imgs) for k, v in clock.seconds.items()}
    # marshalling: everything of an engine call but the driver and the tail (so the carry's
    # bookkeeping, the output codes and the kept packed bytes count too)
    calls_s = per_image.pop("engine calls", 0.0)
    per_image["marshalling"] = (
        calls_s
        - per_image.get("driver", 0.0)
        - per_image.get("tails", 0.0)
        + per_image.get("marshalling: carry", 0.0)
        + per_image.get("marshalling: preprocess", 0.0)
    )
    listed = sum(per_image.get(f"marshalling: {p}", 0.0) for p in MARSHALLING if p != "other")
    per_image["marshalling: other"] = per_image["marshalling"] - listed
    # the executor's own work (its bookkeeping, splitting the batch, assembling a block's
    # output from its parts): the ARM does it too
    adapter = sum(per_image.get(k, 0.0) for k in ADAPTER)
    per_image["executor"] = max(0.0, wall / len(imgs) - adapter)
    return {
        "result": result,
        "calls": dict(calls),
        "graph_seconds": dict(graph_s),
        "graph_calls": dict(graph_calls),
        "images": len(imgs),
        "replayed_calls": replay.next,
        "batch_size": batch_size,
        "wall": wall,
        "per_image": per_image,
    }


def run(
    images: int,
    out: Path,
    work: Path,
    carries: tuple[bool, ...] = (False, True),
    repeats: int = 3,
) -> dict[str, Any]:
    import onnxruntime

    # torch and qonnx (FINN's stack): loaded only when this runs
    from export.bundle import export_bundle
    from fpga.bitstream.overlay import prepare_overlay
    from train.data import load_cifar10

    test = load_cifar10("test")
    bundle = load_bundle(export_bundle(CHECKPOINT, work / "iadi60", progress=False).path)
    m = bundle.manifest
    imgs = test.images[:images]

    # -- the numpy CPU backend against onnxruntime, same images, same run --------------------
    cpu_n = min(len(test.images), 2000)
    speed: dict[str, float] = {}
    executors = {
        "numpy": BundleExecutor(bundle, backend=NumpyBackend(bundle)),
        "onnxruntime_1_thread": BundleExecutor(bundle, threads=1),
    }
    for name, ex in executors.items():
        ex.run(test.images[:64], mode="iadi")  # warm up
        t = time.perf_counter()
        ex.run(test.images[:cpu_n], mode="iadi")
        speed[name] = cpu_n / (time.perf_counter() - t)

    # -- the FINN backend's ARM work, engines passing codes on (carry) and not, same run -------
    build = prepare_overlay(bundle.path, work / "overlay")
    emulated = EmulatedDmaOverlay.from_build(build.out)
    repeated: dict[str, list[dict[str, Any]]] = defaultdict(list)
    answers: dict[tuple[Any, ...], Any] = {}
    # the ways: carrying off and on with the overlay's DMA buffers (its batch_size images),
    # and with carrying, buffers of one executor batch, so that a call is one DMA transfer
    # and engines read what the previous one left in its buffer in place
    ways = [(f"carry {'on' if c else 'off'}", c, None) for c in carries]
    if carries[-1]:
        ways.append((IN_PLACE, True, BATCH_SIZE))
    for _ in range(repeats):  # interleaved, so that every way sees the same machine load
        for mode in MODES:
            for label, carry, dma_batch in ways:
                repeated[f"{mode}, {label}"].append(
                    finn_work(
                        bundle, build, emulated, imgs, mode, carry, answers, dma_batch=dma_batch
                    )
                )
    runs: dict[str, dict[str, Any]] = {}
    for key, rs in repeated.items():
        for r in rs[1:]:
            assert np.array_equal(r["result"].logits, rs[0]["result"].logits), key
        runs[key] = _median(rs)
    for key, r in runs.items():  # bit-identical whatever the way
        same = runs[f"{key.split(',')[0]}, {ways[0][0]}"]["result"]
        for field in ("predictions", "logits", "macs", "executed", "channels"):
            assert np.array_equal(getattr(r["result"], field), getattr(same, field)), key
        reference = executors["numpy"].run(imgs, mode=key.split(",")[0])
        assert np.array_equal(r["result"].predictions, reference.predictions), key
    main_key = f"iadi, {ways[-1][0]}"
    main = runs[main_key]
    # the ARM-work model's runs besides the headline one, of the headline way and of carrying
    # with the overlay's own DMA buffers: calls of fewer and of more images
    large_imgs = test.images[:LARGE_BATCH]

    def other_batches(carry: bool, dma_batch: int | None) -> list[dict[str, Any]]:
        """The way's runs in executor batches of SMALL_BATCH (the same images) and of
        LARGE_BATCH (as many images; DMA buffers of one batch where the way has them)."""
        large_dma = None if dma_batch is None else LARGE_BATCH
        return [
            _median(
                [
                    finn_work(bundle, build, emulated, images, "iadi", carry, answers, batch, dma)
                    for _ in range(repeats)
                ]
            )
            for images, batch, dma in (
                (imgs, SMALL_BATCH, dma_batch),
                (large_imgs, LARGE_BATCH, large_dma),
            )
        ]

    fits = {label: other_batches(c, d) for label, c, d in ways if label != "carry off"}
    result, calls, wall = main["result"], main["calls"], main["wall"]
    per_image = main["per_image"]

    estimates = build.estimates  # the overlay's estimates.json, as prepare_overlay wrote it
    period_s = float(estimates["overlay"]["clk_period_ns"]) * 1e-9
    cycles = {n: int(e["max_cycles"]) for n, e in estimates["engines"].items()}
    pl_s = sum(cycles[n] * c for n, c in calls.items()) * period_s / len(imgs)
    # what the PL would take if it could run every block that ran (masks ignored)
    executed = result.executed.sum(axis=0)
    dense_calls = dict(calls)
    for i, block in enumerate(m.blocks):
        dense_calls[block.graph] = int(executed[i])
    pl_dense_s = sum(cycles[n] * c for n, c in dense_calls.items()) * period_s / len(imgs)

    gflops = sgemm_gflops()
    a9 = A9_CLOCK_HZ * A9_FLOPS_PER_CYCLE / 1e9
    copy_mb_s = memcpy_mb_s()
    factors = {"compute": gflops / a9, "memory": copy_mb_s / A9_MEMCPY_MB_S}
    # the ARM's work mixes numpy kernels, copies and interpreter overhead: scaled by the larger
    # of the two cited ratios, so the Cortex-A9 figures do not flatter the design
    factor = max(factors.values())
    adapter = sum(per_image.get(k, 0.0) for k in ADAPTER)
    arm_total = _arm_total(per_image)
    models = {
        label: fit_arm_model([runs[f"iadi, {label}"], *others], m, factor)
        for label, others in fits.items()
    }
    model = models[main_key.split(", ", 1)[1]]
    doc = {
        "benchmark": "arm_work",
        "bundle": m.bundle_id,
        "mode": "iadi",
        "images": len(imgs),
        "finn_repeats": repeats,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "measured_x86_s_per_image": {
            **per_image,
            "adapter_total": adapter,
            "arm_total": arm_total,
            "run_wall_minus_pl": wall / len(imgs),
        },
        "engine_images": dict(calls),
        "x86_sgemm_gflops_1_thread": gflops,
        "cortex_a9_peak_gflops": a9,
        "cortex_a9_source": A9_SOURCE,
        "x86_memcpy_256k_mb_s": copy_mb_s,
        "cortex_a9_memcpy_mb_s": A9_MEMCPY_MB_S,
        "cortex_a9_memcpy_source": A9_MEMCPY_SOURCE,
        "x86_to_a9_factors": factors,
        "x86_to_a9_factor": factor,
        "modelled_a9_s_per_image": {k: v * factor for k, v in per_image.items()}
        | {"adapter_total": adapter * factor, "arm_total": arm_total * factor},
        "modelled_pl_s_per_image_finn_estimates": pl_s,
        "modelled_pl_dense_s_per_image_finn_estimates": pl_dense_s,
        "adapter_over_pl": adapter * factor / pl_s if pl_s else None,
        "arm_over_pl": arm_total * factor / pl_s if pl_s else None,
        "adapter_over_pl_by_factor": {
            k: adapter * f / pl_s if pl_s else None for k, f in factors.items()
        },
        "adapter_over_pl_dense": adapter * factor / pl_dense_s if pl_dense_s else None,
        "arm_model": model,
        "arm_models": {
            label: {k: v for k, v in f.items() if k != "fitted_on"} for label, f in models.items()
        },
        "carry": main_key.split(", ", 1)[1],
        "finn_runs_x86_s_per_image": {
            key: {
                **{
                    k: r["per_image"].get(k, 0.0)
                    for k in ("marshalling", *(f"marshalling: {p}" for p in MARSHALLING))
                },
                "gates": r["per_image"].get("gates", 0.0),
                "driver": r["per_image"].get("driver", 0.0),
                "tails": r["per_image"].get("tails", 0.0),
                "executor": r["per_image"].get("executor", 0.0),
                "arm_total": _arm_total(r["per_image"]),
                "engine_images": r["calls"],
            }
            for key, r in runs.items()
        },
        "cpu_backend_images_per_s": speed,
        "numpy_over_onnxruntime": speed["numpy"] / speed["onnxruntime_1_thread"],
        "cpu_backend_images": cpu_n,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "arm_work.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "arm_work.md").write_text(_markdown(doc))
    return doc


def _median(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated ``finn_work`` runs as one: the median of the wall time, of each category per
    image and of each graph's seconds (the first run's results and counts)."""
    names = sorted({k for r in rs for k in r["per_image"]})
    return {
        **rs[0],
        "wall": float(np.median([r["wall"] for r in rs])),
        "per_image": {k: float(np.median([r["per_image"].get(k, 0.0) for r in rs])) for k in names},
        "graph_seconds": {
            g: float(np.median([r["graph_seconds"][g] for r in rs])) for g in rs[0]["graph_seconds"]
        },
    }


def _arm_total(per_image: dict[str, float]) -> float:
    """All of the ARM's work per image: the adapter's categories and the executor's own."""
    return per_image.get("executor", 0.0) + sum(per_image.get(k, 0.0) for k in ADAPTER)


def fit_arm_model(runs: list[dict[str, Any]], manifest: Any, factor: float) -> dict:
    """The ARM's work of ``runs`` (``finn_work`` results, median per category, of one way in
    executor batches of different sizes; the first is the headline run) as the parts
    :class:`fpga.architecture.ArmWork` charges, in Cortex-A9 seconds (x86 seconds x
    ``factor``). Calls of different sizes tell what a call costs apart from what each of its
    images costs; each part is fitted by least squares on relative errors (every term >= 0,
    so that the small batches' seconds do not outweigh the others):

    - an engine call, ``call_s + images x (call_image_s + byte_s x`` the activation bytes of
      an image in and out of the engine``)`` with ``byte_s`` by the graph's kind
      (``byte_s_by_kind``; ``call_byte_s``, their mean weighted by bytes, for another kind),
      to each graph's calls in each run;
    - the LSTM steps, ``lstm_call_s`` per layer-gate call and ``lstm_image_s`` per image;
    - the executor's own work and the rows it gathers, ``block_call_s`` per block and batch
      and ``block_image_s`` per image and block;
    - per image, the images to the stem's input (``image_s``, the mean over the runs).

    ``check`` compares the model's total for the headline run with the measured one,
    ``by_batch`` does so for every run."""
    from scipy.optimize import nnls

    from fpga.architecture import activation_bytes  # finn and qonnx: loaded only when this runs

    kinds = sorted({manifest.graphs[g].kind for r in runs for g in r["calls"]})

    def rows(r: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
        names = sorted(r["calls"])
        nbytes = np.array([activation_bytes(manifest, g) for g in names], dtype=float)
        n = np.array([r["calls"][g] for g in names], dtype=float)
        k = np.array([r["graph_calls"][g] for g in names], dtype=float)
        of = np.array([[manifest.graphs[g].kind == kind for kind in kinds] for g in names])
        seconds = np.array([r["graph_seconds"][g] for g in names])
        return names, np.column_stack([k, n, (n * nbytes)[:, None] * of]), seconds

    def fit(terms: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        keep = seconds > 0
        terms, seconds = terms[keep], seconds[keep]
        weighted = terms / seconds[:, None]  # relative errors: every row counts alike
        scale = np.where(weighted.max(axis=0) > 0, weighted.max(axis=0), 1.0)
        coef, _ = nnls(weighted / scale, np.ones(len(seconds)))
        return coef / scale * factor  # Cortex-A9 seconds

    tables = [rows(r) for r in runs]
    terms = np.vstack([t for _, t, _ in tables])
    coef = fit(terms, np.concatenate([sec for _, _, sec in tables]))
    by_kind = dict(zip(kinds, (float(v) for v in coef[2:]), strict=True))
    moved = terms[:, 2:].sum(axis=0)  # bytes of each kind the fit saw
    blocks = len(manifest.blocks)

    def lstm_terms(r: dict[str, Any]) -> tuple[list[float], float]:
        gates = [g for g in r["calls"] if manifest.graphs[g].kind == "layer_gate"]
        calls = float(sum(r["graph_calls"][g] for g in gates))
        images = float(sum(r["calls"][g] for g in gates))
        return [calls, images], r["per_image"].get("gates", 0.0) * r["images"]

    def executor_terms(r: dict[str, Any]) -> tuple[list[float], float]:
        per = r["per_image"]
        batches = math.ceil(r["images"] / r["batch_size"])
        own = per.get("executor", 0.0) + per.get("marshalling: carry", 0.0)
        return [float(blocks * batches), float(blocks * r["images"])], own * r["images"]

    def each(terms_of: Any) -> list[float]:
        pairs = [terms_of(r) for r in runs]
        return [
            float(v) for v in fit(np.array([a for a, _ in pairs]), np.array([y for _, y in pairs]))
        ]

    lstm_call_s, lstm_image_s = each(lstm_terms)
    block_call_s, block_image_s = each(executor_terms)
    preprocess = [r["per_image"].get("marshalling: preprocess", 0.0) for r in runs]
    model = {
        "call_s": float(coef[0]),
        "call_image_s": float(coef[1]),
        "call_byte_s": float(coef[2:] @ moved / moved.sum()) if moved.sum() else 0.0,
        "byte_s_by_kind": by_kind,
        "lstm_call_s": lstm_call_s,
        "lstm_image_s": lstm_image_s,
        "image_s": float(np.mean(preprocess)) * factor,
        "block_call_s": block_call_s,
        "block_image_s": block_image_s,
    }
    fitted_on = {}
    by_batch = []
    for r, (names, t, sec) in zip(runs, tables, strict=True):
        label = "" if r is runs[0] else f", batches of {r['batch_size']}"
        for g, row, measured, f in zip(names, t, sec, t @ coef, strict=True):
            fitted_on[f"{g}{label}"] = {
                "kind": manifest.graphs[g].kind,
                "calls": int(row[0]),
                "images": int(row[1]),
                "bytes_per_image": round(row[2:].sum() / row[1]) if row[1] else 0,
                "a9_s": float(measured * factor),
                "model_a9_s": float(f),
            }
        by_batch.append(
            {
                "batch_size": r["batch_size"],
                "images": r["images"],
                "a9_s_per_image_measured": _arm_total(r["per_image"]) * factor,
                "a9_s_per_image_model": predict_arm(model, r, manifest),
            }
        )
    return {**model, "fitted_on": fitted_on, "check": by_batch[0], "by_batch": by_batch}


def predict_arm(model: dict[str, Any], run: dict[str, Any], manifest: Any) -> float:
    """The Cortex-A9 seconds an image that ``model`` (:func:`fit_arm_model`'s parts) gives
    for the calls and executor batches of ``run`` (one ``finn_work`` result)."""
    from fpga.architecture import ArmWork, activation_bytes  # finn and qonnx: when this runs

    fields = (*ArmWork.FIELDS, "byte_s_by_kind")
    work = ArmWork(**{k: v for k, v in model.items() if k in fields})
    seconds = 0.0
    for g, images in run["calls"].items():
        calls = run["graph_calls"][g]
        if not calls:
            continue
        kind, nbytes = manifest.graphs[g].kind, activation_bytes(manifest, g)
        # a graph's calls of one run are of about equal size (one per batch)
        seconds += calls * work.seconds(images / calls, nbytes, kind)
    batches = math.ceil(run["images"] / run["batch_size"])
    per_batch = run["images"] / batches
    seconds += batches * work.executor_seconds(per_batch, len(manifest.blocks))
    return seconds / run["images"]


def _markdown(d: dict[str, Any]) -> str:
    x86 = d["measured_x86_s_per_image"]
    a9 = d["modelled_a9_s_per_image"]
    ms = 1e3
    keys = ["gates", "marshalling", *(f"marshalling: {p}" for p in MARSHALLING)]
    keys += ["driver", "tails", "adapter_total", "executor", "arm_total", "masked_blocks"]
    rows = [f"| {k} | {x86.get(k, 0) * ms:.3f} | {a9.get(k, 0) * ms:.3f} |" for k in keys]
    goal = d["adapter_over_pl"]
    by = d["adapter_over_pl_by_factor"]
    speed = d["cpu_backend_images_per_s"]
    return "\n".join(
        [
            f"# ARM work per image: {d['bundle']} ({d['mode']}, {d['images']} CIFAR-10 test "
            "images)",
            "",
            f"Measured on this machine ({d['machine']['cpu']}, {d['machine']['cores']} cores, "
            f"numpy {d['machine']['numpy']}, one thread); the Cortex-A9 column is MODELLED: "
            f"x86 time x {d['x86_to_a9_factor']:.1f}, the larger of two ratios measured in "
            f"this run against cited Cortex-A9 figures: compute, this machine's float32 matmul "
            f"rate ({d['x86_sgemm_gflops_1_thread']:.1f} GFLOP/s) over the "
            f"{d['cortex_a9_source']} at 667 MHz ({d['cortex_a9_peak_gflops']:.2f} GFLOP/s): "
            f"x{d['x86_to_a9_factors']['compute']:.1f}; memory, this machine's copy of 256 KB "
            f"({d['x86_memcpy_256k_mb_s']:.0f} MB/s) over a {d['cortex_a9_memcpy_source']} "
            f"({d['cortex_a9_memcpy_mb_s']:.0f} MB/s): x{d['x86_to_a9_factors']['memory']:.1f}.",
            "",
            "| ARM work | x86 ms/image (measured) | Cortex-A9 667 MHz ms/image (modelled) |",
            "|---|---|---|",
            *rows,
            "",
            f"PL time per image from FINN's estimates (max cycles at the overlay's clock, per "
            f"image of each engine call the run made: "
            f"{', '.join(f'{k} x{v}' for k, v in sorted(d['engine_images'].items()))} images): "
            f"{d['modelled_pl_s_per_image_finn_estimates'] * ms:.3f} ms"
            + (
                "."
                if math.isclose(
                    d["modelled_pl_dense_s_per_image_finn_estimates"],
                    d["modelled_pl_s_per_image_finn_estimates"],
                )
                else f"; with every executed block on the PL (masks ignored): "
                f"{d['modelled_pl_dense_s_per_image_finn_estimates'] * ms:.3f} ms."
            ),
            f"ARM adapter work (gates, marshalling, driver, tails) over PL time: {goal:.1%} "
            f"(goal <= 10%: {'met' if goal <= 0.1 else 'NOT met'}); by the compute ratio "
            f"{by['compute']:.1%}, by the memory ratio {by['memory']:.1%}. With the executor's "
            f"own work (its bookkeeping, splitting the batch, assembling block outputs), all "
            f"of the ARM's work: {d['arm_over_pl']:.1%} of the PL time.",
            (
                "No block call ran on the ARM: every block's engine streams its channel mask."
                if x86.get("masked_blocks", 0) == 0
                else "Some block calls ran on the ARM (an engine without a mask stream takes "
                "only all-ones masks); they are listed apart (masked_blocks)."
            ),
            "",
            *_model_lines(d["arm_model"]),
            "",
            *_carry_table(d),
            "",
            f"CPU backend, same run, {d['cpu_backend_images']} images, iadi mode: numpy "
            f"{speed['numpy']:.0f} images/s, onnxruntime (1 thread) "
            f"{speed['onnxruntime_1_thread']:.0f} images/s: numpy at "
            f"{d['numpy_over_onnxruntime']:.2f}x onnxruntime.",
            "",
        ]
    )


def _model_lines(model: dict[str, Any]) -> list[str]:
    us = 1e6
    check = model["check"]
    rows = [
        f"| {g} | {f['calls']} | {f['images']} | {f['bytes_per_image']:,} | "
        f"{f['a9_s'] * 1e3:.2f} | "
        f"{f['model_a9_s'] * 1e3:.2f} |"
        for g, f in model["fitted_on"].items()
    ]
    lines = [
        "The ARM's work as the shared-engine cost model charges it (`fpga.architecture."
        "ArmWork`, read from this file), Cortex-A9 (modelled): an engine call "
        f"{model['call_s'] * us:.0f} us, plus per image {model['call_image_s'] * us:.1f} us + "
        "per byte of its activations in and out "
        + ", ".join(f"{v * 1e9:.2f} ns ({k})" for k, v in model["byte_s_by_kind"].items())
        + f" (mean {model['call_byte_s'] * 1e9:.2f} ns) "
        "(non-negative least squares on relative errors over this run's calls and those of "
        f"executor batches of {SMALL_BATCH} and {LARGE_BATCH} images); the LSTM step "
        f"{model['lstm_call_s'] * us:.0f} us per layer-gate call + "
        f"{model['lstm_image_s'] * us:.1f} us per image; the stem's input "
        f"{model['image_s'] * us:.1f} us per image; the executor "
        f"{model['block_call_s'] * us:.0f} us per block and batch + "
        f"{model['block_image_s'] * us:.1f} us per image and block (the same runs). For "
        f"this run the model gives {check['a9_s_per_image_model'] * 1e3:.3f} ms an image, "
        f"measured {check['a9_s_per_image_measured'] * 1e3:.3f} ms.",
        "",
        "| engine calls | calls | images | activation bytes/image | A9 ms (measured) | model |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    batches = model.get("by_batch", [])
    if len(batches) > 1:
        lines += [
            "",
            "All of the ARM's work per image, by executor batch (the runs the model is fitted "
            "to, this way's DMA buffers; more images share each call's part):",
            "",
            "| executor batch | images | A9 ms/image (measured) | model |",
            "|---|---|---|---|",
            *(
                f"| {b['batch_size']} | {b['images']} | "
                f"{b['a9_s_per_image_measured'] * 1e3:.3f} | "
                f"{b['a9_s_per_image_model'] * 1e3:.3f} "
                f"({b['a9_s_per_image_model'] / b['a9_s_per_image_measured'] - 1:+.0%}) |"
                for b in sorted(batches, key=lambda b: b["batch_size"])
            ),
        ]
    return lines


def _carry_table(d: dict[str, Any]) -> list[str]:
    runs = d["finn_runs_x86_s_per_image"]
    if len(runs) < 2:
        return [f"Engines pass codes on: {d['carry']} (run with --carry both to compare)."]
    keys = list(runs)
    parts = ["marshalling", *(f"marshalling: {p}" for p in MARSHALLING), "tails"]
    parts += ["gates", "driver", "executor", "arm_total"]
    rows = [
        f"| {p} | " + " | ".join(f"{runs[k].get(p, 0.0) * 1e3:.4f}" for k in keys) + " |"
        for p in parts
    ]
    lines = [
        "Marshalling with the engines passing their output codes (and packed bytes of the same "
        "word format) on to the next engine (`carry on`, the board's default) and without "
        f"(`carry off`): measured side by side in this run, x86 ms/image, the median of "
        f"{d['finn_repeats']} interleaved runs each; results bit-identical (checked). Carrying "
        "applies where an engine's output, or rows of it, is the next engine's input; a tensor "
        "the executor assembles from several graphs' outputs (a block run by some images and "
        "skipped by others) is converted from floats. `carry on, in place`: carrying with DMA "
        "buffers of one executor batch (the board's `--overlay-batch 256`; the others use the "
        "overlay's batch_size): every call is one transfer, an engine's output stays in its DMA "
        "buffer and the next engine streams it from there, and the rows the gates select are "
        "gathered into a DMA buffer that the channel gate and the block both read in place.",
        "",
        "| x86 ms/image | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        *rows,
    ]
    for mode in MODES:
        off, on = runs.get(f"{mode}, carry off"), runs.get(f"{mode}, carry on")
        placed = runs.get(f"{mode}, {IN_PLACE}")
        for what, before, after, how in (
            ("marshalling", off, on, "{} -> {} ms/image"),
            ("arm_total", on, placed, "{} ms/image with the overlay's DMA buffers, {} in place"),
        ):
            if before and after and before[what] > 0:
                b, a = before[what], after[what]
                label = "marshalling" if what == "marshalling" else "all of the ARM's work"
                lines += [
                    "",
                    f"{mode}: {label} {how.format(f'{b * 1e3:.4f}', f'{a * 1e3:.4f}')} "
                    f"({a / b - 1:+.0%}).",
                ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpga.board.arm_bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("measurements/bench"))
    parser.add_argument(
        "--images",
        type=int,
        default=256,
        help="images through the FINN path (default: one executor batch, as the board runs them)",
    )
    parser.add_argument(
        "--carry",
        choices=("both", "on", "off"),
        default="both",
        help="engines pass codes on to the next engine (the board's default: on); both: run "
        "the FINN path both ways, side by side (default)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="FINN-path runs per way (median per category)"
    )
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        parser.error(f"--images {args.images} and --repeats {args.repeats} must be >= 1")
    carries = {"both": (False, True), "on": (True,), "off": (False,)}[args.carry]
    logging.basicConfig(level=logging.WARNING)
    # One thread everywhere (numpy's BLAS too): the figures compare one x86 core with one A9
    # core, and onnxruntime runs with one thread. threadpoolctl comes with scikit-learn (finn).
    from threadpoolctl import threadpool_limits

    with tempfile.TemporaryDirectory(prefix="arm-bench-") as work, threadpool_limits(1):
        doc = run(args.images, args.out, Path(work), carries, args.repeats)
    print((args.out / "arm_work.md").read_text())
    return 0 if doc else 1


if __name__ == "__main__":
    sys.exit(main())
