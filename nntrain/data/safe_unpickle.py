"""A pickle reader that cannot run code: an interpreter for the few pickle opcodes that data files
such as the CIFAR-10 Python batches use, building only plain data.

The stdlib unpickler imports and calls whatever a file names (`os.system` included), so nntrain never
uses it. This reader understands protocols 1-5 as far as dicts, lists, tuples, str, bytes, ints,
floats, bools, None and *numeric* NumPy arrays go; arrays are rebuilt here from their raw bytes, not by
calling NumPy's unpickling hooks. Any other global, callable or opcode is refused with DataError.

Python-2 `str` objects (the official CIFAR-10 batches were written by Python 2) come back as `str`
decoded as latin-1, like `pickle.load(f, encoding="latin1")`; their bytes are recovered losslessly
where they hold array data.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nntrain.errors import DataError


class _Global:
    """A permitted global (looked up by name, never imported): a token the REDUCE handler knows."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<global {self.name}>"


_RECONSTRUCT = _Global("numpy ndarray _reconstruct")
_NDARRAY = _Global("numpy.ndarray")
_DTYPE = _Global("numpy.dtype")
_FROMBUFFER = _Global("numpy _frombuffer")
_ENCODE = _Global("_codecs.encode")
_BYTES = _Global("bytes")

# (module, name) -> token. Everything not listed here is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], _Global] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTYPE,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): _ENCODE,          # how Python 3 writes bytes in protocol 2
    ("__builtin__", "bytes"): _BYTES,        # ... and empty bytes
    ("builtins", "bytes"): _BYTES,
}

# Numeric dtypes only: booleans, integers, floats, complex. No objects, strings, voids or records.
_DTYPE_OK = re.compile(r"^(b1|[iu][1248]|f[248]|c(8|16))$")
_MAX_DEPTH = 200


class _PendingDtype:
    """np.dtype(typestr) whose byte order arrives later, in BUILD."""

    def __init__(self, base: np.dtype):
        self.base = base
        self.byteorder = "="

    def dtype(self) -> np.dtype:
        return self.base if self.byteorder in "=|" else self.base.newbyteorder(self.byteorder)


