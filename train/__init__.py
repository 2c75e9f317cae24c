"""Training stage of ddi-fpga: the Dual Dynamic Inference model family on CIFAR-10.

Model construction lives in :mod:`train.model`, data in :mod:`train.data`, cost models in
:mod:`train.cost` (MACs) and :mod:`train.energy` (the paper's Eq. 6), training phases in
:mod:`train.loop`, and the command line in :mod:`train.__main__`.
"""
