"""The bundle manifest: the versioned contract between export/, fpga/ and host/.

A bundle is a folder holding ``manifest.json`` and the graph files it lists. The manifest says
everything a consumer needs and nothing downstream guesses: how a uint8 image becomes the stem's
input (bit for bit), every graph's files with their sha256, input and output tensors with shapes
and datatypes, MACs, the block order, which gate drives which block, where the exits sit and the
LSTM state size. The schema is documented in docs/bundle.md; this module reads, validates and
writes it.

Runs on the board: standard library and numpy only (Python 3.10, numpy 1.x or 2.x).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import formats
from export.errors import BundleError

FORMAT = "ddi-fpga-bundle"
VERSION = 3
"""2: every graph also has a numpy program (``numpy``, export/program.py) that the board runs.
3: a block's QONNX graph takes its channel mask too, as a full-resolution 0/1 map
(``qonnx_inputs``), so FINN runs masked blocks."""
MANIFEST = "manifest.json"
GRAPH_KINDS = ("stem", "block", "shortcut", "layer_gate", "channel_gate", "exit", "head", "full")
BATCH = "N"  # symbolic batch dimension of the onnxruntime twins
MASK_DATATYPE = "UINT1"
"""Datatype of a block's mask map in its QONNX graph (FINN streams it as 1-bit values)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True)
class DataType:
    """A tensor's number format, named as FINN names them (``UINT4``, ``INT8``, ``FLOAT32``).

    For integer types the real value is ``integer * scale`` (zero point 0); ``scale`` is None for
    ``FLOAT32``.
    """

    name: str
    scale: float | None = None

    @property
    def is_integer(self) -> bool:
        return self.name != "FLOAT32"

    @property
    def signed(self) -> bool:
        return self.name.startswith("INT")

    @property
    def bits(self) -> int:
        return 32 if self.name == "FLOAT32" else int(self.name.lstrip("UINT"))

    def integer_range(self) -> tuple[int, int]:
        if not self.is_integer:
            raise ValueError(f"{self.name} is not an integer type")
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (``"N"`` = any batch size) and datatype."""

    name: str
    shape: tuple[int | str, ...]
    datatype: DataType


@dataclass(frozen=True)
class FileRef:
    """A file of the bundle, relative to its folder, with its sha256."""

    file: str
    sha256: str


@dataclass(frozen=True)
class FinnGraph:
    """A quantized gate's QONNX graph for FINN: the part of the gate the PL runs.

    ``layer_gate{i}``: stream quantizer, pool and 1x1 conv; its output is the embedding (codes
    times scale) that the twin's tensor ``twin_tensor`` holds, the LSTM step's input.
    ``channel_gate{i}``: the whole gate with its decision; its output is one keep bit per
    channel, ``twin_tensor`` (``prob``) ``> gate_threshold``.
    """

    file: str
    sha256: str
    outputs: tuple[TensorSpec, ...]
    twin_tensor: str

    @property
    def ref(self) -> FileRef:
        return FileRef(self.file, self.sha256)


@dataclass(frozen=True)
class GraphSpec:
    """One graph of the bundle.

    ``onnx`` is the plain ONNX twin that onnxruntime runs (standard operators, batch dimension
    ``"N"``); ``numpy`` the same computation lowered to a numpy program (:mod:`export.program`,
    weights as integer codes, BN folded), which the board's ARM runs; ``qonnx`` is the QONNX graph
    of the same computation for FINN (batch 1), or None for graphs FINN does not compile (the
    gates). ``qonnx_inputs`` are the QONNX graph's inputs: ``x`` (the first input, batch 1) and,
    for a block, ``mask``: the channel mask as a (1, C_out, H_out, W_out) map of 0/1
    (:data:`MASK_DATATYPE`), the twin's (N, C_out) mask broadcast over the output pixels.
    """

    name: str
    kind: str
    onnx: FileRef
    qonnx: FileRef | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    macs: int
    """MACs per image of the dense graph."""
    numpy: FileRef | None = None
    """The numpy program (``.npz``); always present from manifest version 2 on."""
    qonnx_inputs: tuple[TensorSpec, ...] = ()
    """The QONNX graph's inputs (empty when there is no QONNX graph)."""
    finn: FinnGraph | None = None
    """Gates of a network with quantized gates: the FINN graph of the gate's PL part."""

    @property
    def masked(self) -> bool:
        """Whether the QONNX graph takes the channel mask map (a block's, from version 3)."""
        return len(self.qonnx_inputs) > 1


