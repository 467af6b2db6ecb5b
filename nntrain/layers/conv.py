"""2-D convolution (cross-correlation, as PyTorch's Conv2d) by im2col + one GEMM.

Layouts, chosen by measurement (bench/fwdbwd.py, mnist-cnn at batch 64): the input is copied once into
a zero-padded channels-last buffer xp (N, Hp, Wp, C); a strided view of it gives every receptive field,
copied into the column matrix cols (N·OH·OW, kh·kw·C) whose rows are contiguous runs of C channels
(inputs with few channels, such as images, use a planar (kh·kw·C, N·OH·OW) matrix instead: see
Conv2D._buffers). Then y = cols @ Wm, Wm (kh·kw·C, O), with the bias folded into the same GEMM, and
the result (N, OH, OW, O) is returned as an NCHW *view* (N, O, OH, OW) of channels-last memory:
element-wise layers and pooling keep that layout, so the next conv and this conv's backward read it
without a transpose copy. Buffers (xp, cols, and backward's col2im products) are reused across
batches of the same shape. Backward: dW is one GEMM with the saved columns; dx is one batched GEMM per
kernel offset followed by kh·kw whole-array adds (col2im); no Python loop over pixels or channels.
The im2col copies and col2im adds are split over the batch axis across the model's `workers`.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from nntrain.errors import ShapeError
from nntrain.init import initialize
from nntrain.layers.base import Layer, Option, Shape, register, require_shape, weight_options
from nntrain.parallel import split


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis: floor((size + 2·padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def window_output_hw(layer: Layer, input_shape: Shape, advice: str = "") -> tuple[int, int]:
    """(OH, OW) of a sliding-window layer (conv, pooling) on a per-sample (C, H, W); ShapeError with
    the sizes when the kernel is larger than the padded input."""
    require_shape(layer, input_shape, 3, f"{layer.type_name} takes images (C, H, W)")
    _, h, w = input_shape
    (kh, kw), (ph, pw), (sh, sw) = layer.kernel_size, layer.padding, layer.stride
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ShapeError(f"kernel_size {kh}x{kw} is larger than the padded input {h + 2 * ph}x{w + 2 * pw} "
                         f"(input {h}x{w}, padding {ph},{pw}); use a kernel of at most "
                         f"{h + 2 * ph}x{w + 2 * pw}{advice}", "kernel_size")
    return conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)


def channels_last(x: np.ndarray) -> np.ndarray:
    """View (N, C, H, W) as (N, H, W, C) without copying (contiguous when x is channels-last memory)."""
    return x.transpose(0, 2, 3, 1)


def window_view(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                out_hw: tuple[int, int]) -> np.ndarray:
    """Receptive fields of a channels-last array xp (N, Hp, Wp, C) as a read-only view
    (N, OH, OW, kh, kw, C): view[n, i, j, a, b, c] = xp[n, i·sh + a, j·sw + b, c]."""
    sN, sH, sW, sC = xp.strides
    n, _, _, c = xp.shape
    return as_strided(xp, (n, out_hw[0], out_hw[1], kernel[0], kernel[1], c),
                      (sN, stride[0] * sH, stride[1] * sW, sH, sW, sC), writeable=False)


def _landing(a: int, stride: int, pad: int, out: int, size: int) -> tuple[slice, slice]:
    """For kernel offset a along one axis: (output positions i whose input position i·stride + a - pad
    lies inside [0, size), the input positions they land on) as slices."""
    first = max(0, -(-(pad - a) // stride))                        # ceil((pad - a) / stride), at least 0
    stop = max(first, min(out, -(-(size + pad - a) // stride)))    # i·stride + a - pad < size
    return slice(first, stop), slice(first * stride + a - pad, (stop - 1) * stride + a - pad + 1, stride)


# Inputs with at most this many channels use the planar column layout (see Conv2D._buffers).
PLANAR_MAX_CHANNELS = 4
# Channels-last columns of more than CHUNK_ABOVE bytes for the whole batch are built and used in
# chunks of about CHUNK_BYTES (whole samples) that stay in cache. At one thread that was faster for
# cifar-cnn's second conv (151 MB of columns at batch 128: 33 ms instead of 50 ms for im2col + GEMM),
# but at two threads the whole batch in one piece measured ~8% faster per step (small GEMMs scale
# worse and the backward must rebuild the chunks): chunking is kept for larger batches, where the
# memory matters more (evaluation batches of 256 CIFAR images).
CHUNK_ABOVE = 160 << 20
CHUNK_BYTES = 4 << 20


def samples_per_chunk(n: int, row_bytes: int) -> int:
    """Samples per column chunk for a batch of n whose columns take row_bytes per sample."""
    if n * row_bytes <= CHUNK_ABOVE:
        return n
    return max(1, min(n, CHUNK_BYTES // max(row_bytes, 1)))


@register("conv2d")
class Conv2D(Layer):
    """x: (N, C, H, W) -> y: (N, O, OH, OW), y = b + Σ_{c,a,b} W[o, c, a, b] · xpad[n, c, i·sh + a, j·sw + b].

    W is (out_channels, in_channels, kh, kw) like PyTorch; fan_in = C·kh·kw. Backward:
    dW = gᵀ·cols (+ λW), db = Σ g, dx = col2im(g·Wmᵀ) (an add per kernel offset, over all pixels at once).
    Set `skip_input_grad = True` on a first layer to skip dx (backward then returns None), as PyTorch
    does for inputs that need no gradient.
    """

    options = {
        "out_channels": Option("int", minimum=1, doc="number of output channels (filters)"),
        "kernel_size": Option("pair", minimum=1, doc="kernel height and width (an int for square)"),
        "stride": Option("pair", (1, 1), minimum=1, doc="step between receptive fields"),
        "padding": Option("pair", (0, 0), minimum=0, doc="zeros added on each side of H and W"),
        **weight_options("add a learned bias per output channel"),
    }
    decayed = ("W",)
    skip_input_grad = False

    def output_shape(self, input_shape: Shape) -> Shape:
        return (self.out_channels, *window_output_hw(self, input_shape, " or more padding"))

    def _create(self, input_shape: Shape, init_rng: np.random.Generator) -> None:
        c = input_shape[0]
        kh, kw = self.kernel_size
        o = self.out_channels
        self.add_param("W", initialize(self.init, (o, c, kh, kw), c * kh * kw, o * kh * kw,
                                       init_rng, self.dtype, self.init_std))
        if self.bias:
            self.add_param("b", np.zeros(o))
        self._xp: np.ndarray | None = None     # padded input, reused across batches of one shape
        self._cols: np.ndarray | None = None   # column matrix, reused likewise

    def _buffers(self, x: np.ndarray, oh: int, ow: int, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """The padded input and column buffers for x's shape and dtype.

        Channels-last (C > PLANAR_MAX_CHANNELS): xp (N, Hp, Wp, C), cols (N·OH·OW, kh·kw·C [+1]), or the
        rows of one chunk of samples when the whole batch's columns are large (samples_per_chunk).
        Planar (few channels): xp (C, N, Hp, Wp), colsᵀ (kh·kw·C [+1], N·OH·OW); one column row would
        be only C floats wide, so each kernel offset is instead copied as a whole plane (≈7x faster for C=1).
        With a bias, the columns get one more entry that is always 1 and Wm one more row, b: the GEMM
        then adds the bias (saving a pass over y, ~40% of conv forward time for C=1) and the dW GEMM
        yields db = Σ g.
        Training (train=True) keeps them for the next batch of the same shape (and for backward); an
        evaluation forward uses the kept ones when the shape matches, else temporaries that are freed
        afterwards, so buffers for large evaluation batches do not stay alive during training.
        """
        n, c, h, w = x.shape
        (ph, pw), (kh, kw) = self.padding, self.kernel_size
        planar = c <= PLANAR_MAX_CHANNELS
        shape = (c, n, h + 2 * ph, w + 2 * pw) if planar else (n, h + 2 * ph, w + 2 * pw, c)
        if self._xp is not None and self._xp.shape == shape and self._xp.dtype == x.dtype:
            return self._xp, self._cols
        xp = np.zeros(shape, dtype=x.dtype)  # the border stays zero: only the interior is written
        k = kh * kw * c + (1 if self.bias else 0)
        per = samples_per_chunk(n, oh * ow * k * x.dtype.itemsize)   # channels-last: rows for one chunk
        cols = np.empty((k, n * oh * ow) if planar else (per * oh * ow, k), dtype=x.dtype)
        if self.bias:   # the constant-1 entry, written once
            (cols[-1] if planar else cols[:, -1]).fill(1)
        if train:
            self._xp, self._cols = xp, cols
        return xp, cols

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        n, c, h, w = x.shape
        (ph, pw), (kh, kw), (sh, sw) = self.padding, self.kernel_size, self.stride
        oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
        xp, cols = self._buffers(x, oh, ow, train)
        planar = c <= PLANAR_MAX_CHANNELS
        self._saved = (x.shape, planar) if train else None   # backward reads self._cols
        # Wm[(a, b, c), o] = W[o, c, a, b], matching the (kh, kw, C) order of a column; then b.
        k = kh * kw * c
        wm = np.empty((cols.shape[0 if planar else 1], self.out_channels), dtype=self.params["W"].dtype)
        wm[:k] = self.params["W"].transpose(2, 3, 1, 0).reshape(k, self.out_channels)
        if self.bias:
            wm[k] = self.params["b"]
        m = oh * ow   # column rows (or planar columns) per sample
        if planar:
            planes = cols[:k].reshape(kh, kw, c, n, oh, ow)

            def fill(s: slice) -> None:
                xp[:, s, ph:ph + h, pw:pw + w] = x[s].transpose(1, 0, 2, 3)
                for a in range(kh):
                    for b in range(kw):
                        planes[a, b, :, s] = xp[:, s, a:a + sh * (oh - 1) + 1:sh, b:b + sw * (ow - 1) + 1:sw]

            split(self.workers, fill, n, m * k)
            y = cols.T @ wm
            return y.reshape(n, oh, ow, self.out_channels).transpose(0, 3, 1, 2)
        per = cols.shape[0] // m if m else 1
        if per >= n:
            def fill(s: slice) -> None:
                xs = xp[s]
                xs[:, ph:ph + h, pw:pw + w, :] = channels_last(x[s])
                self._im2col_rows(xs, cols[s.start * m:s.stop * m])

            split(self.workers, fill, n, m * k)
            y = cols @ wm
        else:   # chunks of `per` samples: columns built and multiplied while in cache
            y = np.empty((n * m, self.out_channels), dtype=cols.dtype)

            def pad(s: slice) -> None:
                xp[s, ph:ph + h, pw:pw + w, :] = channels_last(x[s])

            split(self.workers, pad, n, c * h * w)
            for i0 in range(0, n, per):
                i1 = min(n, i0 + per)
                cc = cols[:(i1 - i0) * m]
                self._im2col(xp[i0:i1], cc)
                np.matmul(cc, wm, out=y[i0 * m:i1 * m])
        return y.reshape(n, oh, ow, self.out_channels).transpose(0, 3, 1, 2)

    def _im2col(self, xs: np.ndarray, rows: np.ndarray) -> None:
        """Channels-last receptive fields of padded samples xs (S, Hp, Wp, C) into column rows
        (S·OH·OW, k [+1]), split over the samples across the workers."""
        m = rows.shape[0] // max(len(xs), 1)
        split(self.workers, lambda s: self._im2col_rows(xs[s], rows[s.start * m:s.stop * m]), len(xs), rows[:m].size)

    def _im2col_rows(self, xs: np.ndarray, rows: np.ndarray) -> None:
        """_im2col in this thread."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        n, hp, wp, c = xs.shape
        oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        np.copyto(rows[:, :kh * kw * c].reshape(n, oh, ow, kh, kw, c), window_view(xs, (kh, kw), (sh, sw), (oh, ow)))

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        if getattr(self, "_saved", None) is None:
            raise self._no_cache()
        (n, c, h, w), planar = self._saved
        (ph, pw), (kh, kw), (sh, sw) = self.padding, self.kernel_size, self.stride
        o = self.out_channels
        _, _, oh, ow = grad.shape
        g = channels_last(grad).reshape(n * oh * ow, o)   # free when grad is channels-last memory
        # dW[o, c, a, b] = Σ_rows cols[row, (a, b, c)] · g[row, o]; the constant-1 entry gives db = Σ_rows g.
        # The GEMM orientation of each layout is the faster one measured: (kk, O) planar, (O, kk) otherwise.
        k = kh * kw * c
        m = oh * ow
        per = n if planar else (self._cols.shape[0] // m)
        skip = self.skip_input_grad
        # dx by col2im. One batched GEMM gives, per kernel offset (a, b), the contiguous block
        # d[a, b] = g · W[:, :, a, b]ᵀ (N, OH, OW, C), which lands on the input pixels
        # (i·sh + a - ph, j·sw + b - pw); each offset adds its in-bounds part to dx. Measured ~25% faster
        # than one (N·OH·OW, kh·kw·C) GEMM whose scattered 32-float column slices make the adds slow.
        # d is scratch reused across batches of one shape; dx is a fresh array (the caller's).
        wb = self.params["W"].transpose(2, 3, 0, 1).reshape(kh * kw, o, c)
        dx = None if skip else np.empty((n, h, w, c), dtype=np.result_type(g, wb))
        if per >= n:
            gw = self._cols @ g if planar else (g.T @ self._cols).T
            if not skip:
                self._col2im(np.matmul(g, wb, out=self._scratch_d(n * m, c, dx.dtype)), dx)
        else:   # columns in chunks of `per` samples (see forward): rebuilt from the kept padded input
            gwt = np.zeros((o, self._cols.shape[1]), dtype=g.dtype)
            tmp = np.empty_like(gwt)
            for i0 in range(0, n, per):
                i1 = min(n, i0 + per)
                cc = self._cols[:(i1 - i0) * m]
                self._im2col(self._xp[i0:i1], cc)
                gr = g[i0 * m:i1 * m]
                gwt += np.matmul(gr.T, cc, out=tmp)
                if not skip:
                    self._col2im(np.matmul(gr, wb, out=self._scratch_d((i1 - i0) * m, c, dx.dtype)), dx[i0:i1])
            gw = gwt.T
        np.copyto(self.grads["W"], gw[:k].reshape(kh, kw, c, o).transpose(3, 2, 0, 1))
        if self.bias:
            np.copyto(self.grads["b"], gw[k])
        self.apply_weight_decay()
        if skip:
            return None
        return dx.transpose(0, 3, 1, 2)

    def _scratch_d(self, rows: int, c: int, dtype: np.dtype) -> np.ndarray:
        """A contiguous (kh·kw, rows, C) view of the reused col2im product buffer."""
        kk = self.kernel_size[0] * self.kernel_size[1]
        size = kk * rows * c
        if getattr(self, "_d", None) is None or self._d.size < size or self._d.dtype != dtype:
            self._d = np.empty(size, dtype=dtype)
        return self._d[:size].reshape(kk, rows, c)

    def _col2im(self, d: np.ndarray, dx: np.ndarray) -> None:
        """dx (S, H, W, C) = Σ over kernel offsets of d (kh·kw, S·OH·OW, C) added at the pixels each lands on."""
        n, h, w, c = dx.shape
        (ph, pw), (kh, kw), (sh, sw) = self.padding, self.kernel_size, self.stride
        oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
        d = d.reshape(kh, kw, n, oh, ow, c)
        rows = [_landing(a, sh, ph, oh, h) for a in range(kh)]
        cols = [_landing(b, sw, pw, ow, w) for b in range(kw)]
        full = (slice(0, oh), slice(0, h, 1)), (slice(0, ow), slice(0, w, 1))
        centre = (ph, pw) if ((sh, sw) == (1, 1) and ph < kh and pw < kw and (rows[ph], cols[pw]) == full) else None

        def work(s: slice) -> None:
            dxs = dx[s]
            if centre is not None:   # the centre offset covers every pixel once: it starts the sum
                np.copyto(dxs, d[ph, pw, s])
            else:
                dxs.fill(0)
            for a, (src_i, dst_i) in enumerate(rows):
                for b, (src_j, dst_j) in enumerate(cols):
                    if (a, b) != centre and src_i.stop > src_i.start and src_j.stop > src_j.start:
                        dxs[:, dst_i, dst_j, :] += d[a, b, s, src_i, src_j, :]

        split(self.workers, work, n, h * w * c * kh * kw)

    def flops(self, input_shape: Shape) -> int:
        c = input_shape[0]
        _, oh, ow = self.output_shape(input_shape)
        return 2 * self.out_channels * oh * ow * c * self.kernel_size[0] * self.kernel_size[1]
