"""nntrain.nn.allocator: with freed memory kept, a large array allocated again costs no page faults.

Each case runs in its own interpreter: the setting is process-wide and must not leak into the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
import numpy as np
from nntrain.nn.allocator import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(3):   # a training step's pattern: the same 64 MiB array, allocated, written, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(16 << 20, np.float32)
    a.fill(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del a
print(json.dumps({"ok": ok, "faults": faults}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_freed_arrays_are_reused_without_page_faults():
    kept = probe("keep")
    if not kept["ok"]:
        pytest.skip("not glibc: keep_freed_memory() has no effect here")
    default = probe("default")
    # (fault counts depend on the page size: NumPy asks for transparent huge pages where it can)
    # glibc's default: every 64 MiB block is a fresh mmap, faulted in again each time
    first = default["faults"][0]
    assert first > 0 and all(f >= first // 2 for f in default["faults"]), default
    # kept: the first allocation faults its pages in, the next ones reuse them
    assert kept["faults"][0] >= first // 2, kept
    assert all(f <= first // 20 for f in kept["faults"][1:]), kept
