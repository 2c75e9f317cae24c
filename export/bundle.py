"""Checkpoint -> bundle: per-block QONNX graphs for FINN, onnxruntime twins, gates, a manifest.

The trained network has data-dependent control flow that neither FINN nor a static ONNX graph
can hold, so it leaves PyTorch as separate graphs that a runtime sequences per image
(:mod:`export.executor`):

- ``stem``: input codes (dequantized) -> the stage-1 stream; ``head``: stream -> logits;
- ``block{i}``: one residual block, ``(x, mask) -> y``, applying the channel mask as the model
  does (masked intermediate channels, masked outputs passed from the shortcut). The onnxruntime
  twin takes the mask as (N, C_out); the QONNX graph (FINN) as a (1, C_out, H_out, W_out) map
  of 0/1, a second stream of the output's shape (:class:`MaskedBlockGraph`);
- ``shortcut{i}``: what a skipped downsampling block outputs (its 1x1 projection);
- ``exit{j}``: the RADI branch classifiers;
- ``layer_gate{i}``: one step of G^L, ``(x, h, c) -> (prob, h', c')``; the LSTM cell is shared,
  the pooling and 1x1 embedding are per block, so each block gets its own small graph;
- ``channel_gate{i}``: G^C, ``x -> prob`` per output channel;
- ``full``: the plain network in one graph (every block, no gates), a reference for speed.

Every quantized graph starts with the quantizer that produced its input tensor (the stream
quantizer of the stage, or the input quantizer). On values that are already quantized it is the
identity, and it gives FINN the input's integer datatype and scale, so each graph compiles on its
own. Both inputs of every residual add share that stage's quantizer (train/model.py), so a block's
output format does not depend on which blocks ran before it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from export.errors import ExportError
from export.lower import lower
from export.manifest import (
    BATCH,
    FORMAT,
    MANIFEST,
    MASK_DATATYPE,
    VERSION,
    Bundle,
    DataType,
    load_bundle,
    sha256_file,
)
from train.checkpoint import build_model, load_checkpoint
from train.model import GATE_HIDDEN, NUM_CLASSES, DDIResNet
from train.quant import is_quantized

log = logging.getLogger(__name__)
OPSET = 17

# ---------------------------------------------------------------------------------------------
# The graphs, as small modules over the trained model's own submodules


def stream_quant(model: DDIResNet, block: int) -> nn.Module:
    """The quantizer of the tensor entering block ``block`` (``num_blocks`` = the head's input)."""
    if block == 0:
        return model.stream_acts[0]
    return model.stream_acts[model.block_infos[block - 1].stage]


class StemGraph(nn.Module):
    def __init__(self, model: DDIResNet) -> None:
        super().__init__()
        self.quant, self.stem = model.input_quant, model.stem

    def forward(self, x: Tensor) -> Tensor:
        return self.stem(self.quant(x))  # (N, 16, H, W)


class BlockGraph(nn.Module):
    """A residual block; with ``masked`` it takes the channel mask (N, C_out) as well."""

    def __init__(self, model: DDIResNet, index: int, masked: bool) -> None:
        super().__init__()
        self.quant, self.block, self.masked = (
            stream_quant(model, index),
            model.blocks[index],
            masked,
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.block(self.quant(x), channel_mask=mask if self.masked else None)


class MaskedBlockGraph(nn.Module):
    """A residual block for FINN: ``(x, mask) -> y`` with the mask as a full-resolution map.

    ``mask`` is (N, C_out, H_out, W_out) of 0/1, the channel mask broadcast over the output
    pixels: FINN's elementwise layers join two streams of one shape, and a 1-bit map is cheap to
    stream. The result equals :meth:`train.model.BasicBlock.forward` with the channel mask bit
    for bit (float32, and so the integer codes FINN computes):

    - masked intermediate channels: ``h * mask``;
    - the output select ``torch.where(mask, y, skip)`` as ``stream_act(r * mask + skip)``: where
      the mask is 1 that is ``y = stream_act(r + skip)``; where it is 0 it is
      ``stream_act(skip)``, and ``skip`` is already a code of that quantizer (train/model.py: both
      inputs of the residual add share it), on which it is the identity.

    After streamlining both are integer ``Mul`` joins of the codes with the mask stream, and the
    select costs no layer of its own: the residual add and its thresholds are the block's
    (docs/finn-frontend.md, "Masked blocks").
    """

    def __init__(self, model: DDIResNet, index: int) -> None:
        super().__init__()
        self.quant, self.block = stream_quant(model, index), model.blocks[index]

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b = self.block
        x = self.quant(x)
        skip = b.passthrough(x)  # (N, C_out, H', W')
        h = b.act1(b.bn1(b.conv1(x))) * mask  # masked channels do no work
        r = b.stream_act(b.bn2(b.conv2(h)))  # residual branch, stream quantizer
        return b.stream_act(r * mask + skip)  # y where mask = 1, skip where it is 0


class ShortcutGraph(nn.Module):
    def __init__(self, model: DDIResNet, index: int) -> None:
        super().__init__()
        self.quant, self.block = stream_quant(model, index), model.blocks[index]

    def forward(self, x: Tensor) -> Tensor:
        return self.block.passthrough(self.quant(x))


class ExitGraph(nn.Module):
    def __init__(self, model: DDIResNet, j: int) -> None:
        super().__init__()
        self.quant = stream_quant(model, model.exit_positions[j] + 1)
        self.exit = model.exits[j]

    def forward(self, x: Tensor) -> Tensor:
        return self.exit(self.quant(x))  # (N, classes)


class HeadGraph(nn.Module):
    def __init__(self, model: DDIResNet) -> None:
        super().__init__()
        self.quant, self.pool, self.fc = stream_quant(model, model.num_blocks), model.pool, model.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.quant(x)).flatten(1))  # (N, classes)


