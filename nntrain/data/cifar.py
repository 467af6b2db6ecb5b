"""CIFAR-10: the reader for the official binary layout, and download of the binary archive.

Binary layout (`cifar-10-batches-bin/`): data_batch_1..5.bin and test_batch.bin, each 10000 records of
1 label byte + 3072 pixel bytes (the red plane, then green, then blue, each 32x32 row-major), so a
record's pixels reshape directly to (3, 32, 32). The Python layout (`cifar-10-batches-py/`) holds the
same images as pickles; nntrain never unpickles, so a folder holding only that layout is refused with
a message saying how to get the binary one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from nntrain.data.archive import safe_extract
from nntrain.errors import DataError

log = logging.getLogger(__name__)

CIFAR10_URLS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
BIN_DIR = "cifar-10-batches-bin"
# The Python layout and its archive: only recognised, to explain why they are not read.
PY_DIR = "cifar-10-batches-py"
PY_ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
RECORDS_PER_BATCH = 10000
IMAGE_SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32
RECORD_BYTES = 1 + PIXELS
NUM_CLASSES = 10

Split = tuple[np.ndarray, np.ndarray]


def _check_labels(labels: np.ndarray, path: Path) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: record {i} has label {int(labels[i])}, expected 0..{NUM_CLASSES - 1} "
                        f"({bad.size} records out of range; is this really a CIFAR-10 batch?)")


def _check_count(n: int, expected: int | None, path: Path) -> None:
    if n == 0:
        raise DataError(f"{path}: the batch holds no images")
    if expected is not None and n != expected:
        raise DataError(f"{path}: holds {n} images, expected {expected} (truncated or not a CIFAR-10 batch)")


def read_cifar_bin(path: str | Path, expected_records: int | None = None) -> Split:
    """One binary batch -> (images uint8 (N, 3, 32, 32), labels int64 (N,)); DataError names the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise DataError(f"{path}: empty file, expected CIFAR-10 records of {RECORD_BYTES} bytes")
        if size % RECORD_BYTES:
            raise DataError(f"{path}: size {size} bytes is not a whole number of {RECORD_BYTES}-byte records "
                            "(1 label byte + 3072 pixel bytes): the file is truncated or not a CIFAR-10 batch")
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if raw.size != size:
        raise DataError(f"{path}: read {raw.size} of {size} bytes (the file changed while being read)")
    records = raw.reshape(-1, RECORD_BYTES)
    _check_count(len(records), expected_records, path)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, path)
    images = np.ascontiguousarray(records[:, 1:]).reshape(-1, *IMAGE_SHAPE)
    return images, labels


def _missing(folder: Path) -> list[str]:
    return [n + ".bin" for n in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / (n + ".bin")).is_file()]


def _python_layout(root: Path) -> list[Path]:
    """The Python-layout folder or archive found under `root` (never opened)."""
    return [p for p in (root / PY_DIR, root / PY_ARCHIVE_NAME) if p.exists()]


def _load_bin(folder: Path, records: int | None) -> tuple[np.ndarray, ...]:
    train = [read_cifar_bin(folder / (n + ".bin"), records) for n in TRAIN_BATCHES]
    test_images, test_labels = read_cifar_bin(folder / (TEST_BATCH + ".bin"), records)
    train_images = np.concatenate([t[0] for t in train])
    train_labels = np.concatenate([t[1] for t in train])
    log.info("read CIFAR-10 from %s: %d train, %d test images", folder, len(train_labels), len(test_labels))
    return train_images, train_labels, test_images, test_labels


def download_cifar10(root: str | Path, progress: bool = True, mirrors: Sequence[str] | None = None) -> Path:
    """Download the official binary archive into `root` (checksummed), extract the batches safely;
    returns the `cifar-10-batches-bin` folder.

    mirrors: base URLs to try instead of the official one (`<mirror>/cifar-10-binary.tar.gz`). An
    archive already in `root` (downloads are atomic and verified) is reused.
    """
    from nntrain.data.download import download   # imported here: only needed when files are missing

    root = Path(root)
    archive = root / ARCHIVE_NAME
    if not archive.is_file():
        urls = [m.rstrip("/") + "/" + ARCHIVE_NAME for m in mirrors] if mirrors else list(CIFAR10_URLS)
        download(urls, archive, md5=CIFAR10_MD5, progress=progress)
    wanted = [f"{BIN_DIR}/{n}.bin" for n in (*TRAIN_BATCHES, TEST_BATCH)] + [f"{BIN_DIR}/batches.meta.txt"]
    safe_extract(archive, root, members=wanted, max_bytes=200 * 2**20)
    return root / BIN_DIR


def load_cifar10(root: str | Path, download: bool = False, progress: bool = True, *,
                 records_per_batch: int | None = RECORDS_PER_BATCH,
                 mirrors: Sequence[str] | None = None) -> tuple[np.ndarray, ...]:
    """CIFAR-10 from `root` -> (train_images uint8 (50000, 3, 32, 32), train_labels int64 (50000,),
    test_images uint8 (10000, 3, 32, 32), test_labels int64 (10000,)).

    Reads `<root>/cifar-10-batches-bin`; if it is incomplete and `download` is true, fetches and
    extracts the official binary archive. The Python layout is never read (see the module docstring).
    Every batch must hold `records_per_batch` images (None: any positive number, for small test
    copies); `mirrors` are base URLs tried instead of the official one.
    """
    root = Path(root)
    bin_dir = root / BIN_DIR
    missing = _missing(bin_dir)
    if not missing:
        return _load_bin(bin_dir, records_per_batch)
    python_layout = _python_layout(root)
    if download:
        if python_layout:
            log.info("%s holds CIFAR-10's Python layout, which nntrain does not read; fetching the binary one",
                     root)
        log.info("CIFAR-10 not found under %s; downloading %s", root, CIFAR10_URLS[0])
        download_cifar10(root, progress, mirrors)
        return _load_bin(bin_dir, records_per_batch)
    how = (f"set data.download: true to have nntrain fetch and extract it, or extract the official "
           f"{ARCHIVE_NAME} ({CIFAR10_URLS[0]}) into {root}")
    if python_layout:
        raise DataError(f"{python_layout[0]} is CIFAR-10's Python layout, which nntrain does not read (its "
                        f"batches are pickles, and nntrain never unpickles files). nntrain reads the binary "
                        f"layout, {bin_dir} with data_batch_1..5.bin and test_batch.bin, from the "
                        f"{ARCHIVE_NAME} archive: {how}")
    raise DataError(f"CIFAR-10 not found under {root}: expected {bin_dir} with data_batch_1..5.bin and "
                    f"test_batch.bin (missing: {', '.join(missing)}); {how}")