class _PendingArray:
    """An ndarray made by _reconstruct; its shape, dtype and bytes arrive in BUILD."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None


class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data = memoryview(data)
        self.pos = 0
        self.source = source
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.ops: dict[int, Callable[[], None]] = {
            0x80: self.op_proto, 0x95: self.op_frame,
            ord("("): self.op_mark, ord("}"): lambda: self.push({}), ord("]"): lambda: self.push([]),
            ord(")"): lambda: self.push(()), ord("d"): self.op_dict, ord("l"): self.op_list,
            ord("t"): self.op_tuple, 0x85: lambda: self.op_tuple_n(1), 0x86: lambda: self.op_tuple_n(2),
            0x87: lambda: self.op_tuple_n(3),
            ord("s"): self.op_setitem, ord("u"): self.op_setitems, ord("a"): self.op_append,
            ord("e"): self.op_appends,
            ord("q"): lambda: self.op_put(self.uint(1)), ord("r"): lambda: self.op_put(self.uint(4)),
            0x94: lambda: self.op_put(len(self.memo)),
            ord("h"): lambda: self.op_get(self.uint(1)), ord("j"): lambda: self.op_get(self.uint(4)),
            ord("J"): lambda: self.push(struct.unpack("<i", self.read(4))[0]),
            ord("K"): lambda: self.push(self.uint(1)), ord("M"): lambda: self.push(self.uint(2)),
            0x8A: lambda: self.push(int.from_bytes(self.read(self.uint(1)), "little", signed=True)),
            ord("I"): self.op_int, ord("L"): self.op_long,
            ord("N"): lambda: self.push(None), 0x88: lambda: self.push(True), 0x89: lambda: self.push(False),
            ord("G"): lambda: self.push(struct.unpack(">d", self.read(8))[0]),
            # Python-2 str: latin-1 text (lossless for any byte string).
            ord("U"): lambda: self.push(bytes(self.read(self.uint(1))).decode("latin1")),
            ord("T"): lambda: self.push(bytes(self.read(self.sint4())).decode("latin1")),
            ord("X"): lambda: self.push(self.text(self.uint(4))),
            0x8C: lambda: self.push(self.text(self.uint(1))),
            0x8D: lambda: self.push(self.text(self.uint(8))),
            ord("C"): lambda: self.push(bytes(self.read(self.uint(1)))),
            ord("B"): lambda: self.push(bytes(self.read(self.uint(4)))),
            0x8E: lambda: self.push(bytes(self.read(self.uint(8)))),
            0x96: lambda: self.push(bytearray(self.read(self.uint(8)))),
            ord("c"): self.op_global, 0x93: self.op_stack_global,
            ord("R"): self.op_reduce, ord("b"): self.op_build,
        }

    # --- low-level reading -----------------------------------------------------------------------
    def fail(self, what: str) -> DataError:
        return DataError(f"{self.source}: not a plain-data pickle ({what} at byte {self.pos}); "
                         "expected only dicts, lists, tuples, strings, numbers and numeric arrays")

    def read(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise DataError(f"{self.source}: truncated pickle (wanted {n} bytes at byte {self.pos}, "
                            f"file has {len(self.data)})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.read(n), "little")

    def sint4(self) -> int:
        n = struct.unpack("<i", self.read(4))[0]
        if n < 0:
            raise self.fail("negative string length")
        return n

    def text(self, n: int) -> str:
        try:
            return bytes(self.read(n)).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise self.fail("invalid UTF-8 string") from None

    def line(self) -> str:
        end = bytes(self.data[self.pos:self.pos + 256]).find(b"\n")
        if end < 0:
            raise self.fail("unterminated GLOBAL name")
        return bytes(self.read(end + 1)[:-1]).decode("latin1")

    # --- stack -----------------------------------------------------------------------------------
    def push(self, obj: Any) -> None:
        self.stack.append(obj)

    def pop(self) -> Any:
        if not self.stack:
            raise self.fail("stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise self.fail("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise self.fail("missing MARK")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    # --- opcodes ---------------------------------------------------------------------------------
    def op_proto(self) -> None:
        if not 1 <= self.uint(1) <= 5:
            raise self.fail("unknown protocol")

    def op_frame(self) -> None:
        self.read(8)  # frame length: framing is only a buffering hint

    def op_int(self) -> None:
        # Text integer (protocols 0-1); "01"/"00" are how protocol 1 writes True/False.
        text = self.line()
        if text in ("00", "01"):
            self.push(text == "01")
            return
        self.push(self._parse_int(text))

    def op_long(self) -> None:
        self.push(self._parse_int(self.line().removesuffix("L")))

    def _parse_int(self, text: str) -> int:
        if not re.fullmatch(r"[-+]?[0-9]{1,200}", text):
            raise self.fail(f"bad integer {text[:20]!r}")
        return int(text)

    def op_mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def op_dict(self) -> None:
        items = self.pop_mark()
        d: dict[Any, Any] = {}
        self._set_items(d, items)
        self.push(d)

    def op_list(self) -> None:
        self.push(self.pop_mark())

    def op_tuple(self) -> None:
        self.push(tuple(self.pop_mark()))

    def op_tuple_n(self, n: int) -> None:
        items = [self.pop() for _ in range(n)][::-1]
        self.push(tuple(items))

    def _set_items(self, d: Any, items: list[Any]) -> None:
        if not isinstance(d, dict) or len(items) % 2:
            raise self.fail("SETITEMS on a non-dict or with an odd item count")
        for k, v in zip(items[::2], items[1::2]):
            if not isinstance(k, (str, bytes, int, float, bool, type(None), tuple)):
                raise self.fail(f"dict key of type {type(k).__name__}")
            try:
                d[k] = v
            except TypeError:
                raise self.fail("unhashable dict key") from None

    def op_setitem(self) -> None:
        v = self.pop()
        k = self.pop()
        self._set_items(self.top(), [k, v])

    def op_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.top(), items)

    def op_append(self) -> None:
        v = self.pop()
        lst = self.top()
        if not isinstance(lst, list):
            raise self.fail("APPEND to a non-list")
        lst.append(v)

    def op_appends(self) -> None:
        items = self.pop_mark()
        lst = self.top()
        if not isinstance(lst, list):
            raise self.fail("APPENDS to a non-list")
        lst.extend(items)

    def op_put(self, idx: int) -> None:
        self.memo[idx] = self.top()

    def op_get(self, idx: int) -> None:
        if idx not in self.memo:
            raise self.fail(f"memo key {idx} not defined")
        self.push(self.memo[idx])

    def _global(self, module: str, name: str) -> None:
        token = _ALLOWED_GLOBALS.get((module, name))
        if token is None:
            raise self.fail(f"refused global {module}.{name}")
        self.push(token)

    def op_global(self) -> None:
        module = self.line()
        self._global(module, self.line())

    def op_stack_global(self) -> None:
        name = self.pop()
        module = self.pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise self.fail("STACK_GLOBAL with non-string names")
        self._global(module, name)

    def op_reduce(self) -> None:
        args = self.pop()
        func = self.pop()
        if not isinstance(args, tuple):
            raise self.fail("REDUCE with non-tuple arguments")
        if func is _RECONSTRUCT:
            if len(args) != 3 or args[0] is not _NDARRAY:
                raise self.fail("unexpected _reconstruct arguments")
            self.push(_PendingArray())
        elif func is _DTYPE:
            self.push(_PendingDtype(self._dtype(args[0] if args else None)))
        elif func is _FROMBUFFER:
            if len(args) != 4:
                raise self.fail("unexpected _frombuffer arguments")
            buf, dtype, shape, order = args
            self.push(self._array(shape, dtype, order == "F", buf))
        elif func is _ENCODE:
            if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
                raise self.fail("unexpected _codecs.encode arguments")
            self.push(self._latin1(args[0]))
        elif func is _BYTES:
            if args:
                raise self.fail("unexpected bytes() arguments")
            self.push(b"")
        else:
            raise self.fail(f"REDUCE on {func!r}")

    def op_build(self) -> None:
        state = self.pop()
        obj = self.top()
        if not isinstance(state, tuple):
            raise self.fail("BUILD with a non-tuple state")
        if isinstance(obj, _PendingDtype):
            # (version, byteorder, subarray, names, fields, elsize, alignment, flags)
            if len(state) < 5 or state[1] not in ("<", ">", "|", "=") or any(s is not None for s in state[2:5]):
                raise self.fail("structured or malformed dtype state")
            obj.byteorder = state[1]
        elif isinstance(obj, _PendingArray) and obj.array is None:
            if len(state) == 5:
                state = state[1:]          # leading format version
            if len(state) != 4:
                raise self.fail("malformed ndarray state")
            shape, dtype, fortran, raw = state
            obj.array = self._array(shape, dtype, bool(fortran), raw)
        else:
            raise self.fail(f"BUILD on {type(obj).__name__}")

    # --- arrays ----------------------------------------------------------------------------------
    def _latin1(self, s: str) -> bytes:
        try:
            return s.encode("latin1")
        except UnicodeEncodeError:
            raise self.fail("non-latin-1 text where bytes were expected") from None

    def _dtype(self, typestr: Any) -> np.dtype:
        if isinstance(typestr, bytes):
            typestr = typestr.decode("latin1")
        if not isinstance(typestr, str) or not _DTYPE_OK.match(typestr):
            raise self.fail(f"refused dtype {typestr!r} (only numeric dtypes are read)")
        return np.dtype(typestr)

    def _array(self, shape: Any, dtype: Any, fortran: bool, raw: Any) -> np.ndarray:
        if isinstance(dtype, _PendingDtype):
            dtype = dtype.dtype()
        if not isinstance(dtype, np.dtype):
            raise self.fail("array without a dtype")
        if (not isinstance(shape, tuple) or len(shape) > 32
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise self.fail(f"bad array shape {shape!r}")
        if isinstance(raw, str):
            raw = self._latin1(raw)
        if not isinstance(raw, (bytes, bytearray)):
            raise self.fail("array data that is not a byte string")
        count = 1
        for s in shape:
            count *= s
        if count * dtype.itemsize != len(raw):
            raise self.fail(f"array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} "
                            f"bytes, has {len(raw)}")
        flat = np.frombuffer(bytearray(raw), dtype=dtype)    # bytearray: a private, writable copy
        return flat.reshape(shape, order="F" if fortran else "C")

    # --- driver ----------------------------------------------------------------------------------
    def run(self) -> Any:
        stop = ord(".")
        while True:
            op = self.uint(1)
            if op == stop:
                break
            handler = self.ops.get(op)
            if handler is None:
                self.pos -= 1
                raise self.fail(f"unsupported opcode {bytes([op])!r}")
            handler()
        if len(self.stack) != 1 or self.metastack:
            raise self.fail("malformed stack at STOP")
        return _resolve(self.stack[0], self, {}, 0)


def _resolve(obj: Any, reader: _Reader, seen: dict[int, Any], depth: int) -> Any:
    """Replace pending arrays/dtypes by their values; refuse anything that is not plain data."""
    if depth > _MAX_DEPTH:
        raise reader.fail("nesting too deep")
    if isinstance(obj, (str, bytes, bytearray, int, float, type(None), np.ndarray)):
        return obj
    if isinstance(obj, _PendingArray):
        if obj.array is None:
            raise reader.fail("array without data")
        return obj.array
    if isinstance(obj, _PendingDtype):
        return obj.dtype()
    if isinstance(obj, tuple):
        return tuple(_resolve(v, reader, seen, depth + 1) for v in obj)
    if isinstance(obj, (list, dict)):
        if id(obj) in seen:              # shared or self-referencing containers: resolve once
            return seen[id(obj)]
        seen[id(obj)] = obj
        if isinstance(obj, list):
            obj[:] = [_resolve(v, reader, seen, depth + 1) for v in obj]
        else:
            for k in list(obj):
                obj[k] = _resolve(obj[k], reader, seen, depth + 1)
        return obj
    raise reader.fail(f"left-over {obj!r}")


def safe_loads(data: bytes, source: str = "<pickle>") -> Any:
    """Decode pickle `data` into plain data (see module doc); `source` names the file in errors."""
    return _Reader(bytes(data), source).run()


def safe_load(path: str | Path) -> Any:
    """Read and decode the pickle file at `path`; DataError (naming it) if it cannot be read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if not data:
        raise DataError(f"{path}: empty file, expected a pickle")
    return safe_loads(data, str(path))
