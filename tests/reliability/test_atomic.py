"""Atomic writes under a full disk or a read-only folder: the previous file stays intact, no temporary file
is left, the message says which file and why, and the CLI exits 2 - for checkpoints, metrics.csv, plots,
the run's config and downloads, at library level and through `nntrain train`.

Failures are simulated by patching the OS calls nntrain.atomic makes (we run as root: chmod cannot make
a folder read-only for us)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

import nntrain.atomic as atomic
import nntrain.data.download as dl
from nntrain.atomic import WriteError, atomic_write_bytes, atomic_write_text
from nntrain.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from nntrain.errors import DataError
from test_checkpoints import invoke, make_data_root, small_config
from conftest import write_config
from trickle import FolderServer

pytestmark = pytest.mark.reliability

POINTS = ("mkstemp", "write", "fsync", "replace")
ERRORS = {errno.ENOSPC: "the disk is full", errno.EROFS: "read-only", errno.EDQUOT: "quota",
          errno.EACCES: "permission denied", errno.EIO: "error"}


class DiskFault:
    """Make the `nth` atomic write of a file named `name` fail at `point` with OSError(err).

    point: mkstemp (the folder refuses new files: read-only), write (ENOSPC after half the bytes reached
    the temporary file), fsync (the data cannot be flushed), replace (the rename is refused).
    """

    def __init__(self, monkeypatch, point: str, err: int = errno.ENOSPC, name: str | None = None, nth: int = 1):
        self.point, self.err, self.name, self.nth = point, err, name, nth
        self.seen = 0
        self.armed = False
        self.fired = 0
        real_mkstemp, real_fdopen, real_fsync, real_replace = (
            tempfile.mkstemp, os.fdopen, os.fsync, os.replace)
        fault = self

        def mkstemp(*args, **kwargs):
            prefix = kwargs.get("prefix", "")
            if fault.name is None or prefix.startswith(f".{fault.name}.pid"):
                fault.seen += 1
                if fault.seen == fault.nth:
                    fault.armed = True
                    if point == "mkstemp":
                        fault._fire()
            return real_mkstemp(*args, **kwargs)

        class HalfWriter:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                self._f.write(data[:len(data) // 2])
                self._f.flush()
                fault._fire()

            def __getattr__(self, attr):
                return getattr(self._f, attr)

            def __enter__(self):
                self._f.__enter__()
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

        def fdopen(fd, *args, **kwargs):
            f = real_fdopen(fd, *args, **kwargs)
            return HalfWriter(f) if fault.armed and point == "write" else f

        def fsync(fd):
            if fault.armed and point == "fsync":
                fault._fire()
            return real_fsync(fd)

        def replace(src, dst):
            if fault.armed and point == "replace":
                fault._fire()
            return real_replace(src, dst)

        monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(atomic.os, "fdopen", fdopen)
        monkeypatch.setattr(atomic.os, "fsync", fsync)
        monkeypatch.setattr(atomic.os, "replace", replace)

    def _fire(self):
        self.armed = False
        self.fired += 1
        raise OSError(self.err, os.strerror(self.err))


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))]


# --- library level ---------------------------------------------------------------------------------
def _writers(tmp: Path):
    """name -> (path, write(version) callable, read(path) -> comparable) for each kind of file nntrain writes."""
    from nntrain.training.plots import plot_curves

    def ckpt(v):
        save_checkpoint(tmp / "last.npz", Checkpoint(params={"0.W": np.full((50, 20), v, np.float32)},
                                                     meta={"epoch": v}))

    def metrics(v):
        atomic_write_text(tmp / "metrics.csv", "epoch,lr\n" + "".join(f"{i},0.1\n" for i in range(v)))

    def plot(v):
        plot_curves([{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "train_acc": 0.5} for i in range(v)], tmp)

    def raw(v):
        atomic_write_bytes(tmp / "blob.bin", bytes([v]) * 100_000)

    return {
        "checkpoint": (tmp / "last.npz", ckpt, lambda p: load_checkpoint(p).meta["epoch"]),
        "metrics.csv": (tmp / "metrics.csv", metrics, lambda p: p.read_text()),
        "plot": (tmp / "loss.png", plot, lambda p: p.read_bytes()),
        "bytes": (tmp / "blob.bin", raw, lambda p: p.read_bytes()),
    }


# the error a folder/disk gives at each point: a read-only folder refuses the temporary file or the rename
POINT_ERRORS = {"mkstemp": errno.EROFS, "write": errno.ENOSPC, "fsync": errno.EIO, "replace": errno.EROFS}
CASES = [(kind, point, POINT_ERRORS[point]) for kind in ("checkpoint", "metrics.csv", "plot") for point in POINTS]
CASES += [("bytes", point, err) for point in POINTS for err in ERRORS]


@pytest.mark.parametrize("kind, point, err", CASES)
def test_failed_write_keeps_previous_file(tmp_path, monkeypatch, kind, point, err):
    path, write, read = _writers(tmp_path)[kind]
    write(1)
    before = read(path)
    fault = DiskFault(monkeypatch, point, err, name=path.name)
    with pytest.raises(WriteError) as e:
        write(2)
    assert fault.fired == 1
    assert e.value.exit_code == 2
    msg = str(e.value)
    assert str(path) in msg and ERRORS[err] in msg and "intact" in msg, msg
    assert read(path) == before                      # the previous version, whole
    assert leftovers(tmp_path) == []                 # no temporary file left behind
    monkeypatch.undo()
    write(3)                                         # and the next write works normally
    assert read(path) != before


def test_failed_first_write_leaves_no_file(tmp_path, monkeypatch):
    DiskFault(monkeypatch, "write", name="new.txt")
    with pytest.raises(WriteError, match="the disk is full"):
        atomic_write_text(tmp_path / "new.txt", "x" * 1000)
    assert list(tmp_path.iterdir()) == []


def test_interrupt_inside_a_write_leaves_previous_file(tmp_path):
    """Ctrl-C (or any exception) in the middle of writing: the temporary file goes, the old file stays."""
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_open(target, "wb") as f:
            f.write(b"new, half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_stale_temporary_files_of_a_killed_writer_are_cleaned(tmp_path):
    target = tmp_path / "last.npz"
    (tmp_path / ".last.npz.abc123.tmp").write_bytes(b"torn")   # what SIGKILL mid-write leaves
    (tmp_path / ".other.npz.abc123.tmp").write_bytes(b"not ours")
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    assert [p.name for p in leftovers(tmp_path)] == [".other.npz.abc123.tmp"]  # another file's temp is left alone


# --- downloads (a mirror on 127.0.0.1) ------------------------------------------------------------------
@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only")])
@pytest.mark.parametrize("call", ["fsync", "replace"])
def test_failed_download_keeps_previous_file(tmp_path, monkeypatch, call, err, words):
    src = tmp_path / "mirror" / "file.gz"
    src.parent.mkdir()
    src.write_bytes(b"new contents" * 1000)
    dest = tmp_path / "data" / "file.gz"
    dest.parent.mkdir()
    dest.write_bytes(b"old contents")
    real = getattr(os, call)
    calls = []

    def failing(*args):
        calls.append(args)
        raise OSError(err, os.strerror(err))

    with FolderServer(src.parent) as mirror:
        monkeypatch.setattr(atomic.os, call, failing)
        with pytest.raises(DataError) as e:
            dl.download(f"{mirror.url}/file.gz", dest, progress=False)
        monkeypatch.setattr(atomic.os, call, real)
        assert calls and e.value.exit_code == 2
        assert words in str(e.value) and "file.gz" in str(e.value), str(e.value)
        assert dest.read_bytes() == b"old contents" and leftovers(tmp_path) == []
        dl.download(f"{mirror.url}/file.gz", dest, progress=False)   # works once the disk has room again
    assert dest.read_bytes() == src.read_bytes()


def test_download_into_read_only_folder(tmp_path, monkeypatch):
    src = tmp_path / "file.gz"
    src.write_bytes(b"x" * 100)

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with FolderServer(tmp_path) as mirror, pytest.raises(DataError, match="read-only") as e:
        dl.download(f"{mirror.url}/file.gz", tmp_path / "data" / "file.gz", progress=False)
    assert e.value.exit_code == 2
    assert not (tmp_path / "data" / "file.gz").exists()


# --- through the CLI: a training run hits a full disk / read-only folder -----------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("name, nth, point, err", [
    ("last.npz", 2, "write", errno.ENOSPC),      # the second epoch's checkpoint, half written
    ("last.npz", 2, "fsync", errno.EIO),
    ("best.npz", 2, "replace", errno.EROFS),
    ("metrics.csv", 2, "write", errno.ENOSPC),
    ("loss.png", 2, "mkstemp", errno.EROFS),
])
def test_training_run_on_a_full_disk(tmp_path, monkeypatch, data_root, name, nth, point, err):
    cfg = small_config(data_root, train={"epochs": 3, "batch_size": 50},
                       optimizer={"type": "sgd", "lr": 0.05, "momentum": 0.9})
    cfg_path = write_config(tmp_path / "c.yaml", cfg)
    fault = DiskFault(monkeypatch, point, err, name=name, nth=nth)
    run = tmp_path / "run"
    code, out = invoke("train", cfg_path, "--run-dir", run, "--no-progress")
    assert fault.fired == 1
    assert code == 2, out
    assert f"could not write {run}" in out and name in out and ERRORS[err] in out, out
    assert leftovers(run) == []
    # everything from epoch 1 is whole: the checkpoint loads (at epoch 1 or, for a failure after it, 2)
    last = load_checkpoint(run / "checkpoints" / "last.npz")
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, len(rows) + 1)) and rows
    # order at an epoch's end: best.npz, last.npz, metrics.csv, plots; the failed write stops the run there
    assert last.meta["epoch"] == len(rows) + (1 if name == "metrics.csv" else 0)
    assert len(last.meta["history"]) == last.meta["epoch"]
    for png in ("loss.png", "accuracy.png"):
        data = (run / "plots" / png).read_bytes()
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")
    # and the run can be continued once the disk has room again
    monkeypatch.undo()
    code, out = invoke("train", run / "config.yaml", "--resume", run, "--no-progress")
    assert code == 0, out
    assert load_checkpoint(run / "checkpoints" / "last.npz").meta["epoch"] == 3
    assert len((run / "metrics.csv").read_text().splitlines()) == 4


def test_download_on_a_full_disk_through_the_cli(tmp_path, monkeypatch):
    """`nntrain train` on a dataset that must be downloaded, into a disk that fills up: exit 2, no temporary
    file."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (mirror / f"{stem}.gz").write_bytes(b"\x1f\x8b" + b"z" * 5000)
    root = tmp_path / "data"
    cfg = small_config(root)
    cfg["data"]["download"] = True
    # The disk fills while the file streams in (its checksum, checked before the rename, is never reached).
    with FolderServer(mirror) as server:
        monkeypatch.setenv("NNTRAIN_MIRROR", server.url)
        fault = DiskFault(monkeypatch, "write", errno.ENOSPC, name="train-images-idx3-ubyte.gz")
        code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", tmp_path / "run",
                           "--no-progress")
    assert code == 2 and fault.fired == 1, out
    assert "no space left" in out and "train-images-idx3-ubyte" in out, out
    assert leftovers(root) == [] and not (root / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_atomic_files_are_readable_like_plain_files(tmp_path):
    """A file written through a temporary is not left private (mkstemp's 0600)."""
    atomic.atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o644
