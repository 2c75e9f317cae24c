"""The host<->board wire contract, imported by both the host (``host/``) and the board runtime
(``fpga/board/``); see docs/protocol.md.

- :mod:`wire.frame`: frames (sync marker, header, CRCs) and the resynchronising decoder.
- :mod:`wire.protocol`: the typed messages, each laid out once by a field table (re-exports frame).
- :mod:`wire.link`: reliable request/response sized to the line: ``Client`` (host), ``Server``
  (board), NAKs, timeouts from line time, ``FrameSizer``.
- :mod:`wire.ports`: a pty end as a port, and a fault-injecting (and line-paced) port wrapper.
- :mod:`wire.errors`: ``BoardError`` and its subclasses.
- :mod:`wire.bench`: the link benchmark of ``make bench`` (host only).

Everything but the benchmark runs on the board's ARM under PYNQ (Python 3.10, numpy 1.x):
standard library, numpy and pyserial only, pure Python, and nothing is done at import time.
"""
