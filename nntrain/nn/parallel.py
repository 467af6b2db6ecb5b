"""A small thread pool for NumPy's element-wise work, split over the batch axis.

NumPy runs element-wise operations (ReLU, pooling, the im2col/col2im copies and adds) on one thread,
while the matrix products use every BLAS thread. `Workers` closes that gap: `workers.split(fn, n)`
calls `fn(slice)` on contiguous pieces of `range(n)` (the batch axis) at once, one piece in the
calling thread and the others in the pool; NumPy releases the GIL inside its loops, so the pieces
run in parallel. Each sample's values are computed by the same operations whatever the number of
pieces, so results are bit-identical for any thread count (tests/nn/test_layers.py checks it).

`workers.chunks(fn, n, per)` runs work that includes matrix products (convolution) the same way, over
fixed pieces of `per` samples, with NumPy's BLAS switched to one thread meanwhile (nntrain.nn.blas): each
thread then multiplies its own cache-sized piece, which scales far better than two BLAS threads on one
tall, narrow product. fn also gets the number of the thread's slot, for per-thread scratch buffers.

A pool is owned by an object (the Model makes one sized from the BLAS thread setting and hands it to
its layers); there is no module-level pool. `close()` (or the owner being garbage collected) shuts
the threads down.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from nntrain.nn.blas import Blas, find_blas

# A piece smaller than this many array elements is not worth a thread hand-off (its cost: bench/results/kernels.md).
MIN_ITEMS_PER_PIECE = 1 << 17


def blas_threads() -> int:
    """The thread count NumPy's BLAS runs with now (what `nntrain --threads N` or the BLAS's own
    environment variables set), else the usable cores where no BLAS can be queried."""
    blas = find_blas()
    if blas is not None:
        return blas.get_threads()
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _shutdown(executor: ThreadPoolExecutor | None) -> None:
    if executor is not None:
        executor.shutdown(wait=False)


class Scratch:
    """Per-thread-slot scratch arrays reused across chunks, batches and layers (conv's columns and col2im
    products), so the hot loop allocates nothing once the shapes are known. A model's layers run one at a
    time and a slot is used by one thread at a time, so one Scratch (its Workers') serves them all: the
    buffers are as large as the largest layer needs, not the sum over layers."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, np.ndarray] = {}

    def __contains__(self, key: tuple) -> bool:
        """(name, slot) has an array (of any shape)."""
        return any(k[:2] == tuple(key) for k in self._arrays)

    def __getitem__(self, key: tuple) -> np.ndarray:
        return self._arrays[key]

    def buffer(self, name: str, slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Array `name` of thread slot `slot`, at least `shape` large (contents undefined)."""
        size = math.prod(shape)
        buf = self._arrays.get((name, slot))
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = self._arrays[(name, slot)] = np.empty(size, dtype=dtype)
        return buf[:size].reshape(shape)

    def zero_bordered(self, name: str, slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Array `name` of slot `slot` of exactly `shape` and dtype, zeros where it was never written (the
        border of a padded chunk, which only its interior is written over): one per shape, made once."""
        key = (name, slot, tuple(shape), np.dtype(dtype).str)
        buf = self._arrays.get(key)
        if buf is None:
            buf = self._arrays[key] = np.zeros(shape, dtype=dtype)
        return buf


class _Job:
    """fn(piece, slot) over a list of pieces, each claimed by whichever thread asks first (the caller, slot 0,
    or a pool thread, slots 1, 2, ...)."""

    def __init__(self, fn: Callable[[slice, int], None], pieces: list[slice]):
        self.fn, self.pieces = fn, pieces
        self.lock = threading.Lock()
        self.finished = threading.Condition(self.lock)
        self.next = 0        # next unclaimed piece
        self.running = 0     # claimed, not finished
        self.error: BaseException | None = None

    def work(self, slot: int) -> None:
        while True:
            with self.lock:
                if self.next >= len(self.pieces):
                    return
                piece = self.pieces[self.next]
                self.next += 1
                self.running += 1
            try:
                self.fn(piece, slot)
            except BaseException as e:  # noqa: BLE001  (re-raised in the caller by wait())
                with self.lock:
                    self.error = self.error or e
                    self.next = len(self.pieces)   # stop handing out pieces
            finally:
                with self.lock:
                    self.running -= 1
                    if self.running == 0:
                        self.finished.notify_all()

    def wait(self) -> None:
        """Return once every claimed piece is finished (the caller's work() has claimed the rest)."""
        with self.lock:
            while self.running:
                self.finished.wait()
        if self.error is not None:
            raise self.error


class Workers:
    """`threads` threads in all (the caller counts as one): threads - 1 pool threads, made on first use."""

    def __init__(self, threads: int | None = None):
        self.threads = max(1, int(blas_threads() if threads is None else threads))
        self._executor: ThreadPoolExecutor | None = None
        self._blas: Blas | None | bool = False   # False: not looked up yet
        self._finalizer = weakref.finalize(self, _shutdown, None)
        self.scratch = Scratch()   # per-slot buffers of the layers that use these workers

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="nntrain-worker")
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _shutdown, self._executor)
        return self._executor

    def pieces(self, n: int, items_per_sample: int = 1) -> list[slice]:
        """Contiguous slices of range(n): at most `threads` of them, none under MIN_ITEMS_PER_PIECE elements
        (given `items_per_sample` elements of work per index)."""
        k = min(self.threads, n, max(1, (n * items_per_sample) // MIN_ITEMS_PER_PIECE))
        if k <= 1:
            return [slice(0, n)]
        bounds = [(n * i) // k for i in range(k + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(k)]

    def split(self, fn: Callable[[slice], None], n: int, items_per_sample: int = 1) -> None:
        """Run fn(piece) for the pieces of range(n), in parallel; returns when all are done and re-raises
        the first exception. fn must only write to its own piece of the outputs.

        The pieces are claimed, not assigned: the calling thread works through them too and only waits
        for pieces a pool thread has already started. On a busy machine, where a woken pool thread may
        get a core only milliseconds later, the caller then simply does the work itself instead of
        waiting for it (a fixed hand-off there can cost many times the work; see bench/results/kernels.md).
        """
        pieces = self.pieces(n, items_per_sample)
        if len(pieces) == 1:
            fn(pieces[0])
            return
        self._run(_Job(lambda piece, _slot: fn(piece), pieces))

    def _run(self, job: _Job) -> None:
        pool = self._pool()
        for slot in range(1, min(self.threads, len(job.pieces))):
            pool.submit(job.work, slot)
        job.work(0)
        job.wait()

    def chunks(self, fn: Callable[[slice, int], None], n: int, per: int) -> None:
        """Run fn(piece, slot) for the pieces range(i, i + per) of range(n), in parallel with the BLAS on one
        thread; slot (0 <= slot < threads) is the same for no two pieces running at once. The pieces do not
        depend on the thread count, so neither do the results. Where the BLAS cannot be controlled the
        pieces run one after the other in this thread (its products then use the BLAS threads)."""
        pieces = chunk_slices(n, per)
        if self._blas is False:
            self._blas = find_blas() if self.threads > 1 else None
        blas = self._blas
        if len(pieces) == 1 or blas is None:
            for piece in pieces:
                fn(piece, 0)
            return
        before = blas.get_threads()
        blas.set_threads(1)
        try:
            self._run(_Job(fn, pieces))
        finally:
            blas.set_threads(before)

    def close(self) -> None:
        """Shut the pool threads down (a later split() starts new ones)."""
        self._finalizer()
        self._executor = None

    def __repr__(self) -> str:
        return f"Workers(threads={self.threads})"


def chunk_slices(n: int, per: int) -> list[slice]:
    """range(n) in consecutive slices of `per` (the last may be shorter)."""
    per = max(1, per)
    return [slice(i, min(n, i + per)) for i in range(0, n, per)]


def chunks(workers: Workers | None, fn: Callable[[slice, int], None], n: int, per: int) -> None:
    """workers.chunks(...), or fn(piece, 0) for each piece in this thread when there is no pool."""
    if workers is None:
        for piece in chunk_slices(n, per):
            fn(piece, 0)
    else:
        workers.chunks(fn, n, per)


def split(workers: Workers | None, fn: Callable[[slice], None], n: int, items_per_sample: int = 1) -> None:
    """workers.split(...), or fn(slice(0, n)) in this thread when there is no pool."""
    if workers is None:
        fn(slice(0, n))
    else:
        workers.split(fn, n, items_per_sample)
