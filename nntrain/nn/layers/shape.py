"""Layers that only change the array's shape."""

from __future__ import annotations

import math

import numpy as np

from nntrain.nn.layers.base import LAYERS, Layer, Shape


@LAYERS.register("flatten")
class Flatten(Layer):
    """x: (N, C, H, W) -> (N, C·H·W), row-major (PyTorch's order), so checkpoints match its layout."""

    def output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        self.shape = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))   # not -1: NumPy cannot infer it for 0 samples

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        return grad.reshape(self.shape)
