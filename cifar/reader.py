"""CIFAR-10 as numpy arrays: find it, verify it, decode it once and cache it.

Two on-disk layouts are read, both returned as :class:`CifarArrays` in the official image order:

* the original python release, a ``cifar-10-batches-py`` folder of pickled batches
  (``data_batch_1`` .. ``data_batch_5``, ``test_batch``), source ``"CIFAR-10 (original)"``;
* the JPEG q75 re-encoding kept for machines without internet (a folder holding
  ``cifar10-jpeg-q75.tar.gz``, the official-order label arrays and ``SHA256SUMS``), source
  ``"CIFAR-10 (JPEG q75 re-encoding)"``. It scores a few points lower than the original, so every
  result on it must carry that label.

This module needs only numpy, Pillow and tqdm: the measurement harness (host/) and the export
checks read test images through it without torch. The training stage's batches (torch tensors,
augmentation) are :class:`train.data.CifarLoader`, built on these arrays.

torchvision's ``CIFAR10`` dataset would read the original layout, but torchvision cannot be
installed beside the pinned torch, and it knows nothing of the JPEG copy; hence this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import re
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cifar.errors import DataError

try:  # numpy >= 2 moved the array machinery to numpy._core; pickles name either module.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core.multiarray import _reconstruct

logger = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""The ten class names in label order (label ``i`` is ``CLASSES[i]``)."""

# The usual per-channel statistics of the ORIGINAL (lossless) CIFAR-10 training set, over all
# pixels scaled to [0, 1]. (The often-copied std (0.2023, 0.1994, 0.2010) is a per-image average
# and not the dataset std.) The JPEG q75 copy differs by less than 0.003: its README measures
# mean .4913/.4821/.4465 and std .2452/.2428/.2606, so the same constants serve both sources.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

DATA_ENV = "DDI_CIFAR10"
"""Environment variable naming the CIFAR-10 folder when no ``data`` argument is given."""
CACHE_ENV = "DDI_CACHE"
"""Environment variable naming the cache folder for the decoded JPEG copy."""

JPEG_SOURCE = "CIFAR-10 (JPEG q75 re-encoding)"
ORIGINAL_SOURCE = "CIFAR-10 (original)"

JPEG_TARBALL = "cifar10-jpeg-q75.tar.gz"
ORIGINAL_DIRNAME = "cifar-10-batches-py"
SUMS_FILE = "SHA256SUMS"
SPLITS: dict[str, int] = {"train": 50_000, "test": 10_000}
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"

# md5 of the files of the official cifar-10-python.tar.gz release (as torchvision lists them).
OFFICIAL_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

# The shared copy beside the repository root: <root>/../shared/data/cifar10.
SHARED_CIFAR10_DIR: Path = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"

_HOW = (
    f"give --data DIR or set {DATA_ENV}=DIR, pointing at a {ORIGINAL_DIRNAME} folder or at the "
    f"JPEG copy (the folder holding {JPEG_TARBALL})"
)
_HASH_CHUNK = 1 << 20


def _q(path: Path | str) -> str:
    """A path quoted for a message, as ``'/x/y'`` rather than ``PosixPath('/x/y')``."""
    return repr(str(path))


