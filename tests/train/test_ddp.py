"""A real two-process DistributedDataParallel run on the CPU (gloo), launched by torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_cifar10
from train.checkpoint import build_model, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
TIMEOUT_S = 180


pytestmark = needs_cifar10


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_logs(log_dir: Path, stream: str) -> dict[int, str]:
    """torchrun's per-rank copies of stdout/stderr: LOG_DIR/<run>/attempt_0/<rank>/<stream>.log."""
    logs = {}
    for path in log_dir.rglob(f"{stream}.log"):
        logs[int(path.parent.name)] = path.read_text()
    return logs


def _torchrun(folder: Path, train_args: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m torch.distributed.run --nproc_per_node 2 ... -m train ARGS`` on the CPU."""
    log_dir = folder / "torchrun-logs"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "--log-dir",
        str(log_dir),
        "--tee",
        "3",  # each rank's stdout and stderr also go to files under --log-dir
        "-m",
        "train",
        *train_args,
        "--batch-size",
        "8",
        "--train-limit",
        "64",
        "--eval-limit",
        "50",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    return proc, log_dir


@pytest.fixture(scope="module")
def ddp_base(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    folder = tmp_path_factory.mktemp("ddp")
    out = folder / "base"
    args = ["base", "--model", "resnet8", "--float", "--steps", str(STEPS), "--out", str(out)]
    proc, log_dir = _torchrun(folder, args)
    return proc, log_dir, out


def test_two_process_ddp_base_run(ddp_base):
    proc, log_dir, out = ddp_base
    assert proc.returncode == 0, proc.stderr[-4000:]

    for name in ("config.json", "log.jsonl", "last.pt", "final.pt", "metrics.json"):
        assert (out / name).is_file(), name

    # Only rank 0 writes the run folder: one log line for the last step, not one per rank.
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [STEPS]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["phase"] == "base"
    assert metrics["test"]["images"] == 50  # rank 0 evaluates the whole (limited) test set
    payload = load_checkpoint(out / "last.pt")
    assert payload["train_state"]["step"] == STEPS
    build_model(load_checkpoint(out / "final.pt"))

    # Both ranks ran the loop to the end. (DDP all-reduces the gradients of every backward pass
    # across the two processes, so neither could have finished its steps without the other.)
    stdout = _rank_logs(log_dir, "stdout")
    assert sorted(stdout) == [0, 1], sorted(stdout)
    assert "base done: accuracy" in stdout[0] and "nan" not in stdout[0]
    assert "base done" not in stdout[1]  # rank 1 trains; rank 0 alone evaluates and reports
    stderr = _rank_logs(log_dir, "stderr")
    for rank in (0, 1):
        assert "loaded" in stderr[rank] and "train images" in stderr[rank], stderr[rank][-2000:]


def test_two_process_ddp_iadi_run(ddp_base, tmp_path):
    proc, _, base = ddp_base
    assert proc.returncode == 0
    out = tmp_path / "iadi"
    args = ["iadi", "--init", str(base / "final.pt"), "--warmup-steps", "3", "--steps", "2"]
    proc, _ = _torchrun(tmp_path, [*args, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "final.pt").is_file()
