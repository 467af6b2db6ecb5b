"""Using a trained model on image files: PNG/JPEG -> the model's input -> top-k classes with probabilities.

An image is read with Pillow, flattened onto white where it is transparent, turned grey or RGB as the
model expects, padded to a square with its own background colour and resized to the input size (Lanczos
when shrinking, bicubic when enlarging; an image already of the input size is used pixel for pixel);
images for white-on-black datasets are framed like their digits instead (below).

Image files are not trusted: the size in the header is checked before anything is decoded or
allocated (at most MAX_PIXELS pixels and an aspect ratio of MAX_ASPECT: a 128-byte PNG of 50000x1 pixels
would otherwise become a 50000x50000 square), and an image larger than PRESHRINK_SIDE is shrunk before it
is padded. 16-bit images are scaled to 8 bits (not clipped); of an animated image the first frame is used,
and the output says so.
MNIST-style datasets are white strokes on black: an image with a bright border (dark strokes on light
paper) is inverted unless told otherwise. The run's normalisation is applied by the same conversion
as training (`iterate_batches`).

For those datasets the image is then framed the way the dataset itself was made (`frame_like_dataset`),
not merely resized: a small 7 in the corner of a large white sheet, shrunk whole to 28x28, becomes a
few grey pixels in a corner that no MNIST model has seen. MNIST (LeCun et al.) size-normalised each
digit's bounding box to fit 20x20 preserving its aspect ratio (anti-aliased) and placed it in 28x28 with
the centre of mass of its intensities at the centre (pixel (14, 14)); Fashion-MNIST scaled the item's
longer side to 28 and centred its bounding box. Here the paper's level (the median pixel) is subtracted,
the ink (pixels above a fraction of the brightest, so JPEG noise and grey paper are not ink) is cropped
to its bounding box, the paper's level is taken again around it (uneven light leaves no grey veil), the
brightest ink is stretched to 255, and the box is scaled with Lanczos and placed likewise.
An image without ink (one colour, or nothing above MIN_INK_CONTRAST) is a DataError naming the file:
it holds no digit, and a probability for it would only mislead (`mnist_style=False` classifies it as
it is). The ink is everything bright: a second digit or a speck of dust far away widens the box, so
crop such photos first. Other datasets (CIFAR-like photos, the folder and csv datasets) keep the
square padding and resize. `save_inputs` writes what the model saw (`nntrain predict --show DIR`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nntrain.atomic import atomic_write_bytes, make_dir
from nntrain.data.registry import DATASETS
from nntrain.data.tta import tta_views
from nntrain.errors import DataError
from nntrain.tables import format_table
from nntrain.tools.report import run_class_names
from nntrain.training.evaluate import class_probabilities
from nntrain.training.run_folder import LoadedRun

log = logging.getLogger("nntrain")

# Datasets whose images are light strokes on a dark background (the registry's `white_on_black`).
WHITE_ON_BLACK = frozenset(name for name, (info, _) in DATASETS.items() if info.white_on_black)
BRIGHT_BORDER = 127.5  # mean border value (0..255) above which an image counts as dark-on-light
MAX_PIXELS = 50_000_000   # width x height of an image file read (a 50-megapixel photo)
MAX_ASPECT = 20           # longer side / shorter side (beyond that it is a line, not a picture)
PRESHRINK_SIDE = 2048     # larger images are shrunk to this longer side before padding and resizing
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
MIN_INK_CONTRAST = 24     # brightest pixel minus the paper's level (0..255) below which an image has no ink
SHOW_SCALE = 8            # `save_inputs` enlarges the model's input this many times (nearest neighbour)


@dataclass(frozen=True)
class Framing:
    """How a white-on-black dataset placed its object in the frame.

    box: the fraction of the input's height and width that the ink's bounding box is scaled to fit
    (aspect ratio kept); centre: "mass" puts the centre of mass of the intensities at the frame's centre
    pixel (H/2, W/2), "box" centres the bounding box; ink: the fraction of the brightest pixel (above the
    paper's level) from which a pixel counts as ink when the bounding box is found."""

    box: float
    centre: str
    ink: float


DIGITS = Framing(box=20 / 28, centre="mass", ink=0.25)   # MNIST: 20x20 box, centre of mass at (14, 14)
FRAMINGS = {"fashion-mnist": Framing(box=1.0, centre="box", ink=0.05)}   # longer side 28, box centred


@dataclass
class Prediction:
    """One file's result: `top` (class name, probability) best first; `inverted` whether it was inverted."""

    path: Path
    top: list[tuple[str, float]]
    inverted: bool
    probs: np.ndarray  # (K,) all class probabilities
    note: str = ""     # how the file was read, where it matters ("first of 12 frames")
    pixels: np.ndarray | None = None   # uint8 (C, H, W): what the model saw, before normalisation


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


def _preshrink(img: np.ndarray) -> np.ndarray:
    """An image whose longer side exceeds PRESHRINK_SIDE shrunk to it (Lanczos); others as they are.
    Bounds the work that follows (the padded square, the framing's crop) at PRESHRINK_SIDE²."""
    from PIL import Image

    if max(img.shape[:2]) <= PRESHRINK_SIDE:
        return img
    ih, iw = img.shape[:2]
    scale = PRESHRINK_SIDE / max(ih, iw)
    size = (max(1, round(iw * scale)), max(1, round(ih * scale)))
    return np.asarray(Image.fromarray(img).resize(size, resample=Image.Resampling.LANCZOS), dtype=np.uint8)


def _paper_and_ink(img: np.ndarray, fraction: float) -> tuple[tuple[int, int, int, int] | None, float, float]:
    """(the ink's bounding box or None, the paper's level b, the peak p): see `ink_box`."""
    a = np.asarray(img, dtype=np.float32)
    level = float(np.median(a))
    peak = float(a.max()) - level
    if peak < MIN_INK_CONTRAST:
        return None, level, peak
    ink = a - level > fraction * peak
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1), level, peak


