"""Tests of wire.frame and wire.protocol: every message round-trips, layouts come from the field
tables, the frame decoder resynchronises after garbage with bounded memory and reports damaged
frames, malformed payloads raise ProtocolError and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire import protocol as P
from wire.errors import BoardError, ProtocolError, UnknownMessageType, VersionMismatch
from wire.protocol import (
    FRAME_OVERHEAD_BYTES,
    MAX_FRAME_BYTES,
    MAX_PAYLOAD,
    MESSAGE_CLASSES,
    SYNC,
    BoardState,
    Frame,
    FrameDecoder,
    MessageType,
    encode_frame,
)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every run: deterministic
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SHA = "0123456789abcdef" * 4
BUNDLE = P.BundleRef("resnet8-w4a4", SHA)


def _records(n: int, n_blocks: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    records = np.zeros(n, dtype=P.results_dtype(n_blocks))
    records["prediction"] = rng.integers(0, 10, n)
    records["exit_index"] = rng.integers(-1, 3, n)
    executed = rng.random((n, n_blocks)) < 0.6
    records["executed_mask"] = P.pack_executed(executed)
    records["channels"] = rng.integers(0, 65, (n, n_blocks)) * executed
    records["macs"] = rng.integers(0, 2**40, n, dtype=np.uint64)
    return records


EXAMPLES = [
    P.Hello(host_nonce=2**64 - 1),
    P.HelloReply(7, "zedboard xc7z020 / emulated", 123_456_789, BUNDLE, 32768, backend="finn"),
    P.HelloReply(0, "", -5, None),
    P.HelloReply(1, "zedboard", 0, None, backend="finn"),
    P.HelloReply(1, "a PC", 0, None, backend="cpu"),
    P.LoadBegin("resnet8-w4a4", 10_000_000, SHA.upper()),
    P.LoadChunk(4096, bytes(range(256)) * 3),
    P.LoadEnd("resnet8-w4a4"),
    P.SelectBundle("résnet-74 ✓", SHA),
    P.UploadImages(3, 100, (32, 32, 3), 3072 * 10 + 5, bytes(range(256)) * 9),
    P.UploadImages(4, 1, (5, 7, 1), 0, b"\x09" * 35),
    P.RunBatch(3, P.RunMode.IADI, budget_macs=2**64 - 1, repeats=5),
    P.RunBatch(3),
    P.RunDone(3, -10, 2**62, 500),
    P.FetchResults(3, 10, 50),
    P.Results(3, 10, _records(50, 36)),
    P.Results(3, 0, _records(3, 128)),
    P.Results(3, 0, _records(0, 0)),
    P.Status(),
    P.StatusReply(BoardState.READY, 2**40, BUNDLE, (P.BatchInfo(3, 100, 12), P.BatchInfo(4, 1, 1))),
    P.StatusReply(BoardState.IDLE, 0),
    P.Reset(),
    P.Nak(),
    P.Ack(MessageType.UPLOAD_IMAGES),
    P.ErrorReply(P.ErrorCode.BUNDLE_HASH_MISMATCH, "sha256 differs", MessageType.LOAD_END),
    P.ErrorReply(999, "a code from a newer board"),
]


def test_examples_cover_every_message_type():
    assert {type(m).TYPE for m in EXAMPLES} == set(MessageType) == set(MESSAGE_CLASSES)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_message_round_trip(msg):
    payload = msg.encode()
    assert len(payload) <= MAX_PAYLOAD
    assert type(msg).decode(payload) == msg
    frames = FrameDecoder().feed(P.encode_message(msg, seq=41, flags=P.FLAG_REPLY))
    assert len(frames) == 1 and frames[0].seq == 41 and frames[0].is_reply
    decoded = P.decode_message(frames[0])
    assert decoded == msg and type(decoded) is type(msg)


def test_fields_are_normalised_and_typed():
    assert P.LoadBegin("b", 1, SHA.upper()).sha256 == SHA
    run = P.RunBatch.decode(P.RunBatch(1, 2).encode())
    assert run.mode is P.RunMode.DDI
    reply = P.decode_message(FrameDecoder().feed(P.encode_message(EXAMPLES[-2], 1))[0])
    assert reply.code is P.ErrorCode.BUNDLE_HASH_MISMATCH and reply.command == MessageType.LOAD_END
    assert P.ErrorReply(999, "x").code == 999  # unknown codes of a newer board stay ints


@pytest.mark.parametrize(
    "build",
    [
        lambda: P.Hello(-1),
        lambda: P.HelloReply(1, "zedboard", 0, None, backend="fpga"),
        lambda: P.Hello(True),
        lambda: P.LoadBegin("b", 0, SHA),
        lambda: P.LoadBegin("b", 10, "12ab"),
        lambda: P.LoadBegin("", 10, SHA),
        lambda: P.LoadBegin("bad\nid", 10, SHA),
        lambda: P.LoadBegin("x" * 65, 10, SHA),
        lambda: P.LoadChunk(0, b""),
        lambda: P.LoadChunk(0, bytes(P.MAX_CHUNK_BYTES + 1)),
        lambda: P.UploadImages(1, 2, (4, 4, 3), 90, bytes(7)),  # beyond the batch
        lambda: P.UploadImages(1, 2, (4, 4, 3), 0, b""),
        lambda: P.UploadImages(1, 2, (4, 4), 0, b"x"),
        lambda: P.UploadImages(1, 2, (4, 0, 3), 0, b"x"),
        lambda: P.UploadImages(1, 0, (4, 4, 3), 0, b"x"),
        lambda: P.UploadImages(1, 2**20, (1024, 1024, 3), 0, b"x"),  # > 4 GiB
        lambda: P.UploadImages(1, 99, (32, 32, 3), 0, bytes(P.MAX_UPLOAD_DATA + 1)),
        lambda: P.HelloReply(1, "board", 0, backend=""),
        lambda: P.RunBatch(1, mode=7),
        lambda: P.RunBatch(1, repeats=0),
        lambda: P.RunDone(1, 10, 9, 1),
        lambda: P.FetchResults(1, 0, 0),
        lambda: P.Results(1, 0, np.zeros(3, np.uint8)),
        lambda: P.Results(1, 0, np.zeros(10_000, P.results_dtype(8))),
        lambda: P.StatusReply(9, 0),
        lambda: P.StatusReply(0, 0, batches=[P.BatchInfo(1, 1, 1)] * 257),
        lambda: P.BatchInfo(1, 2, 3),
        lambda: P.Ack(MessageType.ACK),
        lambda: P.Ack(MessageType.NAK),
        lambda: P.ErrorReply(1, "x" * 1025),
        lambda: P.results_dtype(129),
    ],
)
def test_out_of_range_fields_are_refused(build):
    with pytest.raises(ProtocolError) as info:
        build()
    assert "\n" not in str(info.value)


def test_results_records_and_masks():
    dtype = P.results_dtype(36)
    assert dtype.itemsize == 26 + 2 * 36
    executed = np.random.default_rng(0).random((5, 36)) < 0.5
    records = np.zeros(5, dtype)
    records["executed_mask"] = P.pack_executed(executed)
    np.testing.assert_array_equal(P.unpack_executed(records), executed)
    per = P.results_per_frame(36)
    assert len(P.Results(0, 0, np.zeros(per, dtype)).encode()) <= MAX_PAYLOAD
    with pytest.raises(ProtocolError):
        P.Results(0, 0, np.zeros(per + 1, dtype))
    bad = np.zeros(1, P.results_dtype(4))
    bad["executed_mask"][0, 0] = 0x10  # block 4 of a 4-block network
    with pytest.raises(ProtocolError, match="beyond block 4"):
        P.Results(0, 0, bad)
    requests = P.fetch_messages(9, 10_000, 36, first_index=5)
    assert sum(r.count for r in requests) == 10_000 and requests[0].first_index == 5
    assert all(r.count <= per for r in requests)
    small = P.fetch_messages(9, 100, 36, max_payload=1024)
    assert all(len(P.Results(9, 0, np.zeros(r.count, dtype)).encode()) <= 1024 for r in small)
    assert sum(r.count for r in small) == 100


def test_upload_messages_split_at_any_byte_within_the_limit():
    images = np.random.default_rng(0).integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    for max_payload in (256, 3200, 16 * 1024, MAX_PAYLOAD):
        msgs = P.upload_messages(5, images, max_payload=max_payload)
        assert all(len(m.encode()) <= max_payload for m in msgs)
        assert all(m.batch_size == 23 and m.image_shape == (32, 32, 3) for m in msgs)
        assert b"".join(m.data for m in msgs) == images.tobytes()
        assert [m.offset_bytes for m in msgs] == list(
            np.cumsum([0] + [len(m.data) for m in msgs])[:-1]
        )
    chunk = P.upload_chunk(5, images, 1000, 300)
    assert chunk.offset_bytes == 1000 and chunk.data == images.tobytes()[1000:1282]
    with pytest.raises(ProtocolError, match="uint8"):
        P.upload_messages(5, images.astype(np.float32))
    with pytest.raises(ProtocolError, match="holds no"):
        P.upload_chunk(5, images, 0, P.UPLOAD_HEADER_BYTES)


def test_layouts_come_from_the_field_tables():
    """Each layout is declared once: the table packs, unpacks and writes the docstring line."""
    for cls in MESSAGE_CLASSES.values():
        assert f"Layout: ``{cls.layout()}``" in cls.__doc__
    layouts = P.layouts()
    assert layouts["HELLO"] == "protocol_version u8 | host_nonce u64"
    assert "backend text8 (<= 32 B)" in layouts["HELLO_REPLY"]
    assert layouts["UPLOAD_IMAGES"].startswith("batch_id u32 | batch_size u32 | image_shape")
    assert layouts["STATUS"] == layouts["NAK"] == "empty"
    # the payload is the fields in table order: HELLO is version then nonce
    assert P.Hello(0x0102, 2).encode() == bytes([2, 2, 1, 0, 0, 0, 0, 0, 0])
    # docs/protocol.md lists the same layouts
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    for name, layout in layouts.items():
        assert f"- {name}: `{layout}`" in doc, name


def test_error_about_is_one_bounded_line():
    reply = P.ErrorReply.about(P.ErrorCode.INTERNAL, "Traceback:\n  boom\t" + "é" * 2000)
    assert "\n" not in reply.message
    assert len(reply.message.encode()) <= P.MAX_ERROR_BYTES
    assert P.ErrorReply.decode(reply.encode()) == reply


# ----------------------------------------------------------------------------------------------
# Malformed payloads: ProtocolError and nothing else


def _decode_or_protocol_error(msg_type: int, payload: bytes) -> None:
    try:
        P.decode_message(Frame(msg_type, 0, payload))
    except ProtocolError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_damaged_payloads_raise_protocol_error_only(msg):
    payload = msg.encode()
    positions = range(len(payload)) if len(payload) < 200 else range(0, len(payload), 7)
    for n in positions:
        _decode_or_protocol_error(msg.TYPE, payload[:n])
        for xor in (0x01, 0x80, 0xFF):
            damaged = bytearray(payload)
            damaged[n] ^= xor
            _decode_or_protocol_error(msg.TYPE, bytes(damaged))
    _decode_or_protocol_error(msg.TYPE, payload + b"\x00")
    if payload and not isinstance(msg, (P.LoadChunk, P.UploadImages)):  # data: the rest
        with pytest.raises(ProtocolError):  # every other layout is exact: trailing bytes refused
            type(msg).decode(payload + b"\x00")


@FUZZ
@given(st.sampled_from(sorted(MESSAGE_CLASSES)), st.binary(max_size=600))
def test_random_payloads_raise_protocol_error_only(msg_type, payload):
    _decode_or_protocol_error(msg_type, payload)


def test_unknown_type_and_other_version():
    with pytest.raises(UnknownMessageType) as info:
        P.decode_message(Frame(0x55, 1, b""))
    assert info.value.msg_type == 0x55 and isinstance(info.value, BoardError)
    with pytest.raises(VersionMismatch, match="version 1, this side 2"):
        P.decode_message(Frame(MessageType.STATUS, 1, b"", version=1))


# ----------------------------------------------------------------------------------------------
# Frames and the decoder


def test_frame_layout():
    frame = encode_frame(0x09, 0x01020304, b"abc", flags=0x01)
    assert frame[:2] == SYNC == b"\xa5\x5a"
    assert frame[2:5] == bytes([P.PROTOCOL_VERSION, 0x09, 0x01]) and P.PROTOCOL_VERSION == 2
    assert frame[5:9] == bytes([4, 3, 2, 1]) and frame[9:13] == bytes([3, 0, 0, 0])
    assert frame[15:18] == b"abc" and len(frame) == FRAME_OVERHEAD_BYTES + 3 == 22
    with pytest.raises(ProtocolError, match="split the message"):
        encode_frame(1, 0, bytes(MAX_PAYLOAD + 1))
    assert len(encode_frame(1, 0, bytes(MAX_PAYLOAD))) == MAX_FRAME_BYTES


def test_decoder_byte_by_byte_and_stats():
    frames = [encode_frame(t, t * 3, bytes([t]) * t) for t in range(1, 6)]
    decoder = FrameDecoder()
    out = []
    for byte in b"junk" + b"".join(frames):
        out += decoder.feed(bytes([byte]))
    assert [f.msg_type for f in out] == [1, 2, 3, 4, 5]
    assert decoder.stats.frames == 5 and decoder.stats.bytes_discarded == 4
    assert decoder.buffered_bytes == 0 and decoder.wanted_bytes == P.HEADER_BYTES


def test_decoder_rescans_inside_a_corrupt_frame():
    inner = encode_frame(2, 7, b"inner")
    outer = bytearray(encode_frame(1, 6, b"xx" + inner + b"yy"))
    outer[-1] ^= 0xFF  # bad payload CRC: the frame hidden in its payload must still come out
    decoder = FrameDecoder()
    out = decoder.feed(bytes(outer) + encode_frame(3, 8, b"after"))
    assert [(f.msg_type, f.payload) for f in out] == [(2, b"inner"), (3, b"after")]
    assert decoder.stats.crc_errors == 1

    header_hit = bytearray(encode_frame(1, 6, b"payload"))
    header_hit[9] ^= 0x40  # a corrupt length is caught by the header CRC at once
    decoder = FrameDecoder()
    assert decoder.feed(bytes(header_hit)) == [] and decoder.stats.crc_errors == 1
    assert decoder.buffered_bytes < P.HEADER_BYTES


def test_decoder_reports_the_header_of_a_damaged_or_short_frame():
    """What a NAK needs: the sequence number of a frame whose payload did not arrive intact."""
    bad = bytearray(encode_frame(6, 41, bytes(300), flags=P.FLAG_REPLY))
    bad[100] ^= 0x04  # payload bit flip
    short = encode_frame(3, 42, bytes(300))
    short = short[:50] + short[51:]  # one byte dropped: the frame never completes
    decoder = FrameDecoder()
    assert decoder.feed(bytes(bad) + short) == []
    assert decoder.damaged == [P.Damaged(6, 41, P.FLAG_REPLY, P.PROTOCOL_VERSION)]
    assert decoder.damaged[0].is_reply and decoder.wanted_bytes == 1
    decoder.damaged.clear()
    assert decoder.flush() == [] and decoder.damaged == [P.Damaged(3, 42, 0, P.PROTOCOL_VERSION)]
    header_hit = bytearray(encode_frame(1, 43, b"payload"))
    header_hit[6] ^= 0x01  # the sequence number itself is damaged: nothing to report
    decoder = FrameDecoder()
    decoder.feed(bytes(header_hit))
    decoder.flush()
    assert decoder.damaged == []


def test_decoder_refuses_oversize_and_flushes_stalled_frames():
    decoder = FrameDecoder(max_payload=100)
    assert decoder.feed(encode_frame(1, 1, bytes(101)) + encode_frame(2, 2, b"ok"))[0].seq == 2
    assert decoder.stats.oversize == 1

    truncated = encode_frame(1, 1, bytes(5000))[:40]  # valid header, then the line went quiet
    decoder = FrameDecoder()
    assert decoder.feed(truncated + encode_frame(2, 2, b"hidden")) == []
    assert decoder.wanted_bytes == FRAME_OVERHEAD_BYTES + 5000 - decoder.buffered_bytes
    assert [f.payload for f in decoder.flush()] == [b"hidden"]
    assert decoder.buffered_bytes == 0 and decoder.stats.abandoned == 1


def test_decoder_memory_is_bounded_on_a_flood():
    decoder = FrameDecoder()
    # A valid header announcing MAX_PAYLOAD, then 4 MiB in one call and a real frame.
    flood = encode_frame(1, 1, bytes(MAX_PAYLOAD))[:20] + bytes(4 << 20) + encode_frame(5, 5, b"")
    assert [f.seq for f in decoder.feed(flood)] == [5]
    assert decoder.buffered_bytes <= MAX_FRAME_BYTES
    noise = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    decoder.feed(noise)
    assert decoder.buffered_bytes <= MAX_FRAME_BYTES <= decoder.max_buffered_bytes


def _chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[i : i + n])
        i, k = i + n, k + 1
    return out


@FUZZ
@given(st.binary(max_size=4000), st.lists(st.integers(1, 700), min_size=1, max_size=20))
def test_decoder_never_raises_and_accounts_for_every_byte(data, sizes):
    decoder = FrameDecoder(max_payload=1024)
    delivered = 0
    for chunk in _chunks(data, sizes):
        delivered += sum(f.wire_bytes for f in decoder.feed(chunk))
        assert decoder.buffered_bytes <= FRAME_OVERHEAD_BYTES + 1024
    s = decoder.stats
    assert delivered + s.bytes_discarded + decoder.buffered_bytes == len(data)
    delivered += sum(f.wire_bytes for f in decoder.flush())
    assert delivered + decoder.stats.bytes_discarded == len(data)


_frames = st.builds(
    lambda t, seq, payload, flags: Frame(t, seq, payload, flags),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=300),
    st.integers(0, 255),
)
_truncated = st.builds(
    lambda n, cut: encode_frame(1, 0, bytes(n))[: max(1, min(cut, FRAME_OVERHEAD_BYTES + n - 1))],
    st.integers(0, 3000),
    st.integers(1, 60),
)
_garbage = st.lists(
    st.one_of(st.binary(max_size=80), st.just(SYNC), st.just(SYNC[:1]), _truncated), max_size=4
).map(b"".join)


@FUZZ
@given(
    st.lists(st.tuples(_garbage, _frames), max_size=6),
    _garbage,
    st.lists(st.integers(1, 400), min_size=1, max_size=10),
)
def test_frames_hidden_in_garbage_are_all_recovered(pieces, tail, sizes):
    expected = [frame for _, frame in pieces]
    stream = b"".join(
        g + encode_frame(f.msg_type, f.seq, f.payload, flags=f.flags) for g, f in pieces
    )
    decoder = FrameDecoder()
    got = []
    for chunk in _chunks(stream + tail, sizes):
        got += decoder.feed(chunk)
        assert decoder.buffered_bytes <= 2 * MAX_PAYLOAD
    got += decoder.flush()  # end of the stream: give up on a truncated frame, rescan the rest
    it = iter(got)  # every sent frame comes out, in order (garbage can add nothing valid)
    assert all(any(g == f for g in it) for f in expected), (expected, got)
