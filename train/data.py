"""CIFAR-10 for the training stage: the reader's arrays as augmented torch batches.

Finding, verifying, decoding and caching the data is :mod:`cifar.reader` (numpy only, so that
the measurement harness needs no torch); its public names are re-exported here, so
``train.data.load_cifar10`` and the rest keep working. This module adds :class:`CifarLoader`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from cifar.errors import DataError
from cifar.reader import (
    CACHE_ENV,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CLASSES,
    DATA_ENV,
    JPEG_SOURCE,
    JPEG_TARBALL,
    OFFICIAL_MD5,
    ORIGINAL_DIRNAME,
    ORIGINAL_SOURCE,
    SHARED_CIFAR10_DIR,
    SPLITS,
    SUMS_FILE,
    TEST_BATCH,
    TRAIN_BATCHES,
    CifarArrays,
    default_cache_dir,
    load_cifar10,
    locate_cifar10,
)
from train.errors import ConfigError

__all__ = [
    "CACHE_ENV",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CLASSES",
    "DATA_ENV",
    "JPEG_SOURCE",
    "JPEG_TARBALL",
    "OFFICIAL_MD5",
    "ORIGINAL_DIRNAME",
    "ORIGINAL_SOURCE",
    "SHARED_CIFAR10_DIR",
    "SPLITS",
    "SUMS_FILE",
    "TEST_BATCH",
    "TRAIN_BATCHES",
    "CifarArrays",
    "CifarLoader",
    "DataError",
    "default_cache_dir",
    "load_cifar10",
    "locate_cifar10",
]

_PAD = 4  # zero padding of the random-crop augmentation


def _seed(*parts: int) -> int:
    """A 64-bit torch seed mixed from integers (``SeedSequence`` hashes the whole tuple)."""
    entropy = [p & 0xFFFF_FFFF_FFFF_FFFF for p in parts]  # SeedSequence wants non-negative ints
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


class CifarLoader:
    """In-memory CIFAR-10 batches for training and evaluation, augmented on ``device``.

    A per-sample ``Dataset`` + ``DataLoader`` spends tens of microseconds of Python per image
    (``__getitem__``, a transform per image, collation) and needs worker processes that fight
    the training step for the 2 CPU cores; a whole split is only 150 MB of uint8, so this class
    keeps it as one tensor on ``device``, gathers a batch with one ``index_select`` and applies
    the standard augmentation (4-pixel zero pad + random 32x32 crop, random horizontal flip) to
    the whole batch in one gather. Batches are ``(x, y)``: x float32 (B, 3, 32, 32) in [0, 1]
    (no normalization: the model normalizes), y int64 (B,).

    Training order is reshuffled every epoch from ``(seed, epoch)`` (call :meth:`set_epoch`), and
    the augmentation of batch ``b`` depends only on ``(seed, epoch, rank, b)``, so an epoch is
    reproducible and :meth:`iter_from` resumes it exactly. With ``world_size > 1`` rank ``r``
    takes every ``world_size``-th index of the shared order starting at ``r``; the order is first
    cut to a multiple of ``world_size`` so that all shards are disjoint and equally long (up to
    ``world_size - 1`` images per epoch are skipped: evaluate with ``world_size=1`` for exact
    accuracy).
    """

    def __init__(
        self,
        arrays: CifarArrays,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        device: str | torch.device = "cpu",
        drop_last: bool | None = None,
        limit: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size!r} must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"rank {rank!r} / world size {world_size!r} is invalid; need 0 <= rank < world size"
            )
        if limit is not None and limit < 1:
            raise ConfigError(f"limit {limit!r} must be at least 1 (or None for all images)")
        n = len(arrays.labels) if limit is None else min(limit, len(arrays.labels))
        self.source = arrays.source
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.device = torch.device(device)
        self.drop_last = train if drop_last is None else drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.num_samples = n // world_size  # images per epoch on this rank
        hwc = torch.from_numpy(np.ascontiguousarray(arrays.images[:n]))
        self.images = hwc.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = torch.from_numpy(arrays.labels[:n].astype(np.int64)).to(self.device)
        if len(self) == 0:
            raise ConfigError(
                f"batch size {batch_size!r} leaves no batch in {self.num_samples} images per "
                "rank with drop_last; use a smaller batch size or more images"
            )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        self.epoch = epoch

    def _shard(self) -> torch.Tensor:
        """This rank's image indices for the current epoch, in batch order."""
        n = len(self.labels)
        if self.train:
            generator = torch.Generator().manual_seed(_seed(self.seed, self.epoch, 0))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        return order[: self.num_samples * self.world_size][self.rank :: self.world_size]

    def _augment(self, x: torch.Tensor, batch_index: int) -> torch.Tensor:
        """Pad by 4 with zeros, crop 32x32 at per-image offsets and flip half, in one gather."""
        # torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, written by hand:
        # torchvision is not installable beside this torch, and its transforms work per image.
        b = x.shape[0]
        # Drawn on the CPU so that the batches do not depend on the device.
        generator = torch.Generator().manual_seed(
            _seed(self.seed, self.epoch, 1, self.rank, batch_index)
        )
        offsets = torch.randint(0, 2 * _PAD + 1, (2, b, 1), generator=generator).to(self.device)
        flip = (torch.rand(b, 1, generator=generator) < 0.5).to(self.device)
        padded = F.pad(x, (_PAD, _PAD, _PAD, _PAD))
        ramp = torch.arange(32, device=self.device)
        rows = offsets[0] + ramp  # (B, 32)
        cols = torch.where(flip, offsets[1] + 31 - ramp, offsets[1] + ramp)
        batch = torch.arange(b, device=self.device).view(b, 1, 1, 1)
        channel = torch.arange(3, device=self.device).view(1, 3, 1, 1)
        return padded[batch, channel, rows.view(b, 1, 32, 1), cols.view(b, 1, 1, 32)]

    def iter_from(self, batch_index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch from batch ``batch_index`` on: the same batches that a full
        epoch yields from there (for resuming an interrupted epoch)."""
        if not 0 <= batch_index <= len(self):
            raise ConfigError(
                f"batch index {batch_index!r} is outside the epoch's 0..{len(self)} batches; "
                "resume from a checkpoint of this data setting"
            )
        shard = self._shard()
        for b in range(batch_index, len(self)):
            index = shard[b * self.batch_size : (b + 1) * self.batch_size].to(self.device)
            x = self.images.index_select(0, index)
            if self.train:
                x = self._augment(x, b)
            yield x.float().div_(255), self.labels.index_select(0, index)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)
