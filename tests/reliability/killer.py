"""Test-side fault injection: run the real `nntrain` CLI, but SIGKILL this process at the N-th atomic
rename (after the temporary file is written and fsynced, before it replaces the target): the
nastiest moment of a checkpoint write. Production code is untouched; only `os.replace` as seen by
nntrain.atomic is wrapped.

usage: python killer.py N nntrain-args...
"""

from __future__ import annotations

import os
import signal
import sys

import nntrain.atomic as atomic
from nntrain.cli import main


def _arm(n: int) -> None:
    calls = {"n": 0}
    real_replace = os.replace

    class _OS:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)

    atomic.os = _OS()


if __name__ == "__main__":
    _arm(int(sys.argv[1]))
    sys.argv = ["nntrain"] + sys.argv[2:]
    main()