def _brief(exc: BaseException) -> str:
    """An exception as one line (``Type: message``) for a one-line DataError."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# --------------------------------------------------------------------------------------------
# Locating the data


def _is_original(folder: Path) -> bool:
    """True when ``folder`` is an original ``cifar-10-batches-py`` folder (has any batch)."""
    return any((folder / name).is_file() for name in (TEST_BATCH, *TRAIN_BATCHES))


def _dataset_dir(folder: Path) -> Path | None:
    """The dataset folder that ``folder`` is or contains, original preferred; else None."""
    if not folder.is_dir():
        return None
    if _is_original(folder):
        return folder
    if _is_original(folder / ORIGINAL_DIRNAME):
        return folder / ORIGINAL_DIRNAME
    if (folder / JPEG_TARBALL).is_file():
        return folder
    return None


def _explicit(folder: Path, what: str) -> Path:
    """Resolve a folder the user named explicitly; never fall through to another place."""
    folder = folder.expanduser()
    if not folder.exists():
        raise DataError(f"CIFAR-10 folder {_q(folder)} ({what}) does not exist; {_HOW}")
    found = _dataset_dir(folder)
    if found is None:
        raise DataError(
            f"{_q(folder)} ({what}) holds neither a {ORIGINAL_DIRNAME} folder nor "
            f"{JPEG_TARBALL}; {_HOW}"
        )
    return found


def locate_cifar10(data: str | os.PathLike[str] | None = None) -> Path:
    """Find the CIFAR-10 folder: ``data``, else ``$DDI_CIFAR10``, else the shared copy.

    Returns the ``cifar-10-batches-py`` folder when the candidate is or contains one, else the
    folder holding ``cifar10-jpeg-q75.tar.gz``. A ``data`` argument or ``$DDI_CIFAR10`` that is
    set but holds neither layout is an error (falling through would silently switch datasets).
    """
    if data is not None:
        found = _explicit(Path(data), "--data")
    elif os.environ.get(DATA_ENV):
        found = _explicit(Path(os.environ[DATA_ENV]), f"from ${DATA_ENV}")
    else:
        found = _dataset_dir(SHARED_CIFAR10_DIR)
        if found is None:
            raise DataError(
                f"CIFAR-10 not found: no --data given, ${DATA_ENV} is not set, and the shared "
                f"copy {_q(SHARED_CIFAR10_DIR)} is missing or holds neither layout; {_HOW}"
            )
    logger.debug("CIFAR-10 folder: %s", found)
    return found


# --------------------------------------------------------------------------------------------
# Checksums


def _digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (hashlib.file_digest needs Python 3.11)."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    try:
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise DataError(f"cannot read {_q(path)} ({exc.strerror}); re-copy it") from exc
    return h.hexdigest()


def _read_sums(sums_path: Path) -> dict[str, str]:
    """Parse a ``sha256sum`` listing (``HASH  NAME`` or ``HASH *NAME``) into {name: hash}.

    The standard library has no reader for this format, and calling ``sha256sum -c`` would need
    the coreutils binary and give no per-file answer to put in a message.
    """
    sums: dict[str, str] = {}
    try:
        text = sums_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {_q(sums_path)} ({_brief(exc)}); re-copy it") from exc
    for line in text.splitlines():
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.strip())
        if match:
            sums[match.group(2).removeprefix("./")] = match.group(1).lower()
    return sums


def _expected_sha256(path: Path, root: Path) -> str:
    """The sha256 that ``root/SHA256SUMS`` lists for ``path``; DataError when not listed."""
    sums_path = root / SUMS_FILE
    if not sums_path.is_file():
        raise DataError(
            f"{_q(root)} has no {SUMS_FILE} to verify {path.name!r} against; re-copy the whole "
            "CIFAR-10 folder"
        )
    key = path.relative_to(root).as_posix()
    expected = _read_sums(sums_path).get(key)
    if expected is None:
        raise DataError(
            f"{_q(sums_path)} has no entry for {key!r}; re-copy the CIFAR-10 folder with its "
            f"{SUMS_FILE}"
        )
    return expected


def _check_sha256(path: Path, expected: str) -> None:
    """Hash ``path`` and compare with ``expected``; DataError naming the file on mismatch."""
    if not path.is_file():
        raise DataError(f"{_q(path)} is missing; re-copy the CIFAR-10 folder")
    actual = _digest(path, "sha256")
    if actual != expected:
        raise DataError(
            f"{_q(path)} is corrupt: its sha256 {actual[:16]}... differs from {SUMS_FILE} "
            f"({expected[:16]}...); re-copy it"
        )


def _check_original(path: Path) -> None:
    """Verify one original batch: a SHA256SUMS up to two folders above, else the official md5."""
    for root in (path.parent, path.parent.parent, path.parent.parent.parent):
        sums_path = root / SUMS_FILE
        if sums_path.is_file():
            expected = _read_sums(sums_path).get(path.relative_to(root).as_posix())
            if expected is not None:
                _check_sha256(path, expected)
                return
    expected = OFFICIAL_MD5.get(path.name)
    if expected is None or _digest(path, "md5") != expected:
        raise DataError(
            f"{_q(path)} does not match the official CIFAR-10 release (md5) and no {SUMS_FILE} "
            "beside it lists it; re-download cifar-10-python.tar.gz"
        )


# --------------------------------------------------------------------------------------------
# The original format


_ARRAY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
# The only globals a pickled numpy array refers to, under numpy 1 and numpy 2 module names.
_PICKLE_GLOBALS: dict[tuple[str, str], object] = {
    **{(module, "_reconstruct"): _reconstruct for module in _ARRAY_MODULES},
    **{
        (module, name): obj
        for module in ("numpy", "numpy.core", "numpy._core", *_ARRAY_MODULES)
        for name, obj in (("ndarray", np.ndarray), ("dtype", np.dtype))
    },
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else.

    The official CIFAR-10 python release is a set of pickles, and a plain ``pickle.load`` runs
    whatever callable the file names (``os.system`` included). A batch needs only plain
    containers plus numpy's array reconstruction, so every other global is refused.
    """

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{_q(self._path)} references {module + '.' + name!r}, which no CIFAR-10 batch "
                "needs; refusing to unpickle it (replace it with the official file)"
            ) from None


