"""Max and average pooling over (kh, kw) windows, as PyTorch's MaxPool2d / AvgPool2d (floor mode).

Both loop over the kh·kw kernel offsets (never over pixels): offset (a, b) sees the strided view
xpad[:, :, a::sh, b::sw] (cropped to OH x OW), one element of every window at once. When the windows
tile the input exactly (stride = kernel, no padding, sizes divisible) these views are exactly the
reshape (N, C, OH, kh, OW, kw) split by offset, and backward writes dx without zero-filling it.
A chain of np.maximum over the offset views measured several times faster than reshape(...).max(axis=(3, 5))
or argmax over a stacked copy (figures: bench/results/kernels.md).
Outputs and input grads are allocated in the input's memory layout (channels-last stays
channels-last), so the element-wise loops run over contiguous memory.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nntrain.errors import ConfigError
from nntrain.nn.layers.base import LAYERS, Layer, Option, Shape, require_shape
from nntrain.nn.layers.conv import conv_output_size, window_output_hw
from nntrain.nn.parallel import split


def is_channels_last(x: np.ndarray) -> bool:
    """True when (N, C, H, W) x is a view of channels-last (N, H, W, C) contiguous memory."""
    return x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous and not x.flags.c_contiguous


def empty_in_layout(shape: tuple[int, int, int, int], dtype: np.dtype, channels_last: bool,
                    fill: float | None = None) -> np.ndarray:
    """An (N, C, H, W) array backed by channels-last memory when `channels_last`, else NCHW;
    filled with `fill` unless it is None."""
    n, c, h, w = shape
    if channels_last:
        a = np.empty((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)
    else:
        a = np.empty(shape, dtype=dtype)
    if fill is not None:
        a.fill(fill)
    return a


class _Pool2D(Layer):
    """Shared option handling, shape inference, padding and the offset views of the two pools."""

    options = {
        "kernel_size": Option("pair", minimum=1, doc="window height and width (an int for square)"),
        "stride": Option("pair", None, minimum=1, nullable=True, doc="step between windows; null: kernel_size"),
        "padding": Option("pair", (0, 0), minimum=0, doc="padding on each side (at most half the kernel)"),
    }
    pad_value = 0.0

    @classmethod
    def check(cls, values: dict[str, Any], context: Any) -> dict[str, Any]:
        """Padding at most half the kernel (as PyTorch requires)."""
        (kh, kw), (ph, pw) = values["kernel_size"], values["padding"]
        if 2 * ph > kh or 2 * pw > kw:
            raise ConfigError(f"padding {ph},{pw} is more than half the kernel {kh}x{kw}; "
                              f"use padding of at most {kh // 2},{kw // 2}", "padding")
        return values

    def __init__(self, **opts: Any):
        super().__init__(**opts)
        if self.stride is None:   # null: windows side by side (the resolved config keeps the null)
            self.stride = self.kernel_size
        self._xp: np.ndarray | None = None

    def output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], *window_output_hw(self, input_shape))

    def _prepare(self, x: np.ndarray, train: bool) -> tuple[np.ndarray, tuple, bool, np.ndarray]:
        """What both poolings' forward start from: the padded input, the window geometry
        (OH, OW, views), whether x is channels-last memory, and an empty output in that layout."""
        geom = self._geometry(x)
        cl = is_channels_last(x)
        y = empty_in_layout((x.shape[0], x.shape[1], geom[0], geom[1]), x.dtype, cl)
        return self._padded(x, train), geom, cl, y

    def _padded(self, x: np.ndarray, train: bool) -> np.ndarray:
        """x itself without padding, else a buffer holding x inside a `pad_value` border: reused across
        training batches of one shape; an evaluation batch of another shape gets a temporary."""
        ph, pw = self.padding
        if ph == 0 and pw == 0:
            return x
        n, c, h, w = x.shape
        shape, cl = (n, c, h + 2 * ph, w + 2 * pw), is_channels_last(x)
        xp = self._xp
        if xp is None or xp.shape != shape or xp.dtype != x.dtype or is_channels_last(xp) != cl:
            xp = empty_in_layout(shape, x.dtype, cl, self.pad_value)
            if train:
                self._xp = xp
        xp[:, :, ph:ph + h, pw:pw + w] = x
        return xp

    def _geometry(self, x: np.ndarray) -> tuple[int, int, list[tuple[int, tuple[slice, ...]]]]:
        """(OH, OW, [(offset index, index tuple of that offset's view into the padded input)])."""
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
        views = [(a * kw + b, (slice(None), slice(None), slice(a, a + sh * (oh - 1) + 1, sh),
                               slice(b, b + sw * (ow - 1) + 1, sw)))
                 for a in range(kh) for b in range(kw)]
        return oh, ow, views

    def _tiles_exactly(self, h: int, w: int) -> bool:
        """Windows cover every input element exactly once: backward needs no zero-fill or accumulation."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (sh, sw) == (kh, kw) and ph == pw == 0 and h % kh == 0 and w % kw == 0

    def _grad_input(self, grad: np.ndarray, contribution) -> np.ndarray:
        """Assemble dx from per-offset contributions `contribution(o, grad, out, s)` (written into `out`;
        `s` is the batch slice that grad and out cover)."""
        if getattr(self, "_geom", None) is None:
            raise self._no_cache()
        n, c, h, w = self._in_shape
        ph, pw = self.padding
        cl = self._channels_last
        if is_channels_last(grad) != cl:   # e.g. grad from flatten: match the forward layout (one cheap copy)
            grad_cl = empty_in_layout(grad.shape, grad.dtype, cl)
            grad_cl[...] = grad
            grad = grad_cl
        _, _, views = self._geom
        if self._tiles_exactly(h, w):
            dx = empty_in_layout((n, c, h, w), grad.dtype, cl)

            def work(s: slice) -> None:
                gs, dxs = grad[s], dx[s]
                for o, index in views:
                    contribution(o, gs, dxs[index], s)

            split(self.workers, work, n, c * h * w)
            return dx
        dxp = empty_in_layout((n, c, h + 2 * ph, w + 2 * pw), grad.dtype, cl, 0.0)

        def work_overlapping(s: slice) -> None:
            gs, dxs = grad[s], dxp[s]
            tmp = np.empty_like(gs)
            for o, index in views:
                contribution(o, gs, tmp, s)
                dxs[index] += tmp

        split(self.workers, work_overlapping, n, c * h * w)
        return dxp[:, :, ph:ph + h, pw:pw + w]


@LAYERS.register("maxpool2d")
class MaxPool2D(_Pool2D):
    """y[n, c, i, j] = max over the window (padding counts as -inf); backward routes each window's
    gradient to one element, the first maximum in row-major window order (PyTorch's choice on ties)."""

    pad_value = -np.inf
    is_max_pool = True

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        if not train and is_channels_last(x) and self._tiles_exactly(*x.shape[2:]):
            self._geom = self._idx = None
            return self._tiled_max(x)
        xp, geom, cl, y = self._prepare(x, train)
        views = geom[2]
        # idx = the offset of the first maximum: an offset overrides only with a strictly larger value,
        # and offsets come in increasing order, so max(idx, o·[v > y]) keeps the latest strict winner.
        # Evaluation (train=False) needs no idx: a chain of np.maximum.
        idx_dtype = np.uint8 if len(views) <= 256 else np.int32
        idx = empty_in_layout(y.shape, idx_dtype, cl) if train else None

        def work(s: slice) -> None:
            xs, ys = xp[s], y[s]
            np.copyto(ys, xs[views[0][1]])
            if idx is None:
                for _, index in views[1:]:
                    np.maximum(ys, xs[index], out=ys)
                return
            ids = idx[s]
            ids.fill(0)
            better = np.empty_like(ys, dtype=bool)
            code = np.empty_like(ids)
            for o, index in views[1:]:
                v = xs[index]
                np.greater(v, ys, out=better)
                np.multiply(better, idx_dtype(o), out=code)
                np.maximum(ids, code, out=ids)
                np.maximum(ys, v, out=ys)   # np.maximum propagates NaN, like PyTorch

        split(self.workers, work, len(x), math.prod(x.shape[1:]))
        if train:
            self._geom, self._in_shape, self._channels_last, self._idx = geom, x.shape, cl, idx
        else:
            self._geom = self._idx = None
        return y

    def _tiled_max(self, x: np.ndarray) -> np.ndarray:
        """Evaluation forward for windows that tile channels-last x exactly: `tiled_max` over pieces of the
        batch. The max of a set does not depend on the order it is taken in, so the result equals the
        offset-by-offset path's (NaN propagates in both)."""
        n, c, h, w = x.shape
        (kh, kw) = self.kernel_size
        oh, ow = h // kh, w // kw
        xl = x.transpose(0, 2, 3, 1)
        y = np.empty((n, oh, ow, c), dtype=x.dtype)
        tmp = np.empty((n, oh, ow * kw * c), dtype=x.dtype) if kw > 1 else None
        split(self.workers, lambda s: tiled_max(xl[s], self.kernel_size, y[s], None if tmp is None else tmp[s]),
              n, c * h * w)
        return y.transpose(0, 3, 1, 2)

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        idx = self._idx if getattr(self, "_geom", None) is not None else None

        def contribution(o: int, g: np.ndarray, out: np.ndarray, s: slice) -> None:
            np.multiply(g, idx[s] == o, out=out)

        return self._grad_input(grad, contribution)

    def kink_state(self) -> np.ndarray | None:
        """The window offset of each output's first maximum, (N, C, OH, OW), from the last training forward."""
        return getattr(self, "_idx", None)


@LAYERS.register("avgpool2d")
class AvgPool2D(_Pool2D):
    """y = mean over the window, padding counted as zeros in the divisor kh·kw (PyTorch's default
    count_include_pad=True); backward spreads g / (kh·kw) over each window."""

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        xp, geom, cl, y = self._prepare(x, train)
        views = geom[2]

        def work(s: slice) -> None:
            xs, ys = xp[s], y[s]
            np.copyto(ys, xs[views[0][1]])
            for _, index in views[1:]:
                ys += xs[index]
            ys *= 1.0 / len(views)

        split(self.workers, work, len(x), math.prod(x.shape[1:]))
        if train:
            self._geom, self._in_shape, self._channels_last = geom, x.shape, cl
        else:
            self._geom = None
        return y

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        if getattr(self, "_geom", None) is None:
            raise self._no_cache()
        share = grad * (1.0 / len(self._geom[2]))
        return self._grad_input(share, lambda o, g, out, s: np.copyto(out, g))


@LAYERS.register("global_avgpool")
class GlobalAvgPool(Layer):
    """(N, C, H, W) -> (N, C): y[n, c] = 1/(H·W) · Σ_{i,j} x[n, c, i, j], the mean of each channel
    (PyTorch's adaptive_avg_pool2d to 1x1, flattened); dx[n, c, i, j] = g[n, c] / (H·W).

    dx is allocated in the input's memory layout (channels-last stays channels-last)."""

    def output_shape(self, input_shape: Shape) -> Shape:
        require_shape(self, input_shape, 3, "global_avgpool takes images (C, H, W)")
        return (input_shape[0],)

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        n, c, h, w = x.shape
        y = np.empty((n, c), dtype=x.dtype)
        split(self.workers, lambda s: np.mean(x[s], axis=(2, 3), dtype=x.dtype, out=y[s]), n, c * h * w)
        self._in = (x.shape, is_channels_last(x)) if train else None
        return y

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        shape, cl = self._cached("_in")
        n, c, h, w = shape
        dx = empty_in_layout(shape, grad.dtype, cl)
        scale = grad.dtype.type(1.0 / (h * w))
        split(self.workers, lambda s: np.multiply(grad[s, :, None, None], scale, out=dx[s]), n, c * h * w)
        return dx


def tiled_max(x: np.ndarray, kernel: tuple[int, int], out: np.ndarray, rows: np.ndarray | None) -> None:
    """out (S, OH, OW, C) = the max over the (kh, kw) windows that tile channels-last x (S, H, W, C)
    exactly (H = OH·kh, W = OW·kw, contiguous); `rows` (S, OH, OW·kw·C) is scratch (unused, may be None,
    when kw = 1).

    With x as (S, OH, kh, OW·kw·C) memory, each window row a is one long contiguous run per output row,
    so the first pass (kh-1 maxima) runs over long rows and shrinks the data kh-fold before the second,
    whose runs are only C long; taking the kh·kw offsets one by one pays that short-run cost on all of
    them (figures: bench/results/kernels.md)."""
    s, h, w, c = x.shape
    kh, kw = kernel
    oh, ow = h // kh, w // kw
    r = x.reshape(s, oh, kh, ow * kw * c)
    m = rows if kw > 1 else out.reshape(s, oh, ow * c)
    if kh == 1:
        np.copyto(m, r[:, :, 0])
    else:
        np.maximum(r[:, :, 0], r[:, :, 1], out=m)
    for a in range(2, kh):
        np.maximum(m, r[:, :, a], out=m)
    if kw == 1:
        return
    cols = m.reshape(s, oh, ow, kw, c)
    np.maximum(cols[:, :, :, 0], cols[:, :, :, 1], out=out)
    for b in range(2, kw):
        np.maximum(out, cols[:, :, :, b], out=out)
