"""Export stage of ddi-fpga: checkpoint -> bundle (per-block graphs, gate graphs, manifest).

:mod:`export.manifest` (the versioned contract between export/, fpga/ and host/) and
:mod:`export.executor` (numpy + onnxruntime) import neither torch nor brevitas: the board's ARM
runs them. :mod:`export.bundle` and :mod:`export.verify` need the training stack. Nothing is
imported here, so ``import export.executor`` stays light.
"""
