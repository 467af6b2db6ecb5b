"""Fully connected layer: y = x W + b, with an optional per-layer L2 weight decay (dW += λW)."""

from __future__ import annotations

import numpy as np

from nntrain.nn.initializers import initialize
from nntrain.nn.layers.base import LAYERS, Layer, Option, Shape, require_shape, weight_options


@LAYERS.register("linear")
class Linear(Layer):
    """x: (N, in_features) -> y: (N, out_features). W is stored (in, out) so forward is one GEMM x @ W.

    Backward: dW = xᵀ·g + λW, db = Σ_n g, dx = g·Wᵀ; with need_input_grad=False (a first layer, whose
    input needs no gradient, as PyTorch skips it) it returns None instead of dx.
    """

    options = {
        "out_features": Option("int", minimum=1, doc="number of output units"),
        **weight_options("add a learned bias"),
    }
    decayed = ("W",)

    def output_shape(self, input_shape: Shape) -> Shape:
        require_shape(self, input_shape, 1, "add {type: flatten} before it")
        return (self.out_features,)

    def num_params(self, input_shape: Shape) -> int:
        return input_shape[0] * self.out_features + (self.out_features if self.bias else 0)

    def _create(self, input_shape: Shape, init_rng: np.random.Generator) -> None:
        fan_in = input_shape[0]
        self.add_param("W", initialize(self.init, (fan_in, self.out_features), fan_in, self.out_features,
                                       init_rng, self.dtype, self.init_std))
        if self.bias:
            self.add_param("b", np.zeros(self.out_features))

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        self.x = x if train else None   # backward's dW = xᵀ·g; an evaluation forward keeps nothing
        y = x @ self.params["W"]
        if self.bias:
            y += self.params["b"]
        return y

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if getattr(self, "x", None) is None:
            raise self._no_cache()
        np.matmul(self.x.T, grad, out=self.grads["W"])
        if self.bias:
            np.sum(grad, axis=0, out=self.grads["b"])
        self.apply_weight_decay()
        if not need_input_grad:
            return None
        return grad @ self.params["W"].T

    def flops(self, input_shape: Shape) -> int:
        return 2 * input_shape[0] * self.out_features
