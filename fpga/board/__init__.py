"""The board side of ddi-fpga and the host<->board serial protocol.

- :mod:`fpga.board.frame`: frames (sync marker, header, CRCs) and the resynchronising decoder.
- :mod:`fpga.board.protocol`: the typed messages and their binary layouts (re-exports frame).
- :mod:`fpga.board.link`: reliable request/response: ``Client`` (host) and ``Server`` (board).
- :mod:`fpga.board.ports`: a pty end as a port, and a fault-injecting port wrapper.
- :mod:`fpga.board.errors`: ``BoardError`` and its subclasses.

Everything here runs on the board's ARM under PYNQ (Python 3.10, numpy 1.x): standard library,
numpy and pyserial only, and nothing is done at import time. See docs/protocol.md.
"""
