"""Numerics at the edges: an exploding learning rate ends with the NaN stop (exit 1) and leaves the last good
checkpoint untouched; no validation split, a batch of 1 and a dataset smaller than the batch size train end
to end through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config
from nntrain.training.checkpoint import load_checkpoint
from nntrain.data import iterate_batches, num_batches
from test_checkpoints import invoke, make_data_root, small_config

pytestmark = pytest.mark.reliability


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def all_finite(ckpt) -> bool:
    return all(np.isfinite(v).all() for group in (ckpt.params, ckpt.optim) for v in group.values())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """30 training and 7 test images: smaller than any usual batch."""
    return make_data_root(tmp_path_factory.mktemp("tiny"), n_train=30, n_test=7)


def test_learning_rate_exploding_after_epoch_1(tmp_path, data_root):
    # lr 0.05 in epoch 1, then 5e28: the loss becomes NaN in epoch 2
    cfg = small_config(data_root, scheduler={"type": "step", "step_size": 1, "gamma": 1.0e30},
                       train={"epochs": 3, "batch_size": 50})
    run = tmp_path / "run"
    code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", run, "--no-progress")
    assert code == 1, out
    assert "loss became nan at epoch 2" in out and "learning rate" in out and str(run / "checkpoints" / "last.npz") in out
    last = load_checkpoint(run / "checkpoints" / "last.npz")
    assert last.meta["epoch"] == 1 and all_finite(last)           # epoch 1's weights, not NaN ones
    best = load_checkpoint(run / "checkpoints" / "best.npz")
    assert best.meta["epoch"] == 1 and all_finite(best)
    assert [r["epoch"] for r in rows(run)] == ["1"] and np.isfinite(float(rows(run)[0]["train_loss"]))
    assert not (run / "test.json").exists()                       # a failed run reports no test result
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    # the good checkpoint is usable: eval works, and it starts a new run with a sane lr
    code, out = invoke("eval", run / "checkpoints" / "last.npz")
    assert code == 0, out
    cfg2 = small_config(data_root)
    code, out = invoke("train", write_config(tmp_path / "c2.yaml", cfg2), "--init-from", run / "checkpoints" / "last.npz",
                       "--run-dir", tmp_path / "run2", "--no-progress")
    assert code == 0, out


def test_exploding_from_the_first_batch_leaves_no_checkpoint(tmp_path, data_root):
    cfg = small_config(data_root, optimizer={"type": "sgd", "lr": 1.0e30, "momentum": 0.9})
    run = tmp_path / "run"
    code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", run, "--no-progress")
    assert code == 1 and "loss became" in out, out
    assert not (run / "checkpoints" / "last.npz").exists()   # nothing NaN was saved as "good"


def test_no_validation_split(tmp_path, data_root):
    cfg = small_config(data_root, train={"epochs": 2, "batch_size": 50})
    cfg["data"]["val_size"] = 0
    run = tmp_path / "run"
    code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", run, "--no-progress")
    assert code == 0, out
    r = rows(run)
    assert len(r) == 2 and all(x["val_loss"] == "" and x["val_acc"] == "" for x in r)
    summary = json.loads((run / "test.json").read_text())
    assert "best_train_acc" in summary and 0 <= summary["test_acc"] <= 1   # best.npz picked by train_acc
    assert load_checkpoint(run / "checkpoints" / "best.npz").meta["epoch"] in (1, 2)


@pytest.mark.parametrize("batch_size, model", [
    (1, None),                                             # a batch of 1 (dropout in the MLP)
    (64, None),                                            # the whole training set (25) is smaller than a batch
    (1, [{"type": "conv2d", "out_channels": 2, "kernel_size": 3}, {"type": "batchnorm"}, {"type": "relu"},
         {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]),
])
def test_tiny_batches_and_tiny_datasets(tmp_path, tiny_root, batch_size, model):
    cfg = small_config(tiny_root, train={"epochs": 2, "batch_size": batch_size, "eval_batch_size": 1000})
    cfg["data"]["val_size"] = 5
    if model:
        cfg["model"] = model
    run = tmp_path / "run"
    code, out = invoke("train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", run, "--no-progress")
    assert code == 0, out
    r = rows(run)
    assert len(r) == 2 and all(np.isfinite(float(x["train_loss"])) and np.isfinite(float(x["val_loss"])) for x in r)
    assert all_finite(load_checkpoint(run / "checkpoints" / "last.npz"))
    summary = json.loads((run / "test.json").read_text())
    assert np.isfinite(summary["test_loss"]) and summary["test_acc"] in {k / 7 for k in range(8)}
    code, out = invoke("eval", run, "--batch-size", "3")
    assert code == 0, out
    assert json.loads((run / "eval" / "best-test" / "metrics.json").read_text())["samples"] == 7


def test_batches_never_empty():
    """The loader never yields an empty batch, whatever the sizes (the last batch may be short)."""
    for n in range(1, 12):
        x, y = np.zeros((n, 1, 2, 2), np.uint8), np.zeros(n, np.int64)
        for bs in range(1, 14):
            sizes = [len(b[1]) for b in iterate_batches(x, y, bs, rng=np.random.default_rng(0))]
            assert sizes and min(sizes) >= 1 and sum(sizes) == n and len(sizes) == num_batches(n, bs)


def test_empty_batch_through_the_model():
    from nntrain import build_model

    model = build_model([{"type": "conv2d", "out_channels": 2, "kernel_size": 3}, {"type": "relu"},
                         {"type": "flatten"}, {"type": "linear", "out_features": 10}], (1, 8, 8))
    z = model.forward(np.zeros((0, 1, 8, 8), np.float32), train=True)
    assert z.shape == (0, 10)
    assert model.backward(np.zeros_like(z)).shape == (0, 1, 8, 8)
