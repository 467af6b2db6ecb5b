"""Training recipes in a real run: metrics.csv's grad_norm column (the epoch's mean global gradient norm
before clipping), and a one-cycle run with clipping and balanced class weights that is stopped inside an
epoch and resumed, ending bit-identical to a run that was never stopped."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import tiny_config, write_config
from nntrain.training.checkpoint import load_checkpoint
from nntrain.training.trainer import Interrupted, Trainer


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def load(tmp_path: Path, **changes: Any) -> dict:
    import nntrain

    return nntrain.load_config(write_config(tmp_path / "c.yaml", tiny_config(**changes)))


def watch_steps(log: list[tuple[int, float, float]], stop_after: int | None = None):
    """An on_start hook recording (epoch, lr, grad norm) of every optimizer step; with `stop_after`, it asks
    the trainer to stop (as Ctrl-C does) after that many steps."""

    def on_start(trainer: Trainer, folder: Any) -> None:
        opt, step = trainer.parts.optimizer, trainer.parts.optimizer.step

        def watched() -> None:
            lr = opt.lr
            step()
            log.append((trainer.state.epoch, lr, opt.grad_norm))
            if stop_after is not None and len(log) == stop_after:
                trainer.stop_requested = True

        opt.step = watched

    return on_start


def test_grad_norm_is_the_epochs_mean_norm_in_metrics_csv(tmp_path: Path) -> None:
    from nntrain.training.runner import train

    steps: list[tuple[int, float, float]] = []
    folder, _ = train(load(tmp_path), run_dir=tmp_path / "run", progress=False, on_start=watch_steps(steps))
    rows = read_metrics(folder)
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "grad_norm", "seconds"]
    for epoch, row in enumerate(rows):
        norms = [n for e, _, n in steps if e == epoch]
        assert norms and all(math.isfinite(n) and n > 0 for n in norms)
        assert float(row["grad_norm"]) == pytest.approx(float(np.mean(norms)), rel=1e-12)


def test_one_cycle_run_with_clipping_and_balanced_weights_resumes_exactly_inside_an_epoch(tmp_path: Path) -> None:
    from nntrain.training.runner import train

    cfg = load(tmp_path, optimizer={"type": "adamw", "lr": 0.003, "clip_grad_norm": 0.5},
               scheduler={"type": "onecycle", "pct_start": 0.4},
               loss={"type": "softmax_cross_entropy", "label_smoothing": 0.1, "class_weights": "balanced"},
               train={"epochs": 2, "batch_size": 64})
    steps: list[tuple[int, float, float]] = []
    watch, weights = watch_steps(steps), []

    def on_start(trainer: Trainer, folder: Any) -> None:
        weights.append(trainer.parts.loss.weights)
        watch(trainer, folder)

    whole, _ = train(cfg, run_dir=tmp_path / "whole", progress=False, on_start=on_start)
    # balanced: N/(K·count_k) from the training split's labels
    assert weights[0] is not None and weights[0].shape == (10,) and np.ptp(weights[0]) > 0
    per_epoch = len(steps) // 2
    cut = per_epoch + 3   # inside the second epoch
    with pytest.raises(Interrupted):
        train(cfg, run_dir=tmp_path / "cut", progress=False, on_start=watch_steps([], stop_after=cut))
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.npz").meta["batch"] == 3
    train(cfg, resume=tmp_path / "cut", progress=False)

    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(whole)]
    assert rows == [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(tmp_path / "cut")]
    a, b = (load_checkpoint(run / "checkpoints" / "last.npz") for run in (whole, tmp_path / "cut"))
    for group in ("params", "optim"):
        assert getattr(a, group).keys() == getattr(b, group).keys()
        for key, value in getattr(a, group).items():
            assert np.array_equal(value, getattr(b, group)[key]), f"{group}/{key}"
    assert a.meta["scheduler"] == b.meta["scheduler"] and a.meta["optimizer"] == b.meta["optimizer"]

    # the lr moved every batch: up to max_lr (the optimizer's lr) and down; metrics.csv has each epoch's first
    lrs = [lr for _, lr, _ in steps]
    assert lrs[0] == pytest.approx(0.003 / 25) and max(lrs) == pytest.approx(0.003, rel=1e-3)
    assert [float(r["lr"]) for r in rows] == [lrs[0], lrs[per_epoch]]
    assert a.meta["optimizer"]["options"]["betas"][0] == pytest.approx(0.95, abs=1e-3)   # β1 cycled back up
    # clipping was on and did clip: the recorded norms (before clipping) are above the limit
    assert all(float(r["grad_norm"]) > 0.5 for r in rows)
