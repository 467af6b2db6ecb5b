"""CIFAR-10 readers (binary and Python layouts), the safe pickle interpreter, safe tar extraction and
the download path, on small fixture files written here (and on the real converted copy when present)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nntrain.data import cifar
from nntrain.data.archive import safe_extract
from nntrain.data.cifar import (BIN_DIR, CIFAR10_CLASSES, CIFAR10_MD5, PY_DIR, cifar10_class_names, load_cifar10,
                                read_cifar_bin, read_cifar_pickle, read_class_names)
from nntrain.data.safe_unpickle import safe_load, safe_loads
from nntrain.errors import DataError

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# --- fixture writers --------------------------------------------------------------------------------
def make_batches(n: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {b: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64))
            for b in BATCHES}


def bin_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    rec = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    return rec.tobytes()


def write_bin(root: Path, batches: dict) -> Path:
    folder = root / BIN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        (folder / f"{name}.bin").write_bytes(bin_bytes(x, y))
    return folder


def py3_pickle(x: np.ndarray, y: np.ndarray, protocol: int) -> bytes:
    return pickle.dumps({"batch_label": "training batch", "labels": [int(v) for v in y],
                         "data": x.reshape(len(x), -1), "filenames": [f"img_{i}.png" for i in range(len(x))]},
                        protocol=protocol)


def py2_pickle(x: np.ndarray, y: np.ndarray) -> bytes:
    """A pickle as Python 2's cPickle (protocol 2) wrote the official CIFAR-10 batches: str as
    SHORT_BINSTRING/BINSTRING, the array via numpy.core.multiarray._reconstruct + BUILD."""
    def pstr(s: bytes) -> bytes:
        return (b"U" + bytes([len(s)]) + s) if len(s) < 256 else (b"T" + struct.pack("<i", len(s)) + s)

    out = [b"\x80\x02}q\x01(", pstr(b"data"),
           b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00\x85", pstr(b"b"),
           b"\x87Rq\x04(K\x01K", bytes([len(x)]), b"M\x00\x0c\x86cnumpy\ndtype\nq\x05", pstr(b"u1"),
           b"K\x00K\x01\x87Rq\x06(K\x03", pstr(b"|"), b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89",
           pstr(x.reshape(len(x), -1).tobytes()), b"tb", pstr(b"labels"), b"]q\x07("]
    out += [b"K" + bytes([int(v)]) for v in y]
    out += [b"e", pstr(b"batch_label"), pstr(b"training batch 1 of 5"), b"u."]
    return b"".join(out)


def write_py(root: Path, batches: dict, writer) -> Path:
    folder = root / PY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        (folder / name).write_bytes(writer(x, y))
    return folder


def expected(batches: dict) -> tuple[np.ndarray, ...]:
    train = [batches[b] for b in BATCHES[:5]]
    return (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), *batches["test_batch"])


def assert_loaded(result, batches) -> None:
    want = expected(batches)
    assert len(result) == 4
    for got, ref in zip(result, want):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
    assert result[0].dtype == np.uint8 and result[1].dtype == np.int64 and result[0].flags.c_contiguous


# --- binary layout ----------------------------------------------------------------------------------
def test_binary_layout_reads_every_batch_in_order(tmp_path):
    batches = make_batches(3)
    write_bin(tmp_path, batches)
    assert_loaded(load_cifar10(tmp_path, False, False, records_per_batch=3), batches)


def test_binary_record_layout_is_label_then_red_green_blue_planes(tmp_path):
    rec = np.zeros(3073, np.uint8)
    rec[0] = 7
    rec[1:1025] = 10                       # red plane
    rec[1025:2049] = 20                    # green
    rec[2049:] = np.arange(1024) % 256     # blue, row-major: pixel (r, c) = 32r + c
    path = tmp_path / "one.bin"
    path.write_bytes(rec.tobytes())
    images, labels = read_cifar_bin(path)
    assert labels.tolist() == [7] and images.shape == (1, 3, 32, 32)
    assert (images[0, 0] == 10).all() and (images[0, 1] == 20).all()
    assert images[0, 2, 1, 3] == 35 and images[0, 2, 0, 31] == 31


def test_official_layout_requires_10000_records_per_batch(tmp_path):
    write_bin(tmp_path, make_batches(3))
    with pytest.raises(DataError, match=r"data_batch_1\.bin: holds 3 images, expected 10000"):
        load_cifar10(tmp_path, False, False)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\x01" * 3072, "not a whole number of 3073-byte records"),
    (b"\x01" * (3073 * 2 + 100), "truncated or not a CIFAR-10 batch"),
])
def test_binary_corrupt_sizes_name_the_file(tmp_path, content, message):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        read_cifar_bin(path)
    assert str(path) in str(e.value)


def test_binary_label_out_of_range(tmp_path):
    x = np.zeros((4, 3, 32, 32), np.uint8)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(bin_bytes(x, np.array([1, 2, 10, 255])))
    with pytest.raises(DataError, match=r"test_batch\.bin: record 2 has label 10, expected 0\.\.9 \(2 records"):
        read_cifar_bin(path)


def test_missing_files_without_download_say_what_is_expected(tmp_path):
    batches = make_batches(2)
    del batches["data_batch_4"]
    write_bin(tmp_path, batches)
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path, download=False, progress=False, records_per_batch=2)
    msg = str(e.value)
    assert "missing: data_batch_4.bin" in msg and BIN_DIR in msg and PY_DIR in msg


def test_class_names_from_meta_txt_or_defaults(tmp_path):
    folder = write_bin(tmp_path, make_batches(1))
    assert cifar10_class_names(tmp_path) == list(CIFAR10_CLASSES) == cifar10_class_names(None)
    names = [f"c{i}" for i in range(10)]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    assert cifar10_class_names(tmp_path) == names
    (folder / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="batches.meta.txt: lists 2 class names, expected 10"):
        read_class_names(folder)


# --- Python layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python_layout_written_by_python3(tmp_path, protocol):
    batches = make_batches(3, seed=protocol)
    write_py(tmp_path, batches, lambda x, y: py3_pickle(x, y, protocol))
    assert_loaded(load_cifar10(tmp_path, False, False, records_per_batch=3), batches)


def test_python_layout_written_by_python2(tmp_path):
    batches = make_batches(4, seed=7)
    folder = write_py(tmp_path, batches, py2_pickle)
    assert_loaded(load_cifar10(tmp_path, False, False, records_per_batch=4), batches)
    raw = safe_load(folder / "data_batch_1")                         # Python-2 str come back as str
    assert raw["batch_label"] == "training batch 1 of 5" and set(raw) == {"data", "labels", "batch_label"}


def test_python_layout_meta_gives_class_names(tmp_path):
    folder = write_py(tmp_path, make_batches(1), lambda x, y: py3_pickle(x, y, 2))
    names = [f"k{i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2))
    assert cifar10_class_names(tmp_path) == names


def test_binary_layout_preferred_over_python_layout(tmp_path):
    bin_batches, py_batches = make_batches(2, seed=1), make_batches(2, seed=2)
    write_bin(tmp_path, bin_batches)
    write_py(tmp_path, py_batches, lambda x, y: py3_pickle(x, y, 4))
    assert_loaded(load_cifar10(tmp_path, False, False, records_per_batch=2), bin_batches)


@pytest.mark.parametrize("obj, message", [
    ([1, 2], "expected a pickled dict"),
    ({"labels": [1]}, "'data' must be a uint8 array"),
    ({"data": np.zeros((1, 3072), np.float32), "labels": [1]}, "'data' must be a uint8 array"),
    ({"data": np.zeros((1, 3000), np.uint8), "labels": [1]}, r"shape \(N, 3072\)"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}, "1 labels for 2 images"),
    ({"data": np.zeros((1, 3072), np.uint8), "labels": ["cat"]}, "'labels' must be a list of integers"),
    ({"data": np.zeros((1, 3072), np.uint8), "labels": [12]}, "record 0 has label 12"),
])
def test_python_layout_bad_contents(tmp_path, obj, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match=message) as e:
        read_cifar_pickle(path)
    assert str(path) in str(e.value)


# --- the safe pickle interpreter ---------------------------------------------------------------------
plain = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=60, deadline=None)
@given(obj=plain, protocol=st.integers(1, 5))
def test_plain_data_round_trips_through_every_protocol(obj, protocol):
    assert safe_loads(pickle.dumps(obj, protocol=protocol)) == obj


@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.uint8).reshape(3, 4), np.arange(6, dtype=">f4").reshape(2, 3),
    np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.array([True, False]), np.array(3, dtype=np.int64),
    np.zeros((0, 5), np.int16), np.array([1 + 2j], np.complex64)], ids=lambda a: f"{a.dtype}{a.shape}")
def test_numeric_arrays_round_trip(array, protocol):
    got = safe_loads(pickle.dumps({"a": array, "again": [array]}, protocol=protocol))["a"]
    assert got.dtype == array.dtype and got.shape == array.shape and got.flags.writeable
    np.testing.assert_array_equal(got, array)


class _Hostile:
    """Pickles as a call of `func(*args)`: what a malicious file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_hostile_pickles_are_refused_without_running_anything(tmp_path):
    marker = tmp_path / "still-here"
    marker.write_text("x")
    attacks = {
        "os.remove": pickle.dumps({"data": _Hostile(os.remove, str(marker))}, protocol=2),
        "os.remove p4": pickle.dumps([_Hostile(os.remove, str(marker))], protocol=4),
        "os.system text GLOBAL": b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueR.",
        "eval via STACK_GLOBAL": pickle.dumps(_Hostile(eval, "1+1"), protocol=4),
        "getattr": pickle.dumps(_Hostile(getattr, 1, "real"), protocol=2),
        "object array": pickle.dumps(np.array([1, "x"], dtype=object), protocol=2),
        "structured dtype": pickle.dumps(np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]), protocol=2),
        "string array": pickle.dumps(np.array(["ab", "c"]), protocol=2),
    }
    for name, data in attacks.items():
        with pytest.raises(DataError, match="not a plain-data pickle") as e:
            safe_loads(data, "evil.pkl")
        assert "evil.pkl" in str(e.value), name
    assert marker.exists()


