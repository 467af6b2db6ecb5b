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
    tiles hold values in [-1, 1] (zero in the middle), otherwise values lie in [0, 1].

    `scale`: the weight value a tile's full colour stands for. Every tile shares it (the largest |w|
    shown), so tiles compare with each other and a colour bar from -scale to +scale reads in weight
    units: signed grey tiles are w / scale; RGB tiles 0.5 + w / (2·scale) per channel (mid-grey = 0).
    `what`: what the figure shows (layer, shape), for its title; `caption`: how to read a tile."""

    images: np.ndarray
    titles: list[str]
    signed: bool = False
    scale: float | None = None
    what: str = ""
    caption: str = ""


def _shared(a: np.ndarray) -> float:
    """The largest |value| of `a` (1.0 for an all-zero array, so dividing by it is safe)."""
    m = float(np.abs(a).max()) if a.size else 0.0
    return m if m > 0 else 1.0


def _signed_tiles(maps: np.ndarray, titles: list[str], what: str, unit: str) -> Tiles:
    """Grey (n, H, W) or RGB (n, H, W, 3) weight maps on one symmetric scale around 0 (see `Tiles`)."""
    m = _shared(maps)
    if maps.ndim == 4:
        return Tiles(0.5 + maps / (2 * m), titles, scale=m, what=what,
                     caption=f"one tile per {unit}; each colour channel is that input channel's weight "
                             "on the shared scale of the bar (mid-grey = 0)")
    return Tiles(maps / m, titles, signed=True, scale=m, what=what,
                 caption=f"one tile per {unit}; red positive, blue negative, white 0 (shared scale)")


def first_layer_index(model: Model, type_name: str) -> int | None:
    """Index of the first layer of this registered type, or None."""
    for i, layer in enumerate(model.layers):
        if layer.type_name == type_name:
            return i
    return None


def kernel_tiles(model: Model) -> Tiles | None:
    """The first conv2d layer's kernels W (O, C, kh, kw), one tile per output channel, all on one scale
    symmetric around 0 (see `Tiles`): signed grey (O, kh, kw) for C = 1, RGB (O, kh, kw, 3) for C = 3,
    the mean over the input channels in signed grey otherwise. None when the model has no conv2d layer."""
    i = first_layer_index(model, "conv2d")
    if i is None:
        return None
    w = model.layers[i].params["W"].astype(np.float64)
    c = w.shape[1]
    what = f"kernels of layer {i} (conv2d), W {tuple(w.shape)}"
    titles = [f"#{o}" for o in range(len(w))]
    if c == 3:
        return _signed_tiles(w.transpose(0, 2, 3, 1), titles, what, "output channel")
    if c != 1:
        what += f", mean over the {c} input channels"
    return _signed_tiles(w.mean(axis=1) if c != 1 else w[:, 0], titles, what, "output channel")


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
    unit, for at most `max_units` units spread evenly over the layer (all of them if fewer), all on one
    scale symmetric around 0 (see `Tiles`): C = 1 signed grey, C = 3 RGB, otherwise the channel mean.
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
    shown = "" if len(idx) == units else f", {len(idx)} of its {units} units"
    what = f"weights of layer {i} (linear), W {tuple(w.shape)} as {c}×{h}×{wd} images{shown}"
    if c == 3:
        return _signed_tiles(maps.transpose(0, 2, 3, 1), titles, what, "hidden unit")
    if c != 1:
        what += f", mean over the {c} channels"
    return _signed_tiles(maps.mean(axis=1), titles, what, "hidden unit")


def save_model_figures(model: Model, plots_dir: str | Path, *, title: str = "") -> list[Path]:
    """Write plots/kernels.png (models with a conv layer) and plots/weights.png (MLPs), whichever apply.
    Each figure is titled with `title` (run name, checkpoint) and what it shows, and has a colour bar in
    weight units."""
    from nntrain.training.plots import heading, tile_grid

    plots_dir = Path(plots_dir)
    written = []
    for name, tiles in (("kernels.png", kernel_tiles(model)), ("weights.png", weight_tiles(model))):
        if tiles is None:
            continue
        path = plots_dir / name
        tile_grid(tiles.images, tiles.titles, path, signed=tiles.signed, title=heading(title, tiles.what),
                  caption=tiles.caption, value_range=None if tiles.scale is None else (-tiles.scale, tiles.scale),
                  colorbar_label="weight")
        log.debug("wrote %s", path)
        written.append(path)
    return written
