"""Run folders: a window is committed whole; a run killed at any point resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from host.records import RunError, RunFolder

CONFIG = {"models": ["a", "b"], "images": 8, "repeats": 2}


def _rows(window, n=4):
    return [
        {
            "model": window.split("/")[0],
            "repeat": 0,
            "image_index": i,
            "label": i % 10,
            "prediction": (i * 3) % 10,
            "exit": -1,
            "executed_blocks": "0x5",
            "channels_per_block": "16;0;64",
            "macs": 1000 + i,
        }
        for i in range(n)
    ]


def test_commit_and_resume_drop_what_an_unfinished_window_left(tmp_path):
    run = RunFolder.create(tmp_path, "demo", CONFIG)
    run.commit_window({"window": "a/r0/w0", "energy_j": 1.0}, _rows("a/r0/w0"))
    run.append_power([0.0, 0.1], [2.0, 2.5])
    # a crash after the rows of the next window, before its record, and a torn record line
    with open(run.path / "results.csv", "a") as f:
        f.write("a/r0/w1,a,0,0,0,0,-1,0x5,16;0;64,1000\na/r0/w1,a,0,1,1")
    with open(run.path / "windows.jsonl", "a") as f:
        f.write('{"window": "a/r0/w1", "ene')
    again = RunFolder.resume(run.path, CONFIG)
    assert again.completed_windows() == ["a/r0/w0"]
    assert {r["window"] for r in again.read_results()} == {"a/r0/w0"}
    assert len(again.read_results()) == 4
    assert again.read_power() == ([0.0, 0.1], [2.0, 2.5])
    with pytest.raises(RunError, match="images differ"):
        RunFolder.resume(run.path, {**CONFIG, "images": 9})


WRITER = textwrap.dedent(
    """
    import sys, time
    from host.records import RunFolder
    from tests.host.test_records import CONFIG, _rows
    path, resume, slow = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
    run = RunFolder.resume(path, CONFIG) if resume else RunFolder.create(path, "k", CONFIG)
    print(run.path, flush=True)
    done = set(run.completed_windows())
    for model in ("a", "b"):
        for w in range(6):
            key = f"{model}/r0/w{w}"
            if key in done:
                continue
            rows = _rows(key, 50)
            time.sleep(slow)
            run.commit_window({"window": key, "images": len(rows)}, rows)
    print("done", flush=True)
    """
)


def _writer(*args):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, *map(str, args)], stdout=subprocess.PIPE, text=True, env=env
    )


def test_a_run_killed_with_sigkill_resumes_to_the_same_records(tmp_path):
    clean = _writer(tmp_path / "clean", 0, 0.0)
    clean_path = clean.stdout.readline().strip()
    assert clean.wait(60) == 0
    killed = _writer(tmp_path / "killed", 0, 0.05)
    path = killed.stdout.readline().strip()
    import time

    deadline = time.time() + 30
    while time.time() < deadline and len(RunFolder(path, CONFIG).completed_windows()) < 4:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    partial = len(RunFolder(path, CONFIG).completed_windows())
    assert 0 < partial < 12
    resumed = _writer(path, 1, 0.0)
    assert resumed.stdout.readline().strip() == path
    assert resumed.wait(60) == 0
    a, b = RunFolder(clean_path, CONFIG), RunFolder(path, CONFIG)
    assert sorted(a.completed_windows()) == sorted(b.completed_windows())

    def key(r):
        return (r["window"], int(r["image_index"]))

    assert sorted(a.read_results(), key=key) == sorted(b.read_results(), key=key)