@pytest.mark.parametrize("data, message", [
    (b"\x80\x02]q\x00(K\x01K\x02R.", "REDUCE"),                                  # REDUCE on a list
    (b"\x80\x02cnumpy\ndtype\nq\x00X\x02\x00\x00\x00O8\x85R.", "refused dtype 'O8'"),
    (b"\x80\x02cnumpy\ndtype\n.", "left-over"),                                  # a bare callable
    (b"\x80\x02}(K\x01K\x02u)b.", "BUILD on dict"),                              # BUILD on a dict
    (b"\x80\x02\x81.", "unsupported opcode"),                                   # NEWOBJ
    (b"(i__main__\nX\n.", "unsupported opcode"),                                 # INST
    (b"\x80\x02h\x05.", "memo key 5"),
    (b"\x80\x02T\xff\xff\xff\x7f", "truncated"),                                 # claims 2 GB of string
    (b"\x80\x02K\x01K\x02.", "malformed stack"),
    (b"\x80\x02K\x01", "truncated"),                                             # no STOP
    (b"\x80\x02]q\x00h\x00a.", None),                                            # a self-containing list is fine
])
def test_malformed_pickles(data, message):
    if message is None:
        lst = safe_loads(data)
        assert lst[0] is lst
        return
    with pytest.raises(DataError, match=message):
        safe_loads(data)


