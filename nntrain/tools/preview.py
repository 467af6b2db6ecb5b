"""The augmentation preview of a config: a PNG grid of training images and augmented versions of them,
to look at what `data.augment` does before training with it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from matplotlib.figure import Figure

from nntrain.data.augment import build_augment
from nntrain.data.prepare import prepare
from nntrain.errors import ConfigError
from nntrain.rng import stream
from nntrain.training.plots import save_figure

log = logging.getLogger(__name__)


def default_preview_path(cfg: dict) -> Path:
    """<name>-augment.png in the current folder."""
    return Path(f"{cfg['name']}-augment.png")


def write_augment_preview(cfg: dict, out: str | Path | None = None, n: int = 8, variants: int = 3) -> Path:
    """Write the preview of a resolved config's `data.augment` for `n` training images picked with the
    config's seed (`variants` augmented rows below the originals). Returns the PNG's path.

    A config without augmentation is a ConfigError at `data.augment`."""
    data = cfg["data"]
    specs = data.get("augment") or []
    if not specs:
        raise ConfigError("the config has no augmentation to preview; add a list such as "
                          "[{type: random_shift, max_pixels: 2}, {type: random_rotate, degrees: 10}]", "data.augment")
    images = prepare(data, int(cfg["seed"])).train_x   # the training split, as training sees it
    rng = stream(int(cfg["seed"]), "preview")
    n = max(1, min(n, len(images)))
    idx = np.sort(rng.choice(len(images), n, replace=False))
    path = Path(out) if out is not None else default_preview_path(cfg)
    return augment_preview(images[idx], specs, rng, path, n=n, variants=variants)


def augment_preview(images_uint8: np.ndarray, specs: Any, rng: np.random.Generator, path: str | Path,
                    n: int = 8, variants: int = 3) -> Path:
    """Write a PNG grid: the first `n` images (top row) and `variants` augmented versions of each
    (rows below), to look at what `specs` does. images: uint8 (N, C, H, W) with C = 1 or 3, or
    (N, H, W). The PNG is n*100 x (variants+1)*100 pixels, written atomically. Returns its path."""
    images = np.asarray(images_uint8)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"expected images (N, 1|3, H, W) or (N, H, W), got shape {images.shape}")
    n = min(n, len(images))
    x01 = images[:n].astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    aug = build_augment(specs)   # the very transform training applies
    rows = [x01] + [aug(x01, rng) if aug else x01.copy() for _ in range(variants)]
    fig = Figure(figsize=(n, len(rows)), dpi=100)
    for r, batch in enumerate(rows):
        for j in range(n):
            ax = fig.add_subplot(len(rows), n, r * n + j + 1)
            img = np.clip(batch[j], 0.0, 1.0)
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel("original" if r == 0 else f"augmented {r}", fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    save_figure(fig, path, tight=False)
    log.info("wrote augmentation preview %s", path)
    return Path(path)
