"""CIFAR-10 for every stage: the verified, cached numpy reader (:mod:`cifar.reader`).

It imports numpy, Pillow and tqdm only, so that the measurement harness and the board's
benchmarks read test images without torch; the training stage batches its arrays with
:class:`train.data.CifarLoader`.
"""
