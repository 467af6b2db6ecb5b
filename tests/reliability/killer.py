"""Test-side fault injection: run the real `nntrain` CLI, but SIGKILL this process at the N-th atomic
rename (after the temporary file is written and fsynced, before it replaces the target): the
nastiest moment of a checkpoint write. Production code is untouched; only `os.replace` as seen by
nntrain.atomic is wrapped.

usage: python killer.py N nntrain-args...          (the N-th rename of the run)
       python killer.py NAME:K nntrain-args...     (the K-th rename onto a file called NAME)
"""

from __future__ import annotations

import os
import signal
import sys

import nntrain.atomic as atomic
from nntrain.cli import main


def _arm(spec: str) -> None:
    name, _, k = spec.rpartition(":")
    n = int(k)
    calls = {"n": 0}
    real_replace = os.replace

    class _OS:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            if name and os.path.basename(dst) != name:
                return real_replace(src, dst)
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)

    atomic.os = _OS()


if __name__ == "__main__":
    _arm(sys.argv[1])
    sys.argv = ["nntrain"] + sys.argv[2:]
    main()
