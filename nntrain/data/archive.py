"""Safe extraction of downloaded tar archives: nothing may land outside the target folder.

Every member is checked before anything is written: absolute names, `..` components, names that
resolve outside the folder, symbolic and hard links, devices and FIFOs make the whole archive refused
with DataError. Only regular files and folders are written, each file atomically (temporary file in
the same folder, then rename), so an interrupted extraction never leaves a torn file.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Collection

from nntrain.atomic import atomic_open
from nntrain.errors import DataError

log = logging.getLogger(__name__)

_READ_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error)


def _check_member(member: tarfile.TarInfo, dest: Path, archive: Path) -> Path:
    """The path `member` would be written to, or DataError saying why it is refused."""
    name = member.name
    parts = PurePosixPath(name).parts
    why = None
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        why = "has an absolute path"
    elif ".." in parts or any("\\" in p for p in parts):
        why = "has a '..' component or a backslash"
    elif member.issym() or member.islnk():
        why = f"is a link (to {member.linkname!r})"
    elif not (member.isreg() or member.isdir()):
        why = "is a device, FIFO or other special file"
    target = (dest / name).resolve()
    if why is None and target != dest and dest not in target.parents:
        why = "resolves outside the target folder"
    if why:
        raise DataError(f"{archive}: refusing to extract member {name!r}: it {why}; "
                        "only regular files and folders inside the archive's own folder are allowed")
    return target


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # write side: say so, rather than blaming the archive
        raise DataError(f"cannot create folder {folder}: {e.strerror or e}") from e


def safe_extract(archive: str | Path, dest: str | Path, members: Collection[str] | None = None,
                 max_bytes: int | None = None) -> list[Path]:
    """Extract the tar archive (any compression tarfile reads) into `dest`; return the files written.

    members: only extract these member names (all members are still checked); max_bytes: refuse an
    archive whose extracted files would exceed this total (a guard against decompression bombs).
    """
    archive, dest = Path(archive), Path(dest)
    _mkdir(dest)
    dest = dest.resolve()
    written: list[Path] = []
    try:
        with tarfile.open(archive, "r:*") as tf:
            infos = tf.getmembers()
            targets = [(m, _check_member(m, dest, archive)) for m in infos]
            if members is not None:
                missing = set(members) - {m.name for m in infos}
                if missing:
                    raise DataError(f"{archive}: archive lacks {', '.join(sorted(missing))}; "
                                    "it is not the expected download (delete it to fetch it again)")
                targets = [(m, t) for m, t in targets if m.name in members]
            total = sum(m.size for m, _ in targets if m.isreg())
            if max_bytes is not None and total > max_bytes:
                raise DataError(f"{archive}: would extract {total} bytes, more than the {max_bytes} allowed")
            for m, target in targets:
                if m.isdir():
                    _mkdir(target)
                    continue
                _mkdir(target.parent)
                with atomic_open(target, "wb") as out:
                    try:
                        src = tf.extractfile(m)
                        if src is None:
                            raise DataError(f"{archive}: member {m.name!r} has no data")
                        shutil.copyfileobj(src, out, 1 << 20)
                        size = out.tell()
                    except _READ_ERRORS as e:   # read side: a corrupt archive, not a write failure
                        raise DataError(f"{archive}: corrupt archive while reading {m.name!r} ({e}); "
                                        "delete it to download it again") from e
                    if size != m.size:
                        raise DataError(f"{archive}: member {m.name!r} is truncated ({size} of {m.size} bytes)")
                written.append(target)
                log.debug("extracted %s", target)
    except _READ_ERRORS as e:
        raise DataError(f"{archive}: cannot read the archive ({e}); it is corrupt or not a tar file "
                        "(delete it to download it again)") from e
    return written
