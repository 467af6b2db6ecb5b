"""Atomic file writes: write a temporary file in the same folder, flush, fsync, rename over the target.

A run killed at any moment leaves either the old file or the new one, never a torn one. Failures
(full disk, read-only folder) remove the temporary file and raise NNTrainError (exit 2) naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import IO, Iterator

from nntrain.errors import NNTrainError


class WriteError(NNTrainError):
    """A file could not be written (disk full, permission denied); the previous version is intact."""


def _describe(err: OSError, path: Path) -> str:
    reason = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied",
              errno.EROFS: "the file system is read-only", errno.EDQUOT: "the disk quota is exceeded"}.get(
        err.errno, err.strerror or str(err))
    return f"could not write {path}: {reason}; the previous version of the file (if any) is intact"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Context manager yielding a file object; on success the data replaces `path` atomically."""
    path = Path(path)
    _remove_stale(path)
    fd, tmp = None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode) as f:
            fd = None
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise WriteError(_describe(e, path)) from e
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _remove_stale(path: Path) -> None:
    """Delete temporary files a killed writer of `path` left behind (SIGKILL skips every cleanup)."""
    with contextlib.suppress(OSError):
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def create_unique_dir(base: str | os.PathLike, stem: str) -> Path:
    """base/<stem>-<YYYYmmdd-HHMMSS>[-k]: an exclusive mkdir, so two callers in the same second
    (threads or processes) never get the same folder."""
    base = Path(base)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(_describe(e, base)) from e
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1, 10_000):
        path = base / (f"{stem}-{stamp}" if k == 1 else f"{stem}-{stamp}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise WriteError(_describe(e, path)) from e
    raise NNTrainError(f"could not create a new folder under {base}")