def ink_box(img: np.ndarray, fraction: float = DIGITS.ink) -> tuple[int, int, int, int] | None:
    """The bounding box (top, bottom, left, right; bottom and right exclusive) of the ink of a grey
    image (H, W) of light strokes on a dark background, or None when it has none.

    The paper's level is the median pixel b (the ink covers less than half of a picture of a digit);
    with peak p = max(img) - b, a pixel is ink where img - b > fraction * p, and there is no ink where
    p < MIN_INK_CONTRAST (a one-colour image, or blank paper with JPEG noise)."""
    return _paper_and_ink(img, fraction)[0]


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    """Centre of mass (row, column) of the intensities of a non-negative (H, W) image, in pixel indices:
    (sum_ij i*x_ij / sum x, sum_ij j*x_ij / sum x)."""
    a = np.asarray(img, dtype=np.float64)
    total = a.sum()
    return (float(a.sum(axis=1) @ np.arange(a.shape[0]) / total),
            float(a.sum(axis=0) @ np.arange(a.shape[1]) / total))


def frame_like_dataset(img: np.ndarray, input_shape: Sequence[int], framing: Framing = DIGITS,
                       path: str | Path = "the image") -> np.ndarray:
    """uint8 grey (H, W), light ink on dark (already inverted if need be) -> uint8 (1, H', W') framed
    as the dataset's images were (see the module docstring; MNIST: `DIGITS`).

    1. Levels: with the paper's level b around the ink (the median of the margin below; the whole
       image's where there is none) and the peak p = max(ink) - b, x = clip((img - b) / p, 0, 1) * 255,
       so grey paper becomes black (0) and the brightest ink white (255), as in MNIST.
    2. Scale s = min(box*H' / bh, box*W' / bw) for the ink's bounding box bh x bw; the box becomes
       round(bh*s) x round(bw*s) (longer side 20 for MNIST) with Lanczos (anti-aliased when shrinking).
       A margin of 3 output pixels around the box is resampled with it, so the faint edge of a stroke,
       below the ink threshold, is kept rather than cut off.
    3. Placement: for "mass", the shift that puts the centre of mass at (H'/2, W'/2), rounded to whole
       pixels (no resampling after scaling, as MNIST); for "box", the box centred. The box is kept
       inside the frame; what falls outside of the margin is dropped.
    No ink is a DataError naming `path`."""
    from PIL import Image

    c, h, w = (int(v) for v in input_shape)
    if c != 1 or img.ndim != 2:
        raise DataError(f"{path}: MNIST-style framing is for grey models (1 channel); this model takes "
                        f"{c}-channel images (classify it without MNIST-style framing)")
    img = _preshrink(img)
    box, level, peak = _paper_and_ink(img, framing.ink)
    if box is None:
        raise DataError(f"{path} has no ink to classify: it is one colour, or nothing on it stands out "
                        f"from the paper by {MIN_INK_CONTRAST} of 255 grey levels (use --no-mnist-style to "
                        f"classify the whole image as it is)")
    r0, r1, c0, c1 = box
    bh, bw = r1 - r0, c1 - c0
    scale = min(framing.box * h / bh, framing.box * w / bw)
    oh, ow = max(1, min(h, round(bh * scale))), max(1, min(w, round(bw * scale)))
    margin = 3                                           # output pixels resampled around the box
    my, mx = margin * bh / oh, margin * bw / ow          # the same margin in source pixels
    pad = int(np.ceil(max(my, mx) + 3 * max(1.0, 1 / scale))) + 1   # and Lanczos's reach beyond it
    # The box with `pad` pixels around it, zero (paper) where that leaves the image.
    a = np.asarray(img, dtype=np.float32)
    crop = np.zeros((bh + 2 * pad, bw + 2 * pad), np.float32)
    sr0, sr1, sc0, sc1 = max(r0 - pad, 0), min(r1 + pad, a.shape[0]), max(c0 - pad, 0), min(c1 + pad, a.shape[1])
    in_image = (slice(sr0 - (r0 - pad), sr1 - (r0 - pad)), slice(sc0 - (c0 - pad), sc1 - (c0 - pad)))
    crop[in_image] = a[sr0:sr1, sc0:sc1]
    # The paper's level around the ink (the median of the image's pixels in the margin) rather than the
    # whole sheet's: light falling off across a photographed sheet leaves no grey veil in the frame.
    ring = np.zeros(crop.shape, bool)
    ring[in_image] = True
    ring[pad:pad + bh, pad:pad + bw] = False
    if ring.any():
        level = float(np.median(crop[ring]))
        peak = max(float(crop[pad:pad + bh, pad:pad + bw].max()) - level, 1.0)
    crop = np.clip((crop - level) / peak, 0.0, 1.0) * 255.0   # the zeros outside stay 0 (level >= 0)
    patch = Image.fromarray(crop, "F").resize((ow + 2 * margin, oh + 2 * margin), Image.Resampling.LANCZOS,
                                              box=(pad - mx, pad - my, pad + bw + mx, pad + bh + my))
    patch = np.clip(np.asarray(patch, dtype=np.float64), 0.0, 255.0)   # Lanczos rings below 0 and above 255
    if framing.centre == "mass" and patch.sum() > 0:
        cy, cx = centre_of_mass(patch)
        top, left = round(h / 2 - cy), round(w / 2 - cx)
    else:
        top, left = round((h - oh) / 2) - margin, round((w - ow) / 2) - margin
    top = min(max(top, -margin), h - oh - margin)          # the box itself stays inside the frame
    left = min(max(left, -margin), w - ow - margin)
    out = np.zeros((h, w), np.float64)
    fr0, fr1, fc0, fc1 = max(top, 0), min(top + patch.shape[0], h), max(left, 0), min(left + patch.shape[1], w)
    out[fr0:fr1, fc0:fc1] = patch[fr0 - top:fr1 - top, fc0 - left:fc1 - left]
    return np.round(out).astype(np.uint8)[None]


