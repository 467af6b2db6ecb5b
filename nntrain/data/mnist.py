"""MNIST and Fashion-MNIST from their four IDX files, and the shipped `mnist-mini` subset.

Layout under a data root: `<root>/mnist/train-images-idx3-ubyte.gz` etc. (`.gz` or uncompressed);
missing files are downloaded from the official mirrors and checked against the published md5s.
Files already present are only validated structurally (recompressed copies have other checksums).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from nntrain.data.download import fetch_files, resolve_mirrors
from nntrain.data.idx import read_images, read_labels
from nntrain.errors import DataError

logger = logging.getLogger(__name__)

# The four files, in the order train images, train labels, test images, test labels.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# Per dataset: the folder under the root, mirrors (base URLs) and md5 of each official .gz download.
RESOURCES: dict[str, dict] = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "http://yann.lecun.com/exdb/mnist/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}

ImageSplits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _find(folder: Path, stem: str) -> Path | None:
    """The file for `stem` in `folder`: `<stem>.gz` preferred, else the uncompressed `<stem>`."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dataset(name: str, root: Path, download: bool = True, progress: bool = True,
                     mirrors: Sequence[str] | str | None = None, num_classes: int = 10) -> ImageSplits:
    """`<root>/<name>/` IDX files -> (train_images uint8 (N,1,28,28), train_labels int64 (N,), test_images, test_labels).

    Only missing files are downloaded (from `mirrors`, else $NNTRAIN_MIRROR, else the official ones).
    """
    res = RESOURCES[name]
    folder = Path(root) / name
    paths = {stem: _find(folder, stem) for stem in IDX_FILES}
    missing = [stem for stem, p in paths.items() if p is None]
    if missing:
        urls = resolve_mirrors(res["mirrors"], mirrors)
        names = [f"{stem}.gz" for stem in missing]
        if not download:
            raise DataError(f"{name}: missing {', '.join(names)} in {folder}/ ; place the files there "
                            f"(from {urls[0]}) or allow downloading (download: true)")
        logger.info("%s: downloading %d missing file(s) into %s", name, len(missing), folder)
        fetch_files(folder, {n: res["md5"][n] for n in names}, urls, progress=progress)
        paths = {stem: _find(folder, stem) for stem in IDX_FILES}
    train_x = read_images(paths[IDX_FILES[0]], (28, 28))
    train_y = read_labels(paths[IDX_FILES[1]], num_classes)
    test_x = read_images(paths[IDX_FILES[2]], (28, 28))
    test_y = read_labels(paths[IDX_FILES[3]], num_classes)
    for x, y, xp, yp in ((train_x, train_y, paths[IDX_FILES[0]], paths[IDX_FILES[1]]),
                         (test_x, test_y, paths[IDX_FILES[2]], paths[IDX_FILES[3]])):
        if len(x) != len(y):
            raise DataError(f"{xp} holds {len(x)} images but {yp} holds {len(y)} labels; "
                            f"the two files must have the same count")
    # (N, 28, 28) -> (N, 1, 28, 28): a view, no copy.
    return train_x[:, None], train_y, test_x[:, None], test_y


# ---- mnist-mini: a small class-balanced MNIST subset shipped inside the package ----

MINI_PATH = Path(__file__).resolve().parent / "mini" / "mnist-mini.npz"
MINI_TRAIN_PER_CLASS = 500
MINI_TEST_PER_CLASS = 100
_MINI_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def select_balanced(labels: np.ndarray, per_class: int, num_classes: int = 10) -> np.ndarray:
    """Indices of the first `per_class` examples of each class, in file order: labels (N,) -> (per_class*num_classes,).

    Deterministic without any randomness (MNIST's file order is already mixed), so the subset can be
    rebuilt exactly from the official files.
    """
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx) < per_class:
            raise DataError(f"class {c} has only {len(idx)} examples, {per_class} needed for the subset")
        chosen.append(idx)
    return np.sort(np.concatenate(chosen))


def build_mnist_mini(root: Path, download: bool = False, progress: bool = True) -> dict[str, np.ndarray]:
    """The mnist-mini arrays from the full MNIST under `root`: images uint8 (N,1,28,28), labels uint8 (N,)."""
    train_x, train_y, test_x, test_y = load_idx_dataset("mnist", Path(root), download=download, progress=progress)
    tr = select_balanced(train_y, MINI_TRAIN_PER_CLASS)
    te = select_balanced(test_y, MINI_TEST_PER_CLASS)
    return {"train_images": np.ascontiguousarray(train_x[tr]), "train_labels": train_y[tr].astype(np.uint8),
            "test_images": np.ascontiguousarray(test_x[te]), "test_labels": test_y[te].astype(np.uint8)}


def load_mnist_mini(path: Path = MINI_PATH, num_classes: int = 10) -> ImageSplits:
    """The shipped subset -> (train_images uint8 (N,1,28,28), train_labels int64, test_images, test_labels).

    Read with allow_pickle=False and checked (keys, dtypes, shapes, label range) like any data file.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if keys != set(_MINI_KEYS):
                raise DataError(f"{path}: expected arrays {', '.join(_MINI_KEYS)}, found {', '.join(sorted(keys)) or 'none'}")
            arrays = {k: npz[k] for k in _MINI_KEYS}
    except FileNotFoundError as e:
        raise DataError(f"{path}: the shipped mnist-mini file is missing; reinstall nntrain or rebuild it "
                        f"with scripts/make_mnist_mini.py DATA_ROOT") from e
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: unreadable mnist-mini file ({e}); reinstall nntrain or rebuild it with "
                        f"scripts/make_mnist_mini.py DATA_ROOT") from e
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise DataError(f"{path}: {split}_images must be uint8 (N, 1, 28, 28), got {x.dtype} {x.shape}")
        if y.dtype != np.uint8 or y.shape != (len(x),):
            raise DataError(f"{path}: {split}_labels must be uint8 ({len(x)},), got {y.dtype} {y.shape}")
        if y.size and int(y.max()) >= num_classes:
            raise DataError(f"{path}: {split}_labels hold {int(y.max())}; labels must lie in 0..{num_classes - 1}")
        out += [x, y.astype(np.int64)]
    return out[0], out[1], out[2], out[3]
