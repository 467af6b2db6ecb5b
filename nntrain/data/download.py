"""Downloading data files: several mirrors in turn, checksums, atomic writes, clear errors offline.

A download streams through nntrain.atomic into a temporary file in the destination folder and has its
checksum verified before that file is flushed, fsynced and renamed into place: the destination either
does not exist or is complete and verified. The temporary file is removed on any failure (including
Ctrl-C), and one a killed download left behind is removed by the next attempt.

Mirrors are web servers: only http:// and https:// URLs are fetched (a file:// or ftp:// mirror from
$NNTRAIN_MIRROR is refused). Credentials in a mirror URL (`https://user:password@host/...`) are sent as
HTTP basic authentication and never printed: every message shows the URL with the password replaced
by ***. A download of one file from one mirror has an overall deadline (DEFAULT_DEADLINE, or
$NNTRAIN_DOWNLOAD_DEADLINE seconds): a mirror that trickles a byte now and then, never quite hitting
the socket timeout, is abandoned for the next one instead of stalling forever.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

from tqdm import tqdm

from nntrain.atomic import WriteError, atomic_open
from nntrain.errors import DataError

logger = logging.getLogger(__name__)

MIRROR_ENV = "NNTRAIN_MIRROR"
DEADLINE_ENV = "NNTRAIN_DOWNLOAD_DEADLINE"
DEFAULT_TIMEOUT = 30.0     # seconds a connection may stay silent
DEFAULT_DEADLINE = 600.0   # seconds a download of one file from one mirror may take in all
SCHEMES = ("http", "https")
_CHUNK = 1 << 16


class DownloadError(DataError):
    """No mirror delivered a good copy of a file (offline, refused, HTTP error, checksum mismatch)."""


class _MirrorFailed(Exception):
    """One URL failed in a way another mirror may not: try the next one."""


def redact(url: str) -> str:
    """`url` with the password of its user:password@ part replaced by *** (what may be printed)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _check_scheme(url: str, where: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise DataError(f"{where}: {redact(url)} is not an http:// or https:// URL; only web mirrors are used "
                        "(place local files in the data folder instead)")


def resolve_mirrors(defaults: Sequence[str], override: Sequence[str] | str | None = None) -> list[str]:
    """Base URLs to try, in order: `override`, else $NNTRAIN_MIRROR (comma separated), else `defaults`.

    A mirror is a base URL; file names are appended to it (`<mirror>/train-images-idx3-ubyte.gz`).
    One with another scheme than http(s) (file://, ftp://) is refused.
    """
    where = "the mirrors parameter"
    if override is None:
        override = os.environ.get(MIRROR_ENV) or None
        where = f"${MIRROR_ENV}"
    if override is None:
        return list(defaults)
    if isinstance(override, str):
        override = [m for m in override.replace(" ", ",").split(",")]
    mirrors = [m.strip() for m in override if m and m.strip()]
    if not mirrors:
        raise DataError(f"no download mirror given (${MIRROR_ENV} or the mirrors parameter is empty)")
    for m in mirrors:
        if "://" in m:
            _check_scheme(m, where)
    return mirrors


def download_deadline() -> float:
    """Seconds one file may take from one mirror: $NNTRAIN_DOWNLOAD_DEADLINE, else DEFAULT_DEADLINE."""
    raw = os.environ.get(DEADLINE_ENV)
    if not raw:
        return DEFAULT_DEADLINE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise DataError(f"${DEADLINE_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def _request(url: str) -> urllib.request.Request:
    """A GET of `url` with any user:password@ moved out of the URL into a basic-authentication header
    (urllib would take the password for part of the host name)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    plain = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
    return urllib.request.Request(plain, headers={"Authorization": f"Basic {token}"})


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
            timeout: float, deadline: float) -> None:
    """Copy `url` into `out`, checking its length and checksums, within `deadline` seconds in all;
    _MirrorFailed when another mirror may do better. A failed write to `out` is left to propagate (an
    OSError: this machine's fault)."""
    hashers = {kind: hashlib.new(kind, usedforsecurity=False) for kind in checksums}
    start = time.monotonic()
    try:
        response = urllib.request.urlopen(_request(url), timeout=min(timeout, deadline))
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise _MirrorFailed(f"cannot connect: {str(reason).replace(url, redact(url))}") from e
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        show = progress and sys.stderr.isatty()
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                  disable=not show, leave=False) as bar:
            read = getattr(response, "read1", response.read)   # read1: whatever has arrived, not 64 KB
            while True:
                if time.monotonic() - start > deadline:
                    raise _MirrorFailed(f"too slow: {got} of {total if total is not None else '?'} bytes after "
                                        f"{deadline:g} s, the deadline for one file (${DEADLINE_ENV})")
                try:
                    chunk = read(_CHUNK)
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


def _fetch_one(url: str, dest: Path, checksums: dict[str, str], progress: bool, timeout: float,
               deadline: float) -> None:
    """Download `url` to `dest` atomically: the temporary file is renamed only after its checks pass."""
    try:
        with atomic_open(dest, "wb") as out:
            _stream(url, out, dest.name, checksums, progress, timeout, deadline)
    except WriteError as e:
        # Said in data terms (free space, or point the data root elsewhere) rather than atomic's generic words.
        if isinstance(e.__cause__, OSError):
            raise _local_error(e.__cause__, dest) from e.__cause__
        raise


def download(urls: str | Sequence[str], dest_path: str | Path, md5: str | None = None,
             sha256: str | None = None, progress: bool = True, timeout: float = DEFAULT_TIMEOUT,
             deadline: float | None = None) -> Path:
    """Download the first URL that works into `dest_path`, atomically, verifying md5/sha256 if given.

    Mirrors are tried in order: a connection failure, an HTTP error, an incomplete transfer, a checksum
    mismatch or a transfer past `deadline` seconds (default: `download_deadline()`) moves on to the next;
    when all fail, DownloadError lists each URL (password redacted) and why. A URL that is not http(s)
    is refused, and a local write failure (disk full, read-only folder) is a DataError, at once.
    Returns `dest_path`.
    """
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise ValueError("download() needs at least one URL")
    for url in url_list:
        _check_scheme(url, "download")
    deadline = download_deadline() if deadline is None else float(deadline)
    dest = Path(dest_path)
    checksums = {kind: value for kind, value in (("md5", md5), ("sha256", sha256)) if value}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _local_error(e, dest.parent) from e
    failures = []
    for url in url_list:
        shown = redact(url)
        logger.info("downloading %s from %s", dest.name, shown)
        try:
            _fetch_one(url, dest, checksums, progress, timeout, deadline)
            logger.info("saved %s", dest)
            return dest
        except _MirrorFailed as e:
            logger.warning("download of %s failed: %s", shown, e)
            failures.append(f"{shown}: {e}")
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
            raise DownloadError(f"{e}\nWithout internet access, download {todo} (from {redact(mirrors[0])}) on "
                                f"another machine and place them in {folder}/ , or set the ${MIRROR_ENV} "
                                f"environment variable to a mirror you can reach.") from e
