"""Using a trained model on image files: PNG/JPEG -> the model's input -> top-k classes with probabilities.

An image is read with Pillow, flattened onto white where it is transparent, turned grey or RGB as the
model expects, padded to a square with its own background colour and resized to the input size (Lanczos
when shrinking, bicubic when enlarging; an image already of the input size is used pixel for pixel).
MNIST-style datasets are white strokes on black: an image with a bright border (dark strokes on light
paper) is inverted unless told otherwise. The run's normalisation is applied by the same conversion
as training (`iterate_batches`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nntrain.errors import DataError
from nntrain.tables import format_table
from nntrain.tools.report import run_class_names
from nntrain.training.evaluate import class_probabilities
from nntrain.training.run_folder import LoadedRun

# Datasets whose images are light strokes on a dark background.
WHITE_ON_BLACK = frozenset({"mnist", "fashion-mnist", "mnist-mini"})
BRIGHT_BORDER = 127.5  # mean border value (0..255) above which an image counts as dark-on-light


@dataclass
class Prediction:
    """One file's result: `top` (class name, probability) best first; `inverted` whether it was inverted."""

    path: Path
    top: list[tuple[str, float]]
    inverted: bool
    probs: np.ndarray  # (K,) all class probabilities


def border_mean(img: np.ndarray) -> float:
    """Mean of the outermost ring of pixels of an image (H, W) or (H, W, C) (0..255)."""
    ring = np.concatenate([img[0].ravel(), img[-1].ravel(), img[:, 0].ravel(), img[:, -1].ravel()])
    return float(ring.mean())


def read_image(path: str | Path, input_shape: Sequence[int]) -> np.ndarray:
    """The file as uint8 (H, W) grey for C = 1 or (H, W, 3) RGB for C = 3, at its own size.

    Transparent pixels become white; EXIF rotation is applied. Anything Pillow cannot decode is a
    DataError naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
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
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
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
    images, flags = [], []
    for path in paths:
        img = read_image(path, shape)
        inv = (mnist_like and border_mean(img) > BRIGHT_BORDER) if invert is None else bool(invert)
        images.append(to_model_input(img, shape, inv))
        flags.append(inv)
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
    for path, p, inv in zip(paths, probs, flags):
        order = np.argsort(-p, kind="stable")[:k]
        out.append(Prediction(Path(path), [(names[j], float(p[j])) for j in order], inv, p))
    return out


def format_predictions(preds: Sequence[Prediction]) -> str:
    """One block per file: its name (and whether it was inverted), then rank, class and probability."""
    blocks = []
    for pred in preds:
        rows = [[f"{rank}.", name, f"{p:.4f}"] for rank, (name, p) in enumerate(pred.top, 1)]
        blocks.append(f"{pred.path}" + ("  (inverted: dark on light)" if pred.inverted else "") + "\n"
                      + format_table(None, rows, align="rlr", indent="  "))
    return "\n".join(blocks)
