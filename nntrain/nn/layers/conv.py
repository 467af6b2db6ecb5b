"""2-D convolution (cross-correlation, as PyTorch's Conv2d) by im2col + one GEMM.

Layouts, chosen by measurement (bench/fwdbwd.py): the input is copied once into a zero-padded
channels-last buffer xp (N, Hp, Wp, C); a strided view of it gives every receptive field, copied into
the column matrix cols (S·OH·OW, kh·kw·C) of a chunk of S samples, whose rows are contiguous runs of C
channels (inputs with few channels, such as images, use a planar (kh·kw·C, S·OH·OW) matrix instead:
see Conv2D._columns). Then y = cols @ Wm, Wm (kh·kw·C, O), with the bias folded into the same GEMM,
and the result (N, OH, OW, O) is returned as an NCHW *view* (N, O, OH, OW) of channels-last memory:
element-wise layers and pooling keep that layout, so the next conv and this conv's backward read it
without a transpose copy.

Work goes chunk by chunk (a few samples, ~4 MB of columns, still in cache for the GEMM), the chunks
spread over the model's `workers`, each on one BLAS thread (see CHUNK_BYTES). Backward rebuilds a
chunk's columns from the kept padded input: dW is one GEMM per chunk, summed in chunk order; dx is
one batched GEMM per kernel offset followed by kh·kw whole-array adds (col2im); no Python loop over
pixels or channels. xp is made per forward (only its border zeroed) and let go by backward; the
per-thread columns and col2im products live in the model's Scratch (nntrain.nn.parallel), reused
across chunks, batches and layers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from nntrain.errors import ShapeError
from nntrain.nn.initializers import initialize
from nntrain.nn.layers.base import LAYERS, Layer, Option, Shape, require_shape, weight_options
from nntrain.nn.parallel import chunks


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


# Inputs with at most this many channels use the planar column layout (see Conv2D._columns).
PLANAR_MAX_CHANNELS = 4
# Columns are built and multiplied a chunk of whole samples at a time, about CHUNK_BYTES of columns per
# chunk, so that they are still in cache when the GEMM reads them, each chunk on one BLAS thread and the
# chunks spread over the model's workers (nntrain.nn.parallel.Workers.chunks): a whole batch's columns
# (151 MB for cifar-cnn's 32->32 conv at batch 128) fall out of cache and a two-thread GEMM on one tall,
# narrow product scales poorly. Backward holds a chunk's columns and its col2im product (as large
# again), so its chunks are sized by both (about half the samples). Figures: bench/results/kernels.md.
CHUNK_BYTES = 4 << 20


# A batch with more than SHARE_ABOVE bytes of columns is cut into at least SHARE_CHUNKS chunks even when
# they would fit in one, so that every worker gets a share (mnist-cnn's first conv: 2 MB of columns).
# Neither depends on the thread count: chunking fixes the order of dW's sum, which must not.
SHARE_ABOVE = 1 << 20
SHARE_CHUNKS = 4


def col2im(d: np.ndarray, dx: np.ndarray, kernel: Sequence[int], stride: Sequence[int],
           padding: Sequence[int]) -> None:
    """dx (S, H, W, C) = Σ over kernel offsets of d (kh·kw, S·OH·OW, C) added at the pixels each lands on."""
    n, h, w, c = dx.shape
    (ph, pw), (kh, kw), (sh, sw) = padding, kernel, stride
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    d = d.reshape(kh, kw, n, oh, ow, c)
    rows = [_landing(a, sh, ph, oh, h) for a in range(kh)]
    cols = [_landing(b, sw, pw, ow, w) for b in range(kw)]
    full = (slice(0, oh), slice(0, h, 1)), (slice(0, ow), slice(0, w, 1))
    centre = (ph, pw) if ((sh, sw) == (1, 1) and ph < kh and pw < kw and (rows[ph], cols[pw]) == full) else None
    if centre is not None:   # the centre offset covers every pixel once: it starts the sum
        np.copyto(dx, d[ph, pw])
    else:
        dx.fill(0)
    for a, (src_i, dst_i) in enumerate(rows):
        for b, (src_j, dst_j) in enumerate(cols):
            if (a, b) != centre and src_i.stop > src_i.start and src_j.stop > src_j.start:
                dx[:, dst_i, dst_j, :] += d[a, b, :, src_i, src_j, :]


def samples_per_chunk(n: int, sample_bytes: int) -> int:
    """Samples per column chunk for a batch of n whose columns take sample_bytes per sample: at most
    CHUNK_BYTES of columns, at least SHARE_CHUNKS chunks for a large batch, and chunks of (nearly)
    equal size, so that the workers finish together (64 samples in 4 chunks of 16 rather than 18, 18,
    18 and 10)."""
    sample_bytes = max(sample_bytes, 1)
    most = CHUNK_BYTES // sample_bytes
    if n * sample_bytes > SHARE_ABOVE:
        most = min(most, -(-n // SHARE_CHUNKS))
    most = max(1, min(n, most))
    count = -(-n // most)
    return max(1, -(-n // count)) if n else 1


def zero_border(xp: np.ndarray, padding: Sequence[int], axes: tuple[int, int]) -> None:
    """Zero the `padding` (ph, pw) wide border of xp along its (height, width) `axes`, not the interior."""
    for axis, p in zip(axes, padding):
        if p:
            index = [slice(None)] * xp.ndim
            for part in (slice(0, p), slice(xp.shape[axis] - p, None)):
                index[axis] = part
                xp[tuple(index)] = 0


@LAYERS.register("conv2d")
class Conv2D(Layer):
    """x: (N, C, H, W) -> y: (N, O, OH, OW), y = b + Σ_{c,a,b} W[o, c, a, b] · xpad[n, c, i·sh + a, j·sw + b].

    W is (out_channels, in_channels, kh, kw) like PyTorch; fan_in = C·kh·kw. Backward:
    dW = gᵀ·cols (+ λW), db = Σ g, dx = col2im(g·Wmᵀ) (an add per kernel offset, over all pixels at once).
    backward(grad, need_input_grad=False) (a first layer) skips dx and returns None, as PyTorch does
    for inputs that need no gradient.
    """

    options = {
        "out_channels": Option("int", minimum=1, doc="number of output channels (filters)"),
        "kernel_size": Option("pair", minimum=1, doc="kernel height and width (an int for square)"),
        "stride": Option("pair", (1, 1), minimum=1, doc="step between receptive fields"),
        "padding": Option("pair", (0, 0), minimum=0, doc="zeros added on each side of H and W"),
        **weight_options("add a learned bias per output channel"),
    }
    decayed = ("W",)

    def output_shape(self, input_shape: Shape) -> Shape:
        return (self.out_channels, *window_output_hw(self, input_shape, " or more padding"))

    def num_params(self, input_shape: Shape) -> int:
        kh, kw = self.kernel_size
        return self.out_channels * (input_shape[0] * kh * kw + (1 if self.bias else 0))

    def _create(self, input_shape: Shape, init_rng: np.random.Generator) -> None:
        c = input_shape[0]
        kh, kw = self.kernel_size
        o = self.out_channels
        self.add_param("W", initialize(self.init, (o, c, kh, kw), c * kh * kw, o * kh * kw,
                                       init_rng, self.dtype, self.init_std))
        if self.bias:
            self.add_param("b", np.zeros(o))
        self._planar = c <= PLANAR_MAX_CHANNELS   # column layout, see _columns

    def _padded(self, x: np.ndarray, planar: bool) -> np.ndarray:
        """A buffer for x padded, (C, N, Hp, Wp) planar, else (N, Hp, Wp, C), with its border zeroed and
        its interior left for the caller to fill. A fresh one per forward: training keeps it until
        backward is done with it (then drops it, so that between steps no layer holds a batch's arrays)."""
        n, c, h, w = x.shape
        (ph, pw) = self.padding
        shape = (c, n, h + 2 * ph, w + 2 * pw) if planar else (n, h + 2 * ph, w + 2 * pw, c)
        xp = np.empty(shape, dtype=x.dtype)
        zero_border(xp, (ph, pw), (2, 3) if planar else (1, 2))
        return xp

    def _fill_padded(self, xp: np.ndarray, s: slice, xs: np.ndarray) -> None:
        """Write samples xs (S, C, H, W) into the interior of samples s of the padded buffer xp (planar
        (C, N, Hp, Wp) or channels-last (N, Hp, Wp, C), as `_padded` made it)."""
        (ph, pw) = self.padding
        h, w = xs.shape[2:]
        if self._planar:
            xp[:, s, ph:ph + h, pw:pw + w] = xs.transpose(1, 0, 2, 3)
        else:
            xp[s, ph:ph + h, pw:pw + w, :] = channels_last(xs)

    def _columns(self, xp: np.ndarray, s: slice, out_hw: tuple[int, int], slot: int,
                 ones: bool | None = None) -> np.ndarray:
        """Columns of samples s of the padded input, in thread slot `slot`'s buffer.

        Channels-last: (S·OH·OW, kh·kw·C [+1]), each row a receptive field as contiguous runs of C channels.
        Planar (few channels): (kh·kw·C [+1], S·OH·OW); one column row would be only C floats wide, so each
        kernel offset is instead copied as a whole plane (much faster for C=1).
        With a bias the columns get one more entry that is always 1 and Wm one more row, b: the GEMM
        then adds the bias (saving a separate pass over y) and the dW GEMM yields db = Σ g. `ones`
        overrides whether that entry is there (None: when the layer has a bias).
        Figures for both: bench/results/kernels.md.
        """
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        oh, ow = out_hw
        planar = self._planar
        c = xp.shape[0] if planar else xp.shape[3]
        k = kh * kw * c
        rows = (s.stop - s.start) * oh * ow
        ones = self.bias if ones is None else ones
        kb = k + (1 if ones else 0)
        cols = self.scratch.buffer("cols", slot, (kb, rows) if planar else (rows, kb), xp.dtype)
        if planar:
            planes = cols[:k].reshape(kh, kw, c, s.stop - s.start, oh, ow)
            for a in range(kh):
                for b in range(kw):
                    planes[a, b] = xp[:, s, a:a + sh * (oh - 1) + 1:sh, b:b + sw * (ow - 1) + 1:sw]
        else:
            np.copyto(cols[:, :k].reshape(s.stop - s.start, oh, ow, kh, kw, c),
                      window_view(xp[s], (kh, kw), (sh, sw), out_hw))
        if ones:   # the constant-1 entry (cheap: one row or column of the chunk)
            (cols[k] if planar else cols[:, k]).fill(1)
        return cols

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        n, c, h, w = x.shape
        (ph, pw), (kh, kw), (sh, sw) = self.padding, self.kernel_size, self.stride
        oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
        planar = self._planar
        xp = self._padded(x, planar)
        self._saved = (x.shape, xp) if train else None
        # Wm[(a, b, c), o] = W[o, c, a, b], matching the (kh, kw, C) order of a column; then b.
        k = kh * kw * c
        o = self.out_channels
        wm = np.empty((k + (1 if self.bias else 0), o), dtype=self.params["W"].dtype)
        wm[:k] = self.params["W"].transpose(2, 3, 1, 0).reshape(k, o)
        if self.bias:
            wm[k] = self.params["b"]
        m = oh * ow   # column rows per sample
        y = np.empty((n * m, o), dtype=np.result_type(x, wm))

        def work(s: slice, slot: int) -> None:
            self._fill_padded(xp, s, x[s])
            cols = self._columns(xp, s, (oh, ow), slot)
            cols = cols.T if planar else cols
            np.matmul(cols, wm, out=y[s.start * m:s.stop * m])

        chunks(self.workers, work, n, samples_per_chunk(n, m * wm.shape[0] * x.dtype.itemsize))
        # (N·OH·OW, O) is channels-last memory; the NCHW view lets the next layers keep that layout.
        return y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if getattr(self, "_saved", None) is None:
            raise self._no_cache()
        (n, c, h, w), xp = self._saved
        (kh, kw) = self.kernel_size
        o = self.out_channels
        _, _, oh, ow = grad.shape
        m = oh * ow
        g = channels_last(grad).reshape(n * m, o)   # free when grad is channels-last memory
        k = kh * kw * c
        kb = k + (1 if self.bias else 0)
        skip = not need_input_grad
        (ph, pw), (sh, sw) = self.padding, self.stride
        # dx for stride 1 is a convolution too: the correlation of g, zero-padded by (kh-1-ph, kw-1-pw),
        # with the kernel flipped and its in/out channels swapped,
        #   dx[n, y, x, c] = Σ_{a,b,o} gp[n, y + a, x + b, o] · W[o, c, kh-1-a, kw-1-b],
        # so it takes the forward's im2col + one GEMM (into dx directly), which measured faster than the
        # general col2im below (a GEMM per kernel offset, then kh·kw adds); see bench/results/kernels.md.
        transposed = not skip and (sh, sw) == (1, 1) and ph < kh and pw < kw
        dx_width = 0 if skip else kh * kw * (o if transposed else c)   # per row of dx's scratch
        per = samples_per_chunk(n, m * (kb + dx_width) * g.dtype.itemsize)
        # dW[o, c, a, b] = Σ_rows cols[row, (a, b, c)] · g[row, o]; the constant-1 entry gives db = Σ_rows g.
        # Each chunk's columns are rebuilt from the kept padded input (cheaper than keeping the whole
        # batch's) and its share of dW lands in its own slot of `parts`, summed afterwards in chunk order:
        # the result does not depend on which thread ran which chunk.
        parts = np.empty((-(-n // per), kb, o), dtype=np.result_type(g, xp))
        w_ = self.params["W"]
        dx = None if skip else np.empty((n, h, w, c), dtype=np.result_type(g, w_))
        if transposed:   # Wf[(a, b, o), c] = W[o, c, kh-1-a, kw-1-b]
            wf = w_[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(kh * kw * o, c)
            qh, qw = kh - 1 - ph, kw - 1 - pw
        else:
            # dx by col2im: one batched GEMM gives, per kernel offset (a, b), the contiguous block
            # d[a, b] = g · W[:, :, a, b]ᵀ (S·OH·OW, C), which lands on the input pixels
            # (i·sh + a - ph, j·sw + b - pw); each offset adds its in-bounds part to dx.
            wb = w_.transpose(2, 3, 0, 1).reshape(kh * kw, o, c)

        def work(s: slice, slot: int) -> None:
            cols = self._columns(xp, s, (oh, ow), slot)
            gs = g[s.start * m:s.stop * m]
            np.matmul(cols if self._planar else cols.T, gs, out=parts[s.start // per])
            if skip:
                return
            if transposed:
                gp = self.scratch.zero_bordered("padded_grad", slot, (per, oh + 2 * qh, ow + 2 * qw, o),
                                                 g.dtype)[:s.stop - s.start]
                gp[:, qh:qh + oh, qw:qw + ow, :] = gs.reshape(-1, oh, ow, o)
                gcols = self.scratch.buffer("gcols", slot, (len(gp) * h * w, kh * kw * o), g.dtype)
                np.copyto(gcols.reshape(len(gp), h, w, kh, kw, o), window_view(gp, (kh, kw), (1, 1), (h, w)))
                np.matmul(gcols, wf, out=dx[s].reshape(-1, c))
            else:
                d = np.matmul(gs, wb, out=self.scratch.buffer("d", slot, (kh * kw, len(gs), c), dx.dtype))
                col2im(d, dx[s], self.kernel_size, self.stride, self.padding)

        chunks(self.workers, work, n, per)
        self._saved = None   # the padded input is not needed any more (a second backward raises)
        gw = parts.sum(axis=0)   # zeros for an empty batch
        np.copyto(self.grads["W"], gw[:k].reshape(kh, kw, c, o).transpose(3, 2, 0, 1))
        if self.bias:
            np.copyto(self.grads["b"], gw[k])
        self.apply_weight_decay()
        if skip:
            return None
        return dx.transpose(0, 3, 1, 2)

    def flops(self, input_shape: Shape) -> int:
        c = input_shape[0]
        _, oh, ow = self.output_shape(input_shape)
        return 2 * self.out_channels * oh * ow * c * self.kernel_size[0] * self.kernel_size[1]
