"""The overlay's own files on the board (fpga.board.accel): ``accelerators.json`` and the float
tails carry ``format`` and ``version``, and a file of another format or version, or one written
before the fields, is refused in one line that names it (no FINN needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fpga.board.accel import (
    OVERLAY_FILE,
    OVERLAY_FORMAT,
    OVERLAY_VERSION,
    TAIL_FORMAT,
    TAIL_VERSION,
    AcceleratorError,
    EngineSpec,
    FloatTail,
    OverlaySpec,
)

TAIL = [{"op": "Mul", "value": [0.5], "shape": [1], "const_first": False}]


def test_a_tail_round_trips_with_its_format(tmp_path):
    FloatTail(TAIL).save(tmp_path / "tail.json")
    document = json.loads((tmp_path / "tail.json").read_text())
    assert (document["format"], document["version"]) == (TAIL_FORMAT, TAIL_VERSION)
    tail = FloatTail.load(tmp_path / "tail.json")
    np.testing.assert_array_equal(tail.apply(np.ones((2, 1), np.float32)), [[0.5], [0.5]])


@pytest.mark.parametrize(
    ("document", "found"),
    [
        ({"ops": TAIL}, "format None version None"),  # a tail written before the fields
        ({"format": TAIL_FORMAT, "version": 99, "ops": TAIL}, f"{TAIL_FORMAT!r} version 99"),
        ({"format": OVERLAY_FORMAT, "version": 1, "ops": TAIL}, f"{OVERLAY_FORMAT!r} version 1"),
        ([], "holds a list"),
    ],
)
def test_a_tail_of_another_format_is_refused_in_one_line(tmp_path, document, found):
    path = tmp_path / "tail.json"
    path.write_text(json.dumps(document))
    with pytest.raises(AcceleratorError, match="rebuild the overlay") as e:
        FloatTail.load(path)
    assert found in str(e.value) and repr(str(path)) in str(e.value)
    assert "\n" not in str(e.value)


def _overlay(folder) -> OverlaySpec:
    engines = {"stem": EngineSpec(0, 0, "tail.json")}
    spec = OverlaySpec(folder, "b", "overlay.bit", "driver/settings.json", "predicted", engines)
    spec.save()
    return spec


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        ({"format": None, "version": None}, "format None version None"),
        ({"version": OVERLAY_VERSION + 1}, f"version {OVERLAY_VERSION + 1}, not"),
        ({"format": TAIL_FORMAT}, f"format {TAIL_FORMAT!r}"),
    ],
)
def test_an_overlay_of_another_format_is_refused_in_one_line(tmp_path, edit, found):
    _overlay(tmp_path)
    assert OverlaySpec.load(tmp_path).engines["stem"].tail == "tail.json"
    path = tmp_path / OVERLAY_FILE
    document = {**json.loads(path.read_text()), **edit}
    path.write_text(json.dumps({k: v for k, v in document.items() if v is not None}))
    with pytest.raises(AcceleratorError, match="rebuild the overlay") as e:
        OverlaySpec.load(tmp_path)
    assert found in str(e.value) and repr(str(path)) in str(e.value)
    assert "\n" not in str(e.value)
