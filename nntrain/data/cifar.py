"""CIFAR-10: readers for the official binary and Python layouts, and download of the binary archive.

Binary layout (`cifar-10-batches-bin/`): data_batch_1..5.bin and test_batch.bin, each 10000 records of
1 label byte + 3072 pixel bytes (the red plane, then green, then blue, each 32x32 row-major), so a
record's pixels reshape directly to (3, 32, 32). Python layout (`cifar-10-batches-py/`): pickled dicts
{"data": uint8 (10000, 3072), "labels": [int]}, read with nntrain's safe pickle interpreter so a
hostile file cannot run code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nntrain.data.archive import safe_extract
from nntrain.data.safe_unpickle import safe_load
from nntrain.errors import DataError

log = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer",
                                    "dog", "frog", "horse", "ship", "truck")
CIFAR10_URLS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
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


def _get(d: dict, key: str) -> Any:
    """Look a key up as text or as bytes (pickles written with encoding='bytes' conventions)."""
    if key in d:
        return d[key]
    return d.get(key.encode("ascii"))


def read_cifar_pickle(path: str | Path, expected_records: int | None = None) -> Split:
    """One Python-layout batch -> (images uint8 (N, 3, 32, 32), labels int64 (N,)), read safely."""
    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict with 'data' and 'labels', got {type(obj).__name__}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, {PIXELS}), got {what}")
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        lab = labels.astype(np.int64)
    elif isinstance(labels, list) and all(type(v) is int for v in labels):
        lab = np.asarray(labels, dtype=np.int64) if labels else np.zeros(0, np.int64)
    else:
        raise DataError(f"{path}: 'labels' must be a list of integers, got {type(labels).__name__}")
    if len(lab) != len(data):
        raise DataError(f"{path}: {len(lab)} labels for {len(data)} images")
    _check_count(len(data), expected_records, path)
    _check_labels(lab, path)
    return np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE), lab


def read_class_names(folder: str | Path) -> list[str]:
    """Class names from `batches.meta.txt` (binary layout) or `batches.meta` (Python layout) in
    `folder`, else the standard CIFAR-10 names."""
    folder = Path(folder)
    txt, meta = folder / "batches.meta.txt", folder / "batches.meta"
    if txt.is_file():
        try:
            names = [ln.strip() for ln in txt.read_text(encoding="utf-8", errors="replace").splitlines()]
        except OSError as e:
            raise DataError(f"{txt}: cannot read ({e.strerror or e})") from e
        names = [n for n in names if n]
    elif meta.is_file():
        obj = safe_load(meta)
        names = _get(obj, "label_names") if isinstance(obj, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
            raise DataError(f"{meta}: expected a dict with 'label_names', a list of {NUM_CLASSES} strings")
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    else:
        return list(CIFAR10_CLASSES)
    if len(names) != NUM_CLASSES:
        raise DataError(f"{txt if txt.is_file() else meta}: lists {len(names)} class names, "
                        f"expected {NUM_CLASSES} (one per line)")
    return names


def _missing(folder: Path, suffix: str) -> list[str]:
    return [n + suffix for n in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / (n + suffix)).is_file()]


def _load_layout(folder: Path, suffix: str, records: int | None) -> tuple[np.ndarray, ...]:
    reader = read_cifar_bin if suffix == ".bin" else read_cifar_pickle
    train = [reader(folder / (n + suffix), records) for n in TRAIN_BATCHES]
    test_images, test_labels = reader(folder / (TEST_BATCH + suffix), records)
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

    Reads `<root>/cifar-10-batches-bin` if complete, else `<root>/cifar-10-batches-py`; if neither is
    complete and `download` is true, fetches and extracts the official binary archive. Every batch must
    hold `records_per_batch` images (None: any positive number, for small test copies); `mirrors`
    are base URLs tried instead of the official one.
    """
    root = Path(root)
    bin_dir, py_dir = root / BIN_DIR, root / PY_DIR
    missing_bin = _missing(bin_dir, ".bin")
    if not missing_bin:
        return _load_layout(bin_dir, ".bin", records_per_batch)
    missing_py = _missing(py_dir, "")
    if not missing_py:
        return _load_layout(py_dir, "", records_per_batch)
    if download:
        log.info("CIFAR-10 not found under %s; downloading %s", root, CIFAR10_URLS[0])
        download_cifar10(root, progress, mirrors)
        return _load_layout(bin_dir, ".bin", records_per_batch)
    raise DataError(f"CIFAR-10 not found under {root}: expected {bin_dir} with data_batch_1..5.bin and "
                    f"test_batch.bin (missing: {', '.join(missing_bin)}) or {py_dir} with the official "
                    f"Python batches (missing: {', '.join(missing_py)}); allow downloading, or put the "
                    "official files there")


def cifar10_class_names(root: str | Path | None = None) -> list[str]:
    """Class names for the copy under `root` (its batches.meta[.txt]) or the standard ones."""
    if root is None:
        return list(CIFAR10_CLASSES)
    root = Path(root)
    for folder in (root / BIN_DIR, root / PY_DIR):
        if folder.is_dir():
            return read_class_names(folder)
    return list(CIFAR10_CLASSES)
