"""Looking inside a trained model: the first conv layer's kernels and an MLP's first-layer weights as images.

(Not named `inspect.py`: that would shadow the standard library's `inspect` when nntrain/cli.py is run as a script.)

`kernel_tiles` and `weight_tiles` turn the model's own arrays into tiles (the numbers a figure shows);
`save_model_figures` writes plots/kernels.png and/or plots/weights.png, whichever applies to the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nntrain.nn.model import Model

log = logging.getLogger("nntrain")

MAX_WEIGHT_TILES = 64


@dataclass
class Tiles:
    """Images to tile: `images` (n, H, W) grey or (n, H, W, 3) RGB; `titles` one per tile; `signed` grey
    tiles hold values in [-1, 1] (zero in the middle), otherwise values lie in [0, 1]."""

    images: np.ndarray
    titles: list[str]
    signed: bool = False


def _minmax(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Scale each tile to [0, 1] over `axes` (a constant tile becomes 0.5)."""
    lo = a.min(axis=axes, keepdims=True)
    span = a.max(axis=axes, keepdims=True) - lo
    return np.divide(a - lo, span, out=np.full_like(a, 0.5), where=span > 0)


def first_layer_index(model: Model, type_name: str) -> int | None:
    """Index of the first layer of this registered type, or None."""
    for i, layer in enumerate(model.layers):
        if layer.type_name == type_name:
            return i
    return None


def kernel_tiles(model: Model) -> Tiles | None:
    """The first conv2d layer's kernels W (O, C, kh, kw), one tile per output channel, each scaled to [0, 1]
    on its own: grey (O, kh, kw) for C = 1, RGB (O, kh, kw, 3) for C = 3, the channel mean in grey otherwise.
    None when the model has no conv2d layer."""
    i = first_layer_index(model, "conv2d")
    if i is None:
        return None
    w = model.layers[i].params["W"].astype(np.float64)
    c = w.shape[1]
    if c == 3:
        images = _minmax(w.transpose(0, 2, 3, 1), (1, 2, 3))
    else:
        images = _minmax(w.mean(axis=1) if c != 1 else w[:, 0], (1, 2))
    return Tiles(images, [f"#{o}" for o in range(len(w))])


def image_linear_index(model: Model) -> int | None:
    """Index of the first linear layer when it sees the input image pixel for pixel (only parameter-free,
    size-keeping layers such as flatten, dropout or activations before it); else None."""
    size = int(np.prod(model.input_shape))
    for i, layer in enumerate(model.layers):
        if layer.type_name == "linear":
            return i if model.layers[i].params["W"].shape[0] == size else None
        if layer.params or int(np.prod(model.shapes[i])) != size:
            return None
    return None


def weight_tiles(model: Model, max_units: int = MAX_WEIGHT_TILES) -> Tiles | None:
    """The first linear layer's weights W (C·H·W, units) reshaped to the input image, one tile per hidden
    unit, for at most `max_units` units spread evenly over the layer (all of them if fewer).

    C = 1: signed grey tiles w / max|w| in [-1, 1]; C = 3: RGB tiles scaled to [0, 1] per unit.
    None when the model's first linear layer does not see the raw image (a CNN)."""
    i = image_linear_index(model)
    if i is None:
        return None
    w = model.layers[i].params["W"].astype(np.float64)
    units = w.shape[1]
    idx = np.unique(np.linspace(0, units - 1, min(units, max_units)).round().astype(int))
    c, h, wd = model.input_shape
    maps = w[:, idx].T.reshape(len(idx), c, h, wd)
    titles = [f"unit {j}" for j in idx]
    if c == 3:
        return Tiles(_minmax(maps.transpose(0, 2, 3, 1), (1, 2, 3)), titles)
    grey = maps.mean(axis=1)
    scale = np.abs(grey).max(axis=(1, 2), keepdims=True)
    return Tiles(np.divide(grey, scale, out=np.zeros_like(grey), where=scale > 0), titles, signed=True)


def save_model_figures(model: Model, plots_dir: str | Path) -> list[Path]:
    """Write plots/kernels.png (models with a conv layer) and plots/weights.png (MLPs), whichever apply."""
    from nntrain.training.plots import tile_grid

    plots_dir = Path(plots_dir)
    written = []
    for name, tiles in (("kernels.png", kernel_tiles(model)), ("weights.png", weight_tiles(model))):
        if tiles is None:
            continue
        path = plots_dir / name
        tile_grid(tiles.images, tiles.titles, path, signed=tiles.signed)
        log.debug("wrote %s", path)
        written.append(path)
    return written
