"""Child processes for the benchmark: their environment, and their own peak resident memory.

Each side runs in its own child; `run_child` waits for it with `os.wait4`, whose rusage belongs to
that one child (and anything it waited for), so one process's peak is never attributed to another
(unlike RUSAGE_CHILDREN, which is a running maximum over all children).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Per the environment notes these slow down a current NumPy's OpenBLAS; dropped for the nntrain side.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class ChildResult:
    """What a finished child left: exit code, output, its own peak RSS and wall time."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    wall_s: float

    def check(self, what: str) -> "ChildResult":
        """Raise RuntimeError with the tail of stderr if the child failed."""
        if self.returncode != 0:
            tail = "\n".join((self.stderr or self.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"{what} failed (exit {self.returncode}): {' '.join(self.argv)}\n{tail}")
        return self


def child_env(threads: int, side: str) -> dict[str, str]:
    """The environment of a child: thread counts pinned to `threads`; for side 'nntrain' the
    OpenBLAS core-type / L2 overrides are removed."""
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    if side == "nntrain":
        for var in OPENBLAS_OVERRIDES:
            env.pop(var, None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(argv: list[str], env: dict[str, str], workdir: Path, cwd: Path | None = None) -> ChildResult:
    """Run argv to completion; stdout/stderr go through files in `workdir` (no pipe deadlocks)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    t0 = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    return ChildResult(argv, proc.returncode, out_path.read_text(errors="replace"),
                       err_path.read_text(errors="replace"), usage.ru_maxrss * scale, wall)


def nntrain_command() -> list[str]:
    """The `nntrain` console script of this Python environment (else `python -m nntrain.cli`)."""
    script = Path(sys.executable).with_name("nntrain")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "nntrain.cli"]
