"""Checkpoints: one `.npz` holding named arrays plus a JSON metadata blob, never pickle.

Layout (path-style keys, as Chainer's npz serializer): `param/<i>.<name>`, `buffer/<i>.<name>`,
`optim/<key>`, `extra/<key>`, and `__meta__` (UTF-8 JSON as a uint8 array) with `format_version`,
epoch, RNG states, normalisation statistics and the resolved config. Loading uses
`allow_pickle=False`, so a checkpoint cannot run code; every failure is a CheckpointError (exit 2).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrain.atomic import atomic_write_bytes
from nntrain.errors import CheckpointError

FORMAT_VERSION = 1
META_KEY = "__meta__"


@dataclass
class Checkpoint:
    """What a checkpoint holds: arrays grouped by prefix, and the metadata dict."""

    params: dict[str, np.ndarray] = field(default_factory=dict)   # model parameters and buffers
    optim: dict[str, np.ndarray] = field(default_factory=dict)    # optimizer state arrays
    extra: dict[str, np.ndarray] = field(default_factory=dict)    # anything else (normalisation stats)
    meta: dict[str, Any] = field(default_factory=dict)


_ZIP_MAGIC = b"PK\x03\x04"


def printable(text: str, limit: int = 200) -> str:
    """`text` safe to print on a terminal: control characters (escape sequences, carriage returns) shown
    as `?`, cut at `limit` characters. For strings read from files nntrain does not trust."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[:limit - 3] + "..."


def _has_end_record(path: Path) -> bool:
    """Whether the zip end-of-central-directory record is where it belongs (a truncated file lacks it)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 22 - 65535))
            tail = f.read()
    except OSError:
        return False
    at = tail.rfind(b"PK\x05\x06")
    return at >= 0 and len(tail) - at >= 22


def _bad_crc_member(path: Path) -> str | None:
    """The first archive entry whose CRC does not match (a damaged array header fails to parse before the
    CRC at its end is checked), or None."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return None


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write `ckpt` atomically to `path` (temporary file, fsync, rename)."""
    arrays: dict[str, np.ndarray] = {}
    for prefix, group in (("param", ckpt.params), ("optim", ckpt.optim), ("extra", ckpt.extra)):
        for key, value in group.items():
            arrays[f"{prefix}/{key}"] = np.ascontiguousarray(value)
    meta = dict(ckpt.meta, format_version=FORMAT_VERSION)
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint; truncated, corrupt, object-array and newer-format files are refused."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (expected a .npz file)")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the file was truncated or never written")
    if len(head) < 4 and _ZIP_MAGIC.startswith(head):
        raise CheckpointError(f"checkpoint {path} is truncated: only {len(head)} bytes")
    if head != _ZIP_MAGIC:  # np.load would take anything else for a .npy or a pickle
        raise CheckpointError(f"{path} is not a .npz archive (it starts with {head!r}, a .npz file with "
                              f"{_ZIP_MAGIC!r}): not an nntrain checkpoint")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                arrays[key] = npz[key]
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise CheckpointError(f"checkpoint {path} contains object arrays, which could run code when "
                                  "loaded; refused (nntrain checkpoints hold only numeric arrays)") from None
        bad = _bad_crc_member(path)
        if bad:
            raise CheckpointError(f"checkpoint {path} is corrupt (a checksum does not match in entry '{bad}': "
                                  f"flipped bytes?): {e}") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or not an nntrain checkpoint ({e})") from None
    except zipfile.BadZipFile as e:
        if "CRC" in str(e):
            kind = "corrupt (a checksum does not match: flipped bytes?)"
        elif not _has_end_record(path):
            kind = "truncated (the end of the .npz archive is missing)"
        else:
            kind = "corrupt (its zip directory is damaged)"
        raise CheckpointError(f"checkpoint {path} is {kind}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of an untrusted file is a bad checkpoint
        bad = _bad_crc_member(path)
        if bad:
            raise CheckpointError(f"checkpoint {path} is corrupt (a checksum does not match in entry '{bad}': "
                                  f"flipped bytes?): {type(e).__name__}: {e}") from None
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {e}); "
                              "it is truncated or corrupt") from None
    if META_KEY not in arrays:
        raise CheckpointError(f"{path} is a .npz file but not an nntrain checkpoint (no metadata)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
        raise CheckpointError(f"checkpoint {path} has no valid format version")
    if meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta['format_version']}, written by a newer "
                              f"nntrain; this version reads format {FORMAT_VERSION} and older: upgrade nntrain")
    ckpt = Checkpoint(meta=meta)
    groups = {"param": ckpt.params, "optim": ckpt.optim, "extra": ckpt.extra}
    for key, value in arrays.items():
        prefix, _, name = key.partition("/")
        if prefix not in groups or not name:
            raise CheckpointError(f"checkpoint {path} holds an unexpected entry '{key}'")
        if value.dtype.kind not in "fiub":
            raise CheckpointError(f"checkpoint {path}: entry '{key}' has dtype {value.dtype}, expected numbers")
        groups[prefix][name] = value
    return ckpt
