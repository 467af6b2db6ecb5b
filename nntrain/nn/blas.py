"""The thread count of the BLAS that NumPy loaded, read and set at run time.

Why: a convolution's matrix products are tall and narrow (N·OH·OW rows, 32-64 columns). Two BLAS
threads on one such product gain little, while two workers that each take a few samples, build their
columns in cache and multiply them on one BLAS thread each scale almost perfectly (cifar-cnn's widest
conv: forward 32 -> 17 ms on 2 cores, see CHUNK_BYTES in layers/conv.py). So while the Workers pool
runs such batch-split work, the BLAS is switched to one thread (a call that costs well under a
microsecond) and switched back afterwards.

Only OpenBLAS (what NumPy's wheels bundle) is controlled, through its C functions found in the
already-loaded library (as threadpoolctl does, without the dependency). Where none is found (another
BLAS, a platform without /proc), `find_blas()` returns None and the chunks run one after another in
the calling thread, each product on the BLAS's own threads.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

# (set, get) symbol pairs, newest naming first: NumPy's scipy-openblas wheels prefix and suffix them.
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


@dataclass(frozen=True)
class Blas:
    """Setter and getter of one loaded OpenBLAS's thread count."""

    path: str
    _set: ctypes._CFuncPtr
    _get: ctypes._CFuncPtr

    def get_threads(self) -> int:
        return int(self._get())

    def set_threads(self, threads: int) -> None:
        self._set(int(threads))


def _loaded_libraries() -> list[str]:
    """Paths of the shared libraries mapped into this process whose name mentions openblas (Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            fields = [line.split(None, 5) for line in f]   # address perms offset dev inode [path]
        paths = {f[5].strip() for f in fields if len(f) == 6}
    except OSError:
        return []
    return sorted(p for p in paths if "openblas" in os.path.basename(p).lower() and ".so" in p)


def find_blas() -> Blas | None:
    """The OpenBLAS NumPy uses, or None when it cannot be found or controlled."""
    import numpy as np  # noqa: F401  (makes sure NumPy's BLAS is loaded before looking for it)

    for path in _loaded_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return Blas(path, setter, getter)
    log.debug("no controllable OpenBLAS found; batch-split products keep BLAS threads")
    return None
