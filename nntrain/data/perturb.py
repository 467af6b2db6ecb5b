"""Input perturbations for robustness evaluation (`nntrain eval --perturb rotate=0,5,10`).

Each perturbation acts on a [0, 1] float batch (N, C, H, W) before normalisation, with a seeded
Generator so that the same command gives the same table:
- rotate=d: every image rotated by d degrees, clockwise or counter-clockwise at random (bilinear);
- shift=k: every image moved k whole pixels left, right, up or down at random (exact, zero fill);
- noise=s: Gaussian noise of std s added, clipped to [0, 1].
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from nntrain.data import affine
from nntrain.errors import ConfigError

PERTURBATIONS = ("rotate", "shift", "noise")


def perturbation(kind: str, level: float, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray] | None:
    """A transform for `evaluate(..., transform=...)`, or None for level 0 (the clean input)."""
    if kind not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {kind!r}; valid: {', '.join(PERTURBATIONS)}", "--perturb")
    if level < 0 or not np.isfinite(level):
        raise ConfigError(f"perturbation level {level} must be a finite number >= 0", "--perturb")
    if level == 0:
        return None
    if kind == "rotate":
        return lambda x: affine.rotate(x, level * rng.choice([-1.0, 1.0], size=len(x)))
    if kind == "shift":
        if level != int(level):
            raise ConfigError(f"shift levels are whole pixels, got {level}", "--perturb")

        def shift(x: np.ndarray) -> np.ndarray:
            direction = rng.integers(0, 4, size=len(x))
            dx = np.select([direction == 0, direction == 1], [level, -level], 0.0)
            dy = np.select([direction == 2, direction == 3], [level, -level], 0.0)
            return affine.shift(x, dx, dy, mode="nearest")

        return shift
    return lambda x: affine.add_noise(x, level, rng)
