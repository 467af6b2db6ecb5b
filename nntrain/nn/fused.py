"""The evaluation forward of a chain of layers, with conv → batchnorm → ReLU → max-pool fused per chunk.

In evaluation a batchnorm is a fixed affine map per channel, y = x·k + c with k = γ/√(σ²+eps) and
c = β − μ·k, so a convolution followed by one is a single convolution with

    W'[o] = W[o]·k[o],   b'[o] = b[o]·k[o] + c[o]       (b = 0 for a conv without bias).

`compile_chain` finds each conv2d, with the batchnorm, ReLU and exactly tiling max-pool that directly
follow it (in that order, each optional), and turns them into one `ConvStage`: chunk by chunk (a few
samples, the conv's own chunking), the padded input, the columns, one GEMM with W' and b', the 2x2 (or
any tiling) max over the chunk's output while it is still in cache, and the ReLU on the pooled values.
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

from nntrain.nn.layers.activations import ReLU
from nntrain.nn.layers.base import Layer
from nntrain.nn.layers.conv import Conv2D, channels_last, conv_output_size, samples_per_chunk
from nntrain.nn.layers.norm import BatchNorm
from nntrain.nn.layers.pool import MaxPool2D, tiled_max
from nntrain.nn.parallel import chunks


@dataclass
class ConvStage:
    """conv2d [→ batchnorm] [→ relu] [→ tiling maxpool2d], evaluated chunk by chunk.
    x: (N, C, H, W) -> (N, O, OH', OW') as a view of channels-last memory (OH', OW' after the pool)."""

    conv: Conv2D
    norm: BatchNorm | None = None
    relu: ReLU | None = None
    pool: MaxPool2D | None = None

    @property
    def layers(self) -> list[Layer]:
        return [layer for layer in (self.conv, self.norm, self.relu, self.pool) if layer is not None]

    def weights(self, dtype: np.dtype) -> tuple[np.ndarray, bool]:
        """(Wm', has_bias): Wm'[(a, b, c), o] = W[o, c, a, b]·k[o] in the columns' (kh, kw, C) order, and
        the bias row b'[o] appended when there is a bias (the conv's own or the batchnorm's shift).
        Folded in float64, then cast to `dtype`."""
        w = self.conv.params["W"].astype(np.float64)
        o, c, kh, kw = w.shape
        bias = self.conv.params["b"].astype(np.float64) if self.conv.bias else np.zeros(o)
        if self.norm is not None:
            gamma, beta = (self.norm.params[k].astype(np.float64) for k in ("gamma", "beta"))
            mean, var = (self.norm.buffers[k].astype(np.float64) for k in ("running_mean", "running_var"))
            scale = gamma / np.sqrt(var + self.norm.eps)
            w = w * scale[:, None, None, None]
            bias = bias * scale + (beta - mean * scale)
        has_bias = self.conv.bias or self.norm is not None
        wm = np.empty((kh * kw * c + (1 if has_bias else 0), o), dtype=dtype)
        wm[:kh * kw * c] = w.transpose(2, 3, 1, 0).reshape(-1, o)
        if has_bias:
            wm[-1] = bias
        return wm, has_bias

    def forward(self, x: np.ndarray) -> np.ndarray:
        conv = self.conv
        n, c, h, w = x.shape
        (ph, pw), (kh, kw), (sh, sw) = conv.padding, conv.kernel_size, conv.stride
        oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
        wm, has_bias = self.weights(np.result_type(x, conv.params["W"]))
        o = wm.shape[1]
        qh, qw = self.pool.kernel_size if self.pool is not None else (1, 1)
        y = np.empty((n, oh // qh, ow // qw, o), dtype=wm.dtype)
        m = oh * ow
        per = samples_per_chunk(n, m * wm.shape[0] * x.dtype.itemsize)
        planar, scratch = conv._planar, conv.scratch
        hp, wp = h + 2 * ph, w + 2 * pw

        def work(s: slice, slot: int) -> None:
            k = s.stop - s.start
            # a zero-bordered padded buffer per thread, sized for one chunk: only its interior is written
            if planar:
                xp = scratch.zero_bordered("eval_xp", slot, (c, per, hp, wp), x.dtype)
                xp[:, :k, ph:ph + h, pw:pw + w] = x[s].transpose(1, 0, 2, 3)
            else:
                xp = scratch.zero_bordered("eval_xp", slot, (per, hp, wp, c), x.dtype)
                xp[:k, ph:ph + h, pw:pw + w, :] = channels_last(x[s])
            cols = conv._columns(xp, slice(0, k), (oh, ow), slot, ones=has_bias)
            ys = y[s]
            if self.pool is None:
                out = ys.reshape(k * m, o)
            else:
                out = scratch.buffer("eval_y", slot, (k * m, o), y.dtype)
            np.matmul(cols.T if planar else cols, wm, out=out)
            if self.pool is not None:
                tiled_max(out.reshape(k, oh, ow, o), self.pool.kernel_size, ys,
                          scratch.buffer("eval_rows", slot, (k, oh // qh, (ow // qw) * qw * o), y.dtype))
            if self.relu is not None:
                np.maximum(ys, 0, out=ys)

        chunks(conv.workers, work, n, per)
        return y.transpose(0, 3, 1, 2)


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
    maxpool2d directly after it (each optional, in that order, or the pool before the relu) fused into a
    ConvStage; every other layer on its own. Needs built layers (their input shapes)."""
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
        for _ in range(2):   # relu and pool, in either order
            nxt = layers[j] if j < len(layers) else None
            if type(nxt) is ReLU and stage.relu is None:
                stage.relu, j = nxt, j + 1
            elif type(nxt) is MaxPool2D and stage.pool is None and _tiles(nxt, shape):
                stage.pool, j = nxt, j + 1
        stages.append(stage)
        i = j
    return stages


def run_chain(stages: Sequence[Stage], x: np.ndarray) -> np.ndarray:
    """x through the stages (x itself for an empty chain)."""
    for stage in stages:
        x = stage.forward(x)
    return x