def _unpickle(path: Path) -> object:
    """Load a pickle with :class:`_NumpyOnlyUnpickler`; DataError on anything unreadable."""
    try:
        with path.open("rb") as f:
            return _NumpyOnlyUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # pickle raises many types (EOFError, UnpicklingError, ValueError...)
        raise DataError(
            f"{_q(path)} is not a readable CIFAR-10 batch ({_brief(exc)}); "
            "replace it with the official file"
        ) from exc


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One verified original batch as (images (N, 32, 32, 3) uint8, labels (N,) int64)."""
    _check_original(path)
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{_q(path)} lacks b'data' or b'labels'; replace it with the official file")
    rows = batch[b"data"]
    labels = np.asarray(batch[b"labels"])
    if (
        not isinstance(rows, np.ndarray)
        or rows.dtype != np.uint8
        or rows.ndim != 2
        or rows.shape[1] != 3 * 32 * 32
        or labels.shape != (rows.shape[0],)
        or not np.issubdtype(labels.dtype, np.integer)
        or (labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)))
    ):
        raise DataError(
            f"{_q(path)} does not hold uint8 (N, 3072) rows with N labels in 0..9; replace it "
            "with the official file"
        )
    # Rows are the R, G and B planes of 32x32 images, one after the other.
    images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _load_original(folder: Path, split: str) -> CifarArrays:
    names = TRAIN_BATCHES if split == "train" else (TEST_BATCH,)
    missing = [name for name in names if not (folder / name).is_file()]
    if split == "train" and len(missing) == len(names):
        raise DataError(
            f"{_q(folder)} has no training batches (data_batch_1..5); point --data at a complete "
            f"{ORIGINAL_DIRNAME} folder or at the JPEG copy"
        )
    if missing:
        raise DataError(
            f"{_q(folder)} lacks {', '.join(missing)}; re-download cifar-10-python.tar.gz"
        )
    parts = [_read_batch(folder / name) for name in names]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if len(labels) != SPLITS[split]:
        logger.warning(
            "%s holds %d %s images, not the full %d: a partial CIFAR-10 %s set",
            folder,
            len(labels),
            split,
            SPLITS[split],
            split,
        )
    logger.info("loaded %d %s images of %s from %s", len(labels), split, ORIGINAL_SOURCE, folder)
    return CifarArrays(images=images, labels=labels, source=ORIGINAL_SOURCE, path=folder)


# --------------------------------------------------------------------------------------------
# The JPEG copy

_MEMBER = re.compile(r"(?:\./)?(train|test)/([^/]+)/(\d+)\.jpg")


def default_cache_dir() -> Path:
    """``$DDI_CACHE``, else ``$XDG_CACHE_HOME/ddi-fpga``, else ``~/.cache/ddi-fpga``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ddi-fpga"
    return Path.home() / ".cache" / "ddi-fpga"


