"""Test-side file-system conditions made real rather than patched: read-only mounts, a small tmpfs that
fills up, and a barrier between real processes.

We run as root, and root ignores permission bits: a folder cannot be made read-only for us with chmod.
A read-only file system can: a tmpfs mounted `ro`, or a bind mount remounted `ro`. Mounting needs
CAP_SYS_ADMIN; where it is not permitted (an unprivileged container) the tests that need it skip, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting is not permitted here ({proc.stderr.strip() or proc.returncode}): "
                    "this test needs a real read-only or full file system")


def _umount(path: Path) -> None:
    for _ in range(50):  # a process that just exited may still hold a file open for a moment
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def tmpfs(at: Path, size: str = "4m", read_only: bool = False) -> Iterator[Path]:
    """A fresh tmpfs of `size` mounted at `at` (made if missing), unmounted afterwards."""
    at.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", str(at))
    try:
        yield at
    finally:
        _umount(at)


@contextlib.contextmanager
def read_only_view(src: Path, at: Path) -> Iterator[Path]:
    """`src` seen read-only at `at`: a bind mount remounted read-only (the files are src's own)."""
    at.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(src), str(at))
    try:
        proc = subprocess.run(["mount", "-o", "remount,bind,ro", str(at)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"a read-only remount is not permitted here: {proc.stderr.strip()}")
        yield at
    finally:
        _umount(at)


def fill(folder: Path) -> Path:
    """Fill the file system holding `folder` to the last byte with one file; returns its path."""
    filler = folder / "filler.bin"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                if len(chunk) == 1:
                    break
                chunk = chunk[:len(chunk) // 2]
    return filler


class Barrier:
    """A barrier between real processes: each `wait()` leaves a file in `folder` and returns once
    `parties` files are there (or after `timeout` seconds, so a party that never comes cannot hang a test)."""

    def __init__(self, folder: str | os.PathLike, parties: int, timeout: float = 60.0):
        self.folder, self.parties, self.timeout = Path(folder), parties, timeout

    def wait(self) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{os.getpid()}").touch()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if len(list(self.folder.iterdir())) >= self.parties:
                return True
            time.sleep(0.002)
        return False
