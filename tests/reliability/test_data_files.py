"""Bad data files through `nntrain train`: truncated, wrong magic, wrong dimensions, label out of range, empty,
missing (offline and with an unreachable mirror), CIFAR-10's Python layout (pickles, never opened) -> exit 2,
no traceback, and a message naming the file. Archive members escaping the target folder are refused at
library level in tests/data/test_cifar.py."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config
from test_checkpoints import invoke, make_data_root, small_config

pytestmark = pytest.mark.reliability

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def damage(folder: Path, case: str) -> tuple[str, str]:
    """Damage one file of a good mnist folder; returns (file name the message must name, words it must hold)."""
    img = folder / TRAIN_IMAGES
    lab = folder / TRAIN_LABELS
    data = img.read_bytes()
    if case == "truncated-data":
        img.write_bytes(data[:len(data) - 100])
        return TRAIN_IMAGES, "truncated"
    if case == "truncated-header":
        img.write_bytes(data[:10])
        return TRAIN_IMAGES, "truncated"
    if case == "truncated-gzip":
        (folder / f"{TEST_IMAGES}.gz").write_bytes(gzip.compress((folder / TEST_IMAGES).read_bytes())[:300])
        (folder / TEST_IMAGES).unlink()
        return f"{TEST_IMAGES}.gz", "truncated"
    if case == "wrong-magic":
        img.write_bytes(b"\x08\x03\x00\x00" + data[4:])
        return TRAIN_IMAGES, "not an IDX file"
    if case == "labels-for-images":
        img.write_bytes(lab.read_bytes())
        return TRAIN_IMAGES, "expected an IDX image file"
    if case == "wrong-image-size":
        img.write_bytes(header(0x08, (200, 20, 20)) + bytes(200 * 400))
        return TRAIN_IMAGES, "expected 28 x 28"
    if case == "wrong-dimensions":
        img.write_bytes(header(0x08, (200, 784)) + data[16:])
        return TRAIN_IMAGES, "3 dimensions"
    if case == "label-out-of-range":
        raw = bytearray(lab.read_bytes())
        raw[8 + 17] = 10
        lab.write_bytes(bytes(raw))
        return TRAIN_LABELS, "label 10 at index 17 is out of range"
    if case == "label-255":
        raw = bytearray((folder / TEST_LABELS).read_bytes())
        raw[-1] = 255
        (folder / TEST_LABELS).write_bytes(bytes(raw))
        return TEST_LABELS, "out of range"
    if case == "empty-file":
        lab.write_bytes(b"")
        return TRAIN_LABELS, "empty"
    if case == "trailing-bytes":
        lab.write_bytes(lab.read_bytes() + b"\x00" * 7)
        return TRAIN_LABELS, "trailing bytes"
    if case == "count-mismatch":
        lab.write_bytes(header(0x08, (150,)) + lab.read_bytes()[8:158])
        return TRAIN_LABELS, "150 labels"
    if case == "huge-header":
        img.write_bytes(header(0x08, (4_000_000_000, 28, 28)))
        return TRAIN_IMAGES, "header is corrupt"
    if case == "a-folder":
        img.unlink()
        img.mkdir()
        (folder / f"{TRAIN_IMAGES}.gz").mkdir()
        return TRAIN_IMAGES, "missing"
    raise AssertionError(case)


CASES = ["truncated-data", "truncated-header", "truncated-gzip", "wrong-magic", "labels-for-images",
         "wrong-image-size", "wrong-dimensions", "label-out-of-range", "label-255", "empty-file", "trailing-bytes",
         "count-mismatch", "huge-header", "a-folder"]


@pytest.mark.parametrize("case", CASES)
def test_bad_data_file(tmp_path, case):
    root = make_data_root(tmp_path / "data", n_train=200, n_test=20)
    name, words = damage(root / "mnist", case)
    cfg = small_config(root)
    code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", tmp_path / "run",
                       "--no-progress")
    assert code == 2, out
    assert name in out and words.lower() in out.lower(), out
    assert out.lstrip().splitlines()[-1].startswith("error:") or "error:" in out, out


def test_missing_file_offline(tmp_path):
    root = make_data_root(tmp_path / "data")
    (root / "mnist" / TEST_LABELS).unlink()
    cfg = small_config(root)
    code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", tmp_path / "run",
                       "--no-progress")
    assert code == 2, out
    assert f"{TEST_LABELS}.gz" in out and str(root / "mnist") in out and "download: true" in out, out


def test_missing_file_with_unreachable_mirror(tmp_path, monkeypatch):
    root = make_data_root(tmp_path / "data")
    (root / "mnist" / TRAIN_LABELS).unlink()
    cfg = small_config(root)
    cfg["data"]["download"] = True
    monkeypatch.setenv("NNTRAIN_MIRROR", "http://127.0.0.1:1")
    code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", tmp_path / "run",
                       "--no-progress")
    assert code == 2, out
    assert f"{TRAIN_LABELS}.gz" in out and "127.0.0.1:1" in out and "NNTRAIN_MIRROR" in out, out
    assert not [p for p in (root / "mnist").iterdir() if p.name.endswith(".tmp")]


def test_cifar_python_layout_is_refused_unopened(tmp_path):
    """A data root holding only cifar-10-batches-py/ (hostile pickles): exit 2, a message pointing at the
    binary layout, and nothing in the folder is executed."""
    import os
    import pickle

    class Hostile:
        def __reduce__(self):
            return os.remove, (str(marker),)

    marker = tmp_path / "still-here"
    marker.write_text("x")
    folder = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps(Hostile(), protocol=2))
    cfg = small_config(tmp_path / "data")
    cfg["data"]["dataset"] = "cifar10"
    code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", tmp_path / "run",
                       "--no-progress")
    assert code == 2, out
    assert str(folder) in out and "cifar-10-batches-bin" in out and "cifar-10-binary.tar.gz" in out, out
    assert marker.exists()


def test_eval_with_a_damaged_test_file(tmp_path):
    """The data a finished run is evaluated on goes bad afterwards: eval refuses, naming the file."""
    root = make_data_root(tmp_path / "data")
    cfg = small_config(root)
    run = tmp_path / "run"
    code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", run, "--no-progress")
    assert code == 0, out
    p = root / "mnist" / TEST_IMAGES
    p.write_bytes(p.read_bytes()[:-1])
    code, out = invoke("eval", run)
    assert code == 2 and TEST_IMAGES in out and "truncated" in out, out
