"""Tests of wire.link over real pseudo-terminals and sockets: every command round-trips, a faulty
line loses nothing and executes nothing twice, damaged frames are NAKed and resent at once,
frames shrink and grow with the line, errors come back typed, and the server survives garbage
and handler bugs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest
import serial

from wire import protocol as P
from wire.errors import (
    CommandError,
    LinkError,
    LinkTimeout,
    ProtocolError,
    RemoteError,
    VersionMismatch,
)
from wire.link import (
    Client,
    FrameSizer,
    Link,
    Server,
    line_time_s,
    measure_round_trip,
    round_trip_s,
    wire_overhead,
)
from wire.ports import FaultyPort, FdPort, open_pty_pair
from wire.protocol import ErrorCode, MessageType

SHA = "ab" * 32
BUNDLE = P.BundleRef("resnet8-w4a4", SHA)
N_BLOCKS = 4


def _records(batch_id: int, first: int, count: int) -> np.ndarray:
    """Results that are a function of the request, so a reply can be checked exactly."""
    records = np.zeros(count, P.results_dtype(N_BLOCKS))
    index = np.arange(first, first + count)
    records["prediction"] = (index + batch_id) % 10
    records["exit_index"] = index % 3 - 1
    records["executed_mask"] = P.pack_executed((index[:, None] + np.arange(N_BLOCKS)) % 2 == 0)
    records["macs"] = index * 1000 + batch_id
    records["channels"] = index[:, None] % 17
    return records


class FakeBoard:
    """A handler that answers every command from the request alone and records what it ran."""

    def __init__(self) -> None:
        self.executed: list[P.Message] = []

    def __call__(self, msg: P.Message) -> P.Message | None:
        self.executed.append(msg)
        if isinstance(msg, P.Hello):
            return P.HelloReply(msg.host_nonce, "fake board", time.monotonic_ns(), BUNDLE)
        if isinstance(msg, P.RunBatch):
            return P.RunDone(msg.batch_id, 1_000, 2_000 + msg.batch_id, msg.repeats * 3)
        if isinstance(msg, P.FetchResults):
            return P.Results(
                msg.batch_id, msg.first_index, _records(msg.batch_id, msg.first_index, msg.count)
            )
        if isinstance(msg, P.Status):
            return P.StatusReply(P.BoardState.READY, 123, BUNDLE, (P.BatchInfo(7, 10, 10),))
        return None  # ACK


@contextlib.contextmanager
def serving(port, handler, **kwargs):
    server = Server(port, **kwargs)
    thread = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=10.0)
        assert not thread.is_alive(), "Server.stop() did not stop serve_forever"


@pytest.fixture
def pty():
    """(board end: the pty master as an FdPort, host end: the slave opened by pyserial)."""
    board, host = open_pty_pair()
    yield board, host
    host.close()
    board.close()


COMMANDS = [
    (P.Hello(host_nonce=99), P.HelloReply),
    (P.LoadBegin("resnet8-w4a4", 1000, SHA), P.Ack),
    (P.LoadChunk(0, bytes(1000)), P.Ack),
    (P.LoadEnd("resnet8-w4a4"), P.Ack),
    (P.SelectBundle("resnet8-w4a4", SHA), P.Ack),
    (P.UploadImages(7, 10, (32, 32, 3), 0, bytes(5 * 3072)), P.Ack),
    (P.RunBatch(7, P.RunMode.DDI, budget_macs=10**6, repeats=2), P.RunDone),
    (P.FetchResults(7, 0, 10), P.Results),
    (P.Status(), P.StatusReply),
    (P.Reset(), P.Ack),
]


def test_commands_cover_every_command_type():
    assert {type(cmd).TYPE for cmd, _ in COMMANDS} == set(P.COMMANDS)


def _round_trip_every_command(host_port, board_port):
    board = FakeBoard()
    with serving(board_port, board):
        client = Client(host_port, reply_timeout_s=2.0)
        for cmd, reply_type in COMMANDS:
            reply = client.request(cmd)
            assert type(reply) is reply_type
            if isinstance(reply, P.Ack):
                assert reply.command == cmd.TYPE
        assert client.request(P.FetchResults(7, 3, 4)) == P.Results(7, 3, _records(7, 3, 4))
        assert client.request(P.Hello(5)).host_nonce == 5
    assert board.executed[: len(COMMANDS)] == [cmd for cmd, _ in COMMANDS]
    assert client.stats.retransmissions == 0


def test_every_command_round_trips_over_a_pty(pty):
    board_port, host_port = pty
    _round_trip_every_command(host_port, board_port)


def test_every_command_round_trips_over_socket_url():
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{listener.getsockname()[1]}"
    host = serial.serial_for_url(url, timeout=0.05)
    conn, _ = listener.accept()
    try:
        _round_trip_every_command(host, FdPort(conn.fileno(), name="tcp"))
    finally:
        host.close()
        conn.close()
        listener.close()


def test_a_big_reply_over_a_slow_looking_line(pty):
    """A RESULTS frame near MAX_PAYLOAD crosses the pty in pieces and still arrives whole."""
    board_port, host_port = pty
    per = P.results_per_frame(N_BLOCKS)
    with serving(board_port, FakeBoard()):
        reply = Client(host_port, reply_timeout_s=5.0).request(P.FetchResults(1, 0, per))
    assert reply == P.Results(1, 0, _records(1, 0, per))
    assert len(reply.encode()) > P.MAX_PAYLOAD - 100


def _key(msg: P.Message) -> tuple:
    return (msg.TYPE, getattr(msg, "batch_id", getattr(msg, "offset_bytes", None)))


def test_faulty_line_every_reply_right_and_nothing_executed_twice(pty):
    board_port, host_port = pty
    faults = {"byte_error_rate": 1e-3, "drop_rate": 3e-4, "duplicate_rate": 3e-4}
    # Stalls of 0.3 s, six times the first reply timeout, every few kilobytes each way.
    host_faulty = FaultyPort(host_port, seed=1, stall_s=0.3, stall_every_bytes=5_000, **faults)
    board_faulty = FaultyPort(board_port, seed=2, stall_s=0.3, stall_every_bytes=3_000, **faults)
    board = FakeBoard()
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    with serving(board_faulty, board) as server:
        client = Client(
            host_faulty,
            reply_timeout_s=0.05,
            backoff=1.5,
            max_timeout_s=0.5,
            retries=40,
            first_seq=2**32 - 5,  # wraps around during the run
        )
        assert client.request(P.Hello(1)).host_nonce == 1
        sent = []
        for i in range(200):
            kind = i % 4
            if kind == 0:
                cmd = P.RunBatch(i, P.RunMode.IADI, repeats=2)
                assert client.request(cmd) == P.RunDone(i, 1_000, 2_000 + i, 6)
            elif kind == 1:
                cmd = P.FetchResults(i, i, 3)
                assert client.request(cmd) == P.Results(i, i, _records(i, i, 3))
            elif kind == 2:
                cmd = P.UploadImages(i, 2, (4, 4, 3), 0, (images + i % 7).tobytes())
                assert client.request(cmd) == P.Ack(MessageType.UPLOAD_IMAGES)
            else:
                cmd = P.LoadChunk(i, bytes([i % 256]) * 40)
                assert client.request(cmd) == P.Ack(MessageType.LOAD_CHUNK)
            sent.append(cmd)
    executed = board.executed[1:]
    assert [_key(m) for m in executed] == [_key(m) for m in sent]  # each once, in order
    assert executed == sent
    # The faults really happened, and were really recovered from.
    assert host_faulty.stats.stalls >= 1 and board_faulty.stats.stalls >= 1
    assert host_faulty.stats.bits_flipped + board_faulty.stats.bits_flipped > 0
    assert host_faulty.stats.bytes_dropped + board_faulty.stats.bytes_dropped > 0
    assert client.stats.retransmissions > 0 and client.stats.naks_received > 0
    assert server.stats.duplicates_answered > 0 and server.stats.naks_sent > 0
    assert server.link.decoder.stats.crc_errors + client.link.decoder.stats.crc_errors > 0


def _raw_request(port, frame: bytes, replies: int = 1, timeout_s: float = 5.0) -> list[P.Frame]:
    """Write raw bytes and collect ``replies`` frames (a host without a Client)."""
    link = Link(port)
    link.send(frame)
    deadline = time.monotonic() + timeout_s
    out = []
    while len(out) < replies and (frame := link.receive(deadline)) is not None:
        out.append(frame)
    return out


def test_a_duplicated_request_is_answered_twice_and_executed_once(pty):
    board_port, host_port = pty
    board = FakeBoard()
    frame = P.encode_message(P.RunBatch(3), seq=77)
    with serving(board_port, board) as server:
        replies = _raw_request(host_port, frame + frame, replies=2)
    assert [r.seq for r in replies] == [77, 77] and replies[0] == replies[1]
    assert P.decode_message(replies[0]) == P.RunDone(3, 1_000, 2_003, 3)
    assert board.executed == [P.RunBatch(3)]
    assert server.stats.duplicates_answered == 1


def test_the_same_seq_with_another_payload_is_a_new_request(pty):
    board_port, host_port = pty
    board = FakeBoard()
    with serving(board_port, board):
        _raw_request(host_port, P.encode_message(P.RunBatch(1), seq=5))
        _raw_request(host_port, P.encode_message(P.RunBatch(2), seq=5))
    assert board.executed == [P.RunBatch(1), P.RunBatch(2)]


def test_stale_and_foreign_frames_are_ignored_by_the_client(pty):
    board_port, host_port = pty
    client = Client(host_port, reply_timeout_s=2.0, first_seq=1000)
    answer = P.StatusReply(P.BoardState.IDLE, 5)

    def board_side():
        link = Link(board_port)
        request = link.receive(time.monotonic() + 5.0)
        noise = [
            P.encode_message(P.StatusReply(P.BoardState.FAULT, 0), 999, flags=P.FLAG_REPLY),
            P.encode_message(P.Status(), request.seq),  # same seq, but not a reply
            b"\x00garbage\xa5\x5a\xa5",
            P.encode_message(answer, request.seq, flags=P.FLAG_REPLY),
        ]
        link.send(b"".join(noise))

    thread = threading.Thread(target=board_side)
    thread.start()
    assert client.request(P.Status()) == answer
    thread.join()
    assert client.stats.stale_replies == 2


def test_a_reply_of_the_wrong_type_is_a_protocol_error(pty):
    board_port, host_port = pty
    client = Client(host_port, reply_timeout_s=2.0, first_seq=10)

    def board_side():
        link = Link(board_port)
        request = link.receive(time.monotonic() + 5.0)
        link.send(P.encode_message(P.Ack(MessageType.RESET), request.seq, flags=P.FLAG_REPLY))

    thread = threading.Thread(target=board_side)
    thread.start()
    with pytest.raises(ProtocolError, match="expected STATUS_REPLY"):
        client.request(P.Status())
    thread.join()


def test_handler_errors_come_back_typed_and_the_server_goes_on(pty):
    board_port, host_port = pty

    def handler(msg):
        if isinstance(msg, P.SelectBundle):
            raise CommandError(ErrorCode.UNKNOWN_BUNDLE, f"no bundle {msg.bundle_id!r} here")
        if isinstance(msg, P.RunBatch):
            raise ZeroDivisionError("division by zero\nin the runtime")
        if isinstance(msg, P.Reset):
            return "not a message"
        if isinstance(msg, P.LoadEnd):
            raise CommandError(999, "a code the protocol does not define")
        if isinstance(msg, P.LoadBegin):
            raise RuntimeError("undecodable \udcff byte")
        return P.StatusReply(P.BoardState.IDLE, 0)

    with serving(board_port, handler):
        client = Client(host_port, reply_timeout_s=2.0)
        with pytest.raises(RemoteError) as info:
            client.request(P.SelectBundle("nope", SHA))
        assert info.value.code is ErrorCode.UNKNOWN_BUNDLE
        assert "no bundle 'nope' here" in str(info.value) and "SELECT_BUNDLE" in str(info.value)
        with pytest.raises(RemoteError) as info:
            client.request(P.RunBatch(1))
        assert info.value.code is ErrorCode.INTERNAL and "ZeroDivisionError" in str(info.value)
        assert "\n" not in str(info.value)
        with pytest.raises(RemoteError, match="INTERNAL"):
            client.request(P.Reset())
        with pytest.raises(RemoteError, match=r"INTERNAL.*unknown code 999"):
            client.request(P.LoadEnd("b"))
        with pytest.raises(RemoteError, match=r"INTERNAL: RuntimeError: undecodable \? byte"):
            client.request(P.LoadBegin("b", 1, SHA))
        with pytest.raises(VersionMismatch, match="host speaks protocol version 3, board 2"):
            client.request(P.Hello(1, protocol_version=3))
        assert client.request(P.Status()) == P.StatusReply(P.BoardState.IDLE, 0)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (P.encode_frame(0x55, 1, b""), ErrorCode.UNKNOWN_COMMAND),
        (P.encode_frame(MessageType.STATUS, 2, b"\x01"), ErrorCode.MALFORMED),
        (P.encode_frame(MessageType.RUN_BATCH, 3, b"\x01\x02"), ErrorCode.MALFORMED),
        (P.encode_frame(MessageType.STATUS, 4, b"", version=1), ErrorCode.VERSION_MISMATCH),
        (P.encode_message(P.StatusReply(0, 0), 5), ErrorCode.UNKNOWN_COMMAND),
    ],
)
def test_bad_frames_are_answered_with_error_codes(pty, frame, code):
    board_port, host_port = pty
    board = FakeBoard()
    with serving(board_port, board):
        (reply,) = _raw_request(host_port, frame)
    error = P.decode_message(reply)
    assert isinstance(error, P.ErrorReply) and error.code is code
    assert error.command == frame[3] and board.executed == []


def test_server_survives_garbage(pty):
    board_port, host_port = pty
    noise = np.random.default_rng(3).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    noise += P.encode_frame(1, 1, bytes(4000))[:30]  # a header whose payload never comes
    board = FakeBoard()
    with serving(board_port, board) as server:
        host_port.write(noise)
        client = Client(host_port, reply_timeout_s=0.3, retries=10)
        assert client.request(P.Status()).state is P.BoardState.READY
    assert server.link.decoder.stats.bytes_discarded > 40_000
    assert board.executed == [P.Status()]


def test_link_timeout_names_port_and_command(pty):
    _, host_port = pty  # nobody serves the board end
    client = Client(host_port, reply_timeout_s=0.05, retries=2, backoff=2.0)
    started = time.monotonic()
    with pytest.raises(LinkTimeout) as info:
        client.request(P.RunBatch(1))
    message = str(info.value)
    assert host_port.port in message and "RUN_BATCH" in message and "3 failed tries" in message
    assert "\n" not in message and time.monotonic() - started < 5.0
    assert client.stats.retransmissions == 2


def test_serve_forever_stops_from_another_thread(pty):
    board_port, _ = pty
    server = Server(board_port)
    thread = threading.Thread(target=server.serve_forever, args=(FakeBoard(),))
    thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    server.stop()
    thread.join(timeout=5.0)
    assert not thread.is_alive() and time.monotonic() - started < 2.0
    assert server.serve_one(FakeBoard(), timeout_s=0.05) is False  # nothing came


def test_a_closed_peer_is_a_link_error():
    board_port, host_port = open_pty_pair()
    host_port.close()
    try:
        with pytest.raises(LinkError, match="cannot read"):
            Server(board_port).serve_one(FakeBoard(), timeout_s=1.0)
    finally:
        board_port.close()


def test_faulty_port_is_reproducible():
    def damaged(seed):
        board, host = open_pty_pair()
        try:
            port = FaultyPort(FdPort(board.fd), seed=seed, byte_error_rate=0.05, drop_rate=0.05)
            host.write(bytes(range(256)) * 4)
            out = b""
            deadline = time.monotonic() + 5.0
            while port.stats.bytes_read < 1024 and time.monotonic() < deadline:
                port.timeout = 0.05
                out += port.read(1024)
            return out
        finally:
            host.close()
            board.close()

    assert damaged(7) == damaged(7) != damaged(8)
    with pytest.raises(ValueError, match="probability"):
        FaultyPort(None, drop_rate=2.0)


# ----------------------------------------------------------------------------------------------
# The numbers the benchmark reports


def test_wire_overhead_is_within_three_percent():
    cost = wire_overhead(10_000, max_payload=16 * 1024)  # CIFAR-10's test set, 16 KiB frames
    data = 16 * 1024 - P.UPLOAD_HEADER_BYTES
    assert cost.frames == -(-30_720_000 // data) and cost.payload_bytes == 30_720_000
    assert cost.host_to_board_bytes == 30_720_000 + cost.frames * (19 + P.UPLOAD_HEADER_BYTES)
    assert cost.board_to_host_bytes == cost.frames * (19 + 1)
    assert cost.overhead_fraction <= 0.004
    small = wire_overhead(10, max_payload=256)  # the smallest frames a FrameSizer makes
    assert small.wire_bytes_per_payload_byte == pytest.approx(
        (small.frames * (19 + 18 + 20) + 30_720) / 30_720
    )
    assert line_time_s(3072, 115200) == pytest.approx(0.2667, abs=1e-4)
    assert line_time_s(3072, 921600) == pytest.approx(0.0333, abs=1e-4)


def test_frame_sizer_halves_on_failure_and_grows_back():
    sizer = FrameSizer(16384, start=4096)
    for _ in range(10):
        sizer.failure()
    assert sizer.payload == sizer.smallest == 256
    for _ in range(200):
        sizer.success()
    assert sizer.payload == 16384
    sizer.limit(2048)
    assert sizer.payload == 2048 == sizer.max_payload
    with pytest.raises(ValueError, match="min_payload"):
        FrameSizer(100, min_payload=256)


def test_a_damaged_request_is_naked_and_resent_at_once(pty):
    """One flipped payload bit: the board NAKs, the client resends, no timeout is waited for."""
    board_port, host_port = pty
    board = FakeBoard()
    with serving(board_port, board) as server:
        client = Client(host_port, reply_timeout_s=5.0)  # a timeout would take 5 s
        started = time.monotonic()
        original = client.link.send
        calls = []

        def flip_first(data):
            calls.append(len(data))
            if len(calls) == 1:
                data = bytearray(data)
                data[40] ^= 0x10
            original(bytes(data))

        client.link.send = flip_first
        assert client.request(P.LoadChunk(0, bytes(500))) == P.Ack(MessageType.LOAD_CHUNK)
        assert time.monotonic() - started < 1.0
    assert server.stats.naks_sent == 1 and client.stats.naks_received == 1
    assert client.stats.retransmissions == 1 and client.stats.timeouts == 0
    assert board.executed == [P.LoadChunk(0, bytes(500))]


def test_a_damaged_reply_is_naked_and_resent_from_the_cache(pty):
    board_port, host_port = pty
    board = FakeBoard()
    server = Server(board_port)
    original = server.link.send
    sent = []

    def flip_first_reply(data):
        sent.append(data)
        if len(sent) == 1:
            data = bytearray(data)
            data[-3] ^= 0x01  # the payload CRC
        original(bytes(data))

    server.link.send = flip_first_reply
    thread = threading.Thread(target=server.serve_forever, args=(board,), daemon=True)
    thread.start()
    try:
        client = Client(host_port, reply_timeout_s=5.0)
        started = time.monotonic()
        assert client.request(P.FetchResults(1, 0, 5)) == P.Results(1, 0, _records(1, 0, 5))
        assert time.monotonic() - started < 1.0
    finally:
        server.stop()
        thread.join(timeout=5.0)
    assert client.stats.naks_sent == 1 and server.stats.replies_resent == 1
    assert board.executed == [P.FetchResults(1, 0, 5)]  # resent, not executed again


def test_a_dropped_byte_costs_the_short_gap_not_a_timeout(pty):
    board_port, host_port = pty
    board = FakeBoard()
    with serving(board_port, board) as server:
        client = Client(host_port, reply_timeout_s=5.0)
        original = client.link.send
        calls = []

        def drop_one(data):
            calls.append(len(data))
            original(data[:100] + data[101:] if len(calls) == 1 else data)

        client.link.send = drop_one
        started = time.monotonic()
        assert client.request(P.LoadChunk(0, bytes(1000))) == P.Ack(MessageType.LOAD_CHUNK)
        assert time.monotonic() - started < 1.0
    assert server.stats.idle_flushes >= 1 and server.stats.naks_sent == 1


def test_sized_requests_shrink_on_a_bad_line_and_grow_on_a_clean_one(pty):
    board_port, host_port = pty
    got = bytearray(60 * 3072)

    def store(msg):
        if isinstance(msg, P.UploadImages):
            got[msg.offset_bytes : msg.offset_bytes + len(msg.data)] = msg.data

    images = np.random.default_rng(5).integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    bad = FaultyPort(board_port, seed=3, byte_error_rate=2e-3)
    with serving(bad, store):
        client = Client(host_port)
        for _ in range(3):  # once over the bad line, then twice over the healed one
            offset = 0
            while offset < images.nbytes:
                sent, _ = client.request_sized(
                    lambda size, at=offset: P.upload_chunk(1, images, at, size)
                )
                offset += len(sent.data)
            assert bytes(got) == images.tobytes()
            if bad.byte_error_rate:
                assert client.sizer.smallest <= 512 and client.stats.resized > 0
                bad.byte_error_rate = 0.0
    assert client.sizer.payload == client.sizer.max_payload  # grown back to 16 KiB


def test_a_board_of_another_version_is_refused_in_one_line(pty):
    board_port, host_port = pty

    def old_board():
        link = Link(board_port)
        request = link.receive(time.monotonic() + 5.0)
        error = P.ErrorReply(ErrorCode.VERSION_MISMATCH, "frame of protocol version 2; board 1")
        link.send(P.encode_frame(0xFF, request.seq, error.encode(), flags=1, version=1))

    thread = threading.Thread(target=old_board)
    thread.start()
    with pytest.raises(VersionMismatch) as info:
        Client(host_port).request(P.Hello(1))
    thread.join()
    assert "version 1, this side 2" in str(info.value) and "\n" not in str(info.value)


def test_round_trip_latency(pty):
    board_port, host_port = pty
    seconds = measure_round_trip(host_port, board_port, trips=50)
    assert 0.0 < seconds < 0.5
    with serving(board_port, FakeBoard()):
        assert 0.0 < round_trip_s(Client(host_port, reply_timeout_s=2.0), trips=10) < 0.5


def test_link_over_loop_url_and_a_lone_client_times_out():
    port = serial.serial_for_url("loop://", baudrate=921600)
    try:
        link = Link(port)
        frame = P.encode_message(P.FetchResults(1, 2, 3), seq=9)
        link.send(b"noise" + frame)
        got = link.receive(time.monotonic() + 2.0)
        assert got is not None and P.decode_message(got) == P.FetchResults(1, 2, 3)
        # A client on loop:// hears its own request, which is not a reply: it must not take it.
        client = Client(port, reply_timeout_s=0.05, retries=1)
        with pytest.raises(LinkTimeout, match="loop://"):
            client.request(P.Status())
        assert client.stats.stale_replies == 2
    finally:
        port.close()
