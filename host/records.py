"""The run folder: everything one measurement run produced, written so a killed run resumes.

``measurements/runs/<UTC timestamp>_<label>/`` holds

- ``config.json``: the run's settings (a resumed run must have the same);
- ``log.txt``: the log;
- ``power.csv``: every meter sample, ``host_time_s,power_w`` (raw, appended as it arrives);
- ``results.csv``: one row per image and window: predictions, exits, executed blocks, channels,
  MACs (units in the column names);
- ``windows.jsonl``: one JSON object per completed timed window (its times on both clocks,
  images, energy), the commit record of that window;
- ``summary.json``: written at the end from the files above.

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


class RunError(Exception):
    """A run folder cannot be created or resumed (one line, naming the folder)."""


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
        (path / "config.json").write_text(json.dumps(config, indent=1) + "\n")
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
            saved = json.loads((path / "config.json").read_text())
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
        target = self.path / "summary.json"
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dict(summary), indent=1) + "\n")
        os.replace(tmp, target)
        return target
