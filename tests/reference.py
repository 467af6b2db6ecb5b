"""Slow, loop-based reference implementations (numpy-ml style), kept as test oracles only.

Written for clarity, not speed: every output pixel is computed by an explicit loop, so they run only
on tiny shapes. Shapes: x (N, C, H, W), W (O, C, kh, kw), stride/padding (sh, sw)/(ph, pw).
"""

from __future__ import annotations

import numpy as np


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[int, int],
                   padding: tuple[int, int]) -> np.ndarray:
    """y[n, o, i, j] = b[o] + Σ_{c, a, e} w[o, c, a, e] · xpad[n, c, i·sh + a, j·sw + e]."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, o, oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]          # (N, C, kh, kw)
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv2d_backward(x: np.ndarray, w: np.ndarray, g: np.ndarray, stride: tuple[int, int],
                    padding: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dW, db) for the forward above, given g = dL/dy, by the same per-pixel loop."""
    n, c, h, wd = x.shape
    _, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    _, _, oh, ow = g.shape
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            gij = g[:, :, i, j]                                                # (N, O)
            dw += np.tensordot(gij, patch, axes=([0], [0]))
            dxp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += np.tensordot(gij, w, axes=([1], [0]))
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw, g.sum(axis=(0, 2, 3))


def pool2d_forward(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int], mode: str) -> np.ndarray:
    """Max (padding -inf) or average (padding counted, divisor kh·kw) over each window."""
    n, c, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fill = -np.inf if mode == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            y[:, :, i, j] = win.max(axis=(2, 3)) if mode == "max" else win.mean(axis=(2, 3))
    return y


def pool2d_backward(x: np.ndarray, g: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                    padding: tuple[int, int], mode: str) -> np.ndarray:
    """dx: max routes each window's gradient to its first maximum (row-major), avg spreads g/(kh·kw)."""
    n, c, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fill = -np.inf if mode == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    dxp = np.zeros(xp.shape, dtype=g.dtype)
    _, _, oh, ow = g.shape
    for nn in range(n):
        for cc in range(c):
            for i in range(oh):
                for j in range(ow):
                    win = xp[nn, cc, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    if mode == "max":
                        a, e = np.unravel_index(np.argmax(win), win.shape)
                        dxp[nn, cc, i * sh + a, j * sw + e] += g[nn, cc, i, j]
                    else:
                        dxp[nn, cc, i * sh:i * sh + kh, j * sw:j * sw + kw] += g[nn, cc, i, j] / (kh * kw)
    return dxp[:, :, ph:ph + h, pw:pw + wd]
