"""Tests of the board runtime (fpga.board.runtime, fpga.board.store) driven by the host's
BoardClient (host.board) over real pseudo-terminals: every command round-trips, results equal
the executor's on the same images, bad archives and oversized uploads are refused, and a
refused load leaves nothing in the store."""

from __future__ import annotations

import contextlib
import io
import math
import os
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from export.archive import archive_sha256, pack_bundle
from export.executor import BundleExecutor
from export.manifest import load_bundle
from fpga.board.runtime import BoardRuntime, BoardRuntimeError, RuntimeConfig
from host.board import (
    BoardClient,
    BoardPortError,
    BoardSilentError,
    BoardVersionError,
    bundle_ref,
)
from wire import protocol as P
from wire.errors import BoardError, RemoteError
from wire.link import Client, Link, Server
from wire.ports import open_pty_pair
from wire.protocol import ErrorCode, RunMode

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "measurements" / "train" / "resnet8-w4a4" / "iadi-60" / "final.pt"
"""ResNet-8 W4A4 with MGL2S gates at 60% compute savings (a recorded training run)."""


def shared_bundle(tmp_path_factory) -> Path:
    """The bundle of TRAINED, exported once per test session (shared by the fpga tests)."""
    path = tmp_path_factory.getbasetemp() / "fpga-bundles" / "r8-iadi60"
    if not path.is_dir():
        import torch

        from export.bundle import export_bundle

        torch.set_num_threads(1)
        export_bundle(TRAINED, path, progress=False)
    return path


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_bundle(tmp_path_factory)


@pytest.fixture(scope="session")
def reference(bundle_dir) -> BundleExecutor:
    return BundleExecutor(load_bundle(bundle_dir), threads=1)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@contextlib.contextmanager
def board(store: Path, **config):
    """A BoardRuntime served on a pty; yields (runtime, path of the host's end)."""
    board_end, host_end = open_pty_pair()
    runtime = BoardRuntime(RuntimeConfig(store_dir=store, threads=1, **config))
    server = Server(board_end)
    thread = threading.Thread(target=server.serve_forever, args=(runtime,), daemon=True)
    thread.start()
    try:
        yield runtime, host_end.port
    finally:
        server.stop()
        thread.join(timeout=10.0)
        runtime.close()
        board_end.close()
        host_end.close()


def _code(info: pytest.ExceptionInfo) -> int:
    assert "\n" not in str(info.value)
    return info.value.code


def _check_records(records: np.ndarray, expected) -> None:
    assert np.array_equal(records["prediction"], expected.predictions)
    assert np.array_equal(records["exit_index"], expected.exits)
    assert np.array_equal(P.unpack_executed(records), expected.executed)
    assert np.array_equal(records["channels"], expected.channels)
    assert np.array_equal(records["macs"], expected.macs)


# -- the whole session --------------------------------------------------------------------------


def test_every_command_round_trips(bundle_dir, reference, tmp_path):
    store = tmp_path / "store"
    images = _images(24)
    ref = bundle_ref(bundle_dir)
    chunks = math.ceil(len(pack_bundle(bundle_dir)) / 16384)  # at least, in frames sized to line
    assert chunks > 1
    with board(store) as (runtime, port), BoardClient(port, timeout_s=5.0) as client:
        hello = client.hello()
        assert hello.bundle is None and hello.identity.startswith("ddi-fpga runtime on")
        assert hello.backend == "cpu"  # onnxruntime on the ARM, as configured
        assert hello.host_send_s * 1e9 <= hello.board_clock_ns <= hello.host_receive_s * 1e9
        assert client.status().state == P.BoardState.IDLE

        sent = client.client.stats.frames_sent
        assert client.ensure_bundle(bundle_dir, progress=False) == ref  # LOAD: not stored yet
        assert client.client.stats.frames_sent - sent >= 1 + 1 + chunks + 1 + 1  # +SELECT, STATUS
        assert runtime.store.ids() == [ref.sha256]
        assert sorted(os.listdir(store)) == [ref.sha256]  # no temporary left
        assert client.hello().bundle == ref

        assert client.upload(7, images) >= math.ceil(images.nbytes / 16384)
        for mode in ("iadi", "full"):
            start_ns, end_ns = client.run(7, mode)
            assert 0 < start_ns <= end_ns
            records = client.fetch(7, len(images))
            _check_records(records, reference.run(images, mode))
        part = client.fetch(7, 5, first_index=10)
        assert np.array_equal(part, records[10:15])

        status = client.status()
        assert status.state == P.BoardState.READY and status.bundle == ref
        assert status.batches == (P.BatchInfo(7, 24, 24),)
        assert status.free_memory_bytes == runtime.config.max_image_bytes - images.nbytes

        client.reset()
        status = client.status()
        assert status.batches == () and status.bundle == ref  # bundles survive RESET
        with pytest.raises(RemoteError) as info:
            client.fetch(7, 1)
        assert _code(info) == ErrorCode.UNKNOWN_BATCH

    # a restarted board keeps its bundles: the host SELECTs, nothing is loaded again
    with board(store) as (runtime, port), BoardClient(port, timeout_s=5.0) as client:
        assert client.hello().bundle is None
        sent = client.client.stats.frames_sent
        assert client.ensure_bundle(bundle_dir, progress=False) == ref
        assert client.client.stats.frames_sent - sent == 2  # SELECT_BUNDLE, STATUS
        client.upload(1, images[:6])
        client.run(1, RunMode.IADI, repeats=3)
        _check_records(client.fetch(1, 6), reference.run(images[:6], "iadi"))


