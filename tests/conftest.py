"""Shared test helpers: real-data availability and single-thread runs."""

from __future__ import annotations

import pytest
import torch

from cifar.errors import DataError
from cifar.reader import SHARED_CIFAR10_DIR, CifarArrays, load_cifar10, locate_cifar10


def have_cifar10() -> bool:
    """Whether train.data finds CIFAR-10 (the shared copy beside the repo, or $DDI_CIFAR10)."""
    try:
        locate_cifar10()
    except DataError:
        return False
    return True


needs_cifar10 = pytest.mark.skipif(not have_cifar10(), reason="CIFAR-10 not found (train.data)")


@pytest.fixture
def one_thread():
    """Keep small models on one core (the machines have two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def jpeg_train() -> CifarArrays:
    """The JPEG training split of the shared copy, through the default cache (decoded once per
    machine)."""
    return load_cifar10("train", data=SHARED_CIFAR10_DIR)


@pytest.fixture(scope="session")
def jpeg_test() -> CifarArrays:
    return load_cifar10("test", data=SHARED_CIFAR10_DIR)