def to_model_input(img: np.ndarray, input_shape: Sequence[int], invert: bool) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> uint8 (C, H', W') of the model's input size, inverted if asked.

    A non-square image is padded to a square with its border colour (no distortion), then resized."""
    from PIL import Image

    if invert:
        img = 255 - img
    c, h, w = (int(v) for v in input_shape)
    img = _preshrink(img)
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


def uses_mnist_style(dataset: str) -> bool:
    """Whether images for a model of `dataset` are framed MNIST-style by default: white-on-black datasets."""
    return dataset in WHITE_ON_BLACK


def predict_files(run: LoadedRun, paths: Sequence[str | Path], invert: bool | None = None,
                  top: int = 3, mnist_style: bool | None = None) -> list[Prediction]:
    """Top-`top` classes of each image file. invert None: automatic for white-on-black datasets
    (invert when the border is bright), never otherwise; True/False forces it. mnist_style None: frame
    the ink as the dataset was made (`frame_like_dataset`) for white-on-black datasets, pad and resize
    for the others; True/False forces it. Each Prediction carries the pixels the model saw."""
    from nntrain.data import iterate_batches

    shape = run.model.input_shape
    names = run_class_names(run)
    dataset = run.cfg["data"]["dataset"]
    mnist_like = uses_mnist_style(dataset)
    framed = mnist_like if mnist_style is None else bool(mnist_style)
    framing = FRAMINGS.get(dataset, DIGITS)
    images, flags, notes = [], [], []
    for path in paths:
        said: list[str] = []
        img = read_image(path, shape, said)
        inv = (mnist_like and border_mean(img) > BRIGHT_BORDER) if invert is None else bool(invert)
        if framed:
            images.append(frame_like_dataset(255 - img if inv else img, shape, framing, path))
        else:
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
        views = tta_views(x, run.cfg["train"]["tta"])   # the run's test-time augmentation
        probs[start:start + len(x)] = sum(
            class_probabilities(run.model.forward(v, train=False).astype(np.float64),
                                logits=run.cfg["loss"].get("softmax", True)) for v in views) / len(views)
        start += len(x)
    k = min(top, probs.shape[1])
    out = []
    for path, p, inv, note, pixels in zip(paths, probs, flags, notes, images):
        order = np.argsort(-p, kind="stable")[:k]
        out.append(Prediction(Path(path), [(names[j], float(p[j])) for j in order], inv, p, note, pixels))
    return out


def save_inputs(preds: Sequence[Prediction], folder: str | Path, scale: int = SHOW_SCALE) -> list[Path]:
    """Write what the model saw for each prediction (its pixels after inversion, framing and resizing,
    before normalisation), enlarged `scale` times by repeating pixels, as FOLDER/<file's stem>-input.png
    (-2, -3, ... for stems met again), so a student can check what was classified. The paths, in order."""
    from io import BytesIO

    from PIL import Image

    folder = make_dir(folder)
    written: list[Path] = []
    taken: set[str] = set()
    for pred in preds:
        if pred.pixels is None:
            continue
        stem, n = f"{pred.path.stem}-input", 1
        name = f"{stem}.png"
        while name in taken:
            n += 1
            name = f"{stem}-{n}.png"
        taken.add(name)
        big = pred.pixels.repeat(scale, axis=1).repeat(scale, axis=2)
        grey = big.shape[0] == 1
        pil = Image.fromarray(big[0], "L") if grey else Image.fromarray(big.transpose(1, 2, 0).copy(), "RGB")
        buf = BytesIO()
        pil.save(buf, format="PNG")
        atomic_write_bytes(folder / name, buf.getvalue())
        written.append(folder / name)
    return written


def format_predictions(preds: Sequence[Prediction]) -> str:
    """One block per file: its name (and whether it was inverted), then rank, class and probability."""
    blocks = []
    for pred in preds:
        rows = [[f"{rank}.", name, f"{p:.4f}"] for rank, (name, p) in enumerate(pred.top, 1)]
        said = [n for n in (pred.note, "inverted: dark on light" if pred.inverted else "") if n]
        blocks.append(f"{pred.path}" + "".join(f"  ({n})" for n in said) + "\n"
                      + format_table(None, rows, align="rlr", indent="  "))
    return "\n".join(blocks)