# -- loading ------------------------------------------------------------------------------------


def _flip_inside(archive: bytes, member_name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        offset = tar.getmember(member_name).offset_data
    data = bytearray(archive)
    data[offset + 100] ^= 0x01
    return bytes(data)


def _with_extra_member(archive: bytes, name: str) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for member in src:
            dst.addfile(member, src.extractfile(member))
        info = tarfile.TarInfo(name)
        info.size = 4
        dst.addfile(info, io.BytesIO(b"evil"))
    return out.getvalue()


def _send_load(client: Client, bundle_id: str, archive: bytes, sha: str | None = None) -> None:
    client.request(P.LoadBegin(bundle_id, len(archive), sha or archive_sha256(archive)))
    for offset in range(0, len(archive), P.MAX_CHUNK_BYTES):
        client.request(P.LoadChunk(offset, archive[offset : offset + P.MAX_CHUNK_BYTES]))
    client.request(P.LoadEnd(bundle_id))


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        ("file-byte", ErrorCode.BUNDLE_HASH_MISMATCH),  # archive fine, a graph file tampered
        ("manifest-byte", ErrorCode.BUNDLE_HASH_MISMATCH),  # LOAD_BEGIN's sha256 is of the original
        ("extra-member", ErrorCode.MALFORMED),  # '../evil' would escape the store
        ("not-a-tar", ErrorCode.MALFORMED),
        ("wrong-id", ErrorCode.BUNDLE_HASH_MISMATCH),  # the archive holds another bundle
    ],
)
def test_tampered_archive_is_refused_and_leaves_nothing(bundle_dir, tmp_path, damage, code):
    archive = pack_bundle(bundle_dir)
    bundle = load_bundle(bundle_dir)
    bundle_id, sha = bundle.bundle_id, None
    if damage == "file-byte":
        archive = _flip_inside(archive, "block1.onnx")
    elif damage == "manifest-byte":
        sha = archive_sha256(archive)
        archive = _flip_inside(archive, "manifest.json")
    elif damage == "extra-member":
        archive = _with_extra_member(archive, "../evil")
    elif damage == "not-a-tar":
        archive = b"\x7fELF" + bytes(2000)
    elif damage == "wrong-id":
        bundle_id = "resnet8-other"
    store = tmp_path / "store"
    with board(store) as (_runtime, port), BoardClient(port, timeout_s=5.0) as client:
        with pytest.raises(RemoteError) as info:
            _send_load(client.client, bundle_id, archive, sha)
        assert _code(info) == code
        assert info.value.command == "LOAD_END"
        assert os.listdir(store) == []  # nothing half-written, no temporary left
        assert client.status().state == P.BoardState.IDLE and client.status().bundle is None


