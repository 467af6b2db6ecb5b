"""Test-side race driver: run the real `nntrain` CLI, but stop at a `Barrier` (fsfaults.py) right before
the process's first mkdir of PATH, so that several processes started together reach that moment together
(two trainings given the same --run-dir). Production code is untouched; only `os.mkdir` is wrapped.

usage: python racer.py BARRIER_DIR PARTIES PATH nntrain-args...
"""

from __future__ import annotations

import os
import sys

from fsfaults import Barrier
from nntrain.cli import main


def _arm(barrier: Barrier, target: str) -> None:
    real_mkdir = os.mkdir
    state = {"waited": False}

    def mkdir(path, mode=0o777, *, dir_fd=None):
        if not state["waited"] and os.path.abspath(os.fspath(path)) == target:
            state["waited"] = True
            barrier.wait()
        return real_mkdir(path, mode) if dir_fd is None else real_mkdir(path, mode, dir_fd=dir_fd)

    os.mkdir = mkdir


if __name__ == "__main__":
    _arm(Barrier(sys.argv[1], int(sys.argv[2])), os.path.abspath(sys.argv[3]))
    sys.argv = ["nntrain"] + sys.argv[4:]
    main()
