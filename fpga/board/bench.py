"""Benchmark of the serial protocol: wire overhead of image upload, round trip over a pty.

    python -m fpga.board.bench --out measurements/bench          # part of `make bench`

* **Overhead**: bytes on the wire (frames, headers, CRCs and the ACK replies) per image byte when
  uploading a window of CIFAR-10 images (32x32x3 uint8), for the default frame size, the largest
  and one image per frame; the count is exact (real messages are encoded), and is checked against
  the link's own byte counters for a real upload over a pseudo-terminal. Target: <= 3%.
* **Round trip**: seconds per STATUS request/reply over a real pty pair (a trivial server in a
  thread), median of several runs: the link's own latency, without UART line time. On a board add
  the line time of the bytes (``fpga.board.link.line_time_s``) and the board's turnaround.

Writes ``OUT/link.json`` and ``OUT/link.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from fpga.board.link import (
    Client,
    Server,
    line_time_s,
    measure_round_trip,
    wire_overhead,
)
from fpga.board.ports import open_pty_pair
from fpga.board.protocol import DEFAULT_UPLOAD_PAYLOAD, MAX_PAYLOAD, upload_messages

IMAGE = (32, 32, 3)


def _measured_upload(images: int) -> dict[str, int]:
    """Upload ``images`` random images over a pty to an ACKing server; count the bytes."""
    board, host = open_pty_pair(baudrate=921600)
    server = Server(board)
    thread = threading.Thread(target=server.serve_forever, args=(lambda m: None,), daemon=True)
    thread.start()
    try:
        client = Client(host, reply_timeout_s=2.0)
        data = np.random.default_rng(0).integers(0, 256, (images, *IMAGE), dtype=np.uint8)
        for msg in upload_messages(1, data, max_payload=DEFAULT_UPLOAD_PAYLOAD):
            client.request(msg)
        return {
            "host_to_board_bytes": client.stats.bytes_sent,
            "board_to_host_bytes": client.stats.bytes_received,
        }
    finally:
        server.stop()
        thread.join(timeout=5.0)
        board.close()
        host.close()


def run(images: int, trips: int, runs: int) -> dict[str, Any]:
    rows = []
    for label, payload in (
        ("default frames", DEFAULT_UPLOAD_PAYLOAD),
        ("largest frames", MAX_PAYLOAD),
        ("one image per frame", int(np.prod(IMAGE)) + 64),
    ):
        cost = wire_overhead(images, IMAGE, max_payload=payload)
        rows.append(
            {
                "frames": label,
                "max_payload_bytes": payload,
                "upload_frames": cost.frames,
                "payload_bytes": cost.payload_bytes,
                "wire_bytes": cost.wire_bytes,
                "wire_bytes_per_payload_byte": cost.wire_bytes_per_payload_byte,
                "overhead_fraction": cost.overhead_fraction,
                "line_time_s_921600": line_time_s(cost.wire_bytes, 921600),
                "line_time_s_115200": line_time_s(cost.wire_bytes, 115200),
            }
        )
    measured = _measured_upload(images)
    rtts = []
    for _ in range(runs):
        board, host = open_pty_pair(baudrate=921600)
        try:
            rtts.append(measure_round_trip(host, board, trips))
        finally:
            board.close()
            host.close()
    return {
        "recorded_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "images": images,
        "image_shape": list(IMAGE),
        "overhead": rows,
        "measured_default_upload": measured,
        "measured_matches_count": measured["host_to_board_bytes"] + measured["board_to_host_bytes"]
        == rows[0]["wire_bytes"],
        "status_round_trip_s_median": statistics.median(rtts),
        "status_round_trip_s_runs": rtts,
        "trips_per_run": trips,
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Serial protocol: upload overhead and round trip",
        "",
        f"Recorded {r['recorded_utc']} with `python -m fpga.board.bench`. Upload of "
        f"{r['images']} images of {'x'.join(map(str, r['image_shape']))} uint8 (one window).",
        "",
        "| frames | payload limit (B) | frames sent | wire bytes / image byte | overhead | "
        "line time at 921600 | at 115200 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["overhead"]:
        lines.append(
            f"| {row['frames']} | {row['max_payload_bytes']} | {row['upload_frames']} | "
            f"{row['wire_bytes_per_payload_byte']:.4f} | {row['overhead_fraction']:.2%} | "
            f"{row['line_time_s_921600']:.2f} s | {row['line_time_s_115200']:.2f} s |"
        )
    m = r["measured_default_upload"]
    lines += [
        "",
        f"Counted on a real pty upload with default frames: {m['host_to_board_bytes']} bytes to "
        f"the board, {m['board_to_host_bytes']} back "
        f"({'equal to' if r['measured_matches_count'] else 'DIFFERENT from'} the count above). "
        "Overhead counts frame headers, CRCs and the ACK frames; target <= 3%.",
        "",
        f"STATUS round trip over a pty (no UART line time): median "
        f"{r['status_round_trip_s_median'] * 1e3:.3f} ms over {len(r['status_round_trip_s_runs'])}"
        f" runs of {r['trips_per_run']} trips.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fpga.board.bench", description=__doc__)
    p.add_argument("--images", type=int, default=250, help="images per upload (default 250)")
    p.add_argument("--trips", type=int, default=200, help="STATUS trips per run")
    p.add_argument("--runs", type=int, default=5, help="round-trip runs (median)")
    p.add_argument("--out", required=True, help="folder for link.json and link.md")
    args = p.parse_args(argv)
    for name in ("images", "trips", "runs"):
        if getattr(args, name) < 1:
            print(f"error: --{name} {getattr(args, name)!r} must be >= 1", file=sys.stderr)
            return 1
    report = run(args.images, args.trips, args.runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "link.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "link.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
