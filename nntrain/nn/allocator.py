"""Keep large freed arrays in the process's heap, so that the next step's arrays of the same size cost
no page faults.

Why: glibc's malloc serves every request above its mmap threshold (at most 32 MiB however it adapts)
with a fresh mmap and unmaps it on free. A training step allocates the same large arrays every
step (a batchnorm's x - μ and output, 64 MiB each for 64 channels at 32x32 and batch 256), so each
one is faulted in page by page and zeroed by the kernel, again every step: measured on such a
batchnorm on 2 threads, forward 45.6 -> 40.9 ms and backward 49.8 -> 46.7 ms with freed memory kept.
Serving every block from the heap and trimming the heap's top only above 1 GiB (the effect of the
MALLOC_MMAP_MAX_=0 and MALLOC_TRIM_THRESHOLD_ environment variables, which must be set before the
process starts) makes freed blocks reusable. The mmap threshold itself cannot be raised above 32 MiB.
The cost: the process keeps its peak heap instead of giving memory back between steps, and blocks
that no longer fit their freed holes raise the peak a little (873 against 806 MiB on the batch-256
ResNet step of bench/configs/cifar-resnet.yaml).

This is a process-wide setting of the C library, made once by the `nntrain` command at start; library
users may call `keep_freed_memory()` themselves. It does nothing outside glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

# Free memory at the heap's top is returned to the system only above this much (mallopt takes an int).
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """No mmap'd blocks and a 1 GiB trim threshold in glibc's malloc (see the module docstring); True
    where it took effect."""
    try:
        mallopt = ctypes.CDLL(None).mallopt   # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):   # no mallopt (not glibc), or no such handle (Windows)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc thresholds %s", "set" if ok else "refused")
    return ok
