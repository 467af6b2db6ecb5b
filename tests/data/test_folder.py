"""`dataset: folder`: image folders listed without decoding, decoded like their source, cached (and read
again when changed), a stratified test split fixed by the seed, bad images skipped with a warning or
refused, and a tiny run trained end to end whose eval and predict show the folder's class names."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli, write_config
from nntrain.data import folder as folder_mod
from nntrain.data.folder import load_folder, scan_folder, stratified_split
from nntrain.data.mnist import load_mnist_mini
from nntrain.data.registry import data_info
from nntrain.errors import DataError
from nntrain.rng import stream

sys.path.insert(0, str(REPO / "scripts"))
from make_example_data import balanced_subset, write_png_folder  # noqa: E402

NAMES = ["zero", "one", "two"]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Caches go to a fresh ~/.cache of this test (subprocesses inherit it)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def mini_digits(per_class: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` mnist-mini images of digits 0, 1, 2 (uint8 (N, 1, 28, 28), labels)."""
    train_x, train_y, test_x, test_y = load_mnist_mini()
    x, y = (train_x, train_y) if split == "train" else (test_x, test_y)
    keep = balanced_subset(y, per_class)
    keep = keep[y[keep] < 3]
    return x[keep], y[keep]


def make_folder(root: Path, per_class: int = 40) -> tuple[np.ndarray, np.ndarray]:
    x, y = mini_digits(per_class)
    write_png_folder(root, x, y, NAMES)
    return x, y


def folder_cfg(root: Path, **data) -> dict:
    return {"name": "folder", "seed": 0,
            "data": {"dataset": "folder", "root": str(root), "image_size": [28, 28], "color": "grey", **data},
            "model": [{"type": "flatten"}, {"type": "linear", "out_features": 16}, {"type": "relu"},
                      {"type": "linear", "out_features": 3}],
            "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}, "train": {"epochs": 1, "batch_size": 32}}


def test_info_comes_from_listing_the_folders_without_decoding(tmp_path, monkeypatch):
    make_folder(tmp_path / "d", 10)
    monkeypatch.setattr(folder_mod, "decode_images", None)   # listing must not decode
    info = data_info({"dataset": "folder", "root": str(tmp_path / "d"), "image_size": [20, 24], "color": "rgb",
                      "test_size": 0.2})
    assert info.class_names == ("one", "two", "zero") and info.num_classes == 3   # folder names, sorted
    assert info.input_shape == (3, 20, 24)
    assert info.num_train + info.num_test == 30 and info.num_test == 6


def test_images_decode_exactly_and_the_cache_is_used_until_the_folder_changes(tmp_path, home, monkeypatch):
    x, y = make_folder(tmp_path / "d", 10)
    classes = ["zero", "one", "two"]   # in label order, so labels match the source's
    names, tr_x, tr_y, te_x, te_y = load_folder(tmp_path / "d", (28, 28), "grey", 0.2, lambda: stream(0, "test_split"),
                                                classes, progress=False)
    assert names == tuple(classes) and tr_x.dtype == np.uint8 and tr_x.shape[1:] == (1, 28, 28)
    got_x, got_y = np.concatenate([tr_x, te_x]), np.concatenate([tr_y, te_y])
    order = np.lexsort((got_x.reshape(len(got_x), -1).sum(1), got_y))
    want = np.lexsort((x.reshape(len(x), -1).sum(1), y))
    assert np.array_equal(got_x[order], x[want]) and np.array_equal(got_y[order], y[want])   # PNG is lossless
    caches = list((home / ".cache" / "nntrain" / "folders").glob("*.npz"))
    assert len(caches) == 1
    with np.load(caches[0], allow_pickle=False) as z:
        assert z["images"].shape == (30, 1, 28, 28)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the folder is unchanged")

    monkeypatch.setattr(folder_mod, "decode_images", no_decoding)
    again = load_folder(tmp_path / "d", (28, 28), "grey", 0.2, lambda: stream(0, "test_split"), classes, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(again[1:], (tr_x, tr_y, te_x, te_y)))
    Image.fromarray(x[0, 0]).save(tmp_path / "d" / "one" / "extra.png")   # the folder changed: decoded again
    with pytest.raises(AssertionError, match="decoded although"):
        load_folder(tmp_path / "d", (28, 28), "grey", 0.2, lambda: stream(0, "test_split"), classes, progress=False)


def test_resize_and_rgb(tmp_path):
    make_folder(tmp_path / "d", 4)
    _, tr_x, _, te_x, _ = load_folder(tmp_path / "d", (14, 20), "rgb", 0.25, lambda: stream(0, "test_split"),
                                      progress=False)
    assert tr_x.shape[1:] == (3, 14, 20) and np.array_equal(tr_x[:, 0], tr_x[:, 2])


def test_stratified_split_is_fixed_by_the_seed():
    labels = np.repeat(np.arange(4), [10, 20, 5, 1])
    tr, te = stratified_split(labels, 0.2, stream(0, "test_split"))
    assert [int((labels[te] == k).sum()) for k in range(4)] == [2, 4, 1, 0]
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(len(labels)))
    assert np.array_equal(te, stratified_split(labels, 0.2, stream(0, "test_split"))[1])
    assert not np.array_equal(te, stratified_split(labels, 0.2, stream(1, "test_split"))[1])


