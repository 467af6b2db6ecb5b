"""The augmentation preview of a config: a PNG grid of training images and augmented versions of them,
to look at what `data.augment` does before training with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nntrain.errors import ConfigError
from nntrain.rng import stream


def default_preview_path(cfg: dict) -> Path:
    """<name>-augment.png in the current folder."""
    return Path(f"{cfg['name']}-augment.png")


def write_augment_preview(cfg: dict, out: str | Path | None = None, n: int = 8, variants: int = 3) -> Path:
    """Write the preview of a resolved config's `data.augment` for `n` training images picked with the
    config's seed (`variants` augmented rows below the originals). Returns the PNG's path.

    A config without augmentation is a ConfigError at `data.augment`."""
    from nntrain.data.augment import augment_preview
    from nntrain.data.prepare import prepare

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
    path.parent.mkdir(parents=True, exist_ok=True)
    return augment_preview(images[idx], specs, rng, path, n=n, variants=variants)
