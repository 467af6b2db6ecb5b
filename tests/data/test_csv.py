"""`dataset: csv`: Kaggle's digit-recognizer form (label + one column per pixel) and the path,label form
(image files decoded like a folder's), class names from labels, a stratified test split or a test CSV,
and every malformed row refused with the file and line (exit 2, no traceback)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli, write_config
from nntrain.data.csvdata import load_csv, scan_csv
from nntrain.data.mnist import load_mnist_mini
from nntrain.data.registry import data_info
from nntrain.errors import DataError
from nntrain.rng import stream

sys.path.insert(0, str(REPO / "scripts"))
from make_example_data import balanced_subset, write_pixel_csv  # noqa: E402


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def digits(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    x, y, _, _ = load_mnist_mini()
    keep = balanced_subset(y, per_class)
    return x[keep], y[keep]


def rng_factory():
    return stream(0, "test_split")


def csv_cfg(path: Path, **data) -> dict:
    return {"name": "csv", "seed": 0, "data": {"dataset": "csv", "path": str(path), **data},
            "model": [{"type": "flatten"}, {"type": "linear", "out_features": 16}, {"type": "relu"},
                      {"type": "linear", "out_features": 10}],
            "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}, "train": {"epochs": 1, "batch_size": 32}}


def test_pixel_csv_gives_the_source_images_and_a_stratified_split(tmp_path):
    x, y = digits(20)
    write_pixel_csv(tmp_path / "d.csv", x, y)
    names, tr_x, tr_y, te_x, te_y = load_csv(tmp_path / "d.csv", None, (1, 28, 28), None, "rgb", 0.2, rng_factory)
    assert names == tuple(str(d) for d in range(10))
    assert tr_x.shape == (160, 1, 28, 28) and te_x.shape == (40, 1, 28, 28) and tr_x.dtype == np.uint8
    assert np.bincount(te_y).tolist() == [4] * 10
    whole = np.concatenate([tr_x, te_x])
    assert sorted(map(bytes, whole)) == sorted(map(bytes, x))
    info = data_info({"dataset": "csv", "path": str(tmp_path / "d.csv"), "image_shape": [1, 28, 28],
                      "test_size": 0.2})
    assert (info.num_classes, info.input_shape, info.num_train, info.num_test) == (10, (1, 28, 28), 160, 40)


def test_path_label_csv_with_class_names_and_a_test_csv(tmp_path):
    x, y = digits(6)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tmp_path / "img").mkdir()
    rows = ["path,label"]
    for i, (img, label) in enumerate(zip(x, y)):
        Image.fromarray(img[0]).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{names[label]}")
    (tmp_path / "train.csv").write_text("\n".join(rows[:51]) + "\n")
    (tmp_path / "test.csv").write_text("\n".join([rows[0], *rows[51:]]) + "\n")
    got, tr_x, tr_y, te_x, te_y = load_csv(tmp_path / "train.csv", tmp_path / "test.csv", None, (28, 28), "grey",
                                           0.2, rng_factory)
    assert got == tuple(sorted(names))
    assert len(tr_x) == 50 and len(te_x) == 10 and np.array_equal(tr_x, x[:50])
    assert [got[k] for k in tr_y] == [names[k] for k in y[:50]]


@pytest.mark.parametrize("text, message", [
    ("label,p0,p1,p2,p3\n1,0,0,0,0\n0,1,2,3\n", r"line 3: 4 columns, but the header has 5"),
    ("label,p0,p1,p2,p3\n1,0,0,0,0\nx,1,2,3,4\n", r"line 3: label 'x' is not an integer"),
    ("label,p0,p1,p2,p3\n1,0,0,0,0\n0,1,2.5,3,4\n", r"line 3, column 3: pixel value '2.5'"),
    ("label,p0,p1,p2,p3\n1,0,0,0,0\n0,1,2,300,4\n", r"line 3: pixel value 300 is outside 0..255"),
    ("p0,p1,p2,p3\n0,0,0,0\n", r"no 'label' column"),
    ("label,p0,p1,p2,p3\n1,0,0,0,0\n1,1,2,3,4\n", r"needs at least two"),
    ("", r"is empty"),
])
def test_malformed_csvs_are_refused_naming_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        scan_csv(path, None, (1, 2, 2))


def test_train_eval_end_to_end_and_bad_rows_exit_2(tmp_path):
    x, y = digits(20)
    write_pixel_csv(tmp_path / "d.csv", x, y)
    cfg = write_config(tmp_path / "c.yaml", csv_cfg(tmp_path / "d.csv", image_shape=[1, 28, 28]))
    proc = run_cli("train", str(cfg), "--run-dir", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    ev = run_cli("eval", str(tmp_path / "run"))
    assert ev.returncode == 0 and "test set: 40 samples" in ev.stdout, ev.stdout + ev.stderr
    with open(tmp_path / "d.csv", "a") as f:
        f.write("7,1,2,3\n")
    bad = run_cli("train", str(cfg), "--run-dir", str(tmp_path / "run2"))
    assert bad.returncode == 2 and "d.csv, line 202: 4 columns" in bad.stderr
