"""Atomic file writes: write a temporary file in the same folder, flush, fsync, rename over the target.

A run killed at any moment leaves either the old file or the new one, never a torn one. Failures
(full disk, read-only folder) remove the temporary file and raise NNTrainError (exit 2) naming the path.

Every folder nntrain creates and every file it opens for writing outside these atomic writes (the run's
log) goes through `make_dir` and `open_for_write`, so that a read-only file system, a path through a
file, a dangling symlink or an over-long name is one message naming the path, never a traceback.

Temporary files are named `.<name>.pid<PID>.<random>.tmp`: a later writer removes only those whose
process is gone (SIGKILL skips every cleanup), never the file of a writer that is still running.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from datetime import datetime
from pathlib import Path
from typing import IO, Iterator

from nntrain.errors import NNTrainError


class WriteError(NNTrainError):
    """A file could not be written (disk full, permission denied); the previous version is intact."""


_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EROFS: "the file system is read-only",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.ENAMETOOLONG: "a name in the path is longer than the file system allows (255 bytes per name)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EISDIR: "it is a folder",
    errno.EFBIG: "the file is larger than the system allows",
}


def reason(err: OSError) -> str:
    """What an OSError means, in words (the errno's own text where there is no better one)."""
    return _REASONS.get(err.errno, err.strerror or str(err))  # type: ignore[arg-type]


def _describe(err: OSError, path: Path) -> str:
    return f"could not write {path}: {reason(err)}; the previous version of the file (if any) is intact"


def _not_a_folder(path: Path) -> str:
    """Why an existing `path` cannot be used as a folder: a file, or a symlink to nothing or to a file."""
    if path.is_symlink():
        target = os.readlink(path)
        return (f"it is a symbolic link to {target}, which does not exist" if not path.exists()
                else f"it is a symbolic link to {target}, which is not a folder")
    return "a file of that name exists"


def make_dir(path: str | os.PathLike) -> Path:
    """Create the folder `path` and its parents (nothing happens where it exists as a folder).

    Every way this can fail is a WriteError naming the path and the reason: a read-only file system,
    permission denied, a part of the path that is a file, a dangling symlink, a name over 255 bytes."""
    path = Path(path)
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError as e:
        culprit = Path(e.filename) if e.filename else path
        raise WriteError(f"cannot create the folder {path}: {culprit} exists and is not a folder "
                         f"({_not_a_folder(culprit)})") from None
    except OSError as e:
        raise WriteError(f"cannot create the folder {path}: {reason(e)}") from None
    return path


def open_for_write(path: str | os.PathLike, append: bool = True) -> int:
    """A file descriptor for writing `path` (appending, or truncating with append=False), created 0644.

    Refuses a symlink in the last component (O_NOFOLLOW: a link planted in a run folder cannot redirect
    nntrain's writes elsewhere) and anything but a regular file (a FIFO would block forever)."""
    path = Path(path)
    flags = (os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
             | os.O_NONBLOCK | (os.O_APPEND if append else os.O_TRUNC))
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if path.is_symlink():
            raise WriteError(f"refusing to write {path}: it is a symbolic link (to {os.readlink(path)}); "
                             "nntrain does not write through links in a run folder") from None
        raise WriteError(f"cannot open {path} for writing: {reason(e)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WriteError(f"refusing to write {path}: it is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Context manager yielding a file object; on success the data replaces `path` atomically."""
    path = Path(path)
    _remove_stale(path)
    fd, tmp = None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644)   # mkstemp makes it 0600: the finished file is readable like any other
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


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a zombie, dead but not yet reaped, counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    with contextlib.suppress(OSError, IndexError):
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
    return True


def _remove_stale(path: Path) -> None:
    """Delete temporary files killed writers of `path` left behind: those named with the pid of a process
    that no longer runs (and, from versions that did not record the writer, those without a pid)."""
    own = re.compile(rf"^\.{re.escape(path.name)}\.pid(\d+)\.[^.]+\.tmp$")
    with contextlib.suppress(OSError):
        for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
            m = own.match(stale.name)
            if m and process_alive(int(m.group(1))):
                continue  # a live writer's file (another process, or another thread of this one)
            with contextlib.suppress(OSError):
                stale.unlink()


def glob_escape(name: str) -> str:
    """`name` with glob's special characters quoted."""
    return re.sub(r"([*?\[])", r"[\1]", name)


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
    base = make_dir(base)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1, 10_000):
        path = base / (f"{stem}-{stamp}" if k == 1 else f"{stem}-{stamp}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise WriteError(f"cannot create the folder {path}: {reason(e)}") from None
    raise NNTrainError(f"could not create a new folder under {base}")
