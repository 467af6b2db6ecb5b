"""CSV files as a dataset, in either of two forms (a header row is required):

- pixels (Kaggle's digit-recognizer form): a `label` column and one column per pixel value (0-255), in
  the order of `image_shape` (C, H, W) flattened;
- paths: a `path` column (image files, relative to the CSV's folder) and a `label` column; the images
  are decoded like an image folder's (`nntrain.data.folder`: `image_size`, `color`, the cache).

Labels are integers 0..K-1 (class names "0".."K-1") or, in the paths form, class names (sorted; or
`data.classes`, in that order). Every malformed row is a DataError naming the file and line.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nntrain.data.folder import load_images, stratified_split
from nntrain.errors import DataError


@dataclass(frozen=True)
class CsvScan:
    """A CSV read and checked: its form ("pixels" or "paths"), class names, labels int64 (N,), and the
    pixel rows (pixels form, uint8 (N, features)) or image paths (paths form)."""

    path: Path
    form: str
    classes: tuple[str, ...]
    labels: np.ndarray
    pixels: np.ndarray | None
    files: tuple[Path, ...] | None


def _rows(path: Path) -> tuple[list[str], list[str]]:
    """The header's fields and the other non-empty lines, unsplit."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{path} is empty: expected a header row (label,pixel0,... or path,label)")
        header = next(csv.reader(lines[:1]))
    except FileNotFoundError:
        raise DataError(f"CSV file {path} does not exist") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a readable CSV file: {e}") from None
    return [h.strip() for h in header], lines[1:]


def _form(path: Path, header: list[str]) -> str:
    names = [h.lower() for h in header]
    if "label" not in names:
        raise DataError(f"{path}: the header row {','.join(header[:5])}{',...' if len(header) > 5 else ''} has no "
                        "'label' column; expected label,pixel0,pixel1,... or path,label")
    if "path" in names and len(names) == 2:
        return "paths"
    if "path" in names:
        raise DataError(f"{path}: a CSV of image paths has exactly two columns, path and label; got {len(names)}")
    return "pixels"


