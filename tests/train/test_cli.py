"""Tests of the command line (``python -m train``) through ``train.__main__.main``, on real data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from tests.conftest import have_cifar10, needs_cifar10
from train.__main__ import main
from train.checkpoint import build_model, load_checkpoint
from train.model import list_models

STEPS = 2
BASE_ARGS = [
    "base",
    "--model",
    "resnet8",
    "--steps",
    str(STEPS),
    "--batch-size",
    "16",
    "--train-limit",
    "64",
    "--eval-limit",
    "100",
    "--float",
    "--device",
    "cpu",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _error_line(err: str) -> str:
    """The whole stderr, which must be exactly one line ``error: ...``."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def _log_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A real two-step `base` run of a float resnet8 on 64 training images."""
    if not have_cifar10():
        pytest.skip("CIFAR-10 not found (train.data)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("cli") / "base"
        assert main([*BASE_ARGS, "--out", str(run)]) == 0
    finally:
        torch.set_num_threads(threads)
    return run


# ------------------------------------------------------------------------------------ models


def test_models_lists_every_registered_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == list_models()
    assert "resnet8" in out and "resnet110" in out


# ------------------------------------------------------------------------------------ errors


def test_eval_of_a_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "final.pt"
    assert main(["eval", str(missing), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    line = _error_line(captured.err)
    assert str(missing) in line
    assert captured.out == ""


def test_unknown_model_is_one_error_line_listing_the_registered_ones(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["base", "--model", "resnet9", "--float", "--device", "cpu", "--out", str(out)])
    assert code == 1
    line = _error_line(capsys.readouterr().err)
    assert "'resnet9'" in line
    for name in list_models():
        assert name in line
    assert not out.exists()  # nothing was started


def test_iadi_without_init_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["iadi", "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert "--init" in capsys.readouterr().err


def test_missing_data_folder_is_one_error_line_naming_it(tmp_path, capsys):
    data = tmp_path / "nonexistent" / "dir"
    code = main([*BASE_ARGS, "--out", str(tmp_path / "run"), "--data", str(data)])
    assert code == 1
    line = _error_line(capsys.readouterr().err)
    assert str(data) in line
    assert "does not exist" in line


def test_unknown_phase_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["base", "--out", "x", "--target-savings", "0.5"])  # iadi/ddi only
    assert exc.value.code == 2
    assert "--target-savings" in capsys.readouterr().err


# ------------------------------------------------------------------------------- a real run


@needs_cifar10
def test_base_run_writes_its_folder(base_run):
    for name in ("config.json", "log.jsonl", "last.pt", "final.pt", "metrics.json"):
        assert (base_run / name).is_file(), name
    metrics = json.loads((base_run / "metrics.json").read_text())
    assert metrics["phase"] == "base"
    assert metrics["test"]["images"] == 100
    assert metrics["model"]["name"] == "resnet8"
    assert metrics["model"]["kwargs"]["quant"] is None  # --float
    assert _log_steps(base_run) == [STEPS]
    payload = load_checkpoint(base_run / "final.pt")
    assert payload["phase"] == "base" and payload["train_state"] is None
    assert load_checkpoint(base_run / "last.pt")["train_state"]["step"] == STEPS
    build_model(payload)


@needs_cifar10
def test_eval_writes_json_and_plot(base_run, tmp_path, capsys):
    report, plot = tmp_path / "eval" / "X.json", tmp_path / "X.png"
    argv = ["eval", str(base_run / "final.pt"), "--limit", "100", "--device", "cpu"]
    assert main([*argv, "--out", str(report), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert str(report) in out and "accuracy" in out

    data = json.loads(report.read_text())
    for key in ("accuracy", "compute_savings", "skip_ratio_per_block", "energy_savings"):
        assert key in data, key
    assert data["images"] == 100
    assert 0.0 <= data["accuracy"] <= 1.0
    assert data["compute_savings"] == pytest.approx(0.0, abs=1e-9)  # a plain backbone
    assert data["skip_ratio_per_block"] == [0.0, 0.0, 0.0]  # resnet8: three blocks
    assert data["energy_savings"] == pytest.approx(0.0, abs=1e-9)
    assert data["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Without --out the report goes to stdout as JSON.
    assert main([*argv]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == data["accuracy"]


@needs_cifar10
def test_same_command_again_resumes_without_training_more(base_run, capsys, caplog):
    log_before = (base_run / "log.jsonl").read_text()
    config_before = (base_run / "config.json").read_text()
    caplog.set_level(logging.INFO, logger="train.loop")
    assert main([*BASE_ARGS, "--out", str(base_run)]) == 0
    assert "base done" in capsys.readouterr().out
    assert any("resumed" in r.getMessage() for r in caplog.records)
    assert (base_run / "log.jsonl").read_text() == log_before  # no step past the last one
    assert _log_steps(base_run) == [STEPS]
    assert (base_run / "config.json").read_text() == config_before
    assert load_checkpoint(base_run / "last.pt")["train_state"]["step"] == STEPS
    assert json.loads((base_run / "metrics.json").read_text())["test"]["images"] == 100


@needs_cifar10
def test_a_fresh_run_in_a_recorded_folder_starts_its_log_anew(base_run, tmp_path):
    # a recorded run keeps final.pt but not last.pt: the same command trains again from the
    # start, and its log holds that run's steps only (not the old ones before them)
    run = tmp_path / "base"
    run.mkdir()
    for name in ("config.json", "log.jsonl"):
        (run / name).write_bytes((base_run / name).read_bytes())
    assert _log_steps(run) == [STEPS]
    assert main([*BASE_ARGS, "--out", str(run)]) == 0
    assert _log_steps(run) == [STEPS]


@needs_cifar10
def test_same_folder_with_other_settings_is_refused(base_run, capsys):
    args = [*BASE_ARGS, "--out", str(base_run)]
    args[args.index("--steps") + 1] = str(STEPS + 1)
    assert main(args) == 1
    line = _error_line(capsys.readouterr().err)
    assert str(base_run / "last.pt") in line and "steps" in line
