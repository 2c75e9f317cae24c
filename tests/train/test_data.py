"""Tests of train.data on the real CIFAR-10 copy of the shared folder (no mocked data)."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from train import data
from train.data import CifarArrays, CifarLoader, load_cifar10, locate_cifar10
from train.errors import ConfigError, DataError

SHARED = data.SHARED_CIFAR10_DIR
SAMPLE = SHARED / "original-sample"

pytestmark = pytest.mark.skipif(
    not (SHARED / data.JPEG_TARBALL).is_file(), reason=f"no shared CIFAR-10 copy at {SHARED}"
)


def _one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def jpeg_train() -> CifarArrays:
    """The JPEG training split, through the default cache (decoded once per machine)."""
    return load_cifar10("train", data=SHARED)


@pytest.fixture(scope="session")
def jpeg_test() -> CifarArrays:
    return load_cifar10("test", data=SHARED)


@pytest.fixture(scope="session")
def sample_test() -> CifarArrays:
    """The lossless 1,017-image sample of the official test_batch."""
    return load_cifar10("test", data=SAMPLE)


@pytest.fixture
def jpeg_copy(tmp_path: Path) -> Path:
    """A private copy of the JPEG folder (tarball, labels, SHA256SUMS) that a test may spoil."""
    for name in (data.JPEG_TARBALL, data.SUMS_FILE, "test_labels_official_order.npy"):
        shutil.copyfile(SHARED / name, tmp_path / name)
    return tmp_path


# -------------------------------------------------------------------------------- JPEG loading


@pytest.mark.parametrize("split", ["train", "test"])
def test_jpeg_split_shapes_counts_and_official_labels(split, jpeg_train, jpeg_test):
    arrays = jpeg_train if split == "train" else jpeg_test
    n = data.SPLITS[split]
    assert arrays.images.shape == (n, 32, 32, 3)
    assert arrays.images.dtype == np.uint8
    assert arrays.labels.dtype == np.int64
    assert np.bincount(arrays.labels).tolist() == [n // 10] * 10
    official = np.load(SHARED / f"{split}_labels_official_order.npy")
    np.testing.assert_array_equal(arrays.labels, official)
    assert arrays.source == "CIFAR-10 (JPEG q75 re-encoding)"
    assert arrays.path == SHARED
    assert 0.40 < arrays.images.mean() / 255 < 0.52  # real pictures, not zeros


def test_original_sample_matches_jpeg_test_images(sample_test, jpeg_test):
    assert sample_test.source == "CIFAR-10 (original)"
    assert sample_test.images.shape == (1017, 32, 32, 3)
    assert sample_test.images.dtype == np.uint8
    np.testing.assert_array_equal(sample_test.labels, jpeg_test.labels[:1017])
    diff = sample_test.images.astype(np.float64) - jpeg_test.images[:1017]
    mse = (diff**2).reshape(1017, -1).mean(axis=1)
    psnr = float(np.mean(10 * np.log10(255.0**2 / mse)))
    assert 27 < psnr < 35  # README: 30.49 dB; a wrong order would give ~11 dB


def test_original_sample_has_no_training_batches():
    with pytest.raises(DataError, match="no training batches") as exc:
        load_cifar10("train", data=SAMPLE)
    assert repr(str(SAMPLE / "cifar-10-batches-py")) in _one_line(exc)


def test_unknown_split_is_refused():
    with pytest.raises(DataError, match="'valid'") as exc:
        load_cifar10("valid", data=SHARED)
    _one_line(exc)


def test_cifar_arrays_checks_dtypes():
    with pytest.raises(DataError, match="uint8"):
        CifarArrays(np.zeros((2, 32, 32, 3), np.float32), np.zeros(2, np.int64), "x", SHARED)
    with pytest.raises(DataError, match="int64"):
        CifarArrays(np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int32), "x", SHARED)


# -------------------------------------------------------------------------- original format


def test_unpickler_refuses_arbitrary_callables(tmp_path: Path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    evil = batches / "test_batch"
    evil.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    # A SHA256SUMS that vouches for it, so that the unpickler itself is what refuses it.
    digest = data._digest(evil, "sha256")
    (batches / "SHA256SUMS").write_text(f"{digest}  test_batch\n")

    with pytest.raises(DataError, match="system") as exc:
        load_cifar10("test", data=tmp_path)
    assert repr(str(evil)) in _one_line(exc)
    with pytest.raises(DataError, match="refusing to unpickle"):
        data._unpickle(evil)
    assert not marker.exists()


def test_original_batch_without_known_checksum_is_refused(tmp_path: Path):
    # The real sample bytes, but nothing lists them: not the official file's md5 either.
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    shutil.copyfile(SAMPLE / "cifar-10-batches-py" / "test_batch", batches / "test_batch")
    with pytest.raises(DataError, match="official CIFAR-10 release") as exc:
        load_cifar10("test", data=tmp_path)
    assert repr(str(batches / "test_batch")) in _one_line(exc)


# ---------------------------------------------------------------------------------- locating


def test_locate_prefers_argument_then_environment(monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(SAMPLE))
    assert locate_cifar10() == SAMPLE / "cifar-10-batches-py"
    assert locate_cifar10(SHARED) == SHARED
    monkeypatch.delenv(data.DATA_ENV)
    assert locate_cifar10() == SHARED


def test_missing_data_argument_is_named(tmp_path: Path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(data.DATA_ENV, str(empty))
    missing = tmp_path / "missing"
    with pytest.raises(DataError) as exc:
        locate_cifar10(missing)
    message = _one_line(exc)
    assert repr(str(missing)) in message
    assert "does not exist" in message
    assert "--data DIR" in message and "DDI_CIFAR10=DIR" in message

    with pytest.raises(DataError, match="holds neither") as exc:
        load_cifar10("test", data=empty)
    assert repr(str(empty)) in _one_line(exc)


def test_empty_environment_folder_is_named(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    with pytest.raises(DataError) as exc:
        locate_cifar10()
    message = _one_line(exc)
    assert repr(str(tmp_path)) in message and "$DDI_CIFAR10" in message


def test_nothing_found_names_every_place(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    nowhere = tmp_path / "shared" / "data" / "cifar10"
    monkeypatch.setattr(data, "SHARED_CIFAR10_DIR", nowhere)
    with pytest.raises(DataError) as exc:
        locate_cifar10()
    message = _one_line(exc)
    assert "--data" in message
    assert "$DDI_CIFAR10 is not set" in message
    assert repr(str(nowhere)) in message
    assert "cifar-10-batches-py" in message and "cifar10-jpeg-q75.tar.gz" in message


# -------------------------------------------------------------------------- integrity, cache


def test_tampered_tarball_is_refused(jpeg_copy: Path, tmp_path_factory):
    tarball = jpeg_copy / data.JPEG_TARBALL
    raw = bytearray(tarball.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    tarball.write_bytes(bytes(raw))
    cache = tmp_path_factory.mktemp("tampered-cache")
    with pytest.raises(DataError, match="corrupt") as exc:
        load_cifar10("test", data=jpeg_copy, cache_dir=cache)
    assert repr(str(tarball)) in _one_line(exc)
    assert list(cache.iterdir()) == []


def test_missing_checksum_entry_is_refused(jpeg_copy: Path, tmp_path_factory):
    sums = jpeg_copy / data.SUMS_FILE
    kept = [line for line in sums.read_text().splitlines() if data.JPEG_TARBALL not in line]
    sums.write_text("\n".join(kept) + "\n")
    with pytest.raises(DataError, match="no entry") as exc:
        load_cifar10("test", data=jpeg_copy, cache_dir=tmp_path_factory.mktemp("c"))
    assert repr(data.JPEG_TARBALL) in _one_line(exc)


def test_cache_is_written_and_reused_without_decoding(jpeg_test, tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("fresh-cache")
    first = load_cifar10("test", data=SHARED, cache_dir=cache)
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 2 and all(n.endswith(".npy") for n in names)  # no temporary left
    assert all("-test-" in n and "097287809041e0a6" in n for n in names)  # split, sha256[:16]
    np.testing.assert_array_equal(first.images, jpeg_test.images)

    hashed: list[Path] = []
    real_digest = data._digest

    def recording_digest(path: Path, algorithm: str) -> str:
        hashed.append(path)
        return real_digest(path, algorithm)

    def no_decode(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(data, "_decode_jpeg_split", no_decode)
    monkeypatch.setattr(data, "_digest", recording_digest)
    second = load_cifar10("test", data=SHARED, cache_dir=cache)
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert SHARED / data.JPEG_TARBALL not in hashed


def test_cache_write_is_atomic(tmp_path: Path, monkeypatch):
    target = tmp_path / "x.npy"

    def half_save(file, array, allow_pickle=True):
        file.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        data._atomic_save(target, np.zeros(3, np.uint8))
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary


def test_unwritable_cache_only_warns(tmp_path: Path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="train.data"):
        arrays = load_cifar10("test", data=SHARED, cache_dir=blocker / "cache")
    assert arrays.images.shape == (10_000, 32, 32, 3)
    assert "could not write the CIFAR-10 cache" in caplog.text


# ------------------------------------------------------------------------------------ loader


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