def _int_label(path: Path, line: int, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise DataError(f"{path}, line {line}: label {text!r} is not an integer") from None
    if value < 0:
        raise DataError(f"{path}, line {line}: label {value} is negative; labels are 0, 1, 2, ...")
    return value


def scan_csv(path: str | os.PathLike, classes: Sequence[str] | None = None,
             image_shape: Sequence[int] | None = None, read_pixels: bool = True) -> CsvScan:
    """Read and check a CSV (see the module docstring). `classes`: the class names in label order
    (None: from the labels); `image_shape`: (C, H, W) of the pixels form, whose product must equal the
    number of pixel columns; `read_pixels` False leaves the pixel values unread (`pixels` None)."""
    path = Path(path).expanduser()
    header, rows = _rows(path)
    form = _form(path, header)
    label_col = [h.lower() for h in header].index("label")
    width = len(header)
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    if form == "pixels":   # plain comma-separated numbers: split by hand, much faster than the csv module
        counts = np.fromiter((row.count(",") for row in rows), np.int64, len(rows))
        wrong = np.flatnonzero(counts != width - 1)
        if len(wrong):
            i = int(wrong[0])
            raise DataError(f"{path}, line {i + 2}: {counts[i] + 1} columns, but the header has {width}")
        texts = [row.split(",", label_col + 1)[label_col] for row in rows]
    else:
        rows = list(csv.reader(rows))
        for i, row in enumerate(rows):
            if len(row) != width:
                raise DataError(f"{path}, line {i + 2}: {len(row)} columns, but the header has {width}")
        texts = [row[label_col] for row in rows]
    all_int = all(t.strip().lstrip("-").isdigit() for t in texts)
    if form == "pixels" or (all_int and classes is None):
        labels = np.asarray([_int_label(path, i + 2, t) for i, t in enumerate(texts)], np.int64)
        names = tuple(classes) if classes is not None else tuple(str(k) for k in range(int(labels.max()) + 1))
        if labels.max() >= len(names):
            line = int(np.argmax(labels >= len(names))) + 2
            raise DataError(f"{path}, line {line}: label {labels[line - 2]} is out of range for the "
                            f"{len(names)} classes {', '.join(names[:10])}")
    else:
        names = tuple(classes) if classes is not None else tuple(sorted({t.strip() for t in texts}))
        index = {n: k for k, n in enumerate(names)}
        if all_int and not all(t.strip() in index for t in texts):   # integer labels with given class names
            labels = np.asarray([_int_label(path, i + 2, t) for i, t in enumerate(texts)], np.int64)
        else:
            for i, t in enumerate(texts):
                if t.strip() not in index:
                    raise DataError(f"{path}, line {i + 2}: unknown class {t.strip()!r}; the classes are "
                                    f"{', '.join(names[:20])}")
            labels = np.asarray([index[t.strip()] for t in texts], np.int64)
        if labels.max() >= len(names):
            raise DataError(f"{path}: label {int(labels.max())} is out of range for the {len(names)} classes")
    present = np.unique(labels)
    if len(names) < 2 or len(present) < 2:
        raise DataError(f"{path} has labels of {len(present)} class ({names[int(present[0])]}); a classifier "
                        "needs at least two")
    if form == "paths":
        col = 1 - label_col
        files = tuple(path.parent / row[col].strip() for row in rows)
        return CsvScan(path, form, names, labels, None, files)
    pixels = _pixels(path, rows, label_col, image_shape) if read_pixels else None
    return CsvScan(path, form, names, labels, pixels, None)


def _pixels(path: Path, rows: list[str], label_col: int, image_shape: Sequence[int] | None) -> np.ndarray:
    features = rows[0].count(",")
    if image_shape is not None and int(np.prod(image_shape)) != features:
        raise DataError(f"{path} has {features} pixel columns, but data.image_shape "
                        f"{list(image_shape)} holds {int(np.prod(image_shape))} values")
    try:
        values = np.loadtxt(rows, delimiter=",", dtype=np.int64, ndmin=2)
        values = np.delete(values, label_col, axis=1)
    except ValueError:
        for i, line in enumerate(rows):
            for j, text in enumerate(line.split(",")):
                if j != label_col and not text.strip().isdigit():
                    raise DataError(f"{path}, line {i + 2}, column {j + 1}: pixel value {text!r} is not an "
                                    "integer in 0..255") from None
        raise DataError(f"{path}: pixel values must be integers in 0..255") from None
    bad = (values < 0) | (values > 255)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{path}, line {i + 2}: pixel value {values[i, j]} is outside 0..255")
    return values.astype(np.uint8)


def csv_images(scan: CsvScan, image_shape: Sequence[int] | None, image_size: Sequence[int] | None, color: str,
               strict: bool, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) images and int64 labels of a scanned CSV (unreadable image files dropped or
    refused, as in an image folder)."""
    if scan.form == "pixels":
        if image_shape is None:
            raise DataError(f"{scan.path} holds pixel values: data.image_shape [C, H, W] must say their shape")
        return scan.pixels.reshape(len(scan.labels), *map(int, image_shape)), scan.labels
    if image_size is None:
        raise DataError(f"{scan.path} lists image files: data.image_size [H, W] must say their size")
    size = (int(image_size[0]), int(image_size[1]))
    return load_images(scan.path.parent, scan.files, scan.labels, size, color, strict, str(scan.path), progress)


def load_csv(path: str | os.PathLike, test_path: str | os.PathLike | None, image_shape: Sequence[int] | None,
             image_size: Sequence[int] | None, color: str, test_size: float,
             rng_factory: Callable[[], np.random.Generator], classes: Sequence[str] | None = None,
             strict: bool = False, progress: bool = True) -> tuple[tuple[str, ...], np.ndarray, np.ndarray,
                                                                   np.ndarray, np.ndarray]:
    """(classes, train_x, train_y, test_x, test_y) of a CSV dataset; without `test_path` a stratified
    test split of `test_size` from `rng_factory()`."""
    train = scan_csv(path, classes, image_shape)
    train_x, train_y = csv_images(train, image_shape, image_size, color, strict, progress)
    if test_path is not None:
        test = scan_csv(test_path, train.classes, image_shape)
        if test.form != train.form:
            raise DataError(f"{test.path} is a CSV of {test.form}, but {train.path} one of {train.form}")
        test_x, test_y = csv_images(test, image_shape, image_size, color, strict, progress)
        return train.classes, train_x, train_y, test_x, test_y
    train_idx, test_idx = stratified_split(train_y, test_size, rng_factory())
    return train.classes, train_x[train_idx], train_y[train_idx], train_x[test_idx], train_y[test_idx]
