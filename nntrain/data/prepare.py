"""A config's data, ready to train or evaluate on: loaded, split, with its normalisation statistics.

Shared by training, `eval` and `augment-preview`, so that `eval --split val` always sees the very
validation images training held out (the split comes from the run's seed through the "split" stream).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from nntrain.data.loader import channel_stats, split_validation
from nntrain.data.registry import DatasetInfo, load_configured
from nntrain.rng import stream


@dataclass(frozen=True)
class PreparedData:
    """uint8 images (N, C, H, W) and int64 labels (N,) of each split; mean/std (C,) float32 on the
    [0, 1] scale from the training split, or None when data.normalize is false."""

    info: DatasetInfo
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    mean: np.ndarray | None
    std: np.ndarray | None

    @functools.cached_property
    def fingerprint(self) -> dict[str, Any]:
        """What identifies these data, stored in every checkpoint so that a resume or an `eval` on changed
        data is noticed: the dataset name, the split sizes and a BLAKE2b-128 hash of every split's images
        and labels (dtype and shape included). Computed once; about 0.1 s for MNIST (55 MB)."""
        h = hashlib.blake2b(digest_size=16)
        for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
            a = np.ascontiguousarray(getattr(self, name))
            h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            h.update(a)
        return {"dataset": self.info.name,
                "sizes": {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)},
                "hash": f"blake2b-128:{h.hexdigest()}"}

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of "train", "val" or "test"."""
        return {"train": (self.train_x, self.train_y), "val": (self.val_x, self.val_y),
                "test": (self.test_x, self.test_y)}[name]


def prepare(data_cfg: Mapping[str, Any], seed: int, progress: bool = True, root: str | None = None) -> PreparedData:
    """Load `data_cfg["dataset"]` (from `root`, else data.root; an image folder or CSV file through
    `load_configured`, its test split drawn from the seed's "test_split" stream), hold out data.val_size training images
    with the seed's split stream, and compute the normalisation statistics of what is left."""
    ds = load_configured(data_cfg, seed, root=root, progress=progress)
    train_x, train_y, val_x, val_y = split_validation(ds.train_images, ds.train_labels, data_cfg["val_size"],
                                                      stream(seed, "split"))
    mean = std = None
    if data_cfg.get("normalize", True):
        mean, std = channel_stats(train_x)
    return PreparedData(ds.info, train_x, train_y, val_x, val_y, ds.test_images, ds.test_labels, mean, std)
