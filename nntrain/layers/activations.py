"""Element-wise activations. Each keeps its input dtype and returns a new array in backward."""

from __future__ import annotations

import numpy as np

from nntrain.layers.base import Layer, register


@register("relu")
class ReLU(Layer):
    """y = max(x, 0); dx = g · [x > 0] (the subgradient at 0 is 0, as in PyTorch)."""

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        self.mask = x > 0
        return np.maximum(x, 0)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad * self.mask
