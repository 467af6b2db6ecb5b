"""The CIFAR-10 binary reader, the refusal of the Python layout (pickles, never opened), safe tar
extraction and the download path, on small fixture files written here (and on the real converted copy
when present)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from nntrain.data import cifar
from nntrain.data.archive import safe_extract
from nntrain.data import dataset_info
from nntrain.data.cifar import (ARCHIVE_NAME, BIN_DIR, CIFAR10_MD5, PY_ARCHIVE_NAME, PY_DIR,
                                load_cifar10, read_cifar_bin)
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
    assert "missing: data_batch_4.bin" in msg and BIN_DIR in msg and PY_DIR not in msg
    assert ARCHIVE_NAME in msg and "data.download: true" in msg


# --- the Python layout: refused, never opened --------------------------------------------------------
class _Hostile:
    """Pickles as a call of `func(*args)`: what a malicious file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def write_python_layout(root: Path, marker: Path) -> Path:
    """A complete cifar-10-batches-py/ whose every file deletes `marker` if anything unpickles it."""
    folder = root / PY_DIR
    folder.mkdir(parents=True)
    for name in [*BATCHES, "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({"data": _Hostile(os.remove, str(marker)), "labels": [0]},
                                                 protocol=2))
    return folder


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "still-here"
    path.write_text("x")
    return path


@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_python_layout_is_refused_with_how_to_get_the_binary_one(tmp_path, marker, layout):
    root = tmp_path / "cifar10"
    if layout == "folder":
        found = write_python_layout(root, marker)
    else:
        root.mkdir()
        found = root / PY_ARCHIVE_NAME
        found.write_bytes(pickle.dumps(_Hostile(os.remove, str(marker))))
    with pytest.raises(DataError) as e:
        load_cifar10(root, download=False, progress=False, records_per_batch=None)
    msg = str(e.value)
    assert str(found) in msg and "Python layout" in msg and "does not read" in msg
    assert str(root / BIN_DIR) in msg and ARCHIVE_NAME in msg and "data.download: true" in msg
    assert marker.exists()


def test_binary_layout_read_beside_a_python_layout(tmp_path, marker):
    batches = make_batches(2, seed=1)
    write_bin(tmp_path, batches)
    write_python_layout(tmp_path, marker)
    assert_loaded(load_cifar10(tmp_path, False, False, records_per_batch=2), batches)
    assert marker.exists()


def test_python_layout_with_download_fetches_the_binary_one(tmp_path, marker, monkeypatch):
    import nntrain.data.download as dl

    batches = make_batches(2, seed=3)
    monkeypatch.setattr(dl, "download", lambda urls, dest_path, **kw: cifar_archive(Path(dest_path), batches))
    write_python_layout(tmp_path, marker)
    assert_loaded(load_cifar10(tmp_path, True, False, records_per_batch=2), batches)
    assert marker.exists()


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
    members += [(info(f"{BIN_DIR}/batches.meta.txt"), "\n".join(dataset_info("cifar10").class_names).encode()),
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
    assert seconds < 20
