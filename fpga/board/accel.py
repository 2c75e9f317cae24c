"""FINN accelerators on PYNQ, adapted to the bundle executor's float graphs.

The executor hands a backend float NCHW tensors (``integer * scale`` values, as the manifest's
datatypes say); a FINN engine in the programmable logic takes integer codes in NHWC and gives
integer codes back. This module is the adapter between the two:

- :class:`Accelerator`: what runs one dataflow partition, ``execute(codes_nhwc) -> out_nhwc``.
  On the board that is :class:`FinnDriverAccelerator`, wrapping FINN's generated PYNQ driver
  (``driver_base.FINNExampleOverlay`` of the deploy package); in tests a stand-in that runs
  the same partition with FINN's Python execution.
- :class:`FloatTail`: the float nodes that FINN leaves outside the partition (the output scale
  ``Mul``, the classifier's bias ``Add``, the ``Transpose`` back to NCHW), read once from the
  dataflow parent of :func:`fpga.finn.to_hw` at build time and stored as a small JSON file
  (:meth:`FloatTail.save`), so the board needs neither FINN nor qonnx to apply them.
- :class:`GraphAccelerator`: one bundle graph on one accelerator: float NCHW in ->
  ``rint(x / scale)`` codes (checked integer and in range) -> NHWC -> the accelerator -> the
  float tail -> the twin's float NCHW output. Blocks take a channel mask that the dense HW
  graph does not: :meth:`GraphAccelerator.accepts` is true only when every mask is all ones,
  and :class:`fpga.board.runtime.FinnBackend` runs the other calls on onnxruntime.

Runs on PYNQ (Python 3.10, numpy 1.x): only numpy at module level; pynq and FINN's deploy
package are imported when a :class:`FinnDriverAccelerator` is made.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fpga.board.errors import BoardError

log = logging.getLogger(__name__)

PARTITION_OP = "StreamingDataflowPartition"
NCHW_TO_NHWC = (0, 2, 3, 1)
TAIL_OPS = ("Mul", "Add", "Sub", "Div", "Transpose", "Reshape")
"""Float nodes a tail may hold (all that FINN leaves after the partition of a bundle graph)."""
_BINARY = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}
CODE_TOLERANCE = 1e-3
"""How far ``x / scale`` may lie from an integer (float32 rounding of the twin's output)."""


class AcceleratorError(BoardError):
    """An accelerator cannot be made or used (pynq or the driver missing, bad input or tail)."""


class Accelerator(Protocol):
    """One FINN dataflow partition in the PL.

    ``execute(codes)`` takes the integer input codes in the layout FINN's generated PYNQ driver
    expects, NHWC with the batch first (``(N, H, W, C)``), and returns the engine's output codes
    (integers, possibly as floats), NHWC, batch first.
    """

    def execute(self, codes: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------
# FINN's generated driver


class FinnDriverAccelerator:
    """FINN's generated PYNQ driver (``driver_base.FINNExampleOverlay``) as an :class:`Accelerator`.

    ``driver_dir`` is the ``driver/`` folder of FINN's deploy package (``driver.py``,
    ``driver_base.py`` and their helpers); ``io_shape_dict`` defaults to the one in its
    ``driver.py``. The overlay takes a fixed ``batch_size``: :meth:`execute` splits a batch into
    chunks of that size (the last one padded with zeros). ``download=False`` reuses a bitstream
    that is already loaded (by :class:`fpga.board.runtime.FinnBackend`).
    """

    def __init__(
        self,
        bitfile: str | Path,
        driver_dir: str | Path,
        *,
        io_shape_dict: dict[str, Any] | None = None,
        batch_size: int = 1,
        platform: str = "zynq-iodma",
        download: bool = True,
    ) -> None:
        try:
            import pynq  # noqa: F401 - only present on a PYNQ image
        except ImportError:
            raise AcceleratorError(
                "FINN's driver needs the pynq package, which exists only on a PYNQ board image; "
                "run with --backend cpu here"
            ) from None
        driver_dir = Path(driver_dir)
        if not (driver_dir / "driver_base.py").is_file():
            raise AcceleratorError(
                f"{str(driver_dir)!r} holds no driver_base.py; pass the driver/ folder of FINN's "
                "deploy package (step_deployment_package)"
            )
        if batch_size < 1:
            raise AcceleratorError(f"batch_size {batch_size!r} must be >= 1")
        if str(driver_dir) not in sys.path:
            sys.path.insert(0, str(driver_dir))
        try:
            overlay_class = importlib.import_module("driver_base").FINNExampleOverlay
            if io_shape_dict is None:  # each engine's driver.py has its own shapes
                io_shape_dict = _load_module(driver_dir / "driver.py").io_shape_dict
        except (ImportError, AttributeError, OSError) as exc:
            raise AcceleratorError(
                f"FINN's driver in {str(driver_dir)!r} cannot be imported: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        self.batch_size = batch_size
        self.overlay = overlay_class(
            bitfile_name=str(bitfile),
            platform=platform,
            io_shape_dict=io_shape_dict,
            batch_size=batch_size,
            download=download,
        )
        log.info("FINN driver of %s: batch %d, %s", driver_dir, batch_size, platform)

    def execute(self, codes: np.ndarray) -> np.ndarray:
        n, b = len(codes), self.batch_size
        outputs = []
        for start in range(0, n, b):
            chunk = codes[start : start + b]
            if len(chunk) < b:
                pad = np.zeros((b - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            out = np.asarray(self.overlay.execute(chunk))
            outputs.append(out[: min(b, n - start)])
        return np.concatenate(outputs)


def _load_module(path: Path) -> Any:
    """Import ``path`` under a name of its own (every engine's driver is named ``driver.py``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"finn_driver_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# The float tail


@dataclass
class FloatTail:
    """The float nodes after a graph's dataflow partition, applied in numpy (float32).

    ``ops`` is a list of ``{"op": "Mul"|"Add"|"Sub"|"Div", "value": nested list, "shape": [...],
    "const_first": bool}``, ``{"op": "Transpose", "perm": [...]}`` or ``{"op": "Reshape",
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
        if len(head) != 1 or head[0].op_type != "Transpose" or _perm(head[0]) != NCHW_TO_NHWC:
            raise AcceleratorError(
                f"the parent's nodes before the partition are {kinds[:at]!r}; expected one "
                "Transpose NCHW->NHWC (fpga.finn's ChannelsFirstInput)"
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
            else:
                c = np.asarray(op["value"], dtype=np.float32).reshape(op["shape"])
                a, b = (c, y) if op["const_first"] else (y, c)
                y = _BINARY[kind](a, b)
        return np.ascontiguousarray(y, dtype=np.float32)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"ops": self.ops}) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FloatTail:
        try:
            document = json.loads(Path(path).read_text())
            return cls(list(document["ops"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AcceleratorError(
                f"cannot read the float tail {str(path)!r}: {type(exc).__name__}: {exc}"
            ) from None


def _perm(node: Any) -> tuple[int, ...]:
    for attribute in node.attribute:
        if attribute.name == "perm":
            return tuple(int(v) for v in attribute.ints)
    return ()


# ----------------------------------------------------------------------------------------------
# One bundle graph on one accelerator


class GraphAccelerator:
    """Runs one bundle graph (``GraphSpec``) on an :class:`Accelerator` with its float tail.

    ``run(inputs)`` takes the executor's inputs (float NCHW ``x``, and for blocks the channel
    mask) and returns ``[output]`` as the graph's onnxruntime twin does. ``accepts(inputs)`` is
    false when a mask drops channels: the dense engine cannot run that call (the backend runs it
    on onnxruntime; logged once per graph).
    """

    def __init__(self, graph: Any, accelerator: Accelerator, tail: FloatTail | str | Path):
        self.graph = graph
        self.accelerator = accelerator
        self.tail = tail if isinstance(tail, FloatTail) else FloatTail.load(tail)
        datatype = graph.inputs[0].datatype
        if not datatype.is_integer or not datatype.scale:
            raise AcceleratorError(
                f"graph {graph.name!r} takes {datatype.name} input; an accelerator needs integer "
                "codes with a scale"
            )
        self.scale = float(datatype.scale)
        self.low, self.high = datatype.integer_range()
        self._warned = False

    def accepts(self, inputs: Sequence[np.ndarray]) -> bool:
        """True when every input after ``x`` (the channel mask) is all ones."""
        if all(np.all(np.asarray(m) == 1) for m in inputs[1:]):
            return True
        if not self._warned:
            self._warned = True
            log.info(
                "graph %s: a channel mask drops channels; the dense engine runs only all-ones "
                "masks, so such calls run on onnxruntime",
                self.graph.name,
            )
        return False

    def codes(self, x: np.ndarray) -> np.ndarray:
        """Float NCHW input -> integer codes, NHWC (checked integer and in the datatype's range)."""
        q = np.asarray(x, dtype=np.float64) / self.scale
        codes = np.rint(q)
        name = self.graph.inputs[0].datatype.name
        if q.size and np.max(np.abs(q - codes)) > CODE_TOLERANCE:
            raise AcceleratorError(
                f"graph {self.graph.name!r}: input / scale {self.scale!r} is not integer (off by "
                f"{np.max(np.abs(q - codes)):.3g}); the input is not {name} codes"
            )
        if q.size and (codes.min() < self.low or codes.max() > self.high):
            raise AcceleratorError(
                f"graph {self.graph.name!r}: input codes span [{codes.min():.0f}, "
                f"{codes.max():.0f}], outside {name}'s [{self.low}, {self.high}]"
            )
        return np.ascontiguousarray(np.transpose(codes, NCHW_TO_NHWC).astype(np.int32))

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = self.accelerator.execute(self.codes(inputs[0]))
        return [self.tail.apply(out)]


# ----------------------------------------------------------------------------------------------
# The overlay's engines, as the FPGA build describes them

ACCELERATORS_FILE = "accelerators.json"
"""Beside the bitfile: ``{"graphs": {"block1": {"driver_dir": "block1/driver", "tail":
"block1/accel_tail.json", "batch_size": 1}, ...}}``, paths relative to the file."""


def load_accelerators(
    bundle: Any, bitfile: str | Path, *, download: bool = False
) -> dict[str, GraphAccelerator]:
    """The :class:`GraphAccelerator` of every graph that ``accelerators.json`` (beside
    ``bitfile``) lists; an empty map, logged, when there is no such file."""
    path = Path(bitfile).with_name(ACCELERATORS_FILE)
    if not path.is_file():
        log.info("no %s beside %s: no graph runs on the PL", ACCELERATORS_FILE, bitfile)
        return {}
    try:
        entries = dict(json.loads(path.read_text())["graphs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AcceleratorError(f"cannot read {str(path)!r}: {type(exc).__name__}: {exc}") from None
    graphs = bundle.manifest.graphs
    unknown = sorted(set(entries) - set(graphs))
    if unknown:
        raise AcceleratorError(
            f"{str(path)!r} lists {unknown!r}, which bundle {bundle.bundle_id!r} does not have"
        )
    result = {}
    for name, entry in entries.items():
        driver = FinnDriverAccelerator(
            bitfile,
            path.parent / entry["driver_dir"],
            batch_size=int(entry.get("batch_size", 1)),
            download=download,
        )
        result[name] = GraphAccelerator(graphs[name], driver, path.parent / entry["tail"])
    return result
