"""Changed data do not go unnoticed: every checkpoint records a fingerprint of its data (dataset, split
sizes, a BLAKE2b hash of every split's images and labels), the nntrain version and the thread counts;
`train --resume` and `eval` compare the fingerprint and the normalisation statistics and refuse other
data (eval --allow-other-data: a warning); an old checkpoint without a fingerprint is warned about.
Resuming with another thread count says that bit-exactness holds only for the same count."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config
from nntrain import __version__
from nntrain.data.idx import read_idx, write_idx
from nntrain.training.checkpoint import load_checkpoint
from test_checkpoints import invoke, make_data_root, meta_of, rewrite, set_meta, small_config

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("data-checks")
    root = make_data_root(tmp / "data")
    cfg_path = write_config(tmp / "c.yaml", small_config(root))
    code, out = invoke("--threads", "1", "train", cfg_path, "--run-dir", tmp / "run", "--no-progress")
    assert code == 0, out
    return {"tmp": tmp, "cfg_path": cfg_path, "run": tmp / "run", "root": root}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_checkpoints_record_fingerprint_version_and_threads(finished):
    meta = load_checkpoint(finished["run"] / "checkpoints" / "last.npz").meta
    assert meta["data"]["dataset"] == "mnist"
    assert meta["data"]["sizes"] == {"train": 160, "val": 40, "test": 50}
    assert meta["data"]["hash"].startswith("blake2b-128:") and len(meta["data"]["hash"]) == 12 + 32
    assert meta["nntrain_version"] == __version__
    assert meta["threads"]["blas"] == 1 and meta["threads"]["workers"] >= 1


def one_pixel_changed(root: Path) -> None:
    path = root / "mnist" / "train-images-idx3-ubyte"
    images = read_idx(path).copy()
    images[3, 10, 10] ^= 0x40
    write_idx(path, images)


def test_resume_on_changed_data_is_refused(tmp_path, finished):
    run = copy(finished["run"], tmp_path / "run")
    root = copy(finished["root"], tmp_path / "data")
    one_pixel_changed(root)
    cfg = small_config(root, train={"epochs": 2, "batch_size": 50})
    before = (run / "checkpoints" / "last.npz").read_bytes()
    code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--resume", run, "--force", "--no-progress")
    assert code == 2, out
    assert "not the ones" in out and "hash blake2b-128:" in out and "--init-from" in out, out
    assert (run / "checkpoints" / "last.npz").read_bytes() == before


def test_eval_on_changed_data_is_refused_unless_allowed(tmp_path, finished, caplog):
    run = copy(finished["run"], tmp_path / "run")
    root = copy(finished["root"], tmp_path / "data")
    one_pixel_changed(root)
    code, out = invoke("eval", run, "--data-root", root)
    assert code == 2 and "not the ones" in out and "--allow-other-data" in out, out
    assert not (run / "eval").exists()
    code, out = invoke("eval", run, "--data-root", root, "--allow-other-data")
    assert code == 0, out
    assert "going on as asked" in caplog.text
    code, out = invoke("eval", run)   # the run's own data: no complaint
    assert code == 0, out


def test_eval_on_data_of_other_size_is_refused(tmp_path, finished):
    smaller = make_data_root(tmp_path / "smaller", n_train=190)
    code, out = invoke("eval", finished["run"], "--data-root", smaller)
    assert code == 2 and "sizes" in out and '"train": 160' in out and '"train": 150' in out, out


def test_a_checkpoint_without_fingerprint_is_warned_about_not_refused(tmp_path, finished, caplog):
    run = copy(finished["run"], tmp_path / "run")
    for name in ("best.npz", "last.npz"):
        path = run / "checkpoints" / name
        rewrite(path, path, lambda e: set_meta(e, {k: v for k, v in meta_of(e).items() if k != "data"}))
    code, out = invoke("eval", run)
    assert code == 0, out
    assert "holds no data fingerprint" in caplog.text
    code, out = invoke("train", "--resume", run, "-s", "train.epochs=2", "--force", "--no-progress")
    assert code == 0, out


def test_other_normalisation_statistics_are_refused(tmp_path, finished):
    """An old checkpoint (no fingerprint) is still checked on its normalisation statistics."""
    run = copy(finished["run"], tmp_path / "run")
    path = run / "checkpoints" / "best.npz"

    def change(e):
        set_meta(e, {k: v for k, v in meta_of(e).items() if k != "data"})
        e["extra/norm_mean"] = e["extra/norm_mean"] + np.float32(0.05)

    rewrite(path, path, change)
    code, out = invoke("eval", run)
    assert code == 2 and "normalisation mean/std" in out, out


def test_fingerprint_of_mnist_takes_well_under_a_second():
    from nntrain.data.prepare import prepare

    if not (Path(os.environ.get("NNTRAIN_DATA", "/nonexistent")) / "mnist").is_dir():
        pytest.skip("needs the real MNIST under $NNTRAIN_DATA")
    data = prepare({"dataset": "mnist", "val_size": 5000, "download": False}, 0, progress=False)
    t = time.perf_counter()
    fp = data.fingerprint
    seconds = time.perf_counter() - t
    assert fp["sizes"] == {"train": 55000, "val": 5000, "test": 10000}
    assert seconds < 0.5, f"{seconds:.2f} s for {sum(a.nbytes for a in (data.train_x, data.test_x)) / 1e6:.0f} MB"
    assert data.fingerprint is fp, "computed once"


def test_resume_with_another_thread_count_warns(tmp_path, finished):
    run = copy(finished["run"], tmp_path / "run")
    code, out = invoke("--threads", "2", "train", "--resume", run, "-s", "train.epochs=2", "--force", "--no-progress")
    assert code == 0, out
    log = (run / "log.txt").read_text()
    assert "saved with 1 BLAS thread(s)" in log and "bit-exactness" in log and "--threads 1" in log, log
    code, out = invoke("--threads", "2", "train", "--resume", run, "-s", "train.epochs=3", "--force", "--no-progress")
    assert code == 0, out
    assert (run / "log.txt").read_text().count("bit-exactness") == 1, "same count as the last save: no warning"
    assert json.loads((run / "test.json").read_text())["epochs_trained"] == 3


def test_forced_change_of_the_data_goes_on_with_a_warning(tmp_path, finished):
    """--force -s data.val_size=...: other data are what the user asked for; said in the log, not refused."""
    run = copy(finished["run"], tmp_path / "run")
    code, out = invoke("train", "--resume", run, "-s", "data.val_size=30", "-s", "train.epochs=2", "--force",
                       "--no-progress")
    assert code == 0, out
    log = (run / "log.txt").read_text()
    assert "not the ones" in log and "going on as asked" in log, log
