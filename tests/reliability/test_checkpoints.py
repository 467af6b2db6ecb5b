"""Checkpoints are data, not code: every damaged, foreign or hostile checkpoint given to `nntrain eval`,
`nntrain train --init-from` or `nntrain train --resume` is refused with a message that says what is wrong,
exit 2 and no traceback; loading never unpickles anything, and never returns silently different weights."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import tiny_config, write_config
from nntrain.training.checkpoint import FORMAT_VERSION, Checkpoint, load_checkpoint, save_checkpoint
from nntrain.cli import cli
from nntrain.data.idx import write_idx
from nntrain.data.mnist import load_mnist_mini
from nntrain.errors import CheckpointError

pytestmark = pytest.mark.reliability


# --- helpers ---------------------------------------------------------------------------------------
def make_data_root(root: Path, n_train: int = 200, n_test: int = 50) -> Path:
    """A data root holding a small MNIST (IDX files cut from mnist-mini): trains an epoch in milliseconds."""
    tx, ty, sx, sy = load_mnist_mini()
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", tx[:n_train, 0])
    write_idx(folder / "train-labels-idx1-ubyte", ty[:n_train].astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", sx[:n_test, 0])
    write_idx(folder / "t10k-labels-idx1-ubyte", sy[:n_test].astype(np.uint8))
    return root


def small_config(root: Path, **changes) -> dict:
    cfg = tiny_config(data={"dataset": "mnist", "root": str(root), "val_size": 40, "download": False},
                      train={"epochs": 1, "batch_size": 50})
    cfg.update(changes)
    return cfg


def invoke(*args: str) -> tuple[int, str]:
    """The CLI in-process; asserts the failure (if any) was handled: a message, no traceback."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def rewrite(src: Path, dst: Path, change) -> Path:
    """Re-save a checkpoint's raw entries (valid zip, valid CRCs) after `change(entries)` edits them."""
    with np.load(src, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    change(entries)
    buf = io.BytesIO()
    np.savez(buf, **entries)
    dst.write_bytes(buf.getvalue())
    return dst


def meta_of(entries: dict) -> dict:
    return json.loads(entries["__meta__"].tobytes().decode())


def set_meta(entries: dict, meta) -> None:
    entries["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def flipped(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0xFF
    return bytes(b)


def member_data_offset(data: bytes, name: str) -> tuple[int, int]:
    """(offset of the member's bytes in the archive, their length) for a stored zip member."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(name)
    start = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[start + 26:start + 30])
    return start + 30 + name_len + extra_len, info.file_size


def central_directory_offset(data: bytes) -> int:
    eocd = data.rindex(b"PK\x05\x06")
    return struct.unpack("<I", data[eocd + 16:eocd + 20])[0]


# --- a good run and a run of another architecture ----------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ckpt")
    root = make_data_root(tmp / "data")
    cfg_path = write_config(tmp / "c.yaml", small_config(root))
    code, out = invoke("train", cfg_path, "--run-dir", tmp / "good", "--no-progress")
    assert code == 0, out
    code, out = invoke("train", cfg_path, "-s", "model[1].out_features=16", "--run-dir", tmp / "other",
                       "--no-progress")
    assert code == 0, out
    good = tmp / "good" / "checkpoints" / "last.npz"
    return {"tmp": tmp, "cfg": cfg_path, "run": tmp / "good", "good": good, "bytes": good.read_bytes(),
            "other": tmp / "other" / "checkpoints" / "last.npz"}


def _large_param(entries: dict) -> str:
    return max((k for k in entries if k.startswith("param/")), key=lambda k: entries[k].size)


def _object_array_payload(marker: Path):
    class Payload:  # unpickling this would create `marker`
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arr = np.empty(1, dtype=object)
    arr[0] = Payload()
    return arr


def build_bad(kind: str, runs: dict, dst: Path) -> Path:
    """Write the bad checkpoint `kind` to dst (a copy of the good one, damaged in one way)."""
    data, good = runs["bytes"], runs["good"]
    n = len(data)
    if kind == "empty":
        dst.write_bytes(b"")
    elif kind.startswith("cut@"):
        dst.write_bytes(data[:eval(kind[4:], {"n": n})])
    elif kind == "flip-array-data":
        with zipfile.ZipFile(good) as z:
            big = max(z.infolist(), key=lambda i: i.file_size).filename
        off, size = member_data_offset(data, big)
        dst.write_bytes(flipped(data, off + size // 2))
    elif kind == "flip-array-last-byte":
        with zipfile.ZipFile(good) as z:
            big = max(z.infolist(), key=lambda i: i.file_size).filename
        off, size = member_data_offset(data, big)
        dst.write_bytes(flipped(data, off + size - 1))
    elif kind == "flip-npy-header":
        with zipfile.ZipFile(good) as z:
            first = z.infolist()[0].filename
        off, _ = member_data_offset(data, first)
        dst.write_bytes(flipped(data, off + 12))
    elif kind == "flip-meta-json-bytes":
        off, size = member_data_offset(data, "__meta__.npy")
        dst.write_bytes(flipped(data, off + size - 5))
    elif kind == "flip-directory-signature":
        dst.write_bytes(flipped(data, central_directory_offset(data)))
    elif kind == "flip-directory-name":
        dst.write_bytes(flipped(data, central_directory_offset(data) + 46 + 2))
    elif kind == "flip-directory-offset":
        dst.write_bytes(flipped(data, central_directory_offset(data) + 42))
    elif kind == "flip-end-record":
        dst.write_bytes(flipped(data, data.rindex(b"PK\x05\x06") + 1))
    elif kind == "meta-invalid-json":
        rewrite(good, dst, lambda e: e.__setitem__("__meta__", np.frombuffer(b'{"epoch": 1, "conf', np.uint8)))
    elif kind == "meta-not-utf8":
        rewrite(good, dst, lambda e: e.__setitem__("__meta__", np.frombuffer(b"\xff\xfe{}", np.uint8)))
    elif kind == "meta-no-version":
        rewrite(good, dst, lambda e: set_meta(e, {k: v for k, v in meta_of(e).items() if k != "format_version"}))
    elif kind == "meta-a-list":
        rewrite(good, dst, lambda e: set_meta(e, [1, 2, 3]))
    elif kind == "newer-format":
        rewrite(good, dst, lambda e: set_meta(e, dict(meta_of(e), format_version=FORMAT_VERSION + 1)))
    elif kind == "shape-altered":
        def shrink(e):
            k = _large_param(e)
            e[k] = e[k][:-1]
        rewrite(good, dst, shrink)
    elif kind == "param-missing":
        rewrite(good, dst, lambda e: e.pop(_large_param(e)))
    elif kind == "param-int-dtype":
        def to_int(e):
            k = _large_param(e)
            e[k] = e[k].astype(np.int32)
        rewrite(good, dst, to_int)
    elif kind == "param-complex":
        def to_complex(e):
            k = _large_param(e)
            e[k] = e[k].astype(np.complex64)
        rewrite(good, dst, to_complex)
    elif kind == "param-strings":
        def to_str(e):
            k = _large_param(e)
            e[k] = np.array(["a", "b"])
        rewrite(good, dst, to_str)
    elif kind == "unexpected-entry":
        rewrite(good, dst, lambda e: e.__setitem__("evil/code", np.zeros(3)))
    elif kind == "object-array":
        arr = _object_array_payload(dst.parent / "UNPICKLED-param")
        with np.load(good, allow_pickle=False) as npz:
            entries = {k: npz[k] for k in npz.files}
        entries[_large_param(entries)] = arr
        np.savez(dst, **entries, allow_pickle=True)  # the test (only the test) writes pickled data
    elif kind == "object-meta":
        with np.load(good, allow_pickle=False) as npz:
            entries = {k: npz[k] for k in npz.files}
        entries["__meta__"] = _object_array_payload(dst.parent / "UNPICKLED-meta")
        np.savez(dst, **entries, allow_pickle=True)
    elif kind == "plain-npz":
        np.savez(dst, weights=np.zeros((3, 3)), bias=np.zeros(3))
    elif kind == "npy-file":
        np.save(dst.with_suffix(".npy"), np.zeros(3))
        dst.with_suffix(".npy").rename(dst)
    elif kind == "text-file":
        dst.write_text("this is a text file, not a checkpoint\n")
    elif kind == "pickle-file":
        import pickle

        dst.write_bytes(pickle.dumps(_object_array_payload(dst.parent / "UNPICKLED-pickle")))
    elif kind == "directory":
        dst.mkdir()
    elif kind == "missing":
        pass
    elif kind == "other-architecture":
        shutil.copy(runs["other"], dst)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return dst


# kind -> words the message must contain (lower case)
BAD = {
    "empty": "empty (0 bytes)",
    "cut@2": "truncated",
    "cut@30": "truncated",
    "cut@200": "truncated",
    "cut@n//3": "truncated",
    "cut@n//2": "truncated",
    "cut@n-100": "truncated",
    "cut@n-22": "truncated",
    "cut@n-1": "truncated",
    "flip-array-data": "checksum",
    "flip-array-last-byte": "checksum",
    "flip-npy-header": "checksum",
    "flip-meta-json-bytes": "checksum",
    "flip-directory-signature": "corrupt",
    "flip-directory-name": "corrupt",
    "flip-directory-offset": "corrupt",
    "flip-end-record": "truncated",
    "meta-invalid-json": "corrupt metadata",
    "meta-not-utf8": "corrupt metadata",
    "meta-no-version": "no valid format version",
    "meta-a-list": "no valid format version",
    "newer-format": "newer",
    "shape-altered": "shape",
    "param-missing": "missing",
    "param-int-dtype": "dtype",
    "param-complex": "dtype",
    "param-strings": "dtype",
    "unexpected-entry": "unexpected entry 'evil/code'",
    "object-array": "object arrays",
    "object-meta": "object arrays",
    "plain-npz": "not an nntrain checkpoint",
    "npy-file": "not a .npz archive",
    "text-file": "not a .npz archive",
    "pickle-file": "not a .npz archive",
    "directory": "folder",
    "missing": "does not exist",
    "other-architecture": "has shape (784, 16), the model expects (784, 32)",
}
# what eval / --init-from / --resume all refuse (other-architecture is a valid checkpoint of another model: only
# refused where a model is given, i.e. --init-from and --resume; `missing`/`directory` differ per command)
COMMANDS = ("eval", "init-from", "resume")


def _expect(kind: str, command: str) -> str | None:
    if kind == "other-architecture" and command == "eval":
        return None  # a self-consistent checkpoint of another model: eval rebuilds that model and works
    if kind == "other-architecture" and command == "resume":
        # the checkpoint's embedded config is the truth: CONFIG no longer matches the run
        return "the config differs from the run's own config at model[1].out_features"
    if kind == "directory" and command == "init-from":
        return "is a directory"  # click's own check of the --init-from path
    if kind == "directory" and command == "eval":
        return "holds no checkpoints"  # a folder given to eval is taken for a run folder
    if kind == "missing" and command == "resume":
        return "no checkpoints/last.npz"
    if kind == "missing" and command in ("eval", "init-from"):
        return "does not exist"
    return BAD[kind]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", list(BAD))
def test_bad_checkpoint_refused(runs, tmp_path, kind, command):
    expected = _expect(kind, command)
    if command == "resume":
        run = tmp_path / "run"
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(runs["run"] / "config.yaml", run / "config.yaml")
        bad = build_bad(kind, runs, run / "checkpoints" / "last.npz")
        before = bad.read_bytes() if bad.is_file() else None
        code, out = invoke("train", run / "config.yaml", "--resume", run, "--no-progress")
        if before is not None:
            assert bad.read_bytes() == before  # a refused checkpoint is left exactly as it was
    else:
        bad = build_bad(kind, runs, tmp_path / "bad.npz")
        if command == "eval":
            code, out = invoke("eval", bad)
        else:
            code, out = invoke("train", runs["cfg"], "--init-from", bad, "--run-dir", tmp_path / "new",
                               "--no-progress")
    if expected is None:
        assert code == 0, out
        return
    assert code == 2, out
    assert expected.lower() in out.lower(), out
    if kind not in ("directory", "missing") or command != "init-from":
        assert "bad.npz" in out or "last.npz" in out or str(tmp_path) in out, out  # names the file
    assert not list(tmp_path.glob("UNPICKLED-*")) and not list(tmp_path.rglob("UNPICKLED-*")), \
        "loading unpickled an object"


def test_load_never_unpickles(tmp_path, runs):
    for kind in ("object-array", "object-meta", "pickle-file"):
        path = build_bad(kind, runs, tmp_path / f"{kind}.npz")
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
    assert not list(tmp_path.glob("UNPICKLED-*"))
    # the payload is live: unpickling it for real does create the marker (so the test above means something)
    with np.load(tmp_path / "object-array.npz", allow_pickle=True) as npz:
        for k in npz.files:
            npz[k]
    assert (tmp_path / "UNPICKLED-param").exists()


def _small_checkpoint(path: Path) -> bytes:
    rng = np.random.default_rng(0)
    save_checkpoint(path, Checkpoint(params={"1.W": rng.standard_normal((4, 3)).astype(np.float32),
                                             "1.b": np.zeros(3, np.float32)},
                                     optim={"velocity.0": rng.standard_normal((4, 3)).astype(np.float32)},
                                     extra={"norm_mean": np.array([0.1], np.float32)},
                                     meta={"epoch": 3, "config": {"name": "x"}}))
    return path.read_bytes()


def test_every_single_byte_flip_is_refused_or_harmless(tmp_path):
    """Flip each byte of a (small) checkpoint in turn: loading either refuses with CheckpointError or
    returns exactly the original arrays and metadata (the byte was in an unused zip field) - never
    silently different weights, never another exception."""
    path = tmp_path / "c.npz"
    data = _small_checkpoint(path)
    ref = load_checkpoint(path)
    refused = harmless = 0
    bad = tmp_path / "bad.npz"
    for pos in range(len(data)):
        bad.write_bytes(flipped(data, pos))
        try:
            got = load_checkpoint(bad)
        except CheckpointError:
            refused += 1
            continue
        for group in ("params", "optim", "extra"):
            a, b = getattr(ref, group), getattr(got, group)
            assert a.keys() == b.keys(), pos
            for k in a:
                assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (pos, k)
        assert got.meta == ref.meta, pos
        harmless += 1
    assert refused + harmless == len(data)
    assert refused > len(data) * 0.7  # all array bytes, headers and metadata are checksummed


def test_truncation_at_every_length_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    data = _small_checkpoint(path)
    bad = tmp_path / "cut.npz"
    lengths = sorted(set(range(0, len(data), 3)) | set(range(max(0, len(data) - 64), len(data))))
    for n in lengths:
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="empty|truncated|corrupt|not a .npz"):
            load_checkpoint(bad)


def test_resume_of_a_checkpoint_without_run_state_is_refused(runs, tmp_path):
    """A checkpoint that loads but lacks the optimizer/scheduler/RNG state a resume needs."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(runs["run"] / "config.yaml", run / "config.yaml")
    rewrite(runs["good"], run / "checkpoints" / "last.npz",
            lambda e: set_meta(e, {k: v for k, v in meta_of(e).items() if k not in ("rng", "optimizer")}))
    code, out = invoke("train", run / "config.yaml", "--resume", run, "--no-progress")
    assert code == 2 and "incomplete or inconsistent" in out, out


def test_eval_of_a_checkpoint_with_an_invalid_embedded_config(runs, tmp_path):
    def break_config(e):
        meta = meta_of(e)
        meta["config"]["model"][1]["out_features"] = "many"
        set_meta(e, meta)

    bad = rewrite(runs["good"], tmp_path / "bad.npz", break_config)
    code, out = invoke("eval", bad)
    assert code == 2 and "invalid config" in out and "out_features" in out, out
    no_cfg = rewrite(runs["good"], tmp_path / "nocfg.npz",
                     lambda e: set_meta(e, {k: v for k, v in meta_of(e).items() if k != "config"}))
    code, out = invoke("eval", no_cfg)
    assert code == 2 and "holds no config" in out, out
