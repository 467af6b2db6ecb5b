"""Batch normalisation (PyTorch's BatchNorm1d after a flat (features,) input, BatchNorm2d after (C, H, W))."""

from __future__ import annotations

from typing import Callable

import numpy as np

from nntrain.errors import ShapeError
from nntrain.nn.layers.base import LAYERS, Layer, Option, Shape
from nntrain.nn.parallel import Workers, chunks

# Elements per chunk (256 KiB of float32). A chunk, its scratch copy and the per-channel tiles stay in a
# core's L2 cache (2 MB on the machines measured) between the operations done on it, so that only the
# first read and the last write of each element go to memory. bench/results/kernels.md has the figures.
CHUNK_ITEMS = 1 << 16


class _Chunked:
    """How a batch x (N, F) or (N, C, H, W) is walked: in chunks of whole samples, each a contiguous
    block of memory, with every per-channel vector laid out as that block's pattern of channels.

    Two memory layouts are contiguous per sample: channels-last (a conv's output, an (N, H, W, C) array
    seen as NCHW, and (N, F)), where a chunk is rows of C channels; and plain NCHW, where it is planes of
    H·W values per channel. Any other input is copied into plain NCHW (or (N, F)) first (`conform`).
    A chunk's per-channel sum is a matrix-vector product with ones (one BLAS pass over it, several times
    faster than NumPy's reduction over an outer axis); an element-wise operation with a per-channel
    vector runs on a `tile` of the vector as long as a chunk (NumPy's operations on two equal-shaped
    contiguous arrays are 2-3x faster than on a broadcast row). Chunks depend only on the shape,
    never on the thread count, and their partial sums are added in chunk order: the results are the
    same for any number of threads.
    """

    def __init__(self, x: np.ndarray):
        self.n, self.c = x.shape[:2]
        self.planes = 1 if x.ndim == 2 else x.shape[2] * x.shape[3]   # values per channel per sample
        self.channels_last = x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous
        self.sample = self.c * self.planes
        self.per = max(1, CHUNK_ITEMS // max(self.sample, 1))
        self.count = self.n * self.planes   # values per channel in the batch
        # the ones a channel sum multiplies by: one per row of a chunk, or one per value of a plane
        self._ones = np.ones(self.per * self.planes if self.rows_layout else self.planes, dtype=x.dtype)

    @property
    def rows_layout(self) -> bool:
        """A chunk is rows of C channels ((N, F), or channels-last memory)."""
        return self.planes == 1 or self.channels_last

    def conform(self, a: np.ndarray) -> np.ndarray:
        """a (x's shape) in the layout the chunks walk: itself when it already is, else a copy."""
        if a.ndim == 4 and self.channels_last:
            return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(a)

    def whole(self, a: np.ndarray) -> np.ndarray:
        """A conformed array as a 1-D view of its memory (a chunk is a slice of it, see run)."""
        return (a.transpose(0, 2, 3, 1) if a.ndim == 4 and self.channels_last else a).reshape(-1)

    def tile(self, v: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The per-channel vector v (C,) laid out as a full chunk's memory (slice it for a shorter chunk)."""
        v = np.asarray(v, dtype=dtype)
        one = np.tile(v, self.planes) if self.rows_layout else np.repeat(v, self.planes)
        return np.tile(one, self.per)

    def channel_sum(self, flat: np.ndarray) -> np.ndarray:
        """Per-channel sums (C,) of a chunk given as a 1-D view of its memory."""
        if self.rows_layout:
            rows = flat.reshape(-1, self.c)
            return self._ones[:len(rows)] @ rows
        planes = flat.reshape(-1, self.planes)
        return (planes @ self._ones[:self.planes]).reshape(-1, self.c).sum(axis=0)

    def run(self, workers: Workers | None, fn: Callable[[int, int, int, int], None]) -> None:
        """fn(lo, hi, i, slot) for each chunk i, elements lo:hi of the `whole` views, over the workers
        (each thread on one BLAS thread; slot numbers the thread, for its scratch)."""
        size, per = self.sample, self.per
        chunks(workers, lambda s, slot: fn(s.start * size, s.stop * size, s.start // per, slot), self.n, per)

    def partials(self, dtype: np.dtype, k: int = 1) -> np.ndarray:
        """Room for k per-channel partial sums of every chunk: (k, chunks, C)."""
        return np.empty((k, -(-self.n // self.per), self.c), dtype=dtype)


@LAYERS.register("batchnorm")
class BatchNorm(Layer):
    """Per-feature (or per-channel) normalisation: y = γ·x̂ + β, x̂ = (x - μ)/√(σ² + eps).

    x: (N, F) or (N, C, H, W); statistics over N (and H, W), M values per feature. Train: μ, σ² are
    the batch mean and biased variance; running_mean/var ← (1-momentum)·running + momentum·batch,
    the running variance taking the unbiased σ²·M/(M-1) as PyTorch does. Eval: μ, σ² = running stats.
    Backward (train): dx = γ/(M·√(σ²+eps)) · (M·g - Σg - x̂·Σ(g·x̂)); dγ = Σ g·x̂, dβ = Σ g.
    After an evaluation forward μ and σ² are constants: dx = g·γ/√(σ²+eps).

    Everything runs chunk by chunk (see _Chunked), each chunk read from memory once per pass:
    forward, Σx; then σ² = Σ(x - μ)²/M from x - μ in a cache-sized scratch; then y = (x - μ)·k + β,
    k = γ/√(σ²+eps). Backward, Σg and Σ g·(x - μ); then dx. Only x is kept for backward (no x - μ or x̂
    array is stored: backward rebuilds x - μ per chunk in cache). Partial sums are added in float64.
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
        walk = _Chunked(x)
        x = walk.conform(x)
        dt = x.dtype
        if train and walk.count < 2:
            raise ShapeError(f"batchnorm in training needs more than one value per feature, got input "
                             f"{x.shape}; use a batch size of at least 2")
        if train:
            mean, var, mu_t = self._batch_statistics(x, walk)
            mom, m = self.momentum, walk.count
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - mom
            rm += (mom * mean).astype(rm.dtype)
            rv *= 1 - mom
            rv += (mom * m / (m - 1) * var).astype(rv.dtype)
        else:
            mean, var = self._running_statistics()
            mu_t = walk.tile(mean, dt)
        invstd = 1 / np.sqrt(var + self.eps)                       # float64 (C,)
        k = self.params["gamma"].astype(np.float64) * invstd
        k_t, b_t = walk.tile(k, dt), walk.tile(self.params["beta"], dt)
        y = np.empty_like(x)   # in x's memory layout
        xw, yw = walk.whole(x), walk.whole(y)

        def affine(lo: int, hi: int, i: int, slot: int) -> None:   # y = (x - μ)·k + β
            t, n = self._centred(xw, mu_t, lo, hi, slot), hi - lo
            t *= k_t[:n]
            t += b_t[:n]
            np.copyto(yw[lo:hi], t)   # worked on in cache, then one plain copy out (measured faster)

        walk.run(self.workers, affine)
        # backward needs x, μ and 1/√(σ²+eps) (after an evaluation forward too: saliency, frozen stats)
        self._saved = (x, walk, mean, invstd, train)
        return y

    def eval_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(k, c), float64 (C,): the evaluation forward as y = x·k + c per feature, from the running
        statistics, k = γ/√(σ²+eps), c = β − μ·k (what a fused conv folds into its weights)."""
        mean, var = self._running_statistics()
        k = self.params["gamma"].astype(np.float64) / np.sqrt(var + self.eps)
        return k, self.params["beta"].astype(np.float64) - mean * k

    def _running_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(running μ, running σ²) per feature, in float64: what evaluation normalises with."""
        return tuple(self.buffers[k].astype(np.float64) for k in ("running_mean", "running_var"))

    def _centred(self, xw: np.ndarray, mu_t: np.ndarray, lo: int, hi: int, slot: int) -> np.ndarray:
        """x - μ for elements lo:hi of a `whole` view, in thread slot `slot`'s scratch chunk."""
        t = self.scratch.buffer("batchnorm", slot, (hi - lo,), xw.dtype)
        np.subtract(xw[lo:hi], mu_t[:hi - lo], out=t)
        return t

    def _batch_statistics(self, x: np.ndarray, walk: _Chunked) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(μ, σ²) per channel, float64, and μ tiled: Σx first, then Σ(x - μ)² (two passes, no
        cancellation)."""
        xw, sums = walk.whole(x), walk.partials(x.dtype)
        walk.run(self.workers, lambda lo, hi, i, slot: np.copyto(sums[0, i], walk.channel_sum(xw[lo:hi])))
        mean = sums[0].sum(axis=0, dtype=np.float64) / walk.count
        mu_t = walk.tile(mean, x.dtype)

        def squares(lo: int, hi: int, i: int, slot: int) -> None:
            t = self._centred(xw, mu_t, lo, hi, slot)
            t *= t
            sums[0, i] = walk.channel_sum(t)

        walk.run(self.workers, squares)
        return mean, sums[0].sum(axis=0, dtype=np.float64) / walk.count, mu_t

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        saved = getattr(self, "_saved", None)
        if saved is None:
            raise self._no_cache()   # no forward since the last backward, which let go of x
        x, walk, mean, invstd, train = saved
        self._saved = None           # nothing of this batch stays alive until the next
        g = walk.conform(grad)
        dt = g.dtype
        dx = np.empty_like(g)
        xw, gw, dw = walk.whole(x), walk.whole(g), walk.whole(dx)
        mu_t = walk.tile(mean, dt)
        sums = walk.partials(dt, 2)

        def reduce(lo: int, hi: int, i: int, slot: int) -> None:   # Σg and Σ g·(x - μ) of the chunk
            gs = gw[lo:hi]
            sums[0, i] = walk.channel_sum(gs)
            t = self._centred(xw, mu_t, lo, hi, slot)
            t *= gs
            sums[1, i] = walk.channel_sum(t)

        walk.run(self.workers, reduce)
        dbeta, dxc = sums.sum(axis=1, dtype=np.float64)
        np.copyto(self.grads["beta"], dbeta)
        np.copyto(self.grads["gamma"], dxc * invstd)              # Σ g·x̂
        scale_t = walk.tile(self.params["gamma"].astype(np.float64) * invstd, dt)
        if not train:   # running statistics are constants: y is affine in x
            walk.run(self.workers, lambda lo, hi, i, slot: np.multiply(gw[lo:hi], scale_t[:hi - lo], out=dw[lo:hi]))
            return dx
        m = walk.count
        a_t = walk.tile(dbeta / m, dt)                           # Σg/M
        b_t = walk.tile(dxc * invstd * invstd / m, dt)           # Σ(g·x̂)/(M·√(σ²+eps))

        def input_grad(lo: int, hi: int, i: int, slot: int) -> None:
            # dx = (g - Σg/M - (x - μ)·Σ(g·x̂)/(M·√(σ²+eps)))·γ/√(σ²+eps)
            t, n = self._centred(xw, mu_t, lo, hi, slot), hi - lo
            t *= b_t[:n]
            np.subtract(gw[lo:hi], t, out=t)
            t -= a_t[:n]
            t *= scale_t[:n]
            np.copyto(dw[lo:hi], t)

        walk.run(self.workers, input_grad)
        return dx
