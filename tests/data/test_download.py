"""nntrain.data.download against a real HTTP server on 127.0.0.1: good files, checksum mismatches,
refused connections, mirrors in order, truncated transfers, disk full, and dataset-level downloads."""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from nntrain.data import load_dataset
from nntrain.data import mnist as mnist_module
from nntrain.data.download import DownloadError, download, fetch_files, resolve_mirrors
from nntrain.data.idx import write_idx
from nntrain.data.mnist import IDX_FILES
from nntrain.errors import DataError


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; /short/<n> promises 1000 bytes and sends n. Records every path asked for."""

    def do_GET(self):  # noqa: N802 (http.server naming)
        self.server.requests.append(self.path)
        if self.path.startswith("/short/"):
            body = b"x" * int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """(base URL, served folder, list of requested paths) of a live server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served, httpd.requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def refused_url():
    """A URL on a local port where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_file_with_checksums(server, tmp_path):
    base, served, requests = server
    payload = os.urandom(300_000)
    (served / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "sub" / "blob.bin"
    got = download(f"{base}/blob.bin", dest, md5=hashlib.md5(payload).hexdigest(),
                   sha256=hashlib.sha256(payload).hexdigest().upper(), progress=False)
    assert got == dest and dest.read_bytes() == payload
    assert leftovers(dest.parent) == ["blob.bin"]  # no temporary file left
    assert requests == ["/blob.bin"]


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    base, served, _ = server
    (served / "blob.bin").write_bytes(b"not the file you want")
    dest = tmp_path / "out" / "blob.bin"
    wrong = "0" * 32
    with pytest.raises(DownloadError) as err:
        download([f"{base}/blob.bin"], dest, md5=wrong, progress=False)
    msg = str(err.value)
    assert f"{base}/blob.bin" in msg and "expected md5 " + wrong in msg
    assert "got " + hashlib.md5(b"not the file you want").hexdigest() in msg
    assert leftovers(dest.parent) == []


def test_checksum_failure_keeps_previous_file_and_clears_a_killed_downloads_temp(server, tmp_path, monkeypatch):
    """The download streams into a temporary file beside the destination (nntrain.atomic), renamed only
    once its checksum passes; a temporary file a killed download left behind is removed."""
    import nntrain.atomic
    base, served, _ = server
    (served / "blob.bin").write_bytes(b"new contents")
    dest = tmp_path / "data" / "blob.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old contents")
    (dest.parent / ".blob.bin.killed.tmp").write_bytes(b"half a file")
    folders = []
    real_mkstemp = nntrain.atomic.tempfile.mkstemp
    monkeypatch.setattr(nntrain.atomic.tempfile, "mkstemp",
                        lambda **kw: folders.append(kw["dir"]) or real_mkstemp(**kw))
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{base}/blob.bin", dest, md5="0" * 32, progress=False)
    assert dest.read_bytes() == b"old contents" and leftovers(dest.parent) == ["blob.bin"]
    download(f"{base}/blob.bin", dest, md5=hashlib.md5(b"new contents").hexdigest(), progress=False)
    assert dest.read_bytes() == b"new contents" and leftovers(dest.parent) == ["blob.bin"]
    assert folders == [dest.parent, dest.parent]


def test_connection_refused(refused_url, tmp_path):
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(DataError) as err:
        download(f"{refused_url}/blob.bin", dest, progress=False, timeout=5)
    assert f"{refused_url}/blob.bin" in str(err.value) and "cannot connect" in str(err.value)
    assert leftovers(dest.parent) == []


def test_mirrors_tried_in_order(server, refused_url, tmp_path):
    base, served, requests = server
    payload = b"good bytes" * 100
    (served / "blob.bin").write_bytes(payload)
    dest = tmp_path / "blob.bin"
    download([f"{refused_url}/blob.bin", f"{base}/missing/blob.bin", f"{base}/blob.bin"], dest,
             md5=hashlib.md5(payload).hexdigest(), progress=False, timeout=5)
    assert dest.read_bytes() == payload
    assert requests == ["/missing/blob.bin", "/blob.bin"]  # the 404 mirror was tried before the good one


def test_truncated_transfer_is_refused(server, tmp_path):
    base, _, _ = server
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(DownloadError) as err:
        download(f"{base}/short/10", dest, progress=False, timeout=5)
    assert "1000" in str(err.value)
    assert leftovers(dest.parent) == []


def test_progress_bar_silent_when_not_a_terminal(server, tmp_path, capfd):
    base, served, _ = server
    (served / "blob.bin").write_bytes(b"y" * 200_000)
    download(f"{base}/blob.bin", tmp_path / "a.bin", progress=True)
    download(f"{base}/blob.bin", tmp_path / "b.bin", progress=False)
    out, err = capfd.readouterr()
    assert out == "" and "%" not in err and "blob" not in err
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_disk_full_is_data_error_and_temp_removed(server, tmp_path, monkeypatch):
    base, served, _ = server
    (served / "blob.bin").write_bytes(b"z" * 1000)
    dest = tmp_path / "out" / "blob.bin"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DataError) as err:
        download([f"{base}/blob.bin", f"{base}/blob.bin"], dest, progress=False)
    assert "no space left" in str(err.value) and not isinstance(err.value, DownloadError)
    assert leftovers(dest.parent) == []


def test_interrupt_removes_temp_file(server, tmp_path, monkeypatch):
    base, served, _ = server
    (served / "blob.bin").write_bytes(b"z" * 1000)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download(f"{base}/blob.bin", tmp_path / "blob.bin", progress=False)
    assert leftovers(tmp_path) == ["served"]


def test_read_only_folder(server, tmp_path, monkeypatch):
    base, served, _ = server
    (served / "blob.bin").write_bytes(b"z")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("nntrain.atomic.tempfile.mkstemp", read_only)
    with pytest.raises(DataError, match="writable") as err:
        download(f"{base}/blob.bin", tmp_path / "out" / "blob.bin", progress=False)
    assert str(tmp_path / "out") in str(err.value)


def test_resolve_mirrors(monkeypatch):
    monkeypatch.delenv("NNTRAIN_MIRROR", raising=False)
    assert resolve_mirrors(["a"]) == ["a"]
    assert resolve_mirrors(["a"], ["b", "c"]) == ["b", "c"]
    monkeypatch.setenv("NNTRAIN_MIRROR", "http://x/, http://y/")
    assert resolve_mirrors(["a"]) == ["http://x/", "http://y/"]
    assert resolve_mirrors(["a"], "http://z") == ["http://z"]


# ---------------------------------------------------------------- dataset level

def _serve_mnist(served: Path, rng: np.random.Generator) -> dict[str, str]:
    """Write small MNIST-named .gz files into the served folder; returns their md5s."""
    arrays = [rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 10, 20).astype(np.uint8),
              rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), rng.integers(0, 10, 8).astype(np.uint8)]
    md5 = {}
    for stem, arr in zip(IDX_FILES, arrays):
        p = write_idx(served / f"{stem}.gz", arr)
        md5[p.name] = hashlib.md5(p.read_bytes()).hexdigest()
    return md5


def test_load_dataset_downloads_missing_files_once(server, tmp_path, monkeypatch):
    base, served, requests = server
    md5 = _serve_mnist(served, np.random.default_rng(0))
    monkeypatch.setitem(mnist_module.RESOURCES, "mnist", {"mirrors": ["http://unused.invalid/"], "md5": md5})
    monkeypatch.setenv("NNTRAIN_MIRROR", base)
    root = tmp_path / "root"
    ds = load_dataset("mnist", root=root, download=True, progress=False)
    assert ds.train_images.shape == (20, 1, 28, 28) and ds.test_labels.shape == (8,)
    assert leftovers(root / "mnist") == sorted(f"{s}.gz" for s in IDX_FILES)
    assert len(requests) == 4
    mtimes = {p.name: p.stat().st_mtime_ns for p in (root / "mnist").iterdir()}
    load_dataset("mnist", root=root, download=True, progress=False)
    assert len(requests) == 4  # present files are neither fetched nor rewritten
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (root / "mnist").iterdir()}


def test_dataset_checksum_mismatch_against_official_md5(server, tmp_path, monkeypatch):
    base, served, _ = server
    _serve_mnist(served, np.random.default_rng(1))  # not the official bytes
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path / "root", progress=False, mirrors=[base])
    msg = str(err.value)
    assert "checksum mismatch" in msg and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    assert leftovers(tmp_path / "root" / "mnist") == []


def test_dataset_offline_says_which_files_where(refused_url, tmp_path, monkeypatch):
    monkeypatch.setenv("NNTRAIN_MIRROR", refused_url)
    folder = tmp_path / "root" / "fashion-mnist"
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", root=tmp_path / "root", progress=False)
    msg = str(err.value)
    assert str(folder) in msg
    assert all(f"{stem}.gz" in msg for stem in IDX_FILES)
    assert leftovers(folder) == []


def test_fetch_files_skips_present(server, tmp_path):
    base, served, requests = server
    (served / "b.bin").write_bytes(b"bb")
    (tmp_path / "a.bin").write_bytes(b"local")
    fetch_files(tmp_path, {"a.bin": "0" * 32, "b.bin": hashlib.md5(b"bb").hexdigest()}, [base], progress=False)
    assert requests == ["/b.bin"] and (tmp_path / "a.bin").read_bytes() == b"local"
