"""A small NumPy affine resampler: each image of a batch warped by its own 2x3 matrix, zero fill
outside, bilinear or nearest sampling, vectorised over the whole batch with fancy indexing.

Shared by the training augmentations (augment.py) and the robustness perturbations of `nntrain eval`.
Coordinates are pixel units centred on the image: u = col - (W-1)/2 (right), v = row - (H-1)/2 (down).
A matrix theta maps each *output* pixel to the *source* point it samples (the inverse warp):
    [u_src, v_src] = theta @ [u_out, v_out, 1]
"""

from __future__ import annotations

import numpy as np

_SNAP = 1e-4  # source coordinates this close to a grid point sample it exactly (rot90, integer shifts)


def _as_batch(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """(N, C, H, W) view of x; also accepts single-channel (N, H, W). Float dtypes only."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"affine resampling needs a float array, got {x.dtype} (convert images to float first)")
    if x.ndim == 3:
        return x[:, None], True
    if x.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W) or (N, H, W), got shape {x.shape}")
    return x, False


def _per_image(value: float | np.ndarray, n: int, name: str) -> np.ndarray:
    """A scalar or one value per image -> float64 (n,)."""
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0:
        return np.full(n, float(v))
    if v.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one value per image ({n}), got shape {v.shape}")
    return v


def _snap(c: np.ndarray) -> np.ndarray:
    r = np.rint(c)
    return np.where(np.abs(c - r) < _SNAP, r, c)


def affine_sample(x: np.ndarray, theta: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """Warp each image: out[n, :, i, j] = x[n, :] sampled at theta[n] @ (u_j, v_i, 1) (see module doc).

    x: (N, C, H, W) or (N, H, W) float; theta: (N, 2, 3) or one (2, 3) for all images.
    mode: "bilinear" or "nearest". Points outside the image read as 0. Returns a new array of x's
    shape and dtype; x is not modified.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    xb, squeezed = _as_batch(x)
    n, c, h, w = xb.shape
    theta = np.broadcast_to(np.asarray(theta, dtype=np.float64), (n, 2, 3))
    # Source coordinates in float32 (ample for images of a few hundred pixels; half the memory
    # traffic of float64), shifted by +1 into an image with a one-pixel zero border: clipping an
    # index into the bordered image lands every outside point on a zero, which is the zero fill.
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    u = (np.arange(w, dtype=np.float32) - np.float32(cx))[None, None, :]     # (1, 1, W)
    v = (np.arange(h, dtype=np.float32) - np.float32(cy))[None, :, None]     # (1, H, 1)
    t = theta.astype(np.float32)[:, :, :, None, None]                       # (N, 2, 3, 1, 1)
    xs = _snap(t[:, 0, 0] * u + t[:, 0, 1] * v + (t[:, 0, 2] + np.float32(cx + 1))).reshape(n, h * w)
    ys = _snap(t[:, 1, 0] * u + t[:, 1, 1] * v + (t[:, 1, 2] + np.float32(cy + 1))).reshape(n, h * w)
    hp, wp = h + 2, w + 2
    # Channels last, so one flat index per output pixel fetches all C values; np.take with flat
    # indices is several times faster than fancy indexing or take_along_axis here.
    padded = np.zeros((n, hp, wp, c), dtype=xb.dtype)
    padded[:, 1:-1, 1:-1, :] = xb.transpose(0, 2, 3, 1)
    pixels = padded.reshape(n * hp * wp, c)
    first = (np.arange(n, dtype=np.intp) * (hp * wp))[:, None]                # (N, 1): image offsets

    def index(coord: np.ndarray, size: int) -> np.ndarray:
        return np.clip(coord, 0, size - 1).astype(np.intp)

    if mode == "nearest":
        flat = first + index(np.floor(ys + 0.5), hp) * wp + index(np.floor(xs + 0.5), wp)
        out = np.take(pixels, flat, axis=0)
    else:
        x0, y0 = np.floor(xs), np.floor(ys)
        fx = (xs - x0).astype(xb.dtype)[..., None]                            # (N, H*W, 1) weights
        fy = (ys - y0).astype(xb.dtype)[..., None]
        gx, gy = 1 - fx, 1 - fy
        col0, col1 = index(x0, wp), index(x0 + 1, wp)
        row0, row1 = first + index(y0, hp) * wp, first + index(y0 + 1, hp) * wp
        out = np.take(pixels, row0 + col0, axis=0) * (gx * gy)
        out += np.take(pixels, row0 + col1, axis=0) * (fx * gy)
        out += np.take(pixels, row1 + col0, axis=0) * (gx * fy)
        out += np.take(pixels, row1 + col1, axis=0) * (fx * fy)
    out = np.ascontiguousarray(out.reshape(n, h, w, c).transpose(0, 3, 1, 2))
    return out[:, 0] if squeezed else out


def rotation_matrices(degrees: float | np.ndarray, n: int) -> np.ndarray:
    """(n, 2, 3) inverse-warp matrices rotating content counter-clockwise (as displayed, row 0 on top)
    by `degrees` about the image centre; rotate by 90 equals np.rot90(image, axes=(-2, -1))."""
    a = np.deg2rad(_per_image(degrees, n, "degrees"))
    cos, sin = np.cos(a), np.sin(a)
    theta = np.zeros((n, 2, 3))
    # With v pointing down, a counter-clockwise turn of the content samples source = R(-a) * out.
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    return theta


def shift_matrices(dx: float | np.ndarray, dy: float | np.ndarray, n: int) -> np.ndarray:
    """(n, 2, 3) matrices moving content right by dx and down by dy pixels."""
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -_per_image(dx, n, "dx")
    theta[:, 1, 2] = -_per_image(dy, n, "dy")
    return theta


def scale_matrices(s: float | np.ndarray, n: int) -> np.ndarray:
    """(n, 2, 3) matrices scaling content by s about the centre (s > 1 zooms in)."""
    s = _per_image(s, n, "scale")
    if np.any(s <= 0):
        raise ValueError("scale factors must be positive")
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / s
    return theta


def rotate(x: np.ndarray, degrees: float | np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """Rotate each image counter-clockwise by `degrees` (a scalar or one per image), zero fill."""
    return affine_sample(x, rotation_matrices(degrees, len(x)), mode)


def shift(x: np.ndarray, dx: float | np.ndarray, dy: float | np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """Move each image's content right by dx and down by dy pixels (scalars or one per image), zero
    fill. Whole-pixel shifts are exact in either mode."""
    return affine_sample(x, shift_matrices(dx, dy, len(x)), mode)


def scale(x: np.ndarray, s: float | np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """Scale each image's content by s about its centre (s > 1 zooms in; s < 1 shrinks, zero fill)."""
    return affine_sample(x, scale_matrices(s, len(x)), mode)


def add_noise(x: np.ndarray, std: float | np.ndarray, rng: np.random.Generator,
              clip: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:
    """x + std * N(0, 1), std a scalar or one per image, clipped to `clip` (None: not clipped).
    Keeps x's float dtype; returns a new array."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"add_noise needs a float array, got {x.dtype}")
    s = _per_image(std, len(x), "std").astype(x.dtype).reshape((len(x),) + (1,) * (x.ndim - 1))
    out = x + s * rng.standard_normal(x.shape, dtype=x.dtype if x.dtype in (np.float32, np.float64) else None
                                      ).astype(x.dtype, copy=False)
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)
    return out
