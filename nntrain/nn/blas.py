"""The thread count of the BLAS that NumPy loaded, read and set at run time through threadpoolctl.

Why: a convolution's matrix products are tall and narrow (N·OH·OW rows, 32-64 columns). Two BLAS
threads on one such product gain little, while two workers that each take a few samples, build their
columns in cache and multiply them on one BLAS thread each scale almost perfectly (cifar-cnn's widest
conv: forward 32 -> 17 ms on 2 cores, see CHUNK_BYTES in layers/conv.py). So while the Workers pool
runs such batch-split work, the BLAS is switched to one thread and switched back afterwards (a get and
two sets cost about 10 µs, against milliseconds of work per region).

threadpoolctl finds the loaded BLAS (OpenBLAS, MKL, BLIS) on Linux, macOS and Windows. Where it finds
none, `find_blas()` returns None and the chunks run one after another in the calling thread, each
product on the BLAS's own threads. The setter is the library's process-wide one: OpenBLAS's
thread-local variant does not act per thread in NumPy's builds.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from threadpoolctl import ThreadpoolController

log = logging.getLogger(__name__)

_lock = threading.Lock()
_controller: ThreadpoolController | None = None


def _release(lib: Any) -> None:
    """Give up this thread's control of a process-wide OpenBLAS pool (a no-op unless it holds it).

    threadpoolctl lets one Python thread at a time set such a pool and keeps it in control until a
    `with threadpool_limits()` block ends; every set here is a complete change of its own, so control is
    handed back at once. Otherwise a model trained in another thread than the first setter could never
    switch the BLAS to one thread (the set would silently do nothing).
    """
    release = getattr(type(lib), "clear_controlling_thread", None)
    if release is not None:
        release()


def controller() -> ThreadpoolController:
    """The thread pools loaded in this process, scanned once (a scan takes milliseconds)."""
    global _controller
    with _lock:
        if _controller is None:
            import numpy  # noqa: F401  (NumPy's BLAS must be loaded before the scan)

            _controller = ThreadpoolController()
        return _controller


class Blas:
    """Getter and setter of the thread count of the BLAS libraries loaded (usually NumPy's one OpenBLAS)."""

    def __init__(self, libraries: list[Any]):
        self._libraries = list(libraries)

    @property
    def paths(self) -> list[str]:
        return [lib.filepath for lib in self._libraries]

    def get_threads(self) -> int:
        return max(int(lib.num_threads or 1) for lib in self._libraries)

    def set_threads(self, threads: int) -> None:
        for lib in self._libraries:
            lib.set_num_threads(int(threads))
            _release(lib)

    def __repr__(self) -> str:
        return f"Blas({', '.join(self.paths)})"


def find_blas() -> Blas | None:
    """The BLAS NumPy uses, or None when threadpoolctl finds no controllable one."""
    libraries = controller().select(user_api="blas").lib_controllers
    if not libraries:
        log.debug("no controllable BLAS found; batch-split products keep BLAS threads")
        return None
    return Blas(libraries)