def test_train_and_test_folders_are_used_as_given(tmp_path):
    x, y = mini_digits(8)
    write_png_folder(tmp_path / "d" / "train", x, y, NAMES)
    tx, ty = mini_digits(3, "test")
    write_png_folder(tmp_path / "d" / "test", tx, ty, NAMES)
    names, tr_x, tr_y, te_x, te_y = load_folder(tmp_path / "d", (28, 28), "grey", 0.2, lambda: 1 / 0,
                                                progress=False)
    assert len(tr_x) == 24 and len(te_x) == 9 and names == ("one", "two", "zero")


def bad_image_cases(folder: Path) -> dict[str, Path]:
    """A text file, a truncated JPEG and a decompression bomb (a PNG claiming huge dimensions)."""
    (folder / "notes.png").write_text("not an image")
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "whole.jpg").unlink()
    return {"not an image": folder / "notes.png", "truncated": folder / "truncated.jpg"}


def test_unreadable_images_are_skipped_with_a_warning_or_refused_when_strict(tmp_path, caplog):
    make_folder(tmp_path / "d", 40)
    bad = bad_image_cases(tmp_path / "d" / "one")
    with caplog.at_level(logging.WARNING):
        _, tr_x, _, te_x, _ = load_folder(tmp_path / "d", (28, 28), "grey", 0.2, lambda: stream(0, "test_split"),
                                          progress=False)
    assert len(tr_x) + len(te_x) == 120
    assert "skipped 2 unreadable images" in caplog.text
    assert all(str(p) in caplog.text for p in bad.values())
    with pytest.raises(DataError, match="truncated.jpg") as e:
        load_folder(tmp_path / "d", (28, 28), "grey", 0.2, lambda: stream(0, "test_split"), strict=True,
                    progress=False)
    assert "notes.png" in str(e.value) and "strict" in str(e.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit, reason", [(1000, "DecompressionBombError"), (3000, "exceed the limit of 3000")])
def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, monkeypatch, limit, reason):
    make_folder(tmp_path / "d", 3)
    Image.fromarray(np.zeros((60, 60), np.uint8)).save(tmp_path / "d" / "two" / "bomb.png")
    # 3600 pixels: over twice the limit Pillow refuses itself; between once and twice it only warns
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match=rf"bomb\.png \(.*{reason}"):
        load_folder(tmp_path / "d", (28, 28), "grey", 0.2, lambda: stream(0, "test_split"), strict=True,
                    progress=False)


def test_most_images_unreadable_is_refused_even_without_strict(tmp_path):
    make_folder(tmp_path / "d", 2)
    for k in range(3):
        (tmp_path / "d" / "zero" / f"junk{k}.png").write_bytes(b"\x89PNG junk")
    with pytest.raises(DataError, match="more than 10%"):
        load_folder(tmp_path / "d", (28, 28), "grey", 0.2, lambda: stream(0, "test_split"), progress=False)


