"""IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or raw, read with every field checked.

An IDX file is: two zero bytes, a data-type code, the number of dimensions d, then d big-endian
uint32 sizes, then exactly prod(sizes) items. Anything else (a wrong magic number, a truncated or
over-long file, a broken gzip stream) is a DataError that names the file and says what is wrong.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nntrain.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX data-type codes -> big-endian numpy dtypes.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}

# A header declaring more data than this is refused before any allocation (hostile or corrupt file).
MAX_DATA_BYTES = 1 << 32

_CHUNK = 1 << 20


def _valid_codes() -> str:
    return ", ".join(f"0x{c:02X} ({dt.name})" for c, dt in IDX_DTYPES.items())


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Up to n bytes; fewer only at end of stream (gzip and raw reads may return short)."""
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _readinto_full(f: BinaryIO, buf: memoryview) -> int:
    """Fill buf from f; returns how many bytes were read (less than len(buf) only at end of stream)."""
    got = 0
    total = len(buf)
    while got < total:
        n = f.readinto(buf[got:min(total, got + 16 * _CHUNK)])
        if not n:
            break
        got += n
    return got


def _count_rest(f: BinaryIO) -> int:
    n = 0
    while True:
        b = f.read(_CHUNK)
        if not b:
            return n
        n += len(b)


def _read_stream(f: BinaryIO, path: Path, compressed: bool) -> np.ndarray:
    what = "decompressed content" if compressed else "file"
    header = _read_exact(f, 4)
    if not header:
        raise DataError(f"{path}: the {what} is empty (0 bytes); an IDX file starts with a 4-byte magic number")
    if len(header) < 4:
        raise DataError(f"{path}: truncated: the {what} is {len(header)} bytes, shorter than the 4-byte IDX magic number")
    magic = int.from_bytes(header, "big")
    if header[0] != 0 or header[1] != 0:
        raise DataError(
            f"{path}: not an IDX file: magic number 0x{magic:08X}; an IDX file starts with two zero bytes, "
            f"a type code and the number of dimensions (0x00000803 for images, 0x00000801 for labels)")
    code, ndim = header[2], header[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX data type code 0x{code:02X} (magic 0x{magic:08X}); valid codes: {_valid_codes()}")
    if ndim == 0:
        raise DataError(f"{path}: the IDX header declares 0 dimensions (magic 0x{magic:08X}); expected at least 1")
    dims_raw = _read_exact(f, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: truncated header: it declares {ndim} dimensions ({4 * ndim} bytes of sizes) "
                        f"but only {len(dims_raw)} bytes follow the magic number")
    dims = tuple(int.from_bytes(dims_raw[4 * i:4 * i + 4], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    count = math.prod(dims)
    nbytes = count * dtype.itemsize
    shape_txt = " x ".join(map(str, dims))
    if nbytes > MAX_DATA_BYTES:
        raise DataError(f"{path}: the IDX header declares {shape_txt} {dtype.name} items ({nbytes} bytes), "
                        f"more than the {MAX_DATA_BYTES} bytes this reader accepts; the header is corrupt")
    try:
        data = np.empty(count, dtype=dtype)
    except MemoryError as e:
        raise DataError(f"{path}: not enough memory for the {nbytes} bytes its header declares ({shape_txt})") from e
    got = _readinto_full(f, memoryview(data).cast("B"))
    if got < nbytes:
        raise DataError(f"{path}: truncated: the header declares {shape_txt} {dtype.name} items ({nbytes} bytes) "
                        f"but only {got} bytes of data follow; delete the file and download it again")
    extra = _count_rest(f)
    if extra:
        raise DataError(f"{path}: {extra} unexpected trailing bytes after the {nbytes} bytes of data that the "
                        f"header declares ({shape_txt}); the header or the file is corrupt")
    if dtype.itemsize > 1:
        data = data.astype(dtype.newbyteorder("="))  # native byte order for fast arithmetic
    return data.reshape(dims)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip or raw, told apart by the gzip magic bytes) -> array of its declared shape."""
    path = Path(path)
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                    return _read_stream(gz, path, compressed=True)
            return _read_stream(raw, path, compressed=False)
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a folder, expected an IDX file") from e
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({e}); delete the file and download it again") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e


def read_images(path: str | Path, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """An IDX image file -> uint8 (N, H, W); `image_size` (H, W), when given, must match."""
    arr = read_idx(path)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise DataError(f"{path}: expected an IDX image file (unsigned bytes, 3 dimensions N x H x W, "
                        f"magic 0x00000803), got {arr.dtype.name} with {arr.ndim} dimensions {arr.shape}")
    if image_size is not None and tuple(arr.shape[1:]) != tuple(image_size):
        raise DataError(f"{path}: images are {arr.shape[1]} x {arr.shape[2]}, expected "
                        f"{image_size[0]} x {image_size[1]}")
    return arr


def read_labels(path: str | Path, num_classes: int) -> np.ndarray:
    """An IDX label file -> int64 (N,), every label checked to lie in [0, num_classes)."""
    arr = read_idx(path)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise DataError(f"{path}: expected an IDX label file (unsigned bytes, 1 dimension, magic 0x00000801), "
                        f"got {arr.dtype.name} with {arr.ndim} dimensions {arr.shape}")
    if arr.size and int(arr.max()) >= num_classes:
        bad = int(np.argmax(arr >= num_classes))
        raise DataError(f"{path}: label {int(arr[bad])} at index {bad} is out of range; "
                        f"labels must lie in 0..{num_classes - 1}")
    return arr.astype(np.int64)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write `array` as an IDX file (gzip when `compress`, default: when the name ends in .gz).

    For building test fixtures and small subsets; the dtype must be one IDX can hold.
    """
    path = Path(path)
    arr = np.asarray(array)
    native = arr.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}; valid: {_valid_codes()}")
    code = _CODES[native]
    if not 1 <= arr.ndim <= 255:
        raise ValueError(f"IDX needs 1..255 dimensions, got {arr.ndim}")
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path