def test_load_commands_out_of_order_are_refused(bundle_dir, tmp_path):
    archive = pack_bundle(bundle_dir)
    bundle_id = load_bundle(bundle_dir).bundle_id
    store = tmp_path / "store"
    with board(store) as (_runtime, port), BoardClient(port, timeout_s=5.0) as board_client:
        client = board_client.client
        with pytest.raises(RemoteError) as info:
            client.request(P.LoadChunk(0, archive[:100]))
        assert _code(info) == ErrorCode.BAD_STATE
        client.request(P.LoadBegin(bundle_id, len(archive), archive_sha256(archive)))
        assert board_client.status().state == P.BoardState.LOADING
        with pytest.raises(RemoteError) as info:
            client.request(P.LoadChunk(100, archive[100:200]))  # not the next byte
        assert _code(info) == ErrorCode.LOAD_OUT_OF_ORDER
        client.request(P.LoadChunk(0, archive[:100]))
        with pytest.raises(RemoteError) as info:
            client.request(P.LoadEnd(bundle_id))  # 100 bytes of many
        assert _code(info) == ErrorCode.LOAD_OUT_OF_ORDER
        assert os.listdir(store) == []
        client.request(P.LoadBegin(bundle_id, len(archive), archive_sha256(archive)))
        client.request(P.LoadChunk(0, archive[:100]))
        board_client.reset()  # drops the load in progress
        assert os.listdir(store) == [] and board_client.status().state == P.BoardState.IDLE
        with pytest.raises(RemoteError) as info:
            client.request(P.LoadBegin(bundle_id, 1 << 30, archive_sha256(archive)))
        assert _code(info) == ErrorCode.NO_MEMORY  # above max_bundle_bytes


# -- images and runs ----------------------------------------------------------------------------


def test_upload_over_the_memory_bound_is_refused(bundle_dir, tmp_path):
    images = _images(12)
    small = board(tmp_path / "store", max_image_bytes=10 * 3072)
    with small as (_runtime, port), BoardClient(port, timeout_s=5.0) as client:
        client.upload(1, images[:8])
        with pytest.raises(RemoteError) as info:
            client.upload(2, images[:3])
        assert _code(info) == ErrorCode.NO_MEMORY
        assert "RESET" in info.value.remote_message
        status = client.status()
        assert status.batches == (P.BatchInfo(1, 8, 8),)
        assert status.free_memory_bytes == 2 * 3072
        client.upload(2, images[:2])  # what fits is still accepted
        client.reset()
        client.upload(3, images[:10])


def test_commands_in_the_wrong_state_are_refused(bundle_dir, tmp_path):
    images = _images(6)
    ref = bundle_ref(bundle_dir)
    with board(tmp_path / "store") as (_runtime, port), BoardClient(port, timeout_s=5.0) as client:
        client.upload(1, images)
        refusals = [
            (lambda: client.run(1, "iadi"), ErrorCode.BAD_STATE),  # no bundle
            (lambda: client.client.request(P.SelectBundle(ref.bundle_id, ref.sha256)), 5),
        ]
        for call, code in refusals:
            with pytest.raises(RemoteError) as info:
                call()
            assert _code(info) == code
        client.ensure_bundle(bundle_dir, progress=False)
        shape = images.shape[1:]
        client.client.request(P.UploadImages(2, 4, shape, 0, images[:2].tobytes()))  # half of 2
        refusals = [
            (lambda: client.run(9, "iadi"), ErrorCode.UNKNOWN_BATCH),
            (lambda: client.run(2, "iadi"), ErrorCode.BAD_RANGE),  # not all uploaded
            (lambda: client.fetch(1, 6), ErrorCode.BAD_RANGE),  # not run yet
            (lambda: client.run(1, "ddi", 5_000_000), ErrorCode.UNSUPPORTED),  # no exits
            (lambda: client.run(1, "iadi", 5_000_000), ErrorCode.UNSUPPORTED),  # budget: DDI only
            (lambda: client.client.request(P.UploadImages(1, 7, shape, 0, b"x")), 9),  # resized
            (lambda: client.client.request(P.UploadImages(2, 4, shape, 3 * 3072, b"x")), 9),  # gap
        ]
        for call, code in refusals:
            with pytest.raises(RemoteError) as info:
                call()
            assert _code(info) == code, info.value
        client.run(1, "full")
        with pytest.raises(RemoteError) as info:
            client.client.request(P.FetchResults(1, 4, 3))  # past the batch
        assert _code(info) == ErrorCode.BAD_RANGE


# -- archives, backends, client errors ----------------------------------------------------------