class FullGraph(nn.Module):
    """The plain network: stem, every block at full width, head (gates and exits ignored)."""

    def __init__(self, model: DDIResNet) -> None:
        super().__init__()
        self.stem, self.blocks = StemGraph(model), model.blocks
        self.head = HeadGraph(model)

    def forward(self, x: Tensor) -> Tensor:
        y = self.stem(x)
        for block in self.blocks:
            y = block(y)
        return self.head(y)


class LayerGateGraph(nn.Module):
    """One step of G^L, ``(x, h, c) -> (prob, h', c')``.

    With quantized gates it begins with the stream quantizer, as the other quantized graphs do.
    """

    def __init__(self, model: DDIResNet, index: int) -> None:
        super().__init__()
        assert model.layer_gates is not None and model.gate_rnn is not None
        self.embed, self.rnn = model.layer_gates[index], model.gate_rnn
        self.quant = stream_quant(model, index) if model.quant_gates else None

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.quant is not None:
            x = self.quant(x)
        return self.rnn(self.embed(x), h, c)  # (N,), (N, hidden), (N, hidden)


class ChannelGateGraph(nn.Module):
    """G^C, ``x -> prob``.

    A float gate has its BatchNorm folded into the conv before export (see
    :func:`fold_gate_bn`); a quantized gate begins with the stream quantizer and keeps its
    BatchNorm, which the QCDQ export leaves as a node (its conv weights are codes, not a
    constant the exporter folds) and export/lower.py folds in numpy.
    """

    def __init__(self, model: DDIResNet, index: int) -> None:
        super().__init__()
        assert model.channel_gates is not None
        if model.quant_gates:
            self.quant, self.gate = stream_quant(model, index), model.channel_gates[index]
        else:
            self.quant, self.gate = None, fold_gate_bn(model.channel_gates[index])

    def forward(self, x: Tensor) -> Tensor:
        if self.quant is not None:
            x = self.quant(x)
        return self.gate(x)  # (N, C_out)


class LayerGateFrontGraph(nn.Module):
    """The FINN part of G^L: stream quantizer -> pool -> 1x1 conv -> the embedding's codes."""

    def __init__(self, model: DDIResNet, index: int) -> None:
        super().__init__()
        assert model.layer_gates is not None
        self.quant, self.embed = stream_quant(model, index), model.layer_gates[index]

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(self.quant(x))  # (1, hidden): code * scale


