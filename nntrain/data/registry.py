"""The datasets nntrain knows by name: their shapes and class names, where their files live, how to load them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nntrain.errors import ConfigError, DataError
from nntrain.options import closest

DATA_ENV = "NNTRAIN_DATA"


@dataclass(frozen=True)
class DatasetInfo:
    """What the config, the model and the tools need to know about a dataset, in one table.

    input_shape: per-sample (C, H, W); num_train / num_test: the sizes of the standard splits (for
    checking data.val_size before loading); val_size: the default data.val_size; white_on_black:
    bright strokes on a dark background (MNIST-style), so photographed ink on paper is inverted.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    num_train: int
    num_test: int
    val_size: int = 5000
    white_on_black: bool = False


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: images uint8 (N, C, H, W), labels int64 (N,), train and test splits."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    info: DatasetInfo


Loader = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def _load_mnist(root: Path, download: bool, progress: bool, mirrors) -> tuple:
    from nntrain.data.mnist import load_idx_dataset
    return load_idx_dataset("mnist", root, download=download, progress=progress, mirrors=mirrors)


def _load_fashion(root: Path, download: bool, progress: bool, mirrors) -> tuple:
    from nntrain.data.mnist import load_idx_dataset
    return load_idx_dataset("fashion-mnist", root, download=download, progress=progress, mirrors=mirrors)


def _load_mini(root: Path, download: bool, progress: bool, mirrors) -> tuple:
    from nntrain.data.mnist import load_mnist_mini
    return load_mnist_mini()


def _load_cifar10(root: Path, download: bool, progress: bool, mirrors) -> tuple:
    # Imported lazily: the CIFAR reader is only needed (and only imported) for CIFAR runs.
    from nntrain.data.cifar import load_cifar10
    from nntrain.data.download import resolve_mirrors
    # Like mnist/ and fashion-mnist/, CIFAR-10 lives in its own folder: <root>/cifar10/cifar-10-batches-bin/.
    return load_cifar10(root / "cifar10", download=download, progress=progress,
                        mirrors=resolve_mirrors([], mirrors) or None)


_DIGITS = tuple(str(d) for d in range(10))
DATASETS: dict[str, tuple[DatasetInfo, Loader]] = {
    "mnist": (DatasetInfo("mnist", (1, 28, 28), 10, _DIGITS, 60000, 10000, white_on_black=True), _load_mnist),
    "fashion-mnist": (DatasetInfo("fashion-mnist", (1, 28, 28), 10,
                                  ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"), 60000, 10000,
                                  white_on_black=True),
                      _load_fashion),
    # mnist-mini has only a few thousand training images: a smaller default validation split
    "mnist-mini": (DatasetInfo("mnist-mini", (1, 28, 28), 10, _DIGITS, 5000, 1000, val_size=500,
                               white_on_black=True), _load_mini),
    "cifar10": (DatasetInfo("cifar10", (3, 32, 32), 10,
                            ("airplane", "automobile", "bird", "cat", "deer",
                             "dog", "frog", "horse", "ship", "truck"), 50000, 10000), _load_cifar10),
}


def dataset_info(name: str) -> DatasetInfo:
    """The DatasetInfo of a dataset name; an unknown name is a ConfigError at `data.dataset` listing valid ones."""
    if not isinstance(name, str) or name not in DATASETS:
        hint = closest(name.lower(), DATASETS) if isinstance(name, str) else ""
        raise ConfigError(f"unknown dataset {name!r}{hint}; valid datasets: {', '.join(DATASETS)}",
                          path="data.dataset")
    return DATASETS[name][0]


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data root: `root` (data.root) if given, else $NNTRAIN_DATA, else ~/.cache/nntrain."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "nntrain"


def _check_split(name: str, split: str, x: np.ndarray, y: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Loader output contract: uint8 (N, C, H, W) images, integer (N,) labels in range; returns labels as int64."""
    if isinstance(y, np.ndarray) and y.dtype.kind in "iu" and y.dtype != np.int64:
        y = y.astype(np.int64)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape[1:] != info.input_shape:
        raise DataError(f"{name}: {split} images must be uint8 (N, {', '.join(map(str, info.input_shape))}), "
                        f"got {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
    if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (len(x),):
        raise DataError(f"{name}: {split} labels must be int64 ({len(x)},), "
                        f"got {getattr(y, 'dtype', type(y))} {getattr(y, 'shape', '')}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise DataError(f"{name}: {split} labels must lie in 0..{info.num_classes - 1}, "
                        f"found {int(y.min())}..{int(y.max())}")
    return y


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = True, progress: bool = True,
                 mirrors: Sequence[str] | str | None = None) -> Dataset:
    """Load a dataset by name from the data root (see `resolve_root`), downloading missing files.

    `mirrors` (base URLs) replaces the official download locations, as $NNTRAIN_MIRROR does.
    mnist-mini ships inside the package and ignores the root.
    """
    info = dataset_info(name)
    loader = DATASETS[name][1]
    train_x, train_y, test_x, test_y = loader(resolve_root(root), download, progress, mirrors)
    train_y = _check_split(name, "train", train_x, train_y, info)
    test_y = _check_split(name, "test", test_x, test_y, info)
    return Dataset(train_x, train_y, test_x, test_y, info)