@dataclass(frozen=True)
class BlockSpec:
    """One residual block: its geometry, graphs and per-part MACs (train/cost.py)."""

    index: int
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    in_size: int
    out_size: int
    graph: str
    """Block graph: inputs ``x`` and ``mask`` (N, out_channels), output ``y``."""
    shortcut: str | None
    """Projection graph run when a downsampling block is skipped; None: a skip passes ``x``."""
    layer_gate: str | None
    channel_gate: str | None
    conv1_macs: int
    conv2_macs: int
    shortcut_macs: int
    layer_gate_macs: int
    channel_gate_macs: int

    def body_macs(self, kept_channels: np.ndarray) -> np.ndarray:
        """MACs (int64) of the running block per kept output-channel count (train/cost.py).

        A block keeping r = kept/out_channels of its channels is a thinner block: conv1 costs
        r of its MACs, conv2 r**2 (both are whole numbers), the shortcut all of its MACs.
        """
        r = np.asarray(kept_channels, dtype=np.float64) / self.out_channels
        thin = np.rint(self.conv1_macs * r + self.conv2_macs * r * r).astype(np.int64)
        return thin + self.shortcut_macs


@dataclass(frozen=True)
class ExitSpec:
    after_block: int
    graph: str
    macs: int


@dataclass(frozen=True)
class Preprocess:
    """How a uint8 image becomes the stem's input, exactly.

    The model computes ``q = clamp(round(((pixel / 255) - mean[c]) / std[c] / scale), lo, hi)``
    in float32 (Brevitas rounds half to even) and feeds ``q * scale``. Because a pixel has 256
    values, the manifest also stores the result per channel and pixel value as ``lut`` (computed
    by the model itself at export): ``q = lut[c][pixel]``. Consumers use the table.
    """

    layout: str
    """Always ``"NHWC uint8 RGB"``: how images travel (CIFAR-10's own layout)."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    datatype: DataType
    lut: tuple[tuple[int, ...], ...]

    def codes(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, C) -> integer codes (N, C, H, W), int16."""
        table = np.asarray(self.lut, dtype=np.int16)  # (C, 256)
        chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (N, C, H, W)
        return table[np.arange(table.shape[0])[None, :, None, None], chw]

    def nhwc_codes(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, C) -> integer codes in the images' own layout (N, H, W, C),
        int16: as an engine that takes NHWC codes needs them (a 256-entry table per channel)."""
        codes = np.empty(images.shape, dtype=np.int16)
        for channel, column in enumerate(np.asarray(self.lut, dtype=np.int16)):
            codes[..., channel] = column[images[..., channel]]
        return codes

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, C) -> the stem's float32 input (N, C, H, W)."""
        scale = np.float32(self.datatype.scale)
        return self.codes(images).astype(np.float32) * scale


@dataclass(frozen=True)
class Manifest:
    """Everything in ``manifest.json``; see docs/bundle.md."""

    bundle_id: str
    model: dict[str, Any]
    """Registry name and constructor arguments (train.model.create_model)."""
    num_classes: int
    image_shape: tuple[int, int, int]
    """(H, W, C) of the uint8 images the bundle takes."""
    preprocess: Preprocess
    stem: str
    head: str
    full: str | None
    """Monolithic plain network (every block, no gates): a reference for speed and parity."""
    blocks: tuple[BlockSpec, ...]
    exits: tuple[ExitSpec, ...]
    gate_hidden: int
    """LSTM state size of the layer gate (h and c are (N, gate_hidden), zero before block 0)."""
    gate_threshold: float
    """A gate keeps a block or channel where its probability is above this value."""
    full_macs: int
    """MACs per image of the plain backbone (no gates, no exits): the reference for savings."""
    stem_macs: int
    head_macs: int
    graphs: dict[str, GraphSpec]
    source: dict[str, Any] = field(default_factory=dict)
    """Where it came from: checkpoint name, sha256, phase and its recorded metrics."""
    producer: dict[str, Any] = field(default_factory=dict)
    """Versions of the software that wrote the bundle, and when."""
    format: str = FORMAT
    version: int = VERSION

    @property
    def has_layer_gates(self) -> bool:
        return any(b.layer_gate for b in self.blocks)

    @property
    def has_channel_gates(self) -> bool:
        return any(b.channel_gate for b in self.blocks)

    def files(self) -> list[FileRef]:
        refs: list[FileRef] = []
        for g in self.graphs.values():
            refs.append(g.onnx)
            if g.numpy is not None:
                refs.append(g.numpy)
            if g.qonnx is not None:
                refs.append(g.qonnx)
            if g.finn is not None:
                refs.append(g.finn.ref)
        return refs

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Reading, with one-line errors naming the field


