"""Self-describing checkpoints, written atomically and loaded without unpickling objects.

A checkpoint is a ``torch.save`` of plain containers and tensors only::

    {"format": "ddi-fpga-checkpoint", "format_version": 1,
     "model": {"name": "resnet20", "kwargs": {...}},      # create_model(name, **kwargs)
     "state_dict": {...}, "phase": "iadi", "config": {...}, "metrics": {...},
     "train_state": {...} or None,                        # optimizer, step, RNG: for resuming
     "versions": {"torch": ..., "brevitas": ...}, "created_utc": "..."}

It is read with ``torch.load(weights_only=True)``, which refuses any pickled object other than
tensors and builtin containers, so a checkpoint cannot execute code when loaded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

import formats
from train.errors import CheckpointError, ConfigError
from train.model import DDIResNet, create_model

FORMAT = "ddi-fpga-checkpoint"
FORMAT_VERSION = 1


def unwrap(model: nn.Module) -> DDIResNet:
    """The DDIResNet inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def _versions() -> dict[str, str]:
    out = {}
    for package in ("torch", "brevitas"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def _plain(value: Any) -> Any:
    """JSON fallback: numpy and torch scalars become Python numbers, anything else a string."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


def _torch_refusal(exc: Exception) -> str:
    """A one-line reason from torch.load's (multi-line, ANSI-coloured) weights_only error."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if match:
        return f"it holds a pickled object ({match.group(1)}), which is never unpickled"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:160] if lines else type(exc).__name__


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    phase: str,
    config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = unwrap(model)
    # A JSON round trip keeps only plain types, so weights_only loading always accepts them.
    config = json.loads(json.dumps(config, default=_plain))
    metrics = json.loads(json.dumps(metrics or {}, default=_plain))
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": net.spec(),
        "state_dict": net.state_dict(),
        "phase": phase,
        "config": config,
        "metrics": metrics,
        "train_state": train_state,
        "versions": _versions(),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint; every failure is a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; pass a .pt file written by `python -m train`"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read safely: {_torch_refusal(exc)}; "
            "it is corrupt or not a ddi-fpga checkpoint"
        ) from None
    formats.check(
        payload,
        FORMAT,
        FORMAT_VERSION,
        source=f"checkpoint {str(path)!r}",
        error=CheckpointError,
        remedy="it is not a ddi-fpga checkpoint of this version: train one with `python -m train`",
        version_key="format_version",
    )
    for key in ("model", "state_dict", "phase", "config"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {key!r}; it is truncated")
    payload["model"] = complete_spec(payload["model"])
    return payload


def complete_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A model spec with the constructor arguments added since the checkpoint was written.

    ``quant_gates``: checkpoints written before quantized gates existed hold float gates, so a
    gated one rebuilds them float; an ungated one gets the default (quantized gates for a
    quantized network) when a later phase adds gates.
    """
    kwargs = dict(spec.get("kwargs", {}))
    if "quant_gates" not in kwargs:
        gated = kwargs.get("gating", "none") != "none"
        kwargs["quant_gates"] = not gated and kwargs.get("quant") is not None
    return {**spec, "kwargs": kwargs}


def build_model(payload: dict, **overrides: Any) -> DDIResNet:
    """Rebuild the model a checkpoint describes and load its weights (strictly)."""
    spec = payload["model"]
    kwargs = {**spec.get("kwargs", {}), **overrides}
    try:
        model = create_model(spec["name"], **kwargs)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint model {spec!r} cannot be built: {exc}") from None
    if overrides:
        load_backbone(model, payload)
    else:
        missing, unexpected = _load_state(model, payload["state_dict"], spec["name"])
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint weights do not match {spec['name']!r}: missing {missing[:3]!r}, "
                f"unexpected {unexpected[:3]!r}"
            )
    return model


# Brevitas creates an activation quantizer's learned scale ("...scaling_impl.value") only when
# its statistics phase ends, in the first training steps: a model saved before that lacks the
# key, and the rebuilt model starts that phase afresh, as the saved one would have.
_LAZY_KEYS = ("scaling_impl.value",)


def _load_state(model: DDIResNet, state: dict, name: str) -> tuple[list[str], list[str]]:
    """``load_state_dict(strict=False)`` with shape errors as one-line CheckpointErrors."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = next(
            (line.strip() for line in str(exc).splitlines() if "size mismatch" in line),
            str(exc).splitlines()[0] if str(exc) else "RuntimeError",
        )
        raise CheckpointError(f"checkpoint weights do not fit {name!r}: {detail[:200]}") from None
    return [k for k in missing if not k.endswith(_LAZY_KEYS)], list(unexpected)


_ADDED_PARTS = ("layer_gates.", "gate_rnn.", "channel_gates.", "exits.")


def load_backbone(model: DDIResNet, payload: dict, *, quantize: bool = False) -> None:
    """Load a checkpoint into a model that may add gates or exits to the checkpoint's network.

    Everything the checkpoint has must fit the model; only gate and exit parameters may be new.
    ``quantize=True`` also accepts a float checkpoint for a quantized model of the same network
    (quantization-aware training from float pre-training): weights and BN carry over, and the
    quantizers' own parameters start afresh.
    """
    source = payload["model"]
    target = model.spec()
    source_quant, target_quant = source["kwargs"].get("quant"), target["kwargs"].get("quant")
    from_float = quantize and source_quant is None and target_quant is not None
    if source["name"] != target["name"] or (source_quant != target_quant and not from_float):
        raise CheckpointError(
            f"checkpoint holds {source['name']!r} with quant={source['kwargs'].get('quant')!r}, "
            f"not {target['name']!r} with quant={target['kwargs'].get('quant')!r}; start from a "
            "checkpoint of the same backbone"
        )
    missing, unexpected = _load_state(model, payload["state_dict"], target["name"])
    missing = [k for k in missing if not k.startswith(_ADDED_PARTS)]
    if from_float:  # Brevitas' quantizer state (scales, zero points) is new in the QAT model
        missing = [k for k in missing if "_quant." not in k]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint backbone does not fit {target['name']!r}: missing {missing[:3]!r}, "
            f"unexpected {unexpected[:3]!r}"
        )
