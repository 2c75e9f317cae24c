"""The board side of ddi-fpga: the runtime that answers the host's commands on PYNQ.

The wire contract it speaks (frames, messages, link, ports, errors) is the top-level package
:mod:`wire`, shared with the host; :mod:`fpga.board.errors` re-exports its errors.

Everything here runs on the board's ARM under PYNQ (Python 3.10, numpy 1.x): standard library,
numpy and pyserial only, and nothing is done at import time. See docs/board.md.
"""
