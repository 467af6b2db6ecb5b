"""Data for the benchmark: finding the files, reading them (for the PyTorch side), and writing
training-set subsets (for `--quick` and `--scaling`) in the standard IDX format.

Both sides read the very same files from the same data root: MNIST as `<root>/mnist/*-idx?-ubyte.gz`,
CIFAR-10 as `<root>/cifar10/cifar-10-batches-bin/*.bin` (nntrain's layout). A subset root holds the first `n` training images
(MNIST's file order is already mixed) and the full test set.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
CIFAR_DIR = "cifar10/cifar-10-batches-bin"  # nntrain's layout under a data root
CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR_RECORD = 1 + 3 * 32 * 32
TRAIN_SIZE = {"mnist": 60000, "cifar10": 50000}


def default_root() -> Path:
    """The data root nntrain itself uses: $NNTRAIN_DATA, else ~/.cache/nntrain."""
    env = os.environ.get("NNTRAIN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nntrain"


def _mnist_path(root: Path, stem: str) -> Path | None:
    for p in (root / "mnist" / f"{stem}.gz", root / "mnist" / stem):
        if p.is_file():
            return p
    return None


def missing_files(dataset: str, root: Path) -> list[str]:
    """The files of `dataset` that are not under `root` (empty when it is complete)."""
    if dataset == "mnist":
        return [f"mnist/{s}.gz" for s in MNIST_FILES if _mnist_path(root, s) is None]
    return [f"{CIFAR_DIR}/{f}" for f in CIFAR_FILES if not (root / CIFAR_DIR / f).is_file()]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (.gz or raw) of unsigned bytes -> uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    nd = magic & 0xFF
    shape = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file (magic 0x0000080N, big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        f.write(array.tobytes())


def load(dataset: str, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images uint8 (N, C, H, W), train labels int64, test images, test labels) from `root`."""
    if dataset == "mnist":
        x_tr, y_tr, x_te, y_te = (read_idx(_mnist_path(root, s)) for s in MNIST_FILES)
        return x_tr[:, None], y_tr.astype(np.int64), x_te[:, None], y_te.astype(np.int64)
    recs = [np.fromfile(root / CIFAR_DIR / f, np.uint8).reshape(-1, CIFAR_RECORD) for f in CIFAR_FILES]
    tr, te = np.concatenate(recs[:5]), recs[5]
    return (tr[:, 1:].reshape(-1, 3, 32, 32), tr[:, 0].astype(np.int64),
            te[:, 1:].reshape(-1, 3, 32, 32), te[:, 0].astype(np.int64))


def normalize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """float32 copies scaled to [0, 1] and standardised with the training set's per-channel mean/std
    (what nntrain's `data.normalize: true` does). Statistics are summed in chunks and the scaling is
    done in place, so the peak memory is one float32 copy of each array (no hidden float64 copy)."""
    c = train.shape[1]
    s = np.zeros(c)
    ss = np.zeros(c)
    for chunk in np.array_split(train, max(1, len(train) // 2000)):
        f = chunk.astype(np.float64)
        s += f.sum(axis=(0, 2, 3))
        ss += np.square(f).sum(axis=(0, 2, 3))
    count = train.size / c
    mean = s / count / 255.0
    std = np.sqrt(np.maximum(ss / count / 255.0 ** 2 - mean ** 2, 0.0))
    std[std == 0] = 1.0
    out = []
    for a in (train, *others):
        x = a.astype(np.float32)
        x *= np.float32(1 / 255.0)
        x -= mean.astype(np.float32).reshape(1, c, 1, 1)
        x /= std.astype(np.float32).reshape(1, c, 1, 1)
        out.append(x)
    return out


def subset_supported(dataset: str) -> bool:
    """Whether nntrain can read a smaller training set of `dataset` (its CIFAR reader requires the
    full 10000 records per batch file, so only MNIST subsets are possible)."""
    return dataset == "mnist"


def make_subset_root(dataset: str, root: Path, n_train: int, dest: Path) -> Path:
    """A data root under `dest` with the first `n_train` training images of `root` and the full
    test set; returns `dest`. Files are written in the standard IDX format nntrain reads."""
    if not subset_supported(dataset):
        raise ValueError(f"no subset support for {dataset}")
    folder = dest / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    images = read_idx(_mnist_path(root, MNIST_FILES[0]))
    labels = read_idx(_mnist_path(root, MNIST_FILES[1]))
    write_idx(folder / f"{MNIST_FILES[0]}.gz", images[:n_train])
    write_idx(folder / f"{MNIST_FILES[1]}.gz", labels[:n_train])
    for stem in MNIST_FILES[2:]:
        src = _mnist_path(root, stem)
        shutil.copyfile(src, folder / src.name)
    return dest