def test_finn_backend_without_pynq_is_one_line(bundle_dir, tmp_path):
    from fpga.board.runtime import make_backend

    config = RuntimeConfig(store_dir=tmp_path, backend="finn", overlays=[tmp_path])
    with pytest.raises(BoardRuntimeError) as info:
        make_backend(config, load_bundle(bundle_dir))
    assert str(info.value) == (
        "the finn backend needs the pynq package, which exists only on a PYNQ board image; "
        "run with --backend cpu here"
    )
    with pytest.raises(BoardRuntimeError, match="backend 'gpu' is unknown"):
        RuntimeConfig(store_dir=Path("unused"), backend="gpu")


def test_client_port_errors_are_one_line(tmp_path):
    with pytest.raises(BoardPortError) as info:
        BoardClient("/dev/ttyNOSUCHBOARD0")
    assert str(info.value) == (
        "board port '/dev/ttyNOSUCHBOARD0' does not exist; check the cable and the name "
        "(ls /dev/tty*)"
    )
    board_end, host_end = open_pty_pair()
    try:
        with BoardClient(host_end.port, timeout_s=0.2, retries=0) as client:
            with pytest.raises(BoardPortError, match="is busy"):
                BoardClient(host_end.port)
            with pytest.raises(BoardSilentError) as info:
                client.hello()  # nobody serves the pty
            assert "no HELLO reply" in str(info.value) and host_end.port in str(info.value)
            assert isinstance(info.value, BoardError)
    finally:
        board_end.close()
        host_end.close()


@pytest.mark.parametrize("old", ["frame", "hello"])
def test_a_board_of_another_protocol_version_is_refused_in_one_line(old):
    """A version-1 board answers in a version-1 frame; a version-3 board with VERSION_MISMATCH."""
    board_end, host_end = open_pty_pair()

    def other_board():
        link = Link(board_end)
        request = link.receive(time.monotonic() + 5.0)
        if old == "frame":
            error = P.ErrorReply(ErrorCode.VERSION_MISMATCH, "frame of protocol version 2")
            link.send(P.encode_frame(0xFF, request.seq, error.encode(), flags=1, version=1))
        else:
            error = P.ErrorReply(
                ErrorCode.VERSION_MISMATCH, "host speaks protocol version 2, board 3"
            )
            link.send(P.encode_message(error, request.seq, flags=P.FLAG_REPLY))

    thread = threading.Thread(target=other_board)
    thread.start()
    try:
        with BoardClient(host_end.port) as client, pytest.raises(BoardVersionError) as info:
            client.hello()
    finally:
        thread.join()
        board_end.close()
        host_end.close()
    text = str(info.value)
    assert "\n" not in text and host_end.port in text and "protocol 2" in text
    assert ("version 1, this side 2" if old == "frame" else "board 3") in text


def test_serve_cli_reports_a_missing_port_in_one_line(tmp_path, capsys):
    from fpga.board.__main__ import main

    argv = ["serve", "--port", "/dev/ttyNOSUCHPORT9", "--store", str(tmp_path / "s")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: serial port '/dev/ttyNOSUCHPORT9' does not exist; check the device name "
        "(ls /dev/tty*) and docs/board.md"
    )


def test_executor_batch_is_the_runtimes_and_refused_when_not_a_count(bundle_dir, tmp_path):
    """``--executor-batch`` sets how many images the board's executor takes through the network
    together: a run of 20 images in batches of 7 calls each graph 3 times and answers as one
    batch does; a batch that is not a count of images is refused in one line."""
    runtime = BoardRuntime(RuntimeConfig(store_dir=tmp_path, threads=1, executor_batch=7))
    executor = runtime._make_executor(load_bundle(bundle_dir))
    assert executor.batch_size == 7
    stem_calls = []
    run = executor.backend.run

    def counted(graph, inputs):
        if graph.name == executor.manifest.stem:
            stem_calls.append(len(inputs[0]))
        return run(graph, inputs)

    executor.backend.run = counted
    images = _images(20)
    result = executor.run(images, mode="full")
    assert stem_calls == [7, 7, 6]
    whole = executor.run(images, mode="full", batch_size=256)  # told otherwise: one batch
    assert stem_calls == [7, 7, 6, 20]
    assert np.array_equal(result.predictions, whole.predictions)
    assert np.array_equal(result.macs, whole.macs)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(BoardRuntimeError, match="executor_batch=") as info:
            RuntimeConfig(store_dir=tmp_path, executor_batch=bad)
        assert "\n" not in str(info.value)