class ChannelGateLogitsGraph(nn.Module):
    """The FINN part of G^C up to its logits; export adds the keep threshold (:data:`KEEP`)."""

    def __init__(self, model: DDIResNet, index: int) -> None:
        super().__init__()
        assert model.channel_gates is not None
        self.quant, self.gate = stream_quant(model, index), model.channel_gates[index]

    def forward(self, x: Tensor) -> Tensor:
        return self.gate.logits(self.quant(x))  # (1, C_out)


EMBEDDING = "embedding"
"""Output of a layer gate's FINN graph: the codes of the embedding the LSTM step takes."""
KEEP = "keep"
"""Output of a channel gate's FINN graph: 1 where the channel is kept, 0 where skipped."""
KEEP_DATATYPE = DataType("UINT1", 1.0)


def scope_output(path: Path, scope: str) -> str:
    """The tensor that the last node of module ``scope`` writes in the exported graph ``path``.

    torch's exporter names nodes by module path (``/embed/Flatten``); the layer gate twin's
    ``embed`` scope ends in the embedding that the LSTM step takes.
    """
    nodes = [n for n in onnx.load(str(path)).graph.node if n.name.startswith(f"/{scope}/")]
    if not nodes:
        raise ExportError(f"exported graph {path.name!r} has no node of module {scope!r}")
    return nodes[-1].output[0]


def add_keep_threshold(path: Path, logits: str) -> None:
    """End the QONNX graph at ``path`` in the decision ``logit > 0``: one bit per channel.

    A one-step ``MultiThreshold`` (qonnx counts the thresholds its input is ``>=``) at the
    smallest positive float32, so that it holds exactly where ``logit > 0``. FINN's streamlining
    absorbs the FC's scale and bias, calibration offset included, into that threshold, which
    becomes an integer threshold on the FC's accumulator (a one-step ``Thresholding`` layer).
    """
    from qonnx.core.datatype import DataType as QonnxType
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(path))
    graph = model.graph
    (out,) = [o for o in graph.output if o.name == logits]
    channels = model.get_tensor_shape(logits)[1]
    tiny = np.nextafter(np.float32(0), np.float32(1))
    name = f"{KEEP}_threshold"
    graph.initializer.append(
        onnx.numpy_helper.from_array(np.full((channels, 1), tiny, dtype=np.float32), name)
    )
    graph.node.append(
        onnx.helper.make_node(
            "MultiThreshold",
            [logits, name],
            [KEEP],
            name=name,
            domain="qonnx.custom_op.general",
            out_dtype="BINARY",
        )
    )
    graph.output.remove(out)
    graph.output.append(
        onnx.helper.make_tensor_value_info(KEEP, onnx.TensorProto.FLOAT, [1, channels])
    )
    model.set_tensor_datatype(KEEP, QonnxType["BINARY"])
    model.save(str(path))


def fold_gate_bn(gate: nn.Module) -> nn.Module:
    """A copy of a float channel gate with its BatchNorm folded into the conv, in float64.

    Left to itself, torch's ONNX exporter folds an eval-mode Conv+BatchNorm in float32 with
    torch's ``sqrt``, which runs through MKL's vector math: its last bit depends on the code path
    MKL picks for the CPU (an Intel Xeon and an AMD EPYC export other bytes; here
    ``MKL_CBWR=COMPATIBLE`` shows it), and so did the gate graphs' bytes (docs/bundle.md).
    numpy's float64 ``sqrt``, ``/`` and ``*`` are IEEE operations, correctly rounded on every
    machine; rounded once to float32, the folded weights are the same everywhere. Written here
    rather than with ``torch.nn.utils.fusion.fuse_conv_bn_weights`` because that helper computes
    with torch's kernels. The gate keeps its op set (no BatchNormalization node).
    """
    folded = copy.deepcopy(gate).eval()
    conv, bn = folded.conv, folded.bn

    def f64(t: Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float64)  # exact widening

    assert conv.bias is None  # ChannelGate's conv has none (train/model.py)
    scale = f64(bn.weight) / np.sqrt(f64(bn.running_var) + bn.eps)  # (C_out,)
    shift = f64(bn.bias) - f64(bn.running_mean) * scale  # (C_out,)
    weight = f64(conv.weight) * scale[:, None, None, None]  # (C_out, C_in, 3, 3)
    conv.weight = nn.Parameter(torch.from_numpy(weight.astype(np.float32)))
    conv.bias = nn.Parameter(torch.from_numpy(shift.astype(np.float32)))
    folded.bn = nn.Identity()
    return folded


