"""Inverted dropout: zero each element with probability p in training and scale the rest by 1/(1-p),
so evaluation (train=False) is the identity and needs no rescaling."""

from __future__ import annotations

import numpy as np

from nntrain.nn.layers.base import LAYERS, Layer, Option


@LAYERS.register("dropout")
class Dropout(Layer):
    """Train: y = x·m with m = [u >= p]/(1-p), u ~ U[0, 1) drawn from the model's Generator
    (`self.rng`); dx = g·m. Eval: y = x, dx = g. Any input shape."""

    options = {"p": Option("float", 0.5, minimum=0.0, maximum=1.0, exclusive_max=True,
                           doc="probability of zeroing an element, in [0, 1)")}

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        if not train or self.p == 0.0:
            self.mask = None
            return x   # identity, as PyTorch: no layer modifies its input, so sharing it is safe
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        keep = self.rng.random(x.shape, dtype=dtype) >= self.p
        self.mask = keep * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self.mask

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        return grad if self.mask is None else grad * self.mask
