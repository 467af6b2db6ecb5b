"""The evaluation forward of a chain of layers, with conv → batchnorm → ReLU → max-pool fused per chunk.

In evaluation a batchnorm is a fixed affine map per channel, y = x·k + c with k = γ/√(σ²+eps) and
c = β − μ·k, so a convolution followed by one is a single convolution with

    W'[o] = W[o]·k[o],   b'[o] = b[o]·k[o] + c[o]       (b = 0 for a conv without bias).

`compile_chain` finds each conv2d, with the batchnorm, ReLU and exactly tiling max-pool that directly
follow it (in that order, each optional), and turns them into one `ConvStage`: chunk by chunk (a few
samples, the conv's own chunking), the padded input, the columns, one GEMM with W' and b', the 2x2 (or
any tiling) max over the chunk's output while it is still in cache, and the ReLU on the pooled values.
A batchnorm after the pool (conv → max-pool → batchnorm → ReLU, the order of cifar_resnet.yaml) cannot
be folded into W (a channel with k < 0 would turn the max into a min), so it runs as y·k + c on the
chunk's pooled values, still in cache, before the ReLU.
The layer-by-layer path reads and writes each full-batch activation once per layer (a conv output of
cifar-cnn at batch 256 is 32 MB, far beyond the caches); the fused stage writes only the pooled result.
max(relu(x)) = relu(max(x)), so the ReLU after the pool gives the same values (see plan_steps).

Every other layer runs its own `forward(x, train=False)`; residual blocks use compiled chains for their
branches (nntrain.nn.layers.blocks). The plain layer-by-layer path (`Model.forward_layers`) is the
reference the tests compare this one against: the folded weights change the rounding, not the values
(float32 outputs agree to about 1e-6 relative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from nntrain.nn.layers.activations import ReLU
from nntrain.nn.layers.base import Layer
from nntrain.nn.layers.conv import Conv2D, conv_output_size, samples_per_chunk
from nntrain.nn.layers.norm import BatchNorm
from nntrain.nn.layers.pool import MaxPool2D, tiled_max
from nntrain.nn.parallel import chunks


@dataclass
class ConvStage:
    """conv2d [→ batchnorm] [→ relu] [→ tiling maxpool2d], or conv2d → tiling maxpool2d [→ batchnorm]
    [→ relu] (`post_norm`), evaluated chunk by chunk.
    x: (N, C, H, W) -> (N, O, OH', OW') as a view of channels-last memory (OH', OW' after the pool)."""

    conv: Conv2D
    norm: BatchNorm | None = None
    relu: ReLU | None = None
    pool: MaxPool2D | None = None
    post_norm: BatchNorm | None = None   # a batchnorm right after the pool (then norm is None)

    @property
    def layers(self) -> list[Layer]:
        if self.post_norm is not None:
            return [layer for layer in (self.conv, self.pool, self.post_norm, self.relu) if layer is not None]
        return [layer for layer in (self.conv, self.norm, self.relu, self.pool) if layer is not None]

    def weights(self, dtype: np.dtype, pairs: bool = False) -> tuple[np.ndarray, bool]:
        """(Wm', has_bias): Wm'[(a, b, c), o] = W[o, c, a, b]·k[o] in the columns' (kh, kw, C) order, and
        the bias row b'[o] appended when there is a bias (the conv's own or the batchnorm's shift).
        Folded in float64, then cast to `dtype`. pairs: the weights of `pair_weights` instead."""
        w = self.conv.params["W"].astype(np.float64)
        o, c, kh, kw = w.shape
        bias = self.conv.params["b"].astype(np.float64) if self.conv.bias else np.zeros(o)
        if self.norm is not None:
            scale, shift = self.norm.eval_affine()
            w = w * scale[:, None, None, None]
            bias = bias * scale + shift
        has_bias = self.conv.bias or self.norm is not None
        wf = w.transpose(2, 3, 1, 0)   # (kh, kw, C, O)
        if pairs:
            wf, bias = pair_weights(wf).reshape(-1, 2 * o), np.concatenate([bias, bias])
        else:
            wf = wf.reshape(-1, o)
        rows = wf.shape[0]
        wm = np.empty((rows + (1 if has_bias else 0), wf.shape[1]), dtype=dtype)
        wm[:rows] = wf
        if has_bias:
            wm[-1] = bias
        return wm, has_bias

    def forward(self, x: np.ndarray) -> np.ndarray:
        conv = self.conv
        n, c, h, w = x.shape
        (ph, pw), (kh, kw), (sh, sw) = conv.padding, conv.kernel_size, conv.stride
        oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
        o = conv.out_channels
        pairs = not conv._planar and (sh, sw) == (1, 1) and o <= PAIRS_MAX_OUT and ow % 2 == 0
        wm, has_bias = self.weights(np.result_type(x, conv.params["W"]), pairs)
        if self.post_norm is not None:   # y·k + c per channel, on the pooled values
            k_post, c_post = (v.astype(wm.dtype) for v in self.post_norm.eval_affine())
        qh, qw = self.pool.kernel_size if self.pool is not None else (1, 1)
        y = np.empty((n, oh // qh, ow // qw, o), dtype=wm.dtype)
        m = oh * ow
        rows = m // 2 if pairs else m   # column rows per sample
        per = samples_per_chunk(n, rows * wm.shape[0] * x.dtype.itemsize)
        planar, scratch = conv._planar, conv.scratch
        hp, wp = h + 2 * ph, w + 2 * pw

        def work(s: slice, slot: int) -> None:
            k = s.stop - s.start
            # a zero-bordered padded buffer per thread, sized for one chunk: only its interior is written
            xp = scratch.zero_bordered("eval_xp", slot, (c, per, hp, wp) if planar else (per, hp, wp, c), x.dtype)
            conv._fill_padded(xp, slice(0, k), x[s])
            if pairs:
                cols = pair_columns(xp[:k], (kh, kw), (oh, ow), has_bias,
                                    scratch.buffer("cols", slot, (k * rows, wm.shape[0]), xp.dtype))
            else:
                cols = conv._columns(xp, slice(0, k), (oh, ow), slot, ones=has_bias)
            ys = y[s]
            if self.pool is None:
                out = ys.reshape(k * m, o)
            else:
                out = scratch.buffer("eval_y", slot, (k * m, o), y.dtype)
            np.matmul(cols.T if planar else cols, wm, out=out.reshape(k * rows, wm.shape[1]))
            if self.pool is not None:
                tiled_max(out.reshape(k, oh, ow, o), self.pool.kernel_size, ys,
                          scratch.buffer("eval_rows", slot, (k, oh // qh, (ow // qw) * qw * o), y.dtype))
            if self.post_norm is not None:
                ys *= k_post
                ys += c_post
            if self.relu is not None:
                np.maximum(ys, 0, out=ys)

        chunks(conv.workers, work, n, per)
        return y.transpose(0, 3, 1, 2)


# Convolutions with at most this many output channels compute two neighbouring outputs per GEMM row
# (pair_weights): a product with 32 output columns ran at 60-80% of the rate of one with 64 (AVX-512
# Xeon); cifar-cnn's 32->32 stage took 52 ms with pairs against 58 ms without (medians, interleaved).
PAIRS_MAX_OUT = 32


def pair_weights(wf: np.ndarray) -> np.ndarray:
    """Weights that give two horizontally adjacent outputs (j, j + 1) from one row of `pair_columns`.

    wf: (kh, kw, C, O) -> (kh, kw + 1, C, 2, O) with
        W2[a, b, c, t, o] = wf[a, b - t, c, o]  for 0 <= b - t < kw, else 0:
    the pair's receptive field is kw + 1 columns wide; the left output (t = 0) uses columns 0..kw-1,
    the right one (t = 1) columns 1..kw. 2·O output columns run the GEMM far faster than O when O is
    small, for (kw + 1)/kw more multiply-adds (4/3 for 3x3), and the columns hold (kw + 1)/(2·kw) as
    many values per output (2/3 for 3x3)."""
    kh, kw, c, o = wf.shape
    w2 = np.zeros((kh, kw + 1, c, 2, o), dtype=wf.dtype)
    w2[:, :kw, :, 0] = wf
    w2[:, 1:, :, 1] = wf
    return w2


def pair_columns(xp: np.ndarray, kernel: tuple[int, int], out_hw: tuple[int, int], ones: bool,
                 cols: np.ndarray) -> np.ndarray:
    """The columns of output pairs of a stride-1 conv on channels-last padded xp (S, Hp, Wp, C), into
    `cols` (S·OH·OW/2, kh·(kw+1)·C [+1]): row (n, i, p) holds xp[n, i + a, 2p + b, :] for a < kh,
    b < kw + 1 (kw + 1 contiguous pixels per kernel row), then a constant 1 when `ones` (the bias).
    The GEMM with pair_weights then writes (S, OH, OW/2, 2, O), i.e. channels-last (S, OH, OW, O)."""
    s, _, _, c = xp.shape
    kh, kw = kernel
    oh, ow = out_hw
    sn, sh, sw, sc = xp.strides
    view = as_strided(xp, (s, oh, ow // 2, kh, (kw + 1) * c), (sn, sh, 2 * sw, sh, sc), writeable=False)
    k = kh * (kw + 1) * c
    np.copyto(cols[:, :k].reshape(view.shape), view)
    if ones:
        cols[:, k].fill(1)
    return cols


@dataclass
class LayerStage:
    """Any other layer: its own evaluation forward."""

    layer: Layer

    @property
    def layers(self) -> list[Layer]:
        return [self.layer]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.layer.forward(x, train=False)


Stage = ConvStage | LayerStage


def _tiles(pool: MaxPool2D, shape: tuple[int, ...]) -> bool:
    """The pool's windows tile a per-sample (C, H, W) exactly (stride = kernel, no padding)."""
    return len(shape) == 3 and pool._tiles_exactly(shape[1], shape[2])


def compile_chain(layers: Sequence[Layer]) -> list[Stage]:
    """The stages of a chain's evaluation forward: each conv2d with the batchnorm, relu and tiling
    maxpool2d directly after it (each optional, in that order, or the pool before the relu, or the pool
    before the batchnorm and relu) fused into a ConvStage; every other layer on its own. Needs built
    layers (their input shapes)."""
    stages: list[Stage] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if not isinstance(layer, Conv2D):
            stages.append(LayerStage(layer))
            i += 1
            continue
        stage = ConvStage(layer)
        shape = layer.output_shape(layer.input_shape)
        j = i + 1
        if j < len(layers) and type(layers[j]) is BatchNorm:
            stage.norm, j = layers[j], j + 1
        for _ in range(3):   # relu and pool in either order; a batchnorm straight after a first pool
            nxt = layers[j] if j < len(layers) else None
            if type(nxt) is ReLU and stage.relu is None:
                stage.relu, j = nxt, j + 1
            elif type(nxt) is MaxPool2D and stage.pool is None and _tiles(nxt, shape):
                stage.pool, j = nxt, j + 1
            elif (type(nxt) is BatchNorm and stage.norm is None and stage.relu is None
                  and stage.pool is not None and stage.post_norm is None):
                stage.post_norm, j = nxt, j + 1
        stages.append(stage)
        i = j
    return stages


def run_chain(stages: Sequence[Stage], x: np.ndarray) -> np.ndarray:
    """x through the stages (x itself for an empty chain)."""
    for stage in stages:
        x = stage.forward(x)
    return x