def _read_labels(path: Path, split: str) -> np.ndarray:
    """The official-order label array of ``split`` as int64, checked for length and range."""
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read labels {_q(path)} ({_brief(exc)}); re-copy it") from exc
    if (
        labels.shape != (SPLITS[split],)
        or not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() >= len(CLASSES)
    ):
        raise DataError(
            f"{_q(path)} is not {SPLITS[split]} labels in 0..9 (shape {labels.shape}); re-copy it"
        )
    return labels.astype(np.int64)


def _decode_jpeg_split(tar_path: Path, split: str, labels: np.ndarray) -> np.ndarray:
    """Decode one split of the JPEG tarball into official order, streaming (no extraction).

    The member ``<split>/<classes[y[i]]>/<k:04d>.jpg`` is image ``i`` of the official order,
    where ``k`` counts the earlier images with label ``y[i]`` (README of the JPEG copy).
    """
    n = len(labels)
    rank_to_index = [np.flatnonzero(labels == c) for c in range(len(CLASSES))]
    class_of = {name: c for c, name in enumerate(CLASSES)}
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    seen = np.zeros(n, dtype=bool)
    done = 0
    try:
        with (
            tarfile.open(tar_path, mode="r|gz") as tar,
            tqdm(total=n, desc=f"decoding CIFAR-10 {split} JPEGs", unit="img", disable=None) as bar,
        ):
            for member in tar:
                match = _MEMBER.fullmatch(member.name)
                if not member.isfile() or match is None or match.group(1) != split:
                    continue
                c = class_of.get(match.group(2))
                k = int(match.group(3))
                if c is None or k >= len(rank_to_index[c]) or seen[rank_to_index[c][k]]:
                    raise DataError(
                        f"{_q(tar_path)} has an unexpected member {member.name!r}; re-copy it"
                    )
                i = rank_to_index[c][k]
                payload = tar.extractfile(member).read()  # type: ignore[union-attr]
                try:
                    with Image.open(io.BytesIO(payload)) as im:
                        pixels = np.asarray(im.convert("RGB"))
                except (UnidentifiedImageError, OSError) as exc:
                    raise DataError(
                        f"{_q(tar_path)}: member {member.name!r} is not a readable JPEG; re-copy it"
                    ) from exc
                if pixels.shape != (32, 32, 3):
                    raise DataError(
                        f"{_q(tar_path)}: member {member.name!r} is {pixels.shape[1]}x"
                        f"{pixels.shape[0]}, not 32x32; re-copy it"
                    )
                images[i] = pixels
                seen[i] = True
                done += 1
                bar.update()
                if done == n:  # train precedes test in the tarball: stop early for train
                    break
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {_q(tar_path)} ({_brief(exc)}); re-copy it") from exc
    if done != n:
        raise DataError(f"{_q(tar_path)} lacks {n - done} of the {n} {split} images; re-copy it")
    return images


def _cache_files(cache_dir: Path, tar_sha256: str, split: str) -> tuple[Path, Path]:
    stem = f"cifar10-jpeg-q75-{tar_sha256[:16]}-{split}"
    return cache_dir / f"{stem}-images.npy", cache_dir / f"{stem}-labels.npy"


