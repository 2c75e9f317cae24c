"""The run folder: everything one measurement run produced, written so a killed run resumes.

``measurements/runs/<UTC timestamp>_<label>/`` holds

- ``config.json``: the run's settings (a resumed run must have the same);
- ``log.txt``: the log;
- ``power.csv``: every meter sample, ``host_time_s,power_w`` (raw, appended as it arrives);
- ``results.csv``: one row per image and window: predictions, exits, executed blocks, channels,
  MACs (units in the column names);
- ``windows.jsonl``: one JSON object per completed timed window (its times on both clocks,
  images, energy), the commit record of that window;
- ``summary.json``: written at the end from the files above;
- ``idle.json``, ``source.json``: the idle power and what the board and meter said they are
  (host/measure.py), ``ground_truth.json`` in an emulated run (measurements/reproduce.py).

Every JSON document of the folder carries ``format`` (``ddi-fpga-run-<kind>``) and ``version``
(:data:`FORMAT_VERSION`), written by :func:`write_json` and checked by :func:`read_json`, which
refuses a document of another kind or version in one line.

Crash safety (SIGKILL included): a window's result rows are appended and flushed to disk first,
then its line in ``windows.jsonl``. A window counts as done only when its line is complete. On
resume, a torn last line is cut off and result rows of windows without a line are dropped, so the
resumed run repeats exactly the unfinished windows: no row is lost and none is duplicated.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import formats

RESULT_COLUMNS = (
    "window",
    "model",
    "repeat",
    "image_index",
    "label",
    "prediction",
    "exit",
    "executed_blocks",
    "channels_per_block",
    "macs",
)


FORMAT_VERSION = 1
"""1: every JSON document of a run folder carries ``format`` and ``version``."""


class RunError(Exception):
    """A run folder cannot be created or resumed (one line, naming the folder)."""


def json_format(kind: str) -> str:
    """The ``format`` of a run folder's JSON document of ``kind`` (``config``, ``summary``...)."""
    return f"ddi-fpga-run-{kind}"


def write_json(path: str | os.PathLike, kind: str, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as the run folder document ``kind`` (whole or not at all)."""
    path = Path(path)
    document = {"format": json_format(kind), "version": FORMAT_VERSION, **data}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The run folder document ``kind`` at ``path`` without its ``format`` and ``version``;
    :class:`RunError` (one line) for another kind or version. ``FileNotFoundError`` passes."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except ValueError as exc:
        raise RunError(f"{str(path)!r} is not valid JSON: {exc}") from None
    formats.check(
        document,
        json_format(kind),
        FORMAT_VERSION,
        source=repr(str(path)),
        error=RunError,
        remedy="it was written by another version of ddi-fpga: measure again",
    )
    return {k: v for k, v in document.items() if k not in ("format", "version")}


def _fsync_append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _complete_lines(path: Path) -> list[str]:
    """Lines of ``path`` that end in a newline; a torn last line is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut != len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)
    return data[:cut].decode("utf-8").splitlines()


def run_name(label: str, when: dt.datetime | None = None) -> str:
    when = when or dt.datetime.now(dt.timezone.utc)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "run"
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}_{safe}"


@dataclass
class RunFolder:
    path: Path
    config: dict[str, Any]

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # -----------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, label: str, config: Mapping[str, Any]) -> RunFolder:
        path = Path(root) / run_name(label)
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise RunError(
                f"run folder {str(path)!r} exists; wait a second or pass --resume"
            ) from None
        config = json.loads(json.dumps(config))
        write_json(path / "config.json", "config", config)
        with open(path / "results.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(RESULT_COLUMNS)
        (path / "power.csv").write_text("host_time_s,power_w\n")
        (path / "windows.jsonl").touch()
        return cls(path, config)

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        config: Mapping[str, Any],
        ignore: tuple[str, ...] = ("label",),
    ) -> RunFolder:
        """Reopen ``path`` for the same ``config`` (but ``ignore``); drop what an interrupted
        window left."""
        path = Path(path)
        try:
            saved = read_json(path / "config.json", "config")
        except FileNotFoundError:
            raise RunError(f"{str(path)!r} is not a run folder (no config.json)") from None
        config = json.loads(json.dumps(config))
        keys = (set(saved) | set(config)) - set(ignore)
        diff = sorted(k for k in keys if saved.get(k) != config.get(k))
        if diff:
            raise RunError(
                f"run {str(path)!r} was started with other settings ({', '.join(diff)} differ); "
                "resume it with the same command or start a new run"
            )
        run = cls(path, saved)
        done = set(run.completed_windows())
        lines = _complete_lines(path / "results.csv")
        kept = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0] in done]
        if len(kept) != len(lines) or not lines:
            tmp = path / "results.csv.tmp"
            tmp.write_text("\n".join(kept or [",".join(RESULT_COLUMNS)]) + "\n")
            os.replace(tmp, path / "results.csv")
        _complete_lines(path / "power.csv")
        return run

    def discard_unstarted(self) -> bool:
        """Remove the folder if it holds no committed window (a run that never started).

        Returns whether it was removed. A folder with a committed window is kept, for --resume.
        """
        if self.completed_windows():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        return True

    # -----------------------------------------------------------------------------------------
    def windows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in _complete_lines(self.path / "windows.jsonl") if line]

    def completed_windows(self) -> list[str]:
        return [w["window"] for w in self.windows()]

    def append_power(self, t_s: Iterable[float], power_w: Iterable[float]) -> None:
        rows = "".join(f"{t:.6f},{p:.6g}\n" for t, p in zip(t_s, power_w, strict=True))
        if rows:
            _fsync_append(self.path / "power.csv", rows)

    def commit_window(self, record: Mapping[str, Any], rows: list[Mapping[str, Any]]) -> None:
        """Write a finished window: its result rows first, then its record (the commit)."""
        key = record["window"]
        if "," in key or "\n" in key:
            raise RunError(f"window key {key!r} may not hold commas or newlines")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
        for row in rows:
            writer.writerow({**row, "window": key})
        _fsync_append(self.path / "results.csv", buf.getvalue())
        _fsync_append(self.path / "windows.jsonl", json.dumps(dict(record)) + "\n")

    def read_results(self) -> list[dict[str, str]]:
        with open(self.path / "results.csv", newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def read_power(self) -> tuple[list[float], list[float]]:
        t, p = [], []
        for line in _complete_lines(self.path / "power.csv")[1:]:
            a, b = line.split(",")
            t.append(float(a))
            p.append(float(b))
        return t, p

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        return write_json(self.path / "summary.json", "summary", summary)
