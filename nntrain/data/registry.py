"""The datasets nntrain knows by name: their shapes and class names, where their files live, how to load them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

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


# --- datasets described by the config: image folders and CSV files ----------------------------------
CONFIGURED = ("folder", "csv")   # data.dataset values whose shape and classes come from data.root / data.path


def _default_val_size(num_train: int) -> int:
    return max(1, num_train // 10) if num_train >= 2 else 0


def _test_count(labels: np.ndarray, test_size: float) -> int:
    from nntrain.data.folder import stratified_split
    return len(stratified_split(labels, test_size, np.random.default_rng(0))[1])


def data_info(data_cfg: Mapping[str, Any], listing: bool = False) -> DatasetInfo:
    """The DatasetInfo of a data section: `dataset_info` of a named dataset, or, for `folder` and `csv`,
    one computed from the config (input shape from image_size/color or image_shape) and from the files:
    a folder is only listed, a CSV's labels read; nothing is decoded. When data.classes is given (a
    resolved config carries them) the files are not touched unless `listing`: the class names come from
    it and the split sizes are unknown (0), so a trained model is rebuilt without its data."""
    name = data_cfg.get("dataset")
    if name not in CONFIGURED:
        return dataset_info(name)
    classes = data_cfg.get("classes")
    test_size = float(data_cfg.get("test_size", 0.2))
    if name == "folder":
        root = data_cfg.get("root")
        if root is None or str(root) == "":
            raise ConfigError("dataset: folder needs data.root, the folder holding a folder of images per class",
                              "data.root")
        size = data_cfg.get("image_size")
        if size is None:
            raise ConfigError("dataset: folder needs data.image_size [H, W], the size images are resized to",
                              "data.image_size")
        shape = (1 if data_cfg.get("color", "rgb") == "grey" else 3, int(size[0]), int(size[1]))
        if classes is not None and not listing:
            return DatasetInfo(f"folder:{Path(root).name}", shape, len(classes), tuple(classes), 0, 0, 0)
        from nntrain.data.folder import scan_folder
        scan = scan_folder(root, classes)
        n_test = len(scan.test_files) if scan.test_files is not None else _test_count(scan.train_labels, test_size)
        n_train = len(scan.train_files) - (0 if scan.test_files is not None else n_test)
        return DatasetInfo(f"folder:{scan.root.name}", shape, len(scan.classes), scan.classes, n_train, n_test,
                           _default_val_size(n_train))
    path = data_cfg.get("path")
    if path is None:
        raise ConfigError("dataset: csv needs data.path, the CSV file", "data.path")
    label = f"csv:{Path(path).name}"
    if classes is not None and not listing:
        shape = _csv_shape(data_cfg, None)
        return DatasetInfo(label, shape, len(classes), tuple(classes), 0, 0, 0)
    from nntrain.data.csvdata import scan_csv
    scan = scan_csv(path, classes, data_cfg.get("image_shape"), read_pixels=False)
    shape = _csv_shape(data_cfg, scan.form)
    if data_cfg.get("test_path") is not None:
        n_train, n_test = len(scan.labels), 0
    else:
        n_test = _test_count(scan.labels, test_size)
        n_train = len(scan.labels) - n_test
    return DatasetInfo(label, shape, len(scan.classes), scan.classes, n_train, n_test, _default_val_size(n_train))


def _csv_shape(data_cfg: Mapping[str, Any], form: str | None) -> tuple[int, int, int]:
    """A CSV's per-sample shape: image_shape (pixels form), else image_size and color (paths form)."""
    shape, size = data_cfg.get("image_shape"), data_cfg.get("image_size")
    if form == "pixels" or (form is None and shape is not None):
        if shape is None:
            raise ConfigError("a CSV of pixel values needs data.image_shape [C, H, W]", "data.image_shape")
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    if size is None:
        raise ConfigError("a CSV of image paths needs data.image_size [H, W]", "data.image_size")
    return (1 if data_cfg.get("color", "rgb") == "grey" else 3, int(size[0]), int(size[1]))


def load_configured(data_cfg: Mapping[str, Any], seed: int, root: str | os.PathLike | None = None,
                    progress: bool = True) -> Dataset:
    """Load a data section: a named dataset (`load_dataset`), or an image folder / CSV file, whose test
    split (when it brings none) is drawn with the seed's "test_split" stream. `root` replaces data.root."""
    name = data_cfg["dataset"]
    if name not in CONFIGURED:
        return load_dataset(name, root=root if root is not None else data_cfg.get("root"),
                            download=data_cfg.get("download", True), progress=progress)
    from nntrain.rng import stream

    classes = data_cfg.get("classes")
    test_size = float(data_cfg.get("test_size", 0.2))
    strict = bool(data_cfg.get("strict", False))
    rng_factory = lambda: stream(seed, "test_split")   # noqa: E731
    if name == "folder":
        from nntrain.data.folder import load_folder
        folder = root if root is not None else data_cfg["root"]
        names, train_x, train_y, test_x, test_y = load_folder(
            folder, data_cfg["image_size"], data_cfg.get("color", "rgb"), test_size, rng_factory, classes,
            strict, progress)
    else:
        from nntrain.data.csvdata import load_csv
        names, train_x, train_y, test_x, test_y = load_csv(
            data_cfg["path"], data_cfg.get("test_path"), data_cfg.get("image_shape"), data_cfg.get("image_size"),
            data_cfg.get("color", "rgb"), test_size, rng_factory, classes, strict, progress)
    info = data_info({**data_cfg, "classes": list(names), **({"root": str(root)} if root is not None else {})})
    info = DatasetInfo(info.name, info.input_shape, len(names), tuple(names), len(train_x), len(test_x),
                       _default_val_size(len(train_x)), info.white_on_black)
    train_y = _check_split(info.name, "train", train_x, train_y, info)
    test_y = _check_split(info.name, "test", test_x, test_y, info)
    return Dataset(train_x, train_y, test_x, test_y, info)
