"""Weight initialisers, chosen per layer with `init:` in YAML.

fan_in / fan_out follow PyTorch: for a weight of a conv (O, C, kh, kw), fan_in = C·kh·kw and
fan_out = O·kh·kw; for a linear weight stored (in, out), fan_in = in and fan_out = out.
"""

from __future__ import annotations

import numpy as np

INITS = ("he_normal", "he_uniform", "xavier_normal", "xavier_uniform", "fan_in_uniform", "normal", "zeros")


def initialize(kind: str, shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator,
               dtype: np.dtype, std: float = 0.01) -> np.ndarray:
    """Draw an array of `shape` with the named scheme (float64 draw, cast to `dtype`).

    he_*: variance 2/fan_in (ReLU nets); xavier_*: variance 2/(fan_in+fan_out); normal: N(0, std²);
    fan_in_uniform: U(-1/√fan_in, 1/√fan_in), variance 1/(3·fan_in), PyTorch's default for its
    Linear and Conv2d weights (kaiming_uniform with a = √5), a third of he's variance.
    Uniform variants use bound = sqrt(3·variance).
    """
    if kind == "zeros":
        return np.zeros(shape, dtype=dtype)
    if kind == "normal":
        return rng.normal(0.0, std, size=shape).astype(dtype)
    if kind.startswith("he_"):
        var = 2.0 / fan_in
    elif kind.startswith("xavier_"):
        var = 2.0 / (fan_in + fan_out)
    elif kind == "fan_in_uniform":
        var = 1.0 / (3.0 * fan_in)
    else:
        raise ValueError(f"unknown init {kind!r}; valid: {', '.join(INITS)}")
    if kind.endswith("_normal"):
        return rng.normal(0.0, np.sqrt(var), size=shape).astype(dtype)
    bound = np.sqrt(3.0 * var)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)