@pytest.mark.parametrize("case, message", [
    ("empty class", "class folder .*two holds no images"),
    ("one class", "1 class folder .*at least two"),
    ("missing", "does not exist"),
])
def test_bad_folders_exit_2_with_a_message(tmp_path, case, message):
    root = tmp_path / "d"
    if case == "empty class":
        make_folder(root, 3)
        for f in (root / "two").iterdir():
            f.unlink()
    elif case == "one class":
        make_folder(root, 3)
        for name in ("one", "two"):
            for f in (root / name).iterdir():
                f.unlink()
            (root / name).rmdir()
    with pytest.raises(DataError, match=message):
        scan_folder(root)
    cfg = write_config(tmp_path / "c.yaml", folder_cfg(root))
    proc = run_cli("train", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(root) in proc.stderr


def test_train_eval_predict_end_to_end_with_the_folders_class_names(tmp_path):
    x, _ = make_folder(tmp_path / "d", 40)
    (tmp_path / "d" / "zero" / "broken.png").write_text("oops")
    cfg = write_config(tmp_path / "c.yaml", folder_cfg(tmp_path / "d"))
    strict = run_cli("train", str(cfg), "--strict", "--run-dir", str(tmp_path / "strict"))
    assert strict.returncode == 2 and "broken.png" in strict.stderr
    proc = run_cli("train", str(cfg), "--run-dir", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 unreadable image" in proc.stderr and "broken.png" in proc.stderr
    ev = run_cli("eval", str(tmp_path / "run"))
    assert ev.returncode == 0, ev.stderr
    assert all(name in ev.stdout for name in NAMES)
    Image.fromarray(x[0, 0]).save(tmp_path / "digit.png")
    os.rename(tmp_path / "d", tmp_path / "moved")   # predict needs only the run, not its data
    pred = run_cli("predict", str(tmp_path / "run"), str(tmp_path / "digit.png"))
    assert pred.returncode == 0, pred.stderr
    assert any(name in pred.stdout for name in NAMES)


def test_cifar10_jpegs_decode_to_pillows_rgb_pixels(tmp_path):
    """A sample of real JPEG files (the CIFAR-10 JPEG archive under the data root, when present) read
    as a train/test folder: each image is Pillow's own RGB decode of that file, unresized at 32x32."""
    import io
    import tarfile

    from nntrain.data.registry import resolve_root

    archive = resolve_root(None) / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"no CIFAR-10 JPEG archive at {archive}")
    # the archive lists test/ then train/, classes in order: the first two classes come early
    wanted = {(split, cls): 5 for split in ("train", "test") for cls in ("airplane", "automobile")}
    expected = {}
    with tarfile.open(archive) as tf:
        for member in tf:
            parts = member.name.split("/")[-3:]
            if not member.isfile() or len(parts) != 3 or wanted.get((parts[0], parts[1]), 0) == 0:
                continue
            wanted[parts[0], parts[1]] -= 1
            data = tf.extractfile(member).read()
            (tmp_path / "c" / parts[0] / parts[1]).mkdir(parents=True, exist_ok=True)
            (tmp_path / "c" / parts[0] / parts[1] / parts[2]).write_bytes(data)
            expected[parts[0], parts[1], parts[2]] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            if not any(wanted.values()):
                break
    names, tr_x, tr_y, te_x, te_y = load_folder(tmp_path / "c", (32, 32), "rgb", 0.2, lambda: 1 / 0, progress=False)
    assert names == ("airplane", "automobile") and len(tr_x) == len(te_x) == 10
    for split, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
        files = sorted((cls, name) for s, cls, name in expected if s == split)
        for img, label, (cls, name) in zip(x, y, files):
            assert names[label] == cls
            assert np.array_equal(img, expected[split, cls, name].transpose(2, 0, 1))
