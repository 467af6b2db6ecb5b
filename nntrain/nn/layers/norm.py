"""Batch normalisation (PyTorch's BatchNorm1d after a flat (features,) input, BatchNorm2d after (C, H, W))."""

from __future__ import annotations

import numpy as np

from nntrain.errors import ShapeError
from nntrain.nn.layers.base import LAYERS, Layer, Option, Shape
from nntrain.nn.parallel import split


@LAYERS.register("batchnorm")
class BatchNorm(Layer):
    """Per-feature (or per-channel) normalisation: y = γ·x̂ + β, x̂ = (x - μ)/√(σ² + eps).

    x: (N, F) or (N, C, H, W); statistics over N (and H, W), M values per feature. Train: μ, σ² are
    the batch mean and biased variance; running_mean/var ← (1-momentum)·running + momentum·batch,
    the running variance taking the unbiased σ²·M/(M-1) as PyTorch does. Eval: μ, σ² = running stats.
    Backward (train): dx = γ/(M·√(σ²+eps)) · (M·g - Σg - x̂·Σ(g·x̂)); dγ = Σ g·x̂, dβ = Σ g.

    The per-channel sums run in this thread (their order, hence their rounding, never depends on the
    thread count); the element-wise passes are split over the batch across the model's workers, each
    written into an array in the input's memory layout (channels-last stays channels-last).
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
        n, per = len(x), x[:1].size
        xc = np.empty_like(x)   # x - μ, then x̂ in place (order K: x's memory layout)
        if train:
            if m < 2:
                raise ShapeError(f"batchnorm in training needs more than one value per feature, got input "
                                 f"{x.shape}; use a batch size of at least 2")
            mean = x.mean(axis=axes, dtype=x.dtype)
            mb = mean.reshape(bshape)
            split(self.workers, lambda s: np.subtract(x[s], mb, out=xc[s]), n, per)
            sq = np.empty_like(xc)
            split(self.workers, lambda s: np.multiply(xc[s], xc[s], out=sq[s]), n, per)
            var = np.mean(sq, axis=axes, dtype=x.dtype)
            del sq
            mom = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - mom
            rm += mom * mean
            rv *= 1 - mom
            rv += (mom * m / (m - 1)) * var
        else:
            mean, var = self.buffers["running_mean"].astype(x.dtype), self.buffers["running_var"].astype(x.dtype)
            mb = mean.reshape(bshape)
            split(self.workers, lambda s: np.subtract(x[s], mb, out=xc[s]), n, per)
        self._train = train
        self.invstd = (1 / np.sqrt(var + t(self.eps))).astype(x.dtype)
        inv = self.invstd.reshape(bshape)
        gamma, beta = self.params["gamma"].reshape(bshape), self.params["beta"].reshape(bshape)
        y = np.empty_like(xc)

        def affine(s: slice) -> None:
            np.multiply(xc[s], inv, out=xc[s])    # x̂
            np.multiply(xc[s], gamma, out=y[s])
            np.add(y[s], beta, out=y[s])

        split(self.workers, affine, n, per)
        self.xhat = xc
        self.axes, self.bshape, self.m = axes, bshape, m
        return y

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        axes, bshape, xhat = self.axes, self.bshape, self.xhat
        n, per = len(grad), grad[:1].size
        dbeta = grad.sum(axis=axes)
        gx = np.empty_like(grad)
        split(self.workers, lambda s: np.multiply(grad[s], xhat[s], out=gx[s]), n, per)
        dgamma = gx.sum(axis=axes)
        np.copyto(self.grads["beta"], dbeta)
        np.copyto(self.grads["gamma"], dgamma)
        scale = (self.params["gamma"] * self.invstd).astype(grad.dtype).reshape(bshape)
        dx = gx   # reused: each piece reads its g·x̂ no more
        if not self._train:   # running statistics are constants: y is affine in x
            split(self.workers, lambda s: np.multiply(grad[s], scale, out=dx[s]), n, per)
            return dx
        mt = grad.dtype.type(1.0 / self.m)
        a, b = (dbeta * mt).reshape(bshape), (dgamma * mt).reshape(bshape)

        def work(s: slice) -> None:   # dx = ((g - Σg/M) - x̂·Σ(g·x̂)/M) · γ/√(σ²+eps)
            tmp = xhat[s] * b
            np.subtract(grad[s], a, out=dx[s])
            np.subtract(dx[s], tmp, out=dx[s])
            np.multiply(dx[s], scale, out=dx[s])

        split(self.workers, work, n, per)
        return dx