class _Reader:
    """Typed access to a parsed JSON object; errors name the field path and the bundle."""

    def __init__(self, data: Any, where: str, origin: str) -> None:
        self.data, self.where, self.origin = data, where, origin

    def fail(self, what: str) -> BundleError:
        return BundleError(
            f"bundle {self.origin!r}: {self.where} {what}; re-export it with `python -m export`"
        )

    def get(self, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        if not isinstance(self.data, dict):
            raise self.fail(f"is {type(self.data).__name__}, not an object")
        if key not in self.data:
            if optional:
                return None
            raise self.fail(f"lacks {key!r}")
        value = self.data[key]
        if value is None and optional:
            return None
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise self.fail(f"field {key!r} is {value!r}, not {getattr(kind, '__name__', kind)}")
        return value

    def sub(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict), f"{self.where}.{key}", self.origin)

    def items(self, key: str) -> list[_Reader]:
        return [
            _Reader(v, f"{self.where}.{key}[{i}]", self.origin)
            for i, v in enumerate(self.get(key, list))
        ]


def _datatype(r: _Reader) -> DataType:
    name = r.get("name", str)
    scale = r.get("scale", float, optional=True)
    valid = name == "FLOAT32" or (
        name.lstrip("UINT").isdigit() and name[: -len(name.lstrip("UINT"))] in ("INT", "UINT")
    )
    if not valid:
        raise r.fail(f"datatype {name!r} is not FLOAT32, INTk or UINTk")
    if (name != "FLOAT32") != (scale is not None) or (
        scale is not None and not (math.isfinite(scale) and scale > 0)
    ):
        raise r.fail(f"datatype {name!r} has scale {scale!r}")
    return DataType(name, None if scale is None else float(scale))


def _tensor(r: _Reader) -> TensorSpec:
    shape = r.get("shape", list)
    for d in shape:
        if not ((isinstance(d, int) and not isinstance(d, bool) and d > 0) or d == BATCH):
            raise r.fail(f"shape {shape!r} has a dimension that is not a positive int or 'N'")
    return TensorSpec(r.get("name", str), tuple(shape), _datatype(r.sub("datatype")))


def _fileref(r: _Reader) -> FileRef:
    file = r.get("file", str)
    digest = r.get("sha256", str)
    if os.path.isabs(file) or ".." in Path(file).parts or not file:
        raise r.fail(f"file {file!r} is not a path inside the bundle")
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise r.fail(f"sha256 {digest!r} is not 64 lowercase hex digits")
    return FileRef(file, digest)


def _count(r: _Reader, key: str) -> int:
    value = r.get(key, int)
    if value < 0:
        raise r.fail(f"field {key!r} is {value!r}, not >= 0")
    return value


