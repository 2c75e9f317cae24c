"""Tests of train.data's CifarLoader on the real CIFAR-10 copy of the shared folder.

The reader it batches (locate, verify, decode, cache) is tested in tests/cifar/test_reader.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train import data
from train.data import CifarLoader
from train.errors import ConfigError

SHARED = data.SHARED_CIFAR10_DIR

pytestmark = pytest.mark.skipif(
    not (SHARED / data.JPEG_TARBALL).is_file(), reason=f"no shared CIFAR-10 copy at {SHARED}"
)


def _batches(loader, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.iter_from(start))


def test_eval_loader_yields_the_images_in_order(jpeg_test):
    loader = CifarLoader(jpeg_test, 300, train=False, limit=1000)
    assert len(loader) == 4  # drop_last defaults to False for evaluation
    batches = _batches(loader)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert [len(b[1]) for b in batches] == [300, 300, 300, 100]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (1000, 3, 32, 32)
    expected = torch.from_numpy(jpeg_test.images[:1000]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    assert torch.equal(y, torch.from_numpy(jpeg_test.labels[:1000]))
    loader.set_epoch(5)  # evaluation order does not depend on the epoch
    assert torch.equal(torch.cat([b[0] for b in _batches(loader)]), x)


def test_train_loader_shapes_range_and_length(jpeg_train):
    loader = CifarLoader(jpeg_train, 128, train=True, limit=1000)
    assert len(loader) == 7  # drop_last defaults to True for training
    batches = _batches(loader)
    assert len(batches) == 7
    for x, y in batches:
        assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32
        assert y.shape == (128,) and y.dtype == torch.int64
        assert x.min().item() >= 0.0 and x.max().item() <= 1.0


def test_train_epochs_differ_but_reproduce(jpeg_train):
    a = CifarLoader(jpeg_train, 100, train=True, seed=7, limit=1000)
    b = CifarLoader(jpeg_train, 100, train=True, seed=7, limit=1000)
    a.set_epoch(2)
    b.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(_batches(a), _batches(b), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(3)
    assert not torch.equal(_batches(a)[0][1], _batches(b)[0][1])
    other_seed = CifarLoader(jpeg_train, 100, train=True, seed=8, limit=1000)
    other_seed.set_epoch(2)
    assert not torch.equal(_batches(other_seed)[0][1], _batches(b)[0][1])


def test_iter_from_resumes_the_epoch_exactly(jpeg_train):
    loader = CifarLoader(jpeg_train, 64, train=True, seed=3, limit=1000)
    loader.set_epoch(4)
    full = _batches(loader)
    for start in (0, 5, len(loader) - 1, len(loader)):
        resumed = _batches(loader, start)
        assert len(resumed) == len(full) - start
        for (xa, ya), (xb, yb) in zip(resumed, full[start:], strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ConfigError, match="batch index"):
        next(loader.iter_from(len(loader) + 1))


def test_augmentation_is_pad_crop_and_flip(jpeg_train):
    loader = CifarLoader(jpeg_train, 256, train=True, seed=1, limit=2000)
    loader.set_epoch(1)
    x, y = next(iter(loader))
    index = loader._shard()[:256]
    assert torch.equal(y, loader.labels[index])
    augmented = (x * 255).round().to(torch.uint8).numpy()
    padded = np.pad(jpeg_train.images[index.numpy()], ((0, 0), (4, 4), (4, 4), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (32, 32), axis=(1, 2))
    # windows: (B, 9, 9, 3, 32, 32) = every 32x32 crop of every padded image
    found = []
    for i in range(256):
        crops = windows[i]
        plain = np.all(crops == augmented[i], axis=(2, 3, 4))
        flipped = np.all(crops[..., ::-1] == augmented[i], axis=(2, 3, 4))
        hits = [(oy, ox, False) for oy, ox in zip(*np.nonzero(plain), strict=True)]
        hits += [(oy, ox, True) for oy, ox in zip(*np.nonzero(flipped), strict=True)]
        assert hits, f"image {i} is no crop/flip of its source"
        found.append(hits[0])
    flips = sum(f for _, _, f in found)
    assert 0.3 * 256 < flips < 0.7 * 256
    off_centre = sum((oy, ox) != (4, 4) for oy, ox, _ in found)
    assert off_centre > 0.8 * 256  # 80 of 81 offsets are off centre
    # Off-centre crops show the zero padding as whole zero rows or columns.
    zero_row = (x == 0).all(dim=(1, 3)).any(dim=1)
    zero_col = (x == 0).all(dim=(1, 2)).any(dim=1)
    assert (zero_row | zero_col).sum() > 0.5 * 256


@pytest.mark.parametrize("n", [1000, 1003])
def test_ddp_shards_are_disjoint_equal_and_cover(jpeg_test, n):
    world = 4
    shards = []
    for rank in range(world):
        loader = CifarLoader(
            jpeg_test, 50, train=True, seed=5, limit=n, rank=rank, world_size=world
        )
        loader.set_epoch(2)
        shard = loader._shard()
        assert len(shard) == n // world == loader.num_samples
        assert len(loader) == (n // world) // 50
        shards.append(shard)
    everything = torch.cat(shards)
    assert len(set(everything.tolist())) == len(everything) == world * (n // world)
    if n % world == 0:
        assert sorted(everything.tolist()) == list(range(n))
    # Through the public iterator: rank r evaluates every world-th image from r.
    for rank in range(world):
        loader = CifarLoader(jpeg_test, 100, train=False, limit=n, rank=rank, world_size=world)
        x = torch.cat([b[0] for b in loader])
        expected = np.arange(n // world * world)[rank::world]
        ref = torch.from_numpy(jpeg_test.images[expected]).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(x, ref)


def test_loader_refuses_bad_settings(jpeg_test):
    with pytest.raises(ConfigError, match="batch size 0"):
        CifarLoader(jpeg_test, 0, train=True)
    with pytest.raises(ConfigError, match="rank 2"):
        CifarLoader(jpeg_test, 8, train=True, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="no batch"):
        CifarLoader(jpeg_test, 64, train=True, limit=10)