# ---------------------------------------------------------------------------------------------
# ONNX writing


def datatype_of(quant: nn.Module) -> DataType:
    """The integer format a Brevitas activation quantizer produces."""
    proxy = quant.act_quant
    bits = int(proxy.bit_width())
    prefix = "INT" if proxy.is_signed else "UINT"
    return DataType(f"{prefix}{bits}", float(proxy.scale().detach()))


FLOAT = DataType("FLOAT32")


def _finish(path: Path, input_names: list[str]) -> None:
    """Drop initializers listed as graph inputs (Brevitas' exporter keeps them) and check."""
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    for inp in [i for i in model.graph.input if i.name in inits]:
        model.graph.input.remove(inp)
    names = [i.name for i in model.graph.input]
    if names != input_names:
        raise ExportError(f"exported graph {path.name!r} has inputs {names!r}, not {input_names!r}")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _export(
    exporter: Callable[..., Any] | None,
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_batch: bool,
) -> None:
    kwargs: dict[str, Any] = dict(input_names=inputs, output_names=outputs, opset_version=OPSET)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {n: {0: BATCH} for n in inputs + outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and Brevitas export chatter
        if exporter is None:
            torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)
        else:
            exporter(module, args, str(path), dynamo=False, **kwargs)
    _finish(path, inputs)


def _exporters():
    from brevitas.export import export_onnx_qcdq, export_qonnx

    return export_onnx_qcdq, export_qonnx


def _spec(name: str, tensor: Tensor, datatype: DataType, batch: bool) -> dict[str, Any]:
    shape = list(tensor.shape)
    if batch:
        shape[0] = BATCH
    return {"name": name, "shape": shape, "datatype": asdict(datatype)}


# ---------------------------------------------------------------------------------------------
# The bundle


