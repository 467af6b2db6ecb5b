"""Using a trained model on image files: PNG/JPEG -> the model's input -> top-k classes with probabilities.

An image is read with Pillow, flattened onto white where it is transparent, turned grey or RGB as the
model expects, padded to a square with its own background colour and resized to the input size (Lanczos
when shrinking, bicubic when enlarging; an image already of the input size is used pixel for pixel).

Image files are not trusted: the size in the header is checked before anything is decoded or
allocated (at most MAX_PIXELS pixels and an aspect ratio of MAX_ASPECT: a 128-byte PNG of 50000x1 pixels
would otherwise become a 50000x50000 square), and an image larger than PRESHRINK_SIDE is shrunk before it
is padded. 16-bit images are scaled to 8 bits (not clipped); of an animated image the first frame is used,
and the output says so.
MNIST-style datasets are white strokes on black: an image with a bright border (dark strokes on light
paper) is inverted unless told otherwise. The run's normalisation is applied by the same conversion
as training (`iterate_batches`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nntrain.errors import DataError
from nntrain.tables import format_table
from nntrain.tools.report import run_class_names
from nntrain.training.evaluate import class_probabilities
from nntrain.training.run_folder import LoadedRun

log = logging.getLogger("nntrain")

# Datasets whose images are light strokes on a dark background.
WHITE_ON_BLACK = frozenset({"mnist", "fashion-mnist", "mnist-mini"})
BRIGHT_BORDER = 127.5  # mean border value (0..255) above which an image counts as dark-on-light
MAX_PIXELS = 50_000_000   # width x height of an image file read (a 50-megapixel photo)
MAX_ASPECT = 20           # longer side / shorter side (beyond that it is a line, not a picture)
PRESHRINK_SIDE = 2048     # larger images are shrunk to this longer side before padding and resizing
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass
class Prediction:
    """One file's result: `top` (class name, probability) best first; `inverted` whether it was inverted."""

    path: Path
    top: list[tuple[str, float]]
    inverted: bool
    probs: np.ndarray  # (K,) all class probabilities
    note: str = ""     # how the file was read, where it matters ("first of 12 frames")


def border_mean(img: np.ndarray) -> float:
    """Mean of the outermost ring of pixels of an image (H, W) or (H, W, C) (0..255)."""
    ring = np.concatenate([img[0].ravel(), img[-1].ravel(), img[:, 0].ravel(), img[:, -1].ravel()])
    return float(ring.mean())


def check_image_size(path: Path, width: int, height: int) -> None:
    """Refuse (DataError) an image whose header promises more work than a picture needs: more than
    MAX_PIXELS pixels, or an aspect ratio beyond MAX_ASPECT (padding it to a square would take
    longer-side² pixels). Called before anything is decoded."""
    if width < 1 or height < 1:
        raise DataError(f"{path} is an empty image ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise DataError(f"{path} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); at most "
                        f"{MAX_PIXELS / 1e6:.0f} megapixels are read: shrink it first")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise DataError(f"{path} is {width}x{height} pixels: an aspect ratio of "
                        f"{max(width, height) / min(width, height):.0f}:1 is not a picture the model can "
                        f"classify (at most {MAX_ASPECT}:1); crop it first")