def manifest_from_dict(data: Any, origin: str = "<memory>") -> Manifest:
    """Validate a parsed manifest; raise :class:`BundleError` naming the first bad field."""
    formats.check(
        data,
        FORMAT,
        VERSION,
        source=f"the manifest of bundle {origin!r}",
        error=BundleError,
        remedy="re-export it with this version of ddi-fpga (python -m export CKPT --out DIR)",
    )
    r = _Reader(data, "manifest", origin)
    graphs: dict[str, GraphSpec] = {}
    gr = r.sub("graphs")
    for name in gr.data:
        g = gr.sub(name)
        kind = g.get("kind", str)
        if kind not in GRAPH_KINDS:
            raise g.fail(f"kind {kind!r} is not one of {', '.join(GRAPH_KINDS)}")
        qonnx = g.get("qonnx", dict, optional=True)
        finn = None
        if g.get("finn", dict, optional=True) is not None:
            f = g.sub("finn")
            ref = _fileref(f)
            finn = FinnGraph(
                file=ref.file,
                sha256=ref.sha256,
                outputs=tuple(_tensor(t) for t in f.items("outputs")),
                twin_tensor=f.get("twin_tensor", str),
            )
        graphs[name] = GraphSpec(
            name=g.get("name", str),
            kind=kind,
            onnx=_fileref(g.sub("onnx")),
            qonnx=None if qonnx is None else _fileref(g.sub("qonnx")),
            numpy=_fileref(g.sub("numpy")),
            inputs=tuple(_tensor(t) for t in g.items("inputs")),
            outputs=tuple(_tensor(t) for t in g.items("outputs")),
            macs=_count(g, "macs"),
            qonnx_inputs=()
            if qonnx is None
            else tuple(_tensor(t) for t in g.items("qonnx_inputs")),
            finn=finn,
        )
        if graphs[name].name != name:
            raise g.fail(f"name {graphs[name].name!r} differs from its key {name!r}")

    def graph_ref(rr: _Reader, key: str, optional: bool = False) -> str | None:
        value = rr.get(key, str, optional=optional)
        if value is not None and value not in graphs:
            raise rr.fail(f"field {key!r} names graph {value!r}, which the manifest lacks")
        return value

    blocks = []
    for i, b in enumerate(r.items("blocks")):
        spec = BlockSpec(
            **{k: _count(b, k) for k in ("index", "stage", "in_channels", "out_channels")},
            **{k: _count(b, k) for k in ("stride", "in_size", "out_size")},
            graph=graph_ref(b, "graph"),
            shortcut=graph_ref(b, "shortcut", optional=True),
            layer_gate=graph_ref(b, "layer_gate", optional=True),
            channel_gate=graph_ref(b, "channel_gate", optional=True),
            **{
                f"{k}_macs": _count(b, f"{k}_macs")
                for k in ("conv1", "conv2", "shortcut", "layer_gate", "channel_gate")
            },
        )
        if spec.index != i:
            raise b.fail(f"index {spec.index!r} is not its position {i}")
        blocks.append(spec)
    exits = []
    for e in r.items("exits"):
        after = _count(e, "after_block")
        if after >= len(blocks):
            raise e.fail(f"after_block {after!r} is past the last block")
        exits.append(ExitSpec(after, graph_ref(e, "graph"), _count(e, "macs")))
    p = r.sub("preprocess")
    lut = p.get("lut", list)
    channels = r.get("image_shape", list)
    if len(channels) != 3 or not all(isinstance(d, int) and d > 0 for d in channels):
        raise r.fail(f"image_shape {channels!r} is not [H, W, C]")
    if len(lut) != channels[2] or any(
        not isinstance(row, list) or len(row) != 256 or not all(isinstance(v, int) for v in row)
        for row in lut
    ):
        raise p.fail("lut is not C rows of 256 integers")
    preprocess = Preprocess(
        layout=p.get("layout", str),
        mean=tuple(float(v) for v in p.get("mean", list)),
        std=tuple(float(v) for v in p.get("std", list)),
        datatype=_datatype(p.sub("datatype")),
        lut=tuple(tuple(row) for row in lut),
    )
    return Manifest(
        bundle_id=r.get("bundle_id", str),
        model=r.get("model", dict),
        num_classes=_count(r, "num_classes"),
        image_shape=tuple(channels),
        preprocess=preprocess,
        stem=graph_ref(r, "stem"),
        head=graph_ref(r, "head"),
        full=graph_ref(r, "full", optional=True),
        blocks=tuple(blocks),
        exits=tuple(exits),
        gate_hidden=_count(r, "gate_hidden"),
        gate_threshold=float(r.get("gate_threshold", float)),
        full_macs=_count(r, "full_macs"),
        stem_macs=_count(r, "stem_macs"),
        head_macs=_count(r, "head_macs"),
        graphs=graphs,
        source=r.get("source", dict, optional=True) or {},
        producer=r.get("producer", dict, optional=True) or {},
    )


@dataclass(frozen=True)
class Bundle:
    """A bundle folder whose manifest was read and validated."""

    path: Path
    manifest: Manifest
    sha256: str
    """sha256 of ``manifest.json``: it lists every file's sha256, so it identifies the bundle."""

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def read(self, ref: FileRef) -> bytes:
        """A file's bytes, refused unless they match the manifest's sha256."""
        path = self.path / ref.file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BundleError(
                f"bundle {str(self.path)!r} lacks {ref.file!r}; copy the whole bundle folder"
            ) from None
        digest = sha256_bytes(data)
        if digest != ref.sha256:
            raise BundleError(
                f"bundle file {str(path)!r} has sha256 {digest[:12]}..., the manifest says "
                f"{ref.sha256[:12]}...: it was modified or damaged; re-export the bundle"
            )
        return data

    def verify_files(self) -> None:
        """Check every listed file against its sha256 (raises on the first mismatch)."""
        for ref in self.manifest.files():
            self.read(ref)


def load_bundle(path: str | os.PathLike, *, verify: bool = True) -> Bundle:
    """Read ``path/manifest.json``; with ``verify``, check every file's sha256 as well."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise BundleError(
            f"bundle {str(path)!r} is not a folder; create one with `python -m export CHECKPOINT`"
        )
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"bundle {str(path)!r} has no {MANIFEST}; it is incomplete or not a bundle"
        ) from None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"bundle manifest {str(manifest_path)!r} is not valid JSON: {exc}"
        ) from None
    bundle = Bundle(path, manifest_from_dict(data, str(path)), sha256_bytes(raw))
    if verify:
        bundle.verify_files()
    return bundle
