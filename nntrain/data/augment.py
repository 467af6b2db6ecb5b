"""Training-time data augmentation: a registry of seeded, batch-vectorised transforms listed in YAML.

```yaml
data:
  augment:                       # applied in this order, to the training split only
    - {type: random_shift, max_pixels: 2}
    - {type: random_rotate, degrees: 10}
```
Every transform maps a float batch x01: (N, C, H, W) with values in [0, 1] to a new array of the same
shape and dtype (the input is never modified), drawing all randomness from the Generator it is given,
with no Python loop over images or pixels. Geometry uses the NumPy resampler in affine.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nntrain.data import affine
from nntrain.errors import ConfigError
from nntrain.options import Option
from nntrain.registry import Configurable, Registry

log = logging.getLogger(__name__)


class Augmentation(Configurable):
    """Base class: declares YAML `options` (available as attributes) and implements `apply(x, rng)` on a
    float batch (N, C, H, W), returning a new array."""

    def __init__(self, **options: Any):
        self._set_options(options)   # resolved by AUGMENTATIONS: checked and complete

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError



# YAML type name -> augmentation class: `@AUGMENTATIONS.register("name")` makes it `type: name`.
AUGMENTATIONS = Registry("augmentation")


@AUGMENTATIONS.register("random_shift")
class RandomShift(Augmentation):
    """Move each image by whole pixels dx, dy drawn uniformly from [-max_pixels, max_pixels], zero fill."""

    options = {"max_pixels": Option("int", default=2, minimum=0, doc="largest shift in pixels, each axis")}

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = self.max_pixels
        d = rng.integers(-k, k + 1, size=(2, len(x)))
        return affine.shift(x, d[0], d[1], mode="nearest")


@AUGMENTATIONS.register("random_rotate")
class RandomRotate(Augmentation):
    """Rotate each image about its centre by an angle drawn uniformly from [-degrees, degrees]
    (bilinear, zero fill)."""

    options = {"degrees": Option("float", default=10.0, minimum=0.0, maximum=180.0,
                                 doc="largest rotation either way, in degrees")}

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angles = rng.uniform(-self.degrees, self.degrees, size=len(x))
        return affine.rotate(x, angles)


@AUGMENTATIONS.register("random_scale")
class RandomScale(Augmentation):
    """Scale each image about its centre by a factor drawn uniformly from [min, max] (> 1 zooms in;
    bilinear, zero fill)."""

    options = {"min": Option("float", default=0.9, minimum=0.1, maximum=10.0, doc="smallest factor"),
               "max": Option("float", default=1.1, minimum=0.1, maximum=10.0, doc="largest factor")}

    @classmethod
    def check(cls, values: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        if values["min"] > values["max"]:
            raise ConfigError(f"max ({values['max']}) must be >= min ({values['min']})", "max")
        return values

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return affine.scale(x, rng.uniform(self.min, self.max, size=len(x)))


@AUGMENTATIONS.register("random_crop")
class RandomCrop(Augmentation):
    """Pad each image with `padding` zero pixels on every side and crop a random window of the
    original size: out[n, :, i, j] = padded[n, :, i + oy_n, j + ox_n], oy, ox uniform in [0, 2·padding]."""

    options = {"padding": Option("int", default=4, minimum=0, doc="zero border added before cropping")}

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, _, h, w = x.shape
        p = self.padding
        padded = np.zeros((n, x.shape[1], h + 2 * p, w + 2 * p), dtype=x.dtype)
        padded[:, :, p:p + h, p:p + w] = x
        off = rng.integers(0, 2 * p + 1, size=(2, n))
        rows = (off[0][:, None] + np.arange(h))[:, None, :, None]      # (N, 1, H, 1)
        cols = (off[1][:, None] + np.arange(w))[:, None, None, :]      # (N, 1, 1, W)
        return padded[np.arange(n)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None], rows, cols]


@AUGMENTATIONS.register("horizontal_flip")
class HorizontalFlip(Augmentation):
    """Mirror each image left-right with probability p."""

    options = {"p": Option("float", default=0.5, minimum=0.0, maximum=1.0, doc="probability of a flip")}

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flip = rng.random(len(x)) < self.p
        return np.where(flip[:, None, None, None], x[..., ::-1], x)


@AUGMENTATIONS.register("gaussian_noise")
class GaussianNoise(Augmentation):
    """Add N(0, std²) noise to every pixel, then clip to [0, 1]."""

    options = {"std": Option("float", default=0.05, minimum=0.0, maximum=1.0, doc="noise standard deviation")}

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return affine.add_noise(x, self.std, rng, clip=(0.0, 1.0))


@AUGMENTATIONS.register("cutout")
class Cutout(Augmentation):
    """With probability p, zero a size x size square (all channels) centred at a uniformly drawn pixel;
    the square is clipped at the image border (DeVries & Taylor, 2017)."""

    options = {"size": Option("int", default=8, minimum=1, doc="side of the square in pixels"),
               "p": Option("float", default=1.0, minimum=0.0, maximum=1.0, doc="probability per image")}

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, _, h, w = x.shape
        cy, cx = rng.integers(0, h, size=n), rng.integers(0, w, size=n)
        on = rng.random(n) < self.p
        top, left = cy - self.size // 2, cx - self.size // 2
        r, c = np.arange(h), np.arange(w)
        in_rows = (r >= top[:, None]) & (r < top[:, None] + self.size)          # (N, H)
        in_cols = (c >= left[:, None]) & (c < left[:, None] + self.size)        # (N, W)
        hole = in_rows[:, None, :, None] & in_cols[:, None, None, :] & on[:, None, None, None]
        return np.where(hole, np.zeros((), dtype=x.dtype), x)


class Augment:
    """A sequence of augmentations applied in order: `aug(x01, rng) -> new array`."""

    def __init__(self, steps: Sequence[Augmentation]):
        self.steps = list(steps)

    def __call__(self, x01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """x01: float (N, C, H, W) in [0, 1] -> a new augmented array, same shape and dtype."""
        if x01.ndim != 4 or not np.issubdtype(x01.dtype, np.floating):
            raise ValueError(f"augmentation needs a float batch (N, C, H, W), got {x01.dtype} {x01.shape}")
        out = x01
        for step in self.steps:
            out = step.apply(out, rng)
        if out is x01:  # no steps: still hand back a new array
            out = x01.copy()
        return out.astype(x01.dtype, copy=False)

    def __repr__(self) -> str:
        return "Augment(" + ", ".join(s.describe() for s in self.steps) + ")"


def build_augment(specs: Any, path: str = "data.augment") -> Augment | None:
    """The callable for a `data.augment` list (resolved or plain specs), or None when it is empty or absent."""
    if specs is None:
        return None
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(f"expected a list of augmentations like [{{type: random_shift, max_pixels: 2}}], "
                          f"got {type(specs).__name__}", path)
    steps = [AUGMENTATIONS.build(spec, path=f"{path}[{i}]") for i, spec in enumerate(specs)]
    return Augment(steps) if steps else None


def augment_preview(images_uint8: np.ndarray, specs: Any, rng: np.random.Generator, path: str | Path,
                    n: int = 8, variants: int = 3) -> Path:
    """Write a PNG grid: the first `n` images (top row) and `variants` augmented versions of each
    (rows below), to look at what `specs` does. images: uint8 (N, C, H, W) with C = 1 or 3, or
    (N, H, W). The PNG is n*100 x (variants+1)*100 pixels, written atomically. Returns its path."""
    from matplotlib.figure import Figure   # imported here: plotting is not needed to train

    from nntrain.atomic import atomic_open

    images = np.asarray(images_uint8)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"expected images (N, 1|3, H, W) or (N, H, W), got shape {images.shape}")
    n = min(n, len(images))
    x01 = images[:n].astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    aug = build_augment(specs)
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
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    log.info("wrote augmentation preview %s", path)
    return path