def _to_8_bit(im, path: Path):
    """A 16-bit grey image (Pillow's I;16 modes, or I from a 16-bit file) as 8-bit L, scaled by 1/257
    (65535 -> 255) and rounded; Pillow's own conversion clips everything above 255 to white."""
    from PIL import Image

    arr = np.asarray(im)
    if im.mode == "I" and im.format != "PNG" and arr.size and arr.min() >= 0 and arr.max() <= 255:
        return Image.fromarray(arr.astype(np.uint8), "L")   # 8-bit values held in 32-bit integers
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(f"{path} holds {im.mode} pixel values outside 0..65535: not a 16-bit image")
    return Image.fromarray(((arr.astype(np.uint32) + 128) // 257).astype(np.uint8), "L")


def read_image(path: str | Path, input_shape: Sequence[int], notes: list[str] | None = None) -> np.ndarray:
    """The file as uint8 (H, W) grey for C = 1 or (H, W, 3) RGB for C = 3, at its own size.

    The size in the header is checked before decoding (`check_image_size`). Transparent pixels become
    white; EXIF rotation is applied; 16-bit images are scaled to 8 bits; of an animated image (GIF,
    APNG, WebP) the first frame is taken, which is appended to `notes`. Anything Pillow cannot decode is
    a DataError naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            check_image_size(path, *im.size)
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                im.seek(0)
                if notes is not None:
                    notes.append(f"first of {frames} frames")
                log.info("%s is an animated image of %d frames: using the first", path, frames)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in _SIXTEEN_BIT:
                im = _to_8_bit(im, path)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            im = im.convert("L" if input_shape[0] == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not an image file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError, EOFError) as e:
        raise DataError(f"{path} is not a readable image (PNG or JPEG expected): {e}") from None
    if arr.size == 0:
        raise DataError(f"{path} is an empty image")
    return arr


def to_model_input(img: np.ndarray, input_shape: Sequence[int], invert: bool) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> uint8 (C, H', W') of the model's input size, inverted if asked.

    A non-square image is padded to a square with its border colour (no distortion), then resized."""
    from PIL import Image

    if invert:
        img = 255 - img
    c, h, w = (int(v) for v in input_shape)
    if max(img.shape[:2]) > PRESHRINK_SIDE:   # bounds the padded square below at PRESHRINK_SIDE²
        ih, iw = img.shape[:2]
        scale = PRESHRINK_SIDE / max(ih, iw)
        size = (max(1, round(iw * scale)), max(1, round(ih * scale)))
        img = np.asarray(Image.fromarray(img).resize(size, resample=Image.Resampling.LANCZOS), dtype=np.uint8)
    if img.shape[:2] != (h, w):
        ih, iw = img.shape[:2]
        side = max(ih, iw)
        if ih != iw:
            fill = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).reshape(-1, *img.shape[2:]),
                             axis=0)
            square = np.empty((side, side) + img.shape[2:], np.uint8)
            square[...] = np.round(fill).astype(np.uint8)
            top, left = (side - ih) // 2, (side - iw) // 2
            square[top:top + ih, left:left + iw] = img
            img = square
        resample = Image.Resampling.LANCZOS if side > max(h, w) else Image.Resampling.BICUBIC
        img = np.asarray(Image.fromarray(img).resize((w, h), resample=resample), dtype=np.uint8)
    return img[None] if img.ndim == 2 else img.transpose(2, 0, 1).copy()


def predict_files(run: LoadedRun, paths: Sequence[str | Path], invert: bool | None = None,
                  top: int = 3) -> list[Prediction]:
    """Top-`top` classes of each image file. invert None: automatic for white-on-black datasets
    (invert when the border is bright), never otherwise; True/False forces it."""
    from nntrain.data import iterate_batches

    shape = run.model.input_shape
    names = run_class_names(run)
    mnist_like = run.cfg["data"]["dataset"] in WHITE_ON_BLACK
    images, flags, notes = [], [], []
    for path in paths:
        said: list[str] = []
        img = read_image(path, shape, said)
        inv = (mnist_like and border_mean(img) > BRIGHT_BORDER) if invert is None else bool(invert)
        images.append(to_model_input(img, shape, inv))
        flags.append(inv)
        notes.append("; ".join(said))
    if not images:
        return []
    batch = np.stack(images)
    probs = np.empty((len(batch), run.model.output_shape[0]), dtype=np.float64)
    start = 0
    for x, _ in iterate_batches(batch, np.zeros(len(batch), np.int64), 256, mean=run.mean, std=run.std,
                                dtype=run.model.dtype):
        z = run.model.forward(x, train=False).astype(np.float64)
        probs[start:start + len(x)] = class_probabilities(z, logits=run.cfg["loss"].get("softmax", True))
        start += len(x)
    k = min(top, probs.shape[1])
    out = []
    for path, p, inv, note in zip(paths, probs, flags, notes):
        order = np.argsort(-p, kind="stable")[:k]
        out.append(Prediction(Path(path), [(names[j], float(p[j])) for j in order], inv, p, note))
    return out


def format_predictions(preds: Sequence[Prediction]) -> str:
    """One block per file: its name (and whether it was inverted), then rank, class and probability."""
    blocks = []
    for pred in preds:
        rows = [[f"{rank}.", name, f"{p:.4f}"] for rank, (name, p) in enumerate(pred.top, 1)]
        said = [n for n in (pred.note, "inverted: dark on light" if pred.inverted else "") if n]
        blocks.append(f"{pred.path}" + "".join(f"  ({n})" for n in said) + "\n"
                      + format_table(None, rows, align="rlr", indent="  "))
    return "\n".join(blocks)