def test_array_with_wrong_byte_count_is_refused():
    good = pickle.dumps(np.arange(4, dtype=np.uint8), protocol=2)      # raw bytes as a 4-char latin-1 str
    bad = good.replace(b"X\x04\x00\x00\x00\x00\x01\x02\x03", b"X\x03\x00\x00\x00\x00\x01\x02")
    assert bad != good
    with pytest.raises(DataError, match="needs 4 bytes, has 3"):
        safe_loads(bad)


def test_safe_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="empty file"):
        (tmp_path / "e").write_bytes(b"")
        safe_load(tmp_path / "e")
    with pytest.raises(DataError, match="cannot read"):
        safe_load(tmp_path / "absent")


def test_nntrain_package_never_imports_pickle():
    root = Path(cifar.__file__).resolve().parents[1]
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "from pickle" not in text, path


# --- tar extraction ---------------------------------------------------------------------------------
def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    return ti


def test_safe_extract_writes_files_and_folders(tmp_path):
    arc = make_tar(tmp_path / "ok.tar.gz", [(info("top", tarfile.DIRTYPE), None), (info("top/a.bin"), b"abc"),
                                             (info("top/sub/b.txt"), b"hello"), (info("top/skip"), b"zz")])
    out = tmp_path / "out"
    written = safe_extract(arc, out, members=["top/a.bin", "top/sub/b.txt"])
    assert sorted(p.relative_to(out.resolve()).as_posix() for p in written) == ["top/a.bin", "top/sub/b.txt"]
    assert (out / "top/a.bin").read_bytes() == b"abc" and (out / "top/sub/b.txt").read_text() == "hello"
    assert not (out / "top/skip").exists()
    with pytest.raises(DataError, match="archive lacks top/nope"):
        safe_extract(arc, out, members=["top/nope"])
    with pytest.raises(DataError, match="would extract 10 bytes, more than the 5 allowed"):
        safe_extract(arc, tmp_path / "out2", max_bytes=5)