class _Writer:
    """Writes graphs into a folder and collects their manifest entries."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.graphs: dict[str, dict[str, Any]] = {}
        self.qcdq, self.qonnx = _exporters()

    def lower(self, name: str, onnx_file: str) -> dict[str, str]:
        """Write the numpy program of a twin (export/lower.py) and return its file entry."""

        numpy_file = f"{name}.npz"
        program = lower(str(self.folder / onnx_file), name)
        (self.folder / numpy_file).write_bytes(program.to_bytes())
        return {"file": numpy_file, "sha256": sha256_file(self.folder / numpy_file)}

    def add(
        self,
        name: str,
        kind: str,
        *,
        twin: nn.Module,
        args: dict[str, tuple[Tensor, DataType]],
        outputs: dict[str, DataType],
        macs: int,
        dense: nn.Module | None = None,
        dense_args: dict[str, tuple[Tensor, DataType]] | None = None,
        quantized: bool = True,
    ) -> None:
        """Export ``twin`` (all ``args``) for onnxruntime and ``dense`` for FINN, on the first
        image of ``dense_args`` (default: the first of ``args``)."""
        in_names = list(args)
        tensors = tuple(t for t, _ in args.values())
        # A new wrapper is in training mode, and Brevitas' exporter restores the mode it found on
        # every submodule: the trained model's BN layers would switch to batch statistics.
        twin.eval()
        if dense is not None:
            dense.eval()
        with torch.no_grad():
            results = twin(*tensors)
        results = results if isinstance(results, tuple) else (results,)
        onnx_file = f"{name}.onnx"
        _export(
            self.qcdq if quantized else None,
            twin,
            tensors,
            self.folder / onnx_file,
            in_names,
            list(outputs),
            True,
        )
        entry: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "onnx": {"file": onnx_file, "sha256": sha256_file(self.folder / onnx_file)},
            "numpy": self.lower(name, onnx_file),
            "qonnx": None,
            "inputs": [_spec(n, t, d, True) for n, (t, d) in args.items()],
            "outputs": [
                _spec(n, r, d, True) for (n, d), r in zip(outputs.items(), results, strict=True)
            ],
            "macs": int(macs),
        }
        if dense is not None:
            qonnx_file = f"{name}.qonnx.onnx"
            if dense_args is None:
                dense_args = dict(list(args.items())[:1])
            one = {n: (t[:1], d) for n, (t, d) in dense_args.items()}  # FINN graphs: one image
            _export(
                self.qonnx,
                dense,
                tuple(t for t, _ in one.values()),
                self.folder / qonnx_file,
                list(one),
                list(outputs)[:1],
                False,
            )
            entry["qonnx"] = {"file": qonnx_file, "sha256": sha256_file(self.folder / qonnx_file)}
            entry["qonnx_inputs"] = [_spec(n, t, d, False) for n, (t, d) in one.items()]
        self.graphs[name] = entry

    def add_gate_engine(
        self,
        name: str,
        engine: nn.Module,
        x: Tensor,
        output: tuple[str, DataType],
        twin_tensor: str,
        keep_threshold: bool = False,
    ) -> None:
        """Export a quantized gate's FINN graph (QONNX, batch 1) as graph ``name``'s ``finn``.

        ``engine`` computes what the PL runs (the gate's front, or its logits, to which
        ``keep_threshold`` appends the keep decision); ``twin_tensor`` names the tensor of the
        graph's onnxruntime twin that its output is derived from (docs/bundle.md).
        """
        engine.eval()
        out_name, datatype = output
        file = f"{name}.qonnx.onnx"
        exported = "logits" if keep_threshold else out_name
        _export(self.qonnx, engine, (x[:1],), self.folder / file, ["x"], [exported], False)
        if keep_threshold:
            add_keep_threshold(self.folder / file, exported)
        with torch.no_grad():
            shape = list(engine(x[:1]).shape)
        self.graphs[name]["finn"] = {
            "file": file,
            "sha256": sha256_file(self.folder / file),
            "outputs": [{"name": out_name, "shape": shape, "datatype": asdict(datatype)}],
            "twin_tensor": twin_tensor,
        }


def _preprocess_table(model: DDIResNet) -> dict[str, Any]:
    """The exact uint8 -> input code table, computed by the model's own preprocessing."""
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    images = values.float().div(255)  # as train.data's loader converts images
    with torch.no_grad():
        q = model.preprocess(images)  # (1, 3, 16, 16) dequantized codes
    datatype = datatype_of(model.input_quant)
    scale = torch.tensor(datatype.scale, dtype=torch.float32)
    codes = torch.round(q / scale)
    if not torch.equal(codes * scale, q):
        raise ExportError(
            "the input quantizer's output is not code * scale in float32; cannot export"
        )
    mean = model.mean.flatten().tolist()
    std = model.std.flatten().tolist()
    return {
        "layout": "NHWC uint8 RGB",
        "mean": mean,
        "std": std,
        "datatype": asdict(datatype),
        "lut": codes.view(3, 256).to(torch.int64).tolist(),
    }


def _versions() -> dict[str, str]:
    import brevitas
    import onnxruntime
    import qonnx

    return {
        "torch": torch.__version__,
        "brevitas": brevitas.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "qonnx": getattr(qonnx, "__version__", "unknown"),
    }


def _example_input(model: DDIResNet, batch: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, model.image_size, model.image_size), generator=g)
    with torch.no_grad():
        return model.preprocess(images.float().div(255))


