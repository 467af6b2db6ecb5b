#!/usr/bin/env python
"""Time `dataset: folder` on CIFAR-10 as JPEG files, and check it against the binary CIFAR-10.

Usage: python bench/folder.py JPEG_DIR [--cifar-root ROOT] [--cache DIR]
JPEG_DIR holds train|test/<class>/<n>.jpg (the 60,000 CIFAR-10 images); ROOT holds
cifar10/cifar-10-batches-bin/ (default: $NNTRAIN_DATA). Reports the first decode (empty cache) and the
cached load, then whether every (label, image) of each split occurs in the binary files as often as in
the folder (the binary files are shuffled, so images are matched by content).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from nntrain.data import folder as folder_mod
from nntrain.data.registry import DATASETS, resolve_root
from nntrain.rng import stream


def content_counts(images: np.ndarray, labels: np.ndarray) -> Counter:
    """How often each (label, image bytes) occurs, by a hash of both."""
    return Counter(hashlib.blake2b(bytes([int(y)]) + x.tobytes(), digest_size=16).digest()
                   for x, y in zip(images, labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jpeg_dir", type=Path)
    parser.add_argument("--cifar-root", default=None)
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: a fresh temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    classes = DATASETS["cifar10"][0].class_names
    cache = args.cache or Path(tempfile.mkdtemp(prefix="nntrain-folder-bench-"))
    folder_mod.cache_dirs = lambda root: [cache]   # this benchmark's own cache, empty at first

    def load():
        return folder_mod.load_folder(args.jpeg_dir, (32, 32), "rgb", 0.2, lambda: stream(0, "test_split"),
                                      classes, progress=False)

    t = time.perf_counter()
    _, tr_x, tr_y, te_x, te_y = load()
    first = time.perf_counter() - t
    t = time.perf_counter()
    again = load()
    cached = time.perf_counter() - t
    assert all(np.array_equal(a, b) for a, b in zip(again[1:], (tr_x, tr_y, te_x, te_y)))
    print(f"cores: {os.cpu_count()}  images: {len(tr_x)} train + {len(te_x)} test")
    print(f"first decode (empty cache): {first:.1f} s   cached load: {cached:.2f} s")
    from nntrain.data.cifar import load_cifar10

    bx, by, bx_test, by_test = load_cifar10(resolve_root(args.cifar_root) / "cifar10", download=False, progress=False)
    for split, (x, y, b, bl) in {"train": (tr_x, tr_y, bx, by), "test": (te_x, te_y, bx_test, by_test)}.items():
        ours, theirs = content_counts(x, y), content_counts(b, bl)
        same = sum((ours & theirs).values())
        print(f"{split}: {same} of {len(x)} (label, image) pairs found in the binary files "
              f"({len(b)} there); identical multisets: {ours == theirs}")


if __name__ == "__main__":
    main()
