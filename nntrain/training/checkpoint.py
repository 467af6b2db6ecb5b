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
import re
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


def check_generator_state(state: Any, what: str) -> None:
    """A NumPy Generator state as nntrain saves them (PCG64), tried on a scratch bit generator: a malformed
    one is a CheckpointError naming `what`, whatever NumPy would raise."""
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise CheckpointError(f"'{what}' must be a PCG64 Generator state, got {printable(repr(state), 60)}")
    try:
        np.random.PCG64().state = state
    except Exception as e:  # noqa: BLE001 - TypeError, ValueError, OverflowError, KeyError...
        raise CheckpointError(f"'{what}' is not a valid PCG64 Generator state ({type(e).__name__}: "
                              f"{printable(str(e), 80)})") from None


def _text(v: Any, what: str, limit: int) -> str:
    """A string from metadata that may be printed: at most `limit` characters, no control characters
    (a class name holding a terminal escape sequence must not reach the terminal)."""
    if not isinstance(v, str) or not 0 < len(v) <= limit or not v.isprintable():
        raise CheckpointError(f"'{what}' must be a printable string of 1 to {limit} characters, got "
                              f"{printable(repr(v), 60)}")
    return v


def _count(v: Any, what: str, low: int, high: int, nullable: bool = False) -> None:
    if (v is None and nullable) or (isinstance(v, int) and not isinstance(v, bool) and low <= v <= high):
        return
    raise CheckpointError(f"'{what}' must be an integer in [{low}, {high}]{' or null' if nullable else ''}, "
                          f"got {printable(repr(v), 60)}")


def validate_meta(meta: dict[str, Any]) -> None:
    """Check the type and range of every field a checkpoint's metadata holds (a forged checkpoint is a
    CheckpointError naming the field, never a traceback later). Fields that are absent are checked
    where they are needed (a resume needs the position, an eval the config); fields against the run
    (the batch within an epoch, the class count) are checked where the run is known. Unknown fields
    are left alone (a newer nntrain may add some)."""
    from nntrain.training.state import check_position

    check_position(meta)
    if "config" in meta and not isinstance(meta["config"], dict):
        raise CheckpointError(f"'config' must be a mapping, got {printable(repr(meta['config']), 60)}")
    for key in ("callbacks", "optimizer", "scheduler"):
        if key in meta and not (isinstance(meta[key], dict) and all(isinstance(k, str) for k in meta[key])):
            raise CheckpointError(f"'{key}' must be a mapping, got {printable(repr(meta[key]), 60)}")
    if "callbacks" in meta and not all(isinstance(v, dict) for v in meta["callbacks"].values()):
        raise CheckpointError("'callbacks' must map callback names to mappings")
    if "rng" in meta:
        rng = meta["rng"]
        if not isinstance(rng, dict) or set(rng) != {"shuffle", "augment", "model"}:
            raise CheckpointError(f"'rng' must hold the states shuffle, augment and model, got "
                                  f"{printable(repr(rng), 60)}")
        for name, state in rng.items():
            check_generator_state(state, f"rng.{name}")
    if "dataset" in meta:
        _text(meta["dataset"], "dataset", 64)
    if "input_shape" in meta:
        shape = meta["input_shape"]
        if not isinstance(shape, list) or len(shape) != 3:
            raise CheckpointError(f"'input_shape' must be [C, H, W], got {printable(repr(shape), 60)}")
        for v in shape:
            _count(v, "input_shape", 1, 100_000)
    if "class_names" in meta:
        names = meta["class_names"]
        if not isinstance(names, list) or not 1 <= len(names) <= 100_000:
            raise CheckpointError(f"'class_names' must be a list of names, got {printable(repr(names), 60)}")
        for name in names:
            _text(name, "class_names", 100)
    if "data" in meta:
        fp = meta["data"]
        if not isinstance(fp, dict) or not isinstance(fp.get("sizes"), dict) or set(fp["sizes"]) != {
                "train", "val", "test"} or not isinstance(fp.get("hash"), str) or not re.fullmatch(
                r"[a-z0-9-]{1,32}:[0-9a-f]{16,128}", fp["hash"]):
            raise CheckpointError(f"'data' must be a data fingerprint (dataset, sizes, hash), got "
                                  f"{printable(repr(fp), 60)}")
        _text(fp.get("dataset"), "data.dataset", 64)
        for split, n in fp["sizes"].items():
            _count(n, f"data.sizes.{split}", 0, 10**10)
    if "nntrain_version" in meta:
        _text(meta["nntrain_version"], "nntrain_version", 64)
    if "threads" in meta:
        threads = meta["threads"]
        if not isinstance(threads, dict) or set(threads) != {"blas", "workers"}:
            raise CheckpointError(f"'threads' must hold blas and workers, got {printable(repr(threads), 60)}")
        _count(threads["blas"], "threads.blas", 1, 4096, nullable=True)
        _count(threads["workers"], "threads.workers", 1, 4096)


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
    fv = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(fv, int) or isinstance(fv, bool) or fv < 1:
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
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise CheckpointError(f"checkpoint {path}: entry '{key}' holds NaN or infinite values")
        groups[prefix][name] = value
    try:
        validate_meta(meta)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path} has invalid metadata: {e}") from None
    return ckpt