def write_graphs(model: DDIResNet, folder: Path, progress: bool = True) -> dict[str, Any]:
    """Export every graph of ``model`` into ``folder``; return the manifest body (no ids)."""
    from tqdm.auto import tqdm

    costs = model.costs()
    w = _Writer(folder)
    n_graphs = (
        3
        + model.num_blocks * (1 + int(model.has_layer_gates) + int(model.has_channel_gates))
        + sum(b.downsample for b in model.block_infos)
        + len(model.exit_positions)
    )
    bar = tqdm(total=n_graphs, desc="export graphs", unit="graph", disable=not progress)

    def added() -> None:
        bar.update(1)

    x = _example_input(model)
    in_type = datatype_of(model.input_quant)
    stem = StemGraph(model)
    w.add(
        "stem",
        "stem",
        twin=stem,
        dense=stem,
        args={"x": (x, in_type)},
        outputs={"y": datatype_of(model.stream_acts[0])},
        macs=costs.stem,
    )
    added()
    full = FullGraph(model)
    w.add(
        "full",
        "full",
        twin=full,
        dense=None,
        args={"x": (x, in_type)},
        outputs={"logits": FLOAT},
        macs=costs.full,
    )
    added()
    with torch.no_grad():
        feats = [stem(x)]
        for block in model.blocks:
            feats.append(block(feats[-1]))
    hidden = torch.zeros(x.shape[0], GATE_HIDDEN)
    blocks, exits = [], []
    for i, info in enumerate(model.block_infos):
        xi = feats[i]
        in_dt = datatype_of(stream_quant(model, i))
        out_dt = datatype_of(model.stream_acts[info.stage])
        mask = torch.ones(x.shape[0], info.out_channels)
        mask[0, ::2] = 0.0  # any mask will do for tracing; half the channels of image 0
        size = info.out_size
        mask_map = mask[:, :, None, None].expand(-1, -1, size, size).contiguous()
        w.add(
            f"block{i}",
            "block",
            twin=BlockGraph(model, i, masked=True),
            dense=MaskedBlockGraph(model, i),
            dense_args={"x": (xi, in_dt), "mask": (mask_map, DataType(MASK_DATATYPE, 1.0))},
            args={"x": (xi, in_dt), "mask": (mask, FLOAT)},
            outputs={"y": out_dt},
            macs=costs.conv1[i] + costs.conv2[i] + costs.shortcut[i],
        )
        added()
        entry: dict[str, Any] = {
            "index": i,
            "stage": info.stage,
            "in_channels": info.in_channels,
            "out_channels": info.out_channels,
            "stride": info.stride,
            "in_size": info.in_size,
            "out_size": info.out_size,
            "graph": f"block{i}",
            "shortcut": None,
            "layer_gate": None,
            "channel_gate": None,
            "conv1_macs": costs.conv1[i],
            "conv2_macs": costs.conv2[i],
            "shortcut_macs": costs.shortcut[i],
            "layer_gate_macs": costs.layer_gate[i],
            "channel_gate_macs": costs.channel_gate[i],
        }
        if info.downsample:
            sc = ShortcutGraph(model, i)
            w.add(
                f"shortcut{i}",
                "shortcut",
                twin=sc,
                dense=sc,
                args={"x": (xi, in_dt)},
                outputs={"y": out_dt},
                macs=costs.shortcut[i],
            )
            entry["shortcut"] = f"shortcut{i}"
            added()
        quant_gates = model.quant_gates
        if model.has_layer_gates:
            name = f"layer_gate{i}"
            w.add(
                name,
                "layer_gate",
                twin=LayerGateGraph(model, i),
                args={"x": (xi, in_dt), "h": (hidden, FLOAT), "c": (hidden, FLOAT)},
                outputs={"prob": FLOAT, "h_out": FLOAT, "c_out": FLOAT},
                macs=costs.layer_gate[i],
                quantized=quant_gates,
            )
            if quant_gates:
                w.add_gate_engine(
                    name,
                    LayerGateFrontGraph(model, i),
                    xi,
                    (EMBEDDING, datatype_of(model.layer_gates[i].code)),
                    scope_output(w.folder / f"{name}.onnx", "embed"),
                )
            entry["layer_gate"] = name
            added()
        if model.has_channel_gates:
            name = f"channel_gate{i}"
            w.add(
                name,
                "channel_gate",
                twin=ChannelGateGraph(model, i),
                args={"x": (xi, in_dt)},
                outputs={"prob": FLOAT},
                macs=costs.channel_gate[i],
                quantized=quant_gates,
            )
            if quant_gates:
                w.add_gate_engine(
                    name,
                    ChannelGateLogitsGraph(model, i),
                    xi,
                    (KEEP, KEEP_DATATYPE),
                    "prob",
                    keep_threshold=True,
                )
            entry["channel_gate"] = name
            added()
        blocks.append(entry)
    for j, p in enumerate(model.exit_positions):
        ex = ExitGraph(model, j)
        w.add(
            f"exit{j}",
            "exit",
            twin=ex,
            dense=ex,
            args={"x": (feats[p + 1], datatype_of(stream_quant(model, p + 1)))},
            outputs={"logits": FLOAT},
            macs=costs.exits[j],
        )
        exits.append({"after_block": p, "graph": f"exit{j}", "macs": costs.exits[j]})
        added()
    head = HeadGraph(model)
    w.add(
        "head",
        "head",
        twin=head,
        dense=head,
        args={"x": (feats[-1], datatype_of(stream_quant(model, model.num_blocks)))},
        outputs={"logits": FLOAT},
        macs=costs.head,
    )
    added()
    bar.close()
    return {
        "model": model.spec(),
        "num_classes": NUM_CLASSES,
        "image_shape": [model.image_size, model.image_size, 3],
        "preprocess": _preprocess_table(model),
        "stem": "stem",
        "head": "head",
        "full": "full",
        "blocks": blocks,
        "exits": exits,
        "gate_hidden": GATE_HIDDEN,
        "gate_threshold": 0.5,
        "full_macs": costs.full,
        "stem_macs": costs.stem,
        "head_macs": costs.head,
        "graphs": w.graphs,
    }


