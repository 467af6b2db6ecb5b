"""Image folders as a dataset: `ROOT/<class>/*.png` (or `ROOT/train/<class>/...` + `ROOT/test/<class>/...`).

Class names are the folder names, sorted (or `data.classes`, in that order); listing them is cheap, so
the config schema learns the classes and split sizes without decoding anything (`scan_folder`). The
images are decoded with Pillow on a thread pool (Pillow releases the GIL while it decodes and resizes),
converted to grey or RGB, resized to `image_size` and kept uint8 `(N, C, H, W)`. The decoded arrays are
cached as an `.npz` keyed by the files' relative names, sizes and modification times, the image size and
the colour mode (`decode_cached`), so an unchanged folder loads in a second and a changed one is read
again. Unreadable images are skipped with a warning naming them, or refused (`strict`); see `keep_good`.

Without a test folder, a stratified test split (`test_size` of each class) is drawn from the seed's
"test_split" stream (`stratified_split`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nntrain.atomic import atomic_write_bytes
from nntrain.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CACHE_VERSION = 1
# Refuse a few bad files quietly skipped in a big folder? No: skip them with a warning, but refuse a
# folder where more than this share of the images cannot be read (something else is wrong).
MAX_BAD_SHARE = 0.1
_CHUNK = 64   # files per decoding task


@dataclass(frozen=True)
class FolderScan:
    """The listing of an image folder: class names, and (file, label) lists of each split.

    test_files is None when the folder has no test/ part (a test split is then drawn)."""

    root: Path
    classes: tuple[str, ...]
    train_files: tuple[str, ...]
    train_labels: np.ndarray
    test_files: tuple[str, ...] | None
    test_labels: np.ndarray | None


def _class_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"cannot list image folder {folder}: {e.strerror or e}") from None


def _images_in(folder: Path) -> list[str]:
    """The image files of a folder (one of IMAGE_SUFFIXES, any case; not hidden), sorted by name, as
    strings (pathlib objects cost seconds for 60,000 files)."""
    try:
        names = sorted(e.name for e in os.scandir(folder)
                       if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower()
                       in IMAGE_SUFFIXES)
        return [os.path.join(folder, name) for name in names]
    except OSError as e:
        raise DataError(f"cannot list image folder {folder}: {e.strerror or e}") from None


def has_split_layout(root: Path) -> bool:
    """ROOT/train/ and ROOT/test/ both present: the folder brings its own test split."""
    return (root / "train").is_dir() and (root / "test").is_dir()


def scan_folder(root: str | os.PathLike, classes: Sequence[str] | None = None) -> FolderScan:
    """List an image folder (nothing is decoded). DataError naming the folder when it is missing, has
    fewer than two classes, or a class folder without images."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (data.root of dataset: folder)")
    split = has_split_layout(root)
    train_dir = root / "train" if split else root
    found = _class_dirs(train_dir)
    if classes is None:
        classes = found
    else:
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(f"class folder{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(str(train_dir / c) for c in missing)} not found")
    if len(classes) < 2:
        raise DataError(f"image folder {train_dir} has {len(classes)} class folder{'s' if len(classes) != 1 else ''}"
                        f"{' (' + classes[0] + ')' if classes else ''}; a classifier needs at least two: "
                        "put the images of each class in a folder named after it")
    train_files, train_labels = _list_split(train_dir, classes, required=True)
    test_files = test_labels = None
    if split:
        extra = [c for c in _class_dirs(root / "test") if c not in classes]
        if extra:
            raise DataError(f"{root / 'test'} has class folders that {train_dir} lacks: {', '.join(extra)}")
        test_files, test_labels = _list_split(root / "test", classes, required=False)
        if not test_files:
            raise DataError(f"test folder {root / 'test'} holds no images")
    return FolderScan(root, tuple(classes), train_files, train_labels, test_files, test_labels)


