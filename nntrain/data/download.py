"""Downloading data files: several mirrors in turn, checksums, atomic writes, clear errors offline.

A download streams through nntrain.atomic into a temporary file in the destination folder and has its
checksum verified before that file is flushed, fsynced and renamed into place: the destination either
does not exist or is complete and verified. The temporary file is removed on any failure (including
Ctrl-C), and one a killed download left behind is removed by the next attempt.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

from tqdm import tqdm

from nntrain.atomic import WriteError, atomic_open
from nntrain.errors import DataError

logger = logging.getLogger(__name__)

MIRROR_ENV = "NNTRAIN_MIRROR"
DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 16


class DownloadError(DataError):
    """No mirror delivered a good copy of a file (offline, refused, HTTP error, checksum mismatch)."""


class _MirrorFailed(Exception):
    """One URL failed in a way another mirror may not: try the next one."""


def resolve_mirrors(defaults: Sequence[str], override: Sequence[str] | str | None = None) -> list[str]:
    """Base URLs to try, in order: `override`, else $NNTRAIN_MIRROR (comma separated), else `defaults`.

    A mirror is a base URL; file names are appended to it (`<mirror>/train-images-idx3-ubyte.gz`).
    """
    if override is None:
        override = os.environ.get(MIRROR_ENV) or None
    if override is None:
        return list(defaults)
    if isinstance(override, str):
        override = [m for m in override.replace(" ", ",").split(",")]
    mirrors = [m.strip() for m in override if m and m.strip()]
    if not mirrors:
        raise DataError(f"no download mirror given (${MIRROR_ENV} or the mirrors parameter is empty)")
    return mirrors


def _local_error(e: OSError, where: Path) -> DataError:
    """A failure writing on this machine: not a mirror's fault, so no other mirror is tried."""
    if e.errno == errno.ENOSPC:
        why = "no space left on device; free some space or point data.root / $NNTRAIN_DATA at another disk"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied or read-only; point data.root / $NNTRAIN_DATA at a writable folder"
    else:
        why = e.strerror or str(e)
    return DataError(f"cannot write {where}: {why}")


def _stream(url: str, out: BinaryIO, name: str, checksums: dict[str, str], progress: bool,
            timeout: float) -> None:
    """Copy `url` into `out`, checking its length and checksums; _MirrorFailed when another mirror may do
    better. A failed write to `out` is left to propagate (an OSError: this machine's fault)."""
    hashers = {kind: hashlib.new(kind, usedforsecurity=False) for kind in checksums}
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise _MirrorFailed(f"cannot connect: {reason}") from e
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        show = progress and sys.stderr.isatty()
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                  disable=not show, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _MirrorFailed(f"connection lost after {got} bytes: {e}") from e
                if not chunk:
                    break
                out.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if total is not None and got != total:
        raise _MirrorFailed(f"incomplete download: got {got} of {total} bytes")
    for kind, expected in checksums.items():
        actual = hashers[kind].hexdigest()
        if actual != expected.lower():
            raise _MirrorFailed(f"checksum mismatch: expected {kind} {expected.lower()}, got {actual} "
                                f"({got} bytes)")


def _fetch_one(url: str, dest: Path, checksums: dict[str, str], progress: bool, timeout: float) -> None:
    """Download `url` to `dest` atomically: the temporary file is renamed only after its checks pass."""
    try:
        with atomic_open(dest, "wb") as out:
            _stream(url, out, dest.name, checksums, progress, timeout)
    except WriteError as e:
        # Said in data terms (free space, or point the data root elsewhere) rather than atomic's generic words.
        if isinstance(e.__cause__, OSError):
            raise _local_error(e.__cause__, dest) from e.__cause__
        raise


def download(urls: str | Sequence[str], dest_path: str | Path, md5: str | None = None,
             sha256: str | None = None, progress: bool = True, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download the first URL that works into `dest_path`, atomically, verifying md5/sha256 if given.

    Mirrors are tried in order: a connection failure, an HTTP error, an incomplete transfer or a
    checksum mismatch moves on to the next; when all fail, DownloadError lists each URL and why.
    A local write failure (disk full, read-only folder) is a DataError at once. Returns `dest_path`.
    """
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise ValueError("download() needs at least one URL")
    dest = Path(dest_path)
    checksums = {kind: value for kind, value in (("md5", md5), ("sha256", sha256)) if value}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _local_error(e, dest.parent) from e
    failures = []
    for url in url_list:
        logger.info("downloading %s from %s", dest.name, url)
        try:
            _fetch_one(url, dest, checksums, progress, timeout)
            logger.info("saved %s", dest)
            return dest
        except _MirrorFailed as e:
            logger.warning("download of %s failed: %s", url, e)
            failures.append(f"{url}: {e}")
    raise DownloadError(f"could not download {dest.name} into {dest.parent}:\n  " + "\n  ".join(failures))


def fetch_files(folder: str | Path, files: Mapping[str, str | None], mirrors: Sequence[str],
                progress: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Download each of `files` (name -> md5 or None) missing from `folder`, trying `mirrors` in order.

    Files already present are left alone (never rewritten). When the network fails, the DataError
    says which files to place in which folder by hand.
    """
    folder = Path(folder)
    missing = [name for name in files if not (folder / name).exists()]
    for i, name in enumerate(missing):
        urls = [m.rstrip("/") + "/" + name for m in mirrors]
        try:
            download(urls, folder / name, md5=files[name], progress=progress, timeout=timeout)
        except DownloadError as e:
            todo = ", ".join(missing[i:])
            raise DownloadError(f"{e}\nWithout internet access, download {todo} (from {mirrors[0]}) on "
                                f"another machine and place them in {folder}/ , or set the ${MIRROR_ENV} "
                                f"environment variable to a mirror you can reach.") from e
