"""Benchmark of the serial link under faults: goodput and time lost per fault, side by side.

    python -m wire.bench --out measurements/bench          # part of `make bench`

One run uploads the same window of CIFAR-sized images (32x32x3 uint8) over a pseudo-terminal
paced to a UART's line rate (``--baud``, 8N1: each end's writes take the bytes' line time), at
byte error rates 0, 1e-5, 1e-4 and 1e-3. At rate ``r`` each byte, in each direction, has a bit
flipped with probability ``r``, is dropped with ``r/4`` and duplicated with ``r/4``, and each
end's line stalls for 20 ms after every ``10/r`` bytes. The board end is a separate process (as
a board is a separate machine) serving :class:`wire.link.Server` with a handler that stores the
uploaded bytes; the host end is :class:`wire.link.Client` cutting the upload with
``request_sized`` (frames sized to the line).

* **Goodput**: image bytes delivered per second, as a share of the line rate (baud / 10).
* **Time lost per fault**: (elapsed - the clean run's time for the same bytes) / faults
  injected (flipped, dropped and duplicated bytes and stalls, both directions).
* Every upload is checked: the board's copy must equal the images sent.

Measured on this machine over a pty, not on a board's UART. Writes ``OUT/link.json`` and
``OUT/link.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from wire.link import Client, FrameSizer, Server, measure_round_trip, wire_overhead
from wire.ports import FaultyPort, open_pty_pair
from wire.protocol import UploadImages, upload_chunk

IMAGE = (32, 32, 3)
RATES = (0.0, 1e-5, 1e-4, 1e-3)
STALL_S = 0.02
GOALS = {"clean_overhead_max": 0.03, "goodput_at_1e-4_min": 0.70}


def faults(rate: float, seed: int, baud: int) -> dict[str, Any]:
    """The FaultyPort settings of one end at byte error rate ``rate``."""
    if rate == 0:
        return {"seed": seed, "line_baud": baud}
    return {
        "seed": seed,
        "line_baud": baud,
        "byte_error_rate": rate,
        "drop_rate": rate / 4,
        "duplicate_rate": rate / 4,
        "stall_s": STALL_S,
        "stall_every_bytes": round(10 / rate),
    }


def _board(port, settings: dict, batch_bytes: int, conn) -> None:
    """The board process: serve uploads into a buffer until told to stop; report."""
    line = FaultyPort(port, **settings)
    server = Server(line)
    store = bytearray(batch_bytes)

    def handler(msg):
        if isinstance(msg, UploadImages):
            store[msg.offset_bytes : msg.offset_bytes + len(msg.data)] = msg.data
        return None

    import threading

    thread = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    thread.start()
    conn.recv()  # the host is done
    server.stop()
    thread.join(timeout=5.0)
    conn.send(
        {
            "sha256": hashlib.sha256(store).hexdigest(),
            "faults": vars(line.stats) | {"total": line.stats.faults},
            "naks_sent": server.stats.naks_sent,
            "duplicates_answered": server.stats.duplicates_answered,
            "replies_resent": server.stats.replies_resent,
            "idle_flushes": server.stats.idle_flushes,
        }
    )


def upload_run(rate: float, images: np.ndarray, baud: int) -> dict[str, Any]:
    """Upload ``images`` once at byte error rate ``rate``; return what happened."""
    board_port, host_port = open_pty_pair(baudrate=baud)
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(
        target=_board, args=(board_port, faults(rate, 2, baud), images.nbytes, there)
    )
    proc.start()
    try:
        line = FaultyPort(host_port, **faults(rate, 1, baud))
        client = Client(line, sizer=FrameSizer())
        started = time.monotonic()
        offset = 0
        while offset < images.nbytes:
            sent, _ = client.request_sized(
                lambda size, at=offset: upload_chunk(1, images, at, size)
            )
            offset += len(sent.data)
        elapsed = time.monotonic() - started
        here.send("done")
        board = here.recv()
    finally:
        proc.join(timeout=10.0)
        board_port.close()
        host_port.close()
    host_faults = vars(line.stats) | {"total": line.stats.faults}
    st = client.stats
    return {
        "byte_error_rate": rate,
        "payload_bytes": images.nbytes,
        "elapsed_s": elapsed,
        "goodput_fraction": images.nbytes * 10 / baud / elapsed,
        "intact": board["sha256"] == hashlib.sha256(images.tobytes()).hexdigest(),
        "faults_injected": host_faults["total"] + board["faults"]["total"],
        "faults_host_end": host_faults,
        "faults_board_end": board["faults"],
        "frames_sent": st.frames_sent,
        "bytes_sent": st.bytes_sent,
        "naks_received": st.naks_received,
        "naks_sent_by_board": board["naks_sent"],
        "timeouts": st.timeouts,
        "resized": st.resized,
        "smallest_payload": client.sizer.smallest,
        "final_payload": client.sizer.payload,
    }


def run(images: int, baud: int, trips: int) -> dict[str, Any]:
    data = np.random.default_rng(0).integers(0, 256, (images, *IMAGE), dtype=np.uint8)
    rows = [upload_run(rate, data, baud) for rate in RATES]
    clean = rows[0]
    for row in rows:
        lost = row["elapsed_s"] - clean["elapsed_s"] * row["payload_bytes"] / clean["payload_bytes"]
        row["time_lost_s"] = lost
        row["time_lost_per_fault_s"] = (
            lost / row["faults_injected"] if row["faults_injected"] else None
        )
    board, host = open_pty_pair(baudrate=baud)
    try:
        rtt = measure_round_trip(host, board, trips)
    finally:
        board.close()
        host.close()
    exact = wire_overhead(images, IMAGE, max_payload=FrameSizer().max_payload)
    at_1e4 = next(r for r in rows if r["byte_error_rate"] == 1e-4)
    return {
        "recorded_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs",
        "source": "measured over a pseudo-terminal paced to the baud rate (no board, no UART)",
        "images": images,
        "image_shape": list(IMAGE),
        "baud": baud,
        "stall_s": STALL_S,
        "rows": rows,
        "clean_overhead": 1 - clean["goodput_fraction"],
        "exact_wire_overhead_16k_frames": exact.overhead_fraction,
        "status_round_trip_s": rtt,
        "goals": GOALS,
        "goals_met": {
            "clean_overhead": 1 - clean["goodput_fraction"] <= GOALS["clean_overhead_max"],
            "goodput_at_1e-4": at_1e4["goodput_fraction"] >= GOALS["goodput_at_1e-4_min"],
            "completion_at_1e-3": all(r["intact"] for r in rows),
        },
    }


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def markdown(r: dict[str, Any]) -> str:
    met = r["goals_met"]
    lines = [
        "# Serial link under faults: goodput and time lost per fault",
        "",
        f"Recorded {r['recorded_utc']} with `python -m wire.bench` on {r['machine']}, "
        f"{r['source']}. Upload of {r['images']} images of {'x'.join(map(str, r['image_shape']))}"
        f" uint8 at {r['baud']} baud; at byte error rate r, per byte and direction: a bit flip "
        f"with probability r, a drop with r/4, a duplicate with r/4, and a {r['stall_s'] * 1e3:.0f}"
        " ms stall of each end after every 10/r bytes.",
        "",
        "| byte error rate | faults injected | elapsed | goodput (share of line rate) | time lost "
        "per fault | frames | NAKs | timeouts | smallest frame | data intact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        per = row["time_lost_per_fault_s"]
        lines.append(
            f"| {row['byte_error_rate']:g} | {row['faults_injected']} | {row['elapsed_s']:.2f} s "
            f"| {row['goodput_fraction']:.1%} | {'-' if per is None else f'{per * 1e3:.1f} ms'} "
            f"| {row['frames_sent']} | {row['naks_received']} | {row['timeouts']} "
            f"| {row['smallest_payload']} B | {'yes' if row['intact'] else 'NO'} |"
        )
    lines += [
        "",
        f"Clean overhead (1 - goodput at 0): {r['clean_overhead']:.2%} (goal <= "
        f"{r['goals']['clean_overhead_max']:.0%}: {_met(met['clean_overhead'])}); of it, frame "
        f"headers, CRCs and ACKs are {r['exact_wire_overhead_16k_frames']:.2%} (exact count for "
        f"16 KiB frames). Goodput at 1e-4: goal >= {r['goals']['goodput_at_1e-4_min']:.0%}, "
        f"{_met(met['goodput_at_1e-4'])}. Completion at every rate, data intact: "
        f"{_met(met['completion_at_1e-3'])}.",
        "",
        "STATUS round trip over an unpaced pty (no line time): "
        f"{r['status_round_trip_s'] * 1e3:.3f}"
        " ms.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wire.bench", description=__doc__)
    p.add_argument("--images", type=int, default=100, help="images per upload (default 100)")
    p.add_argument("--baud", type=int, default=921600, help="line rate (default 921600)")
    p.add_argument("--trips", type=int, default=200, help="STATUS round trips")
    p.add_argument("--out", required=True, help="folder for link.json and link.md")
    args = p.parse_args(argv)
    for name in ("images", "baud", "trips"):
        if getattr(args, name) < 1:
            print(f"error: --{name} {getattr(args, name)!r} must be >= 1", file=sys.stderr)
            return 1
    report = run(args.images, args.baud, args.trips)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "link.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "link.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
