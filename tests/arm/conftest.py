"""An emulated ZedBoard ARM: Debian's armhf python3 + numpy under qemu-arm-static.

``tests/arm/prepare.sh`` (run by ``make test`` before pytest) unpacks the armhf packages into a
cache folder; these fixtures stage the board runtime's files there (the list comes from
:func:`fpga.board.deploy.board_files`, plus pyserial from this environment) and start
``python -m fpga.board`` under qemu, serving a pty that a relay thread joins to the host's pty
(a null-modem cable between two pseudo-terminals).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import threading
import time
import tty
from pathlib import Path

import pytest
import serial

from fpga.board.deploy import ROOT, board_files

PREPARE = ROOT / "tests" / "arm" / "prepare.sh"


def arm_root() -> Path:
    """Where prepare.sh unpacks the armhf root (same default as the script)."""
    if os.environ.get("DDI_ARM_ROOT"):
        return Path(os.environ["DDI_ARM_ROOT"])
    cache = Path(os.environ.get("DDI_CACHE", Path.home() / ".cache" / "ddi-fpga"))
    return cache / "armhf"


@pytest.fixture(scope="session")
def arm_python() -> list[str]:
    """The command that runs Debian's armhf python3 under qemu-arm-static."""
    qemu = shutil.which("qemu-arm-static")
    if qemu is None:
        pytest.skip("qemu-arm-static is absent (apt-get install qemu-user-static; tests/arm)")
    root = arm_root()
    if not (root / ".prepared").is_file():
        pytest.fail(
            f"qemu-arm-static is there but no armhf root is prepared in {str(root)!r}: "
            f"run {PREPARE.relative_to(ROOT)} (make test does)"
        )
    return [qemu, "-L", str(root), str(root / "usr" / "bin" / "python3")]


@pytest.fixture(scope="session")
def board_tree(tmp_path_factory) -> Path:
    """The board runtime's files as they are installed on a board, plus pyserial."""
    stage = tmp_path_factory.mktemp("board-tree")
    for rel in board_files():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, stage / rel)
    shutil.copytree(Path(serial.__file__).parent, stage / "serial")
    return stage


def _relay(a: int, b: int, stop: threading.Event) -> None:
    while not stop.is_set():
        ready, _, _ = select.select([a, b], [], [], 0.05)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the other side closed (EIO): wait for stop
                continue
            os.write(b if fd == a else a, data)


@contextlib.contextmanager
def null_modem():
    """Two ptys joined master to master; yields the two device paths (board's, host's)."""
    pairs = [os.openpty() for _ in range(2)]
    for master, slave in pairs:
        tty.setraw(master)
        tty.setraw(slave)
    stop = threading.Event()
    thread = threading.Thread(target=_relay, args=(pairs[0][0], pairs[1][0], stop), daemon=True)
    thread.start()
    try:
        yield os.ttyname(pairs[0][1]), os.ttyname(pairs[1][1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for master, slave in pairs:
            os.close(master)
            os.close(slave)


@contextlib.contextmanager
def board_process(python: list[str], tree: Path, store: Path, *args: str, log: Path):
    """``python -m fpga.board serve`` from ``tree`` on a pty; yields the host's device path."""
    with null_modem() as (board_port, host_port), open(log, "w") as out:
        env = {"PYTHONPATH": str(tree), "PATH": os.environ.get("PATH", ""), "HOME": str(store)}
        proc = subprocess.Popen(
            [*python, "-m", "fpga.board", "serve", "--port", board_port, "--store", str(store),
             *args],
            cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            # The host's first HELLO must not reach the pty before the board opens it (opening
            # flushes the input): wait for the runtime's "serving" line.
            deadline = time.monotonic() + 120
            while "serving protocol" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the board runtime did not start: {log.read_text()}")
                time.sleep(0.05)
            yield host_port, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
