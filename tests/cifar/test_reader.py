"""Tests of cifar.reader on the real CIFAR-10 copy of the shared folder (no mocked data)."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from cifar import reader as data
from cifar.errors import DataError
from cifar.reader import CifarArrays, load_cifar10, locate_cifar10

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
    with caplog.at_level(logging.WARNING, logger="cifar.reader"):
        arrays = load_cifar10("test", data=SHARED, cache_dir=blocker / "cache")
    assert arrays.images.shape == (10_000, 32, 32, 3)
    assert "could not write the CIFAR-10 cache" in caplog.text