def bundle_digest(model: DDIResNet) -> str:
    """sha256 (hex) of what defines a bundle: the bundle format and the network it holds.

    The bundle id ends in its first 12 hex digits. It hashes the manifest format and version,
    the ONNX opset, the model's registry name and constructor arguments, and every tensor of the
    model's state (name, dtype, shape, bytes; sorted by name), not the exported files: the id of
    a checkpoint's bundle is the same on every machine even where the exporter's float32
    arithmetic is not. The exact bytes are named by the manifest's sha256 (docs/bundle.md).
    """
    head = {"format": FORMAT, "version": VERSION, "opset": OPSET, "model": model.spec()}
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(json.dumps([name, str(t.dtype), list(tensor.shape)]).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())  # little-endian on x86 and ARM
    return digest.hexdigest()


def export_bundle(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Bundle:
    """Export a quantized checkpoint as a bundle folder ``out`` (written whole or not at all)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"bundle folder {str(out)!r} exists; pass --force to replace it")
    payload = load_checkpoint(checkpoint)
    model = build_model(payload).eval()
    if not is_quantized(model):
        raise ExportError(
            f"checkpoint {str(checkpoint)!r} holds a float model; FINN compiles integer graphs: "
            "train with quantization (the default, e.g. `python -m train base --weight-bits 4`)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        body = write_graphs(model, tmp, progress=progress)
        after = model.state_dict()
        changed = [k for k, v in state.items() if not torch.equal(v, after[k])]
        assert not changed and not any(m.training for m in model.modules()), changed[:3]
        gating = model.gating + ("-exits" if model.has_exits else "")
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "bundle_id": f"{model.spec()['name']}-{gating}-{bundle_digest(model)[:12]}",
            **body,
            "source": {
                "checkpoint": checkpoint.name,
                "checkpoint_path": str(checkpoint),
                "checkpoint_sha256": sha256_file(checkpoint),
                "checkpoint_created_utc": payload.get("created_utc"),
                "phase": payload.get("phase"),
                "metrics": payload.get("metrics", {}),
            },
            # no export time stamp: a re-export of a checkpoint with the same software is the
            # same bytes, so the board's store recognises it (docs/bundle.md)
            "producer": {"software": "ddi-fpga", "versions": _versions()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        load_bundle(tmp)  # what we wrote must read back and verify
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("wrote bundle %s (%s)", out, manifest["bundle_id"])
    return load_bundle(out)
