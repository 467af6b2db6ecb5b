#!/usr/bin/env python
"""Write example data for `dataset: folder` and `dataset: csv` from the shipped mnist-mini.

Usage: python scripts/make_example_data.py [OUT] [--per-class N]
OUT (default: example-data) receives
  digits/train/<digit>/<n>.png, digits/test/<digit>/<n>.png   an image folder (configs/folder_example.yaml)
  digits.csv                                                  Kaggle's digit-recognizer form:
                                                              label,pixel0..pixel783 (configs/csv_example.yaml)
Nothing is downloaded: mnist-mini ships with nntrain.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def balanced_subset(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """Indices of the first `per_class` images of each label (all of them for None), in file order."""
    if per_class is None:
        return np.arange(len(labels))
    keep = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in np.unique(labels)])
    return np.sort(keep)


def write_png_folder(out: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> None:
    """uint8 (N, 1, H, W) images -> out/<class>/<n>.png."""
    from PIL import Image

    for n, (img, label) in enumerate(zip(images, labels)):
        folder = out / class_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(folder / f"{n:05d}.png")


def write_pixel_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Kaggle's digit-recognizer form: a header label,pixel0,... and one row per image."""
    flat = images.reshape(len(images), -1)
    header = "label," + ",".join(f"pixel{i}" for i in range(flat.shape[1]))
    rows = np.concatenate([labels[:, None].astype(np.int64), flat.astype(np.int64)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, rows, fmt="%d", delimiter=",", header=header, comments="")


def main(argv: list[str] | None = None) -> int:
    from nntrain.data.mnist import load_mnist_mini

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("example-data"), help="output folder")
    parser.add_argument("--per-class", type=int, default=None,
                        help="training images per digit (default: all 500; the test part gets a fifth)")
    args = parser.parse_args(argv)
    train_x, train_y, test_x, test_y = load_mnist_mini()
    names = [str(d) for d in range(10)]
    tr = balanced_subset(train_y, args.per_class)
    te = balanced_subset(test_y, None if args.per_class is None else max(1, args.per_class // 5))
    write_png_folder(args.out / "digits" / "train", train_x[tr], train_y[tr], names)
    write_png_folder(args.out / "digits" / "test", test_x[te], test_y[te], names)
    write_pixel_csv(args.out / "digits.csv", np.concatenate([train_x[tr], test_x[te]]),
                    np.concatenate([train_y[tr], test_y[te]]))
    print(f"wrote {args.out / 'digits'} ({len(tr)} train, {len(te)} test PNGs) and {args.out / 'digits.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
