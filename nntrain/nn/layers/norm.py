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

    Passes over the data, each a read or a write of the whole array: forward 5 (the mean; xc = x - μ;
    σ² = Σ xc² by einsum, no squares array; y = xc·γ/√(σ²+eps) + β in place), where the textbook
    order with x̂ and (x - μ)² stored takes 10 and one more array; backward 7. Only xc is kept (x̂ is
    xc/√(σ²+eps), folded into the per-channel factors). Evaluation: y = x·k + (β - μ·k), two operations.
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
        gamma, beta = self.params["gamma"].astype(x.dtype), self.params["beta"].astype(x.dtype)
        y = np.empty_like(x)   # order K: x's memory layout
        self._train = train
        if not train:
            # running statistics: y = x·(γ/√(σ²+eps)) + (β - μ·γ/√(σ²+eps)), one array
            mean, var = self.buffers["running_mean"].astype(x.dtype), self.buffers["running_var"].astype(x.dtype)
            self.invstd = (1 / np.sqrt(var + t(self.eps))).astype(x.dtype)
            k = gamma * self.invstd
            kb, cb = k.reshape(bshape), (beta - mean * k).reshape(bshape)

            def affine_eval(s: slice) -> None:
                np.multiply(x[s], kb, out=y[s])
                np.add(y[s], cb, out=y[s])

            split(self.workers, affine_eval, n, per)
            # backward after an evaluation forward (saliency, frozen statistics) rebuilds x - μ from x
            self.xc, self.x_eval, self.mean_eval = None, x, mean
            self.axes, self.bshape = axes, bshape
            return y
        if m < 2:
            raise ShapeError(f"batchnorm in training needs more than one value per feature, got input "
                             f"{x.shape}; use a batch size of at least 2")
        mean = x.mean(axis=axes, dtype=x.dtype)
        mb = mean.reshape(bshape)
        xc = np.empty_like(x)   # x - μ, kept for backward (x̂ = xc/√(σ²+eps) is never stored)
        split(self.workers, lambda s: np.subtract(x[s], mb, out=xc[s]), n, per)
        var = _channel_dot(xc, xc) / t(m)
        mom = self.momentum
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm *= 1 - mom
        rm += mom * mean
        rv *= 1 - mom
        rv += (mom * m / (m - 1)) * var
        self.invstd = (1 / np.sqrt(var + t(self.eps))).astype(x.dtype)
        kb, bb = (gamma * self.invstd).reshape(bshape), beta.reshape(bshape)

        def affine(s: slice) -> None:   # y = xc·γ/√(σ²+eps) + β
            np.multiply(xc[s], kb, out=y[s])
            np.add(y[s], bb, out=y[s])

        split(self.workers, affine, n, per)
        self.xc, self.x_eval, self.mean_eval = xc, None, None
        self.axes, self.bshape, self.m = axes, bshape, m
        return y

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        if getattr(self, "xc", None) is None and getattr(self, "x_eval", None) is None:
            raise self._no_cache()   # no forward since the last backward, which let go of x - μ
        axes, bshape, inv = self.axes, self.bshape, self.invstd
        n, per = len(grad), grad[:1].size
        xc = self.xc if self._train else self.x_eval - self.mean_eval.reshape(bshape)
        dbeta = grad.sum(axis=axes)
        dgamma = _channel_dot(grad, xc) * inv          # Σ g·x̂ = Σ g·xc / √(σ²+eps)
        np.copyto(self.grads["beta"], dbeta)
        np.copyto(self.grads["gamma"], dgamma)
        scale = (self.params["gamma"] * inv).astype(grad.dtype).reshape(bshape)
        dx = np.empty_like(grad)
        self.xc = self.x_eval = None   # done with them: nothing of this batch stays alive until the next
        if not self._train:   # running statistics are constants: y is affine in x
            split(self.workers, lambda s: np.multiply(grad[s], scale, out=dx[s]), n, per)
            return dx
        mt = grad.dtype.type(1.0 / self.m)
        a, b = (dbeta * mt).reshape(bshape), (dgamma * inv * mt).reshape(bshape)

        def work(s: slice) -> None:   # dx = (g - Σg/M - xc·Σ(g·x̂)/(M·√(σ²+eps))) · γ/√(σ²+eps)
            np.multiply(xc[s], b, out=dx[s])
            np.subtract(grad[s], dx[s], out=dx[s])
            np.subtract(dx[s], a, out=dx[s])
            np.multiply(dx[s], scale, out=dx[s])

        split(self.workers, work, n, per)
        return dx


def _channel_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ a·b per feature (axis 1) of (N, F) or (N, C, H, W) arrays, in this thread, in one pass
    without a product array; the dtype of `a`."""
    if a.ndim == 2:
        return np.einsum("nf,nf->f", a, b)
    return np.einsum("nchw,nchw->c", a, b)
