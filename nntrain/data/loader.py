"""From uint8 images to float batches: validation split, per-channel statistics, shuffled batching.

The dataset stays uint8 in memory; each batch is converted on its own, so a float copy of the whole
set never exists. All randomness comes from the Generator the caller passes in.

Buffer reuse policy of `iterate_batches`: a yielded batch `x` is a view of a float buffer owned by the
iterator. The iterator reuses a buffer only when nothing outside it still references that buffer
(CPython reference count: a batch the caller, a list, or a layer's cache still holds — or any view of
it — keeps its buffer out of reuse), keeping at most two buffers; otherwise it allocates a new one.
So a batch is never overwritten while anyone can see it, and a plain training loop (one batch alive,
plus the one a layer cached) converts into the same two buffers every step.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Callable, Iterator

import numpy as np

from nntrain.errors import ConfigError

logger = logging.getLogger(__name__)

Transform = Callable[[np.ndarray], np.ndarray]


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def split_validation(images: np.ndarray, labels: np.ndarray, val_size: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold `val_size` random examples out of a training set: images (N, ...) -> (train_x, train_y, val_x, val_y).

    Draws one permutation from `rng` (so the split is fixed by the seed); both parts keep the original
    order. val_size 0 gives empty validation arrays; val_size must be below N (ConfigError data.val_size).
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if not _is_int(val_size) or not 0 <= val_size < n:
        raise ConfigError(f"val_size must be an integer from 0 to {n - 1} (the training set holds {n} examples), "
                          f"got {val_size!r}", path="data.val_size")
    perm = rng.permutation(n)
    val_idx = np.sort(perm[:val_size])
    train_idx = np.sort(perm[val_size:])
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def channel_stats(images: np.ndarray, chunk_elements: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std on the [0, 1] scale: images uint8 (N, C, ...) -> float32 (C,), (C,).

    Exact: sums and sums of squares are accumulated as integers over chunks of about `chunk_elements`
    values, so memory stays small and no float rounding builds up. A constant channel gets std 1.0
    (normalisation then only centres it) rather than a division by zero.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim < 2:
        raise ValueError(f"channel_stats needs uint8 images (N, C, ...), got {getattr(images, 'dtype', type(images))}"
                         f" {getattr(images, 'shape', '')}")
    n, c = images.shape[0], images.shape[1]
    if n == 0:
        raise ValueError("channel_stats needs at least one image")
    per_image = math.prod(images.shape[1:])
    step = max(1, chunk_elements // per_image)
    axes = (0,) + tuple(range(2, images.ndim))
    s = [0] * c
    ss = [0] * c
    for start in range(0, n, step):
        chunk = images[start:start + step]
        sums = chunk.sum(axis=axes, dtype=np.uint64)
        sq = np.square(chunk, dtype=np.uint32)  # 255**2 fits in uint32
        sqsums = sq.sum(axis=axes, dtype=np.uint64)
        for k in range(c):
            s[k] += int(sums[k])
            ss[k] += int(sqsums[k])
    count = n * (per_image // c)  # values per channel
    mean = np.array([s[k] / count / 255.0 for k in range(c)], dtype=np.float64)
    # Exact integer numerator: count*ss - s^2 = count^2 * var (in pixel units squared).
    var = np.array([(count * ss[k] - s[k] * s[k]) / (count * count) for k in range(c)], dtype=np.float64)
    std = np.sqrt(np.maximum(var, 0.0)) / 255.0
    if np.any(std == 0):
        logger.warning("channel(s) %s are constant; using std 1.0 for them", np.flatnonzero(std == 0).tolist())
        std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches `iterate_batches` yields for n examples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def _refcounts(arrays: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(a) for a in arrays]


class _BufferPool:
    """Float buffers of one shape, reused only when no one but the pool references them (see module doc)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, keep: int = 2):
        self.shape, self.dtype, self.keep = shape, dtype, keep
        self.buffers: list[np.ndarray] = []
        self.can_check = hasattr(sys, "getrefcount")
        # What a free buffer's count reads, measured by the same code path that checks the real ones.
        self.free_refs = _refcounts([np.empty(0)])[0] if self.can_check else 0

    def get(self) -> np.ndarray:
        if self.can_check:
            for b, refs in zip(self.buffers, _refcounts(self.buffers)):
                if refs <= self.free_refs:
                    return b
        buf = np.empty(self.shape, self.dtype)
        if self.can_check and len(self.buffers) < self.keep:
            self.buffers.append(buf)
        return buf