@pytest.mark.parametrize("member, why", [
    (info("/etc/evil"), "absolute path"),
    (info("../evil"), r"'\.\.' component"),
    (info("ok/../../evil"), r"'\.\.' component"),
    (info("link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (info("hard", tarfile.LNKTYPE, "ok/file"), "is a link"),
    (info("dev", tarfile.CHRTYPE), "device"),
    (info("blk", tarfile.BLKTYPE), "device"),
    (info("fifo", tarfile.FIFOTYPE), "device, FIFO"),
])
def test_safe_extract_refuses_escaping_members_and_writes_nothing(tmp_path, member, why):
    data = b"pwned" if member.type == tarfile.REGTYPE else None
    arc = make_tar(tmp_path / "evil.tar", [(info("ok/file"), b"fine"), (member, data)], mode="w")
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(DataError, match=why) as e:
        safe_extract(arc, out)
    assert str(arc) in str(e.value) and repr(member.name) in str(e.value)
    assert list(out.rglob("*")) == []                   # refused before anything was written
    assert not (tmp_path / "a" / "b" / "evil").exists() and not (tmp_path / "evil").exists()


def test_safe_extract_refuses_a_path_through_an_existing_symlink(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "sneaky").symlink_to(tmp_path / "elsewhere")
    arc = make_tar(tmp_path / "x.tar", [(info("sneaky/file"), b"x")], mode="w")
    with pytest.raises(DataError, match="resolves outside"):
        safe_extract(arc, out)
    assert not (tmp_path / "elsewhere" / "file").exists()


def test_safe_extract_corrupt_archives(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="junk.tar.gz: cannot read the archive"):
        safe_extract(junk, tmp_path / "o1")
    good = make_tar(tmp_path / "good.tar.gz", [(info("big"), np.random.default_rng(1).bytes(200_000))])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:60_000])
    with pytest.raises(DataError, match="cut.tar.gz"):
        safe_extract(cut, tmp_path / "o2")
    assert not (tmp_path / "o2" / "big").exists()