def _read_cache(image_file: Path, label_file: Path, labels: np.ndarray) -> np.ndarray | None:
    """The cached images when both files are present and consistent, else None."""
    if not (image_file.is_file() and label_file.is_file()):
        return None
    try:
        images = np.load(image_file, allow_pickle=False)
        cached_labels = np.load(label_file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable cache %s (%s); decoding again", image_file, exc)
        return None
    if (
        images.dtype != np.uint8
        or images.shape != (len(labels), 32, 32, 3)
        or not np.array_equal(cached_labels, labels)
    ):
        logger.warning("ignoring inconsistent cache %s; decoding again", image_file)
        return None
    return images


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` via a temporary file and a rename: never a half file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_cache(
    image_file: Path, label_file: Path, images: np.ndarray, labels: np.ndarray
) -> None:
    """Cache a decoded split; a failure only costs a re-decode next time, so it only warns."""
    try:
        image_file.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(image_file, images)
        _atomic_save(label_file, labels)  # written last: its presence marks a complete entry
    except OSError as exc:
        logger.warning("could not write the CIFAR-10 cache %s (%s); continuing", image_file, exc)
    else:
        logger.info("cached decoded images in %s", image_file)


def _load_jpeg(folder: Path, split: str, cache_dir: Path | None) -> CifarArrays:
    label_path = folder / f"{split}_labels_official_order.npy"
    _check_sha256(label_path, _expected_sha256(label_path, folder))
    labels = _read_labels(label_path, split)
    tar_path = folder / JPEG_TARBALL
    # The cache is named by the sha256 that SHA256SUMS lists, and written only after the
    # tarball was hashed against it, so a cache hit needs no re-hashing of the tarball.
    tar_sha256 = _expected_sha256(tar_path, folder)
    image_file, label_file = _cache_files(cache_dir or default_cache_dir(), tar_sha256, split)
    images = _read_cache(image_file, label_file, labels)
    if images is None:
        _check_sha256(tar_path, tar_sha256)
        start = time.perf_counter()
        images = _decode_jpeg_split(tar_path, split, labels)
        logger.info(
            "decoded %d %s JPEGs in %.1f s", len(labels), split, time.perf_counter() - start
        )
        _write_cache(image_file, label_file, images, labels)
    else:
        logger.info("loaded %d %s images from cache %s", len(labels), split, image_file)
    return CifarArrays(images=images, labels=labels, source=JPEG_SOURCE, path=folder)


# --------------------------------------------------------------------------------------------
# Public loading API


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no truth value for ==
class CifarArrays:
    """One CIFAR-10 split in memory, in the official order.

    ``images`` is uint8 (N, 32, 32, 3) RGB, ``labels`` int64 (N,), ``source`` names the data
    (``"CIFAR-10 (original)"`` or ``"CIFAR-10 (JPEG q75 re-encoding)"``; report results with it)
    and ``path`` is the folder it was read from.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    path: Path

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise DataError(
                f"CIFAR-10 images must be uint8 (N, 32, 32, 3), got {images.dtype} "
                f"{images.shape!r}; convert them first"
            )
        if labels.dtype != np.int64 or labels.shape != (len(images),):
            raise DataError(
                f"CIFAR-10 labels must be int64 ({len(images)},), got {labels.dtype} "
                f"{labels.shape!r}; convert them first"
            )

    def __len__(self) -> int:
        return len(self.labels)


def load_cifar10(
    split: str,
    data: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> CifarArrays:
    """Load the ``"train"`` or ``"test"`` split of CIFAR-10, verified, in the official order.

    ``data`` is as for :func:`locate_cifar10`. The JPEG copy is decoded once and cached as .npy
    in ``cache_dir`` (default :func:`default_cache_dir`); the original format needs no cache.
    """
    if split not in SPLITS:
        raise DataError(f"unknown CIFAR-10 split {split!r}; use 'train' or 'test'")
    folder = locate_cifar10(data)
    if _is_original(folder):
        return _load_original(folder, split)
    return _load_jpeg(folder, split, None if cache_dir is None else Path(cache_dir).expanduser())
