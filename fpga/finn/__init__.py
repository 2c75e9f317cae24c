"""The FINN front end: bundle graphs -> FINN HW layers and estimates, without Vivado.

- :func:`to_hw`: a bundle's QONNX graph -> the dataflow parent (HW partition + float ends),
  built by FINN's builder over :data:`fpga.finn.steps.FRONTEND_STEPS`;
- :func:`execute`: FINN's Python execution of that model on integer input codes;
- :func:`estimate`: FINN's cycle and resource estimates of its HW partition;
- :func:`build_bundle`: every graph of a bundle, with an estimate table (also
  ``python -m fpga.finn BUNDLE OUT``).

Needs finn-plus (``pip install -e '.[finn]'`` then ``pip install --no-deps finn-plus==1.6.1``;
``make setup`` does both); :mod:`fpga.finn.compat` lets it run without Vivado. See
docs/finn-frontend.md.
"""

from fpga.finn.errors import BuildError, FinnFrontendError, GraphError, ToolchainError
from fpga.finn.frontend import (
    ZEDBOARD_PART,
    FrontendConfig,
    build_bundle,
    dataflow_model,
    estimate,
    estimate_table,
    execute,
    python_model,
    to_hw,
)

__all__ = [
    "ZEDBOARD_PART",
    "BuildError",
    "FinnFrontendError",
    "FrontendConfig",
    "GraphError",
    "ToolchainError",
    "build_bundle",
    "dataflow_model",
    "estimate",
    "estimate_table",
    "execute",
    "python_model",
    "to_hw",
]