def _list_split(folder: Path, classes: Sequence[str], required: bool) -> tuple[tuple[str, ...], np.ndarray]:
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        sub = folder / name
        found = _images_in(sub) if sub.is_dir() else []
        if required and not found:
            raise DataError(f"class folder {sub} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [label] * len(found)
    return tuple(files), np.asarray(labels, dtype=np.int64)


def stratified_split(labels: np.ndarray, test_size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): round(test_size * n) of each class's n images (at least one when
    the class has two or more), chosen by `rng`; both sorted."""
    test: list[np.ndarray] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        k = int(round(test_size * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


# --- decoding -------------------------------------------------------------------------------------
def _decode_one(path: str | Path, size: tuple[int, int], color: str) -> np.ndarray:
    """One image file -> uint8 (C, H, W). Raises ValueError/OSError (Pillow's errors) when unreadable."""
    from PIL import Image

    # Pillow raises DecompressionBombError on opening an image of over twice MAX_IMAGE_PIXELS and only
    # warns between once and twice that; an image over the limit is refused here before it is decoded.
    # (warnings.catch_warnings would change process-wide filters from several threads at once.)
    with Image.open(path) as im:
        limit = Image.MAX_IMAGE_PIXELS
        if limit and im.width * im.height > limit:
            raise ValueError(f"{im.width}x{im.height} pixels exceed the limit of {limit} (a decompression bomb?)")
        im = im.convert("L" if color == "grey" else "RGB")
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_chunk(paths: Sequence[str | Path], size: tuple[int, int], color: str, out: np.ndarray,
                  start: int) -> list[tuple[int, str]]:
    bad = []
    for i, path in enumerate(paths):
        try:
            out[start + i] = _decode_one(path, size, color)
        except Exception as e:   # noqa: BLE001 - Pillow raises many kinds for a broken file; each is reported
            bad.append((start + i, f"{type(e).__name__}: {e}"))
    return bad


def decode_images(paths: Sequence[str | Path], size: tuple[int, int], color: str, progress: bool = True,
                  workers: int | None = None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode `paths` to uint8 (N, C, H, W) on a thread pool. Returns the images (zeros where a file
    could not be read) and [(index, reason)] of the unreadable files."""
    from tqdm import tqdm

    channels = 1 if color == "grey" else 3
    out = np.zeros((len(paths), channels, size[0], size[1]), np.uint8)
    bad: list[tuple[int, str]] = []
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    starts = range(0, len(paths), _CHUNK)
    with ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(paths), desc="decoding images", unit="img", disable=not progress, leave=False) as bar:
        futures = [pool.submit(_decode_chunk, paths[s:s + _CHUNK], size, color, out, s) for s in starts]
        for start, future in zip(starts, futures):
            bad += future.result()
            bar.update(min(_CHUNK, len(paths) - start))
    return out, sorted(bad)


# --- the cache ------------------------------------------------------------------------------------
def cache_key(root: Path, paths: Sequence[str | Path], size: tuple[int, int], color: str) -> str:
    """A hash of the files' names relative to `root`, sizes and modification times, the image size and
    the colour mode: any change to the folder or the options gives another key."""
    h = hashlib.sha256(f"nntrain-folder-cache {CACHE_VERSION} {size[0]}x{size[1]} {color}\n".encode())
    prefix = os.path.join(str(root), "")
    for path in map(str, paths):
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)
        h.update(f"{rel.replace(os.sep, '/')}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def cache_dirs(root: Path) -> list[Path]:
    """Where caches are kept, in order of preference: ~/.cache/nntrain/folders/, else next to the data."""
    return [Path.home() / ".cache" / "nntrain" / "folders", root / ".nntrain-cache"]


def _read_cache(path: Path, n: int) -> tuple[np.ndarray, list[tuple[int, str]]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            bad = [(int(i), str(r)) for i, r in zip(z["bad_index"], z["bad_reason"])]
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable image cache %s (%s); decoding again", path, e)
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != n:
        log.warning("ignoring image cache %s: it does not match the folder; decoding again", path)
        return None
    return images, bad


def _write_cache(dirs: Sequence[Path], name: str, images: np.ndarray, bad: list[tuple[int, str]]) -> Path | None:
    buf = io.BytesIO()
    np.savez(buf, images=images, bad_index=np.asarray([i for i, _ in bad], np.int64),
             bad_reason=np.asarray([r for _, r in bad], dtype=str) if bad else np.zeros(0, "<U1"))
    for folder in dirs:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder / name, buf.getbuffer().tobytes())
            return folder / name
        except Exception as e:   # noqa: BLE001 - an unwritable cache folder only costs time
            log.debug("cannot write image cache into %s: %s", folder, e)
    log.warning("could not write the image cache into any of %s; the images will be decoded again next time",
                ", ".join(map(str, dirs)))
    return None


def decode_cached(root: Path, paths: Sequence[str | Path], size: tuple[int, int], color: str, progress: bool = True,
                  dirs: Sequence[Path] | None = None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """`decode_images`, through the cache (see `cache_key`): read from it when the folder is unchanged,
    else decoded and written to the first writable cache folder (atomically)."""
    dirs = list(dirs) if dirs is not None else cache_dirs(root)
    name = f"{cache_key(root, paths, size, color)}.npz"
    for folder in dirs:
        if (folder / name).is_file():
            cached = _read_cache(folder / name, len(paths))
            if cached is not None:
                log.info("read %d images of %s from the cache %s", len(paths), root, folder / name)
                return cached
    images, bad = decode_images(paths, size, color, progress)
    written = _write_cache(dirs, name, images, bad)
    if written:
        log.info("decoded %d images of %s; cached in %s", len(paths), root, written)
    return images, bad


def keep_good(images: np.ndarray, labels: np.ndarray, paths: Sequence[str | Path], bad: list[tuple[int, str]],
              strict: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Drop the unreadable images (with a warning naming the first 10), or raise DataError naming them
    when `strict`, or when more than MAX_BAD_SHARE of them (or all of a class) cannot be read."""
    if not bad:
        return images, labels
    listed = "; ".join(f"{paths[i]} ({reason})" for i, reason in bad[:10])
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    if strict:
        raise DataError(f"{len(bad)} of the {len(paths)} images of {what} cannot be read (strict: true): "
                        f"{listed}{more}")
    if len(bad) > MAX_BAD_SHARE * len(paths):
        raise DataError(f"{len(bad)} of the {len(paths)} images of {what} cannot be read, more than "
                        f"{MAX_BAD_SHARE:.0%}: {listed}{more}")
    keep = np.ones(len(paths), bool)
    keep[[i for i, _ in bad]] = False
    log.warning("skipped %d unreadable image%s of %s (strict: true refuses them): %s%s", len(bad),
                "s" if len(bad) > 1 else "", what, listed, more)
    return images[keep], labels[keep]


def load_images(root: Path, paths: Sequence[str | Path], labels: np.ndarray, size: tuple[int, int], color: str,
                strict: bool, what: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Decode (through the cache) and drop or refuse unreadable images: uint8 (N, C, H, W), int64 (N,)."""
    images, bad = decode_cached(root, paths, size, color, progress)
    return keep_good(images, labels, paths, bad, strict, what)


def load_folder(root: str | os.PathLike, image_size: Sequence[int], color: str, test_size: float,
                rng_factory: Callable[[], np.random.Generator], classes: Sequence[str] | None = None,
                strict: bool = False, progress: bool = True) -> tuple[tuple[str, ...], np.ndarray, np.ndarray,
                                                                      np.ndarray, np.ndarray]:
    """(classes, train_x, train_y, test_x, test_y) of an image folder; `rng_factory()` gives the
    Generator of the test split, called only when the folder has no test/ part."""
    scan = scan_folder(root, classes)
    size = (int(image_size[0]), int(image_size[1]))
    if scan.test_files is not None:
        files = scan.train_files + scan.test_files
        labels = np.concatenate([scan.train_labels, scan.test_labels])
        n_train = len(scan.train_files)
        images, bad = decode_cached(scan.root, files, size, color, progress)
        train_bad = [(i, r) for i, r in bad if i < n_train]
        test_bad = [(i - n_train, r) for i, r in bad if i >= n_train]
        train_x, train_y = keep_good(images[:n_train], labels[:n_train], files[:n_train], train_bad, strict,
                                     f"{scan.root / 'train'}")
        test_x, test_y = keep_good(images[n_train:], labels[n_train:], files[n_train:], test_bad, strict,
                                   f"{scan.root / 'test'}")
        return scan.classes, train_x, train_y, test_x, test_y
    images, labels = load_images(scan.root, scan.train_files, scan.train_labels, size, color, strict,
                                 str(scan.root), progress)
    train_idx, test_idx = stratified_split(labels, test_size, rng_factory())
    return scan.classes, images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
