"""The host's board client packs bundles with the archive format of export/ (export/archive.py),
not with the board's store: importing the host's harness loads no board-side module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_host_harness_imports_no_board_module_to_pack_bundles():
    code = (
        "import json, sys\n"
        "import host.board, host.measure, measurements.run_measurement\n"
        "from export.archive import pack_bundle\n"
        "assert host.board.pack_bundle is pack_bundle\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('fpga'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    # The wire contract the host shares with the board is its own package (wire/).
    assert not {m for m in loaded if m.startswith("fpga.board")}, sorted(loaded)


def _board_over_a_pty(handler):
    """A BoardClient on one end of a pseudo-terminal, ``handler`` served on the other."""
    from host.board import BoardClient
    from tests.wire.test_link import serving
    from wire.ports import open_pty_pair

    board_end, host_end = open_pty_pair()
    path = host_end.port
    host_end.close()
    client = BoardClient(path, exclusive=False)
    return board_end, client, serving(board_end, handler)


def test_a_run_request_lost_on_the_line_is_sent_again_after_retry_s():
    """A RUN_BATCH frame lost whole (the board hears nothing, so it answers nothing) costs
    ``retry_s``, not the run's timeout; a request resent while the board still runs is
    answered from the board's cache: every batch runs once."""
    import time

    from tests.wire.test_link import FakeBoard
    from wire import protocol as P

    board = FakeBoard()
    board_end, client, served = _board_over_a_pty(board)
    with served as server:
        send, sent = client.client.link.send, []

        def lose_the_first(data):
            sent.append(data)
            if len(sent) > 1:
                send(data)

        client.client.link.send = lose_the_first
        started = time.monotonic()
        assert client.run(7, "iadi", retry_s=0.3, timeout_s=60.0) == (1_000, 2_007)
        assert time.monotonic() - started < 5.0  # one retry, not the 60 s timeout
        assert len(sent) == 2 and client.client.stats.retransmissions == 1
        client.client.link.send = send

        slow = FakeBoard()  # a run longer than retry_s: resent while the board runs

        def slow_run(msg):
            if isinstance(msg, P.RunBatch):
                time.sleep(1.0)
            return slow(msg)

        server_handler = slow_run
    client.close()
    board_end.close()
    assert [type(m) for m in board.executed] == [P.RunBatch]

    board_end, client, served = _board_over_a_pty(server_handler)
    with served as server:
        assert client.run(8, "iadi", retry_s=0.3, timeout_s=60.0) == (1_000, 2_008)
        time.sleep(0.5)
    client.close()
    board_end.close()
    assert [type(m) for m in slow.executed] == [P.RunBatch]  # executed once
    assert server.stats.duplicates_answered >= 1


def test_the_run_retry_follows_the_models_last_run():
    from host.measure import RUN_RETRY_FIRST_S, RUN_RETRY_MIN_S, run_retry_s

    assert run_retry_s({}, "full", 250) == RUN_RETRY_FIRST_S
    assert run_retry_s({"full": 0.02}, "full", 250) == 3 * 0.02 * 250
    assert run_retry_s({"full": 0.02}, "iadi60", 250) == 3 * 0.02 * 250  # the slowest yet
    assert run_retry_s({"full": 1e-6}, "full", 10) == RUN_RETRY_MIN_S
