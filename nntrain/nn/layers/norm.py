"""Batch normalisation (PyTorch's BatchNorm1d after a flat (features,) input, BatchNorm2d after (C, H, W))."""

from __future__ import annotations

import numpy as np

from nntrain.errors import ShapeError
from nntrain.nn.layers.base import LAYERS, Layer, Option, Shape


@LAYERS.register("batchnorm")
class BatchNorm(Layer):
    """Per-feature (or per-channel) normalisation: y = γ·x̂ + β, x̂ = (x - μ)/√(σ² + eps).

    x: (N, F) or (N, C, H, W); statistics over N (and H, W), M values per feature. Train: μ, σ² are
    the batch mean and biased variance; running_mean/var ← (1-momentum)·running + momentum·batch,
    the running variance taking the unbiased σ²·M/(M-1) as PyTorch does. Eval: μ, σ² = running stats.
    Backward (train): dx = γ/(M·√(σ²+eps)) · (M·g - Σg - x̂·Σ(g·x̂)); dγ = Σ g·x̂, dβ = Σ g.
    """

    options = {
        "momentum": Option("float", 0.1, minimum=0.0, maximum=1.0, doc="weight of the batch in the running stats"),
        "eps": Option("float", 1e-5, minimum=0.0, doc="added to the variance"),
    }

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) not in (1, 3):
            raise ShapeError(f"batchnorm takes a per-sample shape (features,) or (C, H, W), got "
                             f"{tuple(input_shape)}")
        return tuple(input_shape)

    def num_params(self, input_shape: Shape) -> int:
        return 2 * input_shape[0]   # gamma and beta (the running statistics are buffers)

    def _create(self, input_shape: Shape, init_rng: np.random.Generator) -> None:
        c = input_shape[0]
        self.add_param("gamma", np.ones(c))
        self.add_param("beta", np.zeros(c))
        self.buffers["running_mean"] = np.zeros(c, dtype=self.dtype)
        self.buffers["running_var"] = np.ones(c, dtype=self.dtype)

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        bshape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)   # broadcasts a per-feature vector
        m = x.size // x.shape[1]
        t = x.dtype.type
        if train:
            if m < 2:
                raise ShapeError(f"batchnorm in training needs more than one value per feature, got input "
                                 f"{x.shape}; use a batch size of at least 2")
            mean = x.mean(axis=axes, dtype=x.dtype)
            xc = x - mean.reshape(bshape)
            var = np.mean(xc * xc, axis=axes, dtype=x.dtype)
            mom = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - mom
            rm += mom * mean
            rv *= 1 - mom
            rv += (mom * m / (m - 1)) * var
        else:
            mean, var = self.buffers["running_mean"].astype(x.dtype), self.buffers["running_var"].astype(x.dtype)
            xc = x - mean.reshape(bshape)
        self._train = train
        self.invstd = (1 / np.sqrt(var + t(self.eps))).astype(x.dtype)
        self.xhat = xc * self.invstd.reshape(bshape)
        self.axes, self.bshape, self.m = axes, bshape, m
        return self.xhat * self.params["gamma"].reshape(bshape) + self.params["beta"].reshape(bshape)

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        axes, bshape, xhat = self.axes, self.bshape, self.xhat
        dbeta = grad.sum(axis=axes)
        dgamma = (grad * xhat).sum(axis=axes)
        np.copyto(self.grads["beta"], dbeta)
        np.copyto(self.grads["gamma"], dgamma)
        scale = (self.params["gamma"] * self.invstd).astype(grad.dtype)
        if not self._train:   # running statistics are constants: y is affine in x
            return grad * scale.reshape(bshape)
        mt = grad.dtype.type(1.0 / self.m)
        return (grad - (dbeta * mt).reshape(bshape) - xhat * (dgamma * mt).reshape(bshape)) * scale.reshape(bshape)