# --- download ---------------------------------------------------------------------------------------
def cifar_archive(path: Path, batches: dict, extra: list | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)       # as the real download() does
    members = [(info(BIN_DIR, tarfile.DIRTYPE), None)]
    members += [(info(f"{BIN_DIR}/{name}.bin"), bin_bytes(*xy)) for name, xy in batches.items()]
    members += [(info(f"{BIN_DIR}/batches.meta.txt"), "\n".join(CIFAR10_CLASSES).encode()),
                (info(f"{BIN_DIR}/readme.html"), b"<html>")]
    return make_tar(path, members + (extra or []))


def test_download_fetches_checksummed_archive_and_extracts_it(tmp_path, monkeypatch):
    import nntrain.data.download as dl

    batches = make_batches(2)
    calls = []

    def fake_download(urls, dest_path, md5=None, sha256=None, progress=True):
        calls.append((list(urls), Path(dest_path), md5))
        return cifar_archive(Path(dest_path), batches)

    monkeypatch.setattr(dl, "download", fake_download)
    root = tmp_path / "cache"
    assert_loaded(load_cifar10(root, download=True, progress=False, records_per_batch=2), batches)
    assert calls == [(["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"], root / "cifar-10-binary.tar.gz",
                      CIFAR10_MD5)]
    assert not (root / BIN_DIR / "readme.html").exists()          # only the needed members
    load_cifar10(root, download=True, progress=False, records_per_batch=2)
    assert len(calls) == 1                                        # present now: no second download
    (root / BIN_DIR / "test_batch.bin").unlink()                  # archive kept: re-extracted, not re-fetched
    assert_loaded(load_cifar10(root, download=True, progress=False, records_per_batch=2), batches)
    assert len(calls) == 1
    cifar.download_cifar10(tmp_path / "m", progress=False, mirrors=["http://mirror.example/c10/"])
    assert calls[-1][0] == ["http://mirror.example/c10/cifar-10-binary.tar.gz"]


def test_downloaded_archive_with_escaping_member_is_refused(tmp_path, monkeypatch):
    import nntrain.data.download as dl

    def evil_download(urls, dest_path, md5=None, sha256=None, progress=True):
        return cifar_archive(Path(dest_path), make_batches(1), extra=[(info("../../outside.txt"), b"x")])

    monkeypatch.setattr(dl, "download", evil_download)
    root = tmp_path / "deep" / "cache"
    with pytest.raises(DataError, match="refusing to extract member '../../outside.txt'"):
        load_cifar10(root, download=True, progress=False, records_per_batch=1)
    assert not (tmp_path / "outside.txt").exists() and not (root / BIN_DIR / "test_batch.bin").exists()


# --- the real data set, converted from the JPEG mirror -----------------------------------------------
@pytest.fixture(scope="session")
def real_cifar_root(tmp_path_factory) -> Path:
    data = os.environ.get("NNTRAIN_DATA")
    tarball = Path(data or "/nonexistent") / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    tool = Path(data or "/nonexistent").parent / "tools" / "cifar10_bin.py"
    if not data or not tarball.is_file() or not tool.is_file():
        pytest.skip("CIFAR-10 JPEG mirror or its converter not available (set NNTRAIN_DATA)")
    root = tmp_path_factory.mktemp("cifar10")
    subprocess.run([sys.executable, str(tool), str(root / BIN_DIR), str(tarball)], check=True,
                   capture_output=True, timeout=300)
    return root


def test_real_cifar10_binary_copy(real_cifar_root):
    t0 = time.perf_counter()
    xtr, ytr, xte, yte = load_cifar10(real_cifar_root, download=False, progress=False)
    seconds = time.perf_counter() - t0
    assert xtr.shape == (50000, 3, 32, 32) and xte.shape == (10000, 3, 32, 32)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int64
    assert np.bincount(ytr, minlength=10).tolist() == [5000] * 10
    assert np.bincount(yte, minlength=10).tolist() == [1000] * 10
    sample = xtr[::97].astype(np.float32)
    assert 100 < sample.mean() < 140 and sample.std() > 40   # natural images, not blank or noise-free
    assert cifar10_class_names(real_cifar_root) == list(CIFAR10_CLASSES)
    assert seconds < 20