def _channel_vector(v: object, what: str, channels: int, ndim: int, dtype: np.dtype) -> np.ndarray | None:
    """mean/std (C,) -> shape (C, 1, 1, ...) for broadcasting over a batch (N, C, ...)."""
    if v is None:
        return None
    arr = np.asarray(v, dtype=np.float64)
    if arr.shape != (channels,):
        raise ValueError(f"{what} must have shape ({channels},) for images with {channels} channels, got {arr.shape}")
    if what == "std" and np.any(arr <= 0):
        raise ValueError(f"std must be positive, got {arr.tolist()}")
    return arr.astype(dtype).reshape((channels,) + (1,) * (ndim - 2))


def iterate_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *,
                    rng: np.random.Generator | None = None, mean: np.ndarray | None = None,
                    std: np.ndarray | None = None, transform: Transform | None = None,
                    drop_last: bool = False, dtype: np.dtype = np.float32, start_batch: int = 0
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches (x: (n, C, H, W) `dtype`, y: int64 (n,)) from uint8 images (N, C, H, W) and labels (N,).

    x = (images / 255 - mean) / std, converted one batch at a time (mean/std (C,) on the [0, 1] scale;
    None: no centring / scaling). `transform(x01)`, if given, gets the [0, 1] float batch (it may
    modify it in place) and returns the augmented batch of the same length, normalised afterwards.
    `rng` None keeps the order; otherwise exactly one permutation is drawn from it, at this call
    (not lazily at the first batch), so saving the Generator's state at an epoch boundary makes a
    resumed run draw the same order. The last batch may be smaller unless `drop_last`.
    `start_batch` skips the first batches of this order (resuming in the middle of an epoch).
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim < 2:
        raise ValueError(f"images must be uint8 (N, C, ...), got {getattr(images, 'dtype', type(images))}")
    if not _is_int(start_batch) or start_batch < 0:
        raise ValueError(f"start_batch must be a non-negative integer, got {start_batch!r}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a float type, got {dtype}")
    channels = images.shape[1]
    mean_v = _channel_vector(mean, "mean", channels, images.ndim, dtype)
    std_v = _channel_vector(std, "std", channels, images.ndim, dtype)
    order = rng.permutation(n) if rng is not None else None
    return _batches(images, labels, batch_size, order, mean_v, std_v, transform, drop_last, dtype, start_batch)


def _batches(images, labels, batch_size, order, mean, std, transform, drop_last, dtype, start_batch):
    n = len(images)
    stop = n - n % batch_size if drop_last else n
    size = min(batch_size, n)
    pool = _BufferPool((size,) + images.shape[1:], dtype)
    gather = np.empty((size,) + images.shape[1:], np.uint8) if order is not None else None
    for start in range(start_batch * batch_size, stop, batch_size):
        end = min(start + batch_size, n)
        # No local names hold the yielded arrays, so the pool's reference counts see only the caller's.
        yield _convert(images, labels, start, end, order, gather, pool, mean, std, transform, dtype)


def _convert(images, labels, start, end, order, gather, pool, mean, std, transform, dtype):
    m = end - start
    if order is None:
        src = images[start:end]
        y = labels[start:end].astype(np.int64)  # always a copy: the caller may keep or modify it
    else:
        idx = order[start:end]
        src = np.take(images, idx, axis=0, out=gather[:m], mode="clip")  # idx are valid by construction
        y = np.asarray(labels[idx], dtype=np.int64)
    x = pool.get()[:m]
    np.divide(src, dtype.type(255), out=x, dtype=dtype)  # uint8 -> float exactly, then one rounding
    if transform is not None:
        t = transform(x)
        if not isinstance(t, np.ndarray) or t.shape[:1] != (m,):
            raise ValueError(f"transform must return an array of {m} samples, got {getattr(t, 'shape', type(t))}")
        if t is not x:
            if t.shape == x.shape:
                np.copyto(x, t, casting="same_kind")
            else:  # the transform changed the sample shape: a fresh buffer
                x = np.array(t, dtype=dtype)
    if mean is not None:
        x -= mean
    if std is not None:
        x /= std
    return x, y
