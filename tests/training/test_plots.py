"""The figures say what they show: titles (run name first), labelled axes, the best epoch marked with its
value on the curves (picked as best.npz is), the learning rate on loss.png, the confusion matrix's
accuracy and colour bar. Checked on the matplotlib Figure objects each plot hands to `save_figure`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Annotation

from conftest import png_size, tiny_config
from nntrain.training import plots


def history(epochs: int = 6, lr=lambda e: 0.1) -> list[dict]:
    """metrics.csv rows: val_acc peaks at epoch 4 (0.93), val_loss is lowest at epoch 3 (0.25)."""
    val_acc = [0.80, 0.88, 0.91, 0.93, 0.92, 0.925, 0.90, 0.89][:epochs]
    val_loss = [0.60, 0.35, 0.25, 0.26, 0.30, 0.33, 0.40, 0.45][:epochs]
    return [{"epoch": e, "lr": lr(e), "train_loss": 1.0 / e, "train_acc": 1 - 0.2 / e, "val_loss": val_loss[e - 1],
             "val_acc": val_acc[e - 1]} for e in range(1, epochs + 1)]


def annotations(ax) -> list[str]:
    return [t.get_text() for t in ax.texts if isinstance(t, Annotation)]


def vlines(ax) -> list[float]:
    """x of the vertical lines (axvline) drawn on `ax`."""
    return [float(ln.get_xdata()[0]) for ln in ax.get_lines()
            if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]]


def test_curves_mark_the_best_epoch_of_the_monitor_with_its_value(tmp_path, figures):
    plots.plot_curves(history(), tmp_path, title="mnist-20261129-120000", monitor="val_acc")
    acc, loss = figures["accuracy.png"], figures["loss.png"]
    ax = acc.axes[0]
    assert ax.get_title() == "mnist-20261129-120000 · accuracy per epoch"
    assert loss.axes[0].get_title() == "mnist-20261129-120000 · cross-entropy loss per epoch"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "accuracy")
    assert annotations(ax) == ["best: epoch 4, 0.9300"]
    [star] = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([4], [0.93])
    assert vlines(ax) == [4.0]
    assert annotations(loss.axes[0]) == [] and vlines(loss.axes[0]) == [4.0]   # the epoch, not the value
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "val", "best epoch by val_acc",
                                                                   "best val_acc"]


def test_a_loss_monitor_is_marked_on_the_loss_curves(tmp_path, figures):
    plots.plot_curves(history(), tmp_path, monitor="val_loss")
    loss = figures["loss.png"].axes[0]
    assert annotations(loss) == ["best: epoch 3, 0.25"]
    assert annotations(figures["accuracy.png"].axes[0]) == []
    assert loss.get_title() == "cross-entropy loss per epoch"                    # no run title given


def test_an_explicit_best_wins_over_the_monitor(tmp_path, figures):
    plots.plot_curves(history(), tmp_path, monitor="val_acc", best=(2, 0.88, "train_acc"))
    assert annotations(figures["accuracy.png"].axes[0]) == ["best: epoch 2, 0.8800"]


def test_plain_call_still_works_and_draws_the_learning_rate(tmp_path, figures):
    rows = history(lr=lambda e: 0.1 * 0.1 ** (e // 3))              # 0.1, 0.1, 0.01, ... (a step schedule)
    plots.plot_curves(rows, tmp_path)
    assert png_size(tmp_path / "loss.png")[0] > 300 and png_size(tmp_path / "accuracy.png")[0] > 300
    loss = figures["loss.png"]
    assert len(loss.axes) == 2                                       # the curves and the lr's twin axis
    main, lr_ax = loss.axes
    assert (main.get_xlabel(), main.get_ylabel()) == ("epoch", "cross-entropy loss")
    assert lr_ax.get_ylabel() == "learning rate" and lr_ax.get_yscale() == "log"   # it changed tenfold
    [line] = lr_ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [r["lr"] for r in rows])
    assert "learning rate (right axis)" in [t.get_text() for t in main.get_legend().get_texts()]
    assert annotations(main) == [] and vlines(main) == []
    assert len(figures["accuracy.png"].axes) == 1                    # the lr is drawn on loss.png only


def test_a_constant_lr_stays_linear_and_a_missing_one_is_not_drawn(tmp_path, figures):
    plots.plot_curves(history(), tmp_path)
    assert figures["loss.png"].axes[1].get_yscale() == "linear"
    plots.plot_curves([{k: v for k, v in r.items() if k != "lr"} for r in history()], tmp_path)
    assert len(figures["loss.png"].axes) == 1


def test_best_epoch_follows_the_best_checkpoint_rule():
    rows = [{"epoch": "1", "val_acc": "0.5", "val_loss": ""}, {"epoch": "2", "val_acc": "nan", "val_loss": ""},
            {"epoch": "3", "val_acc": "0.7", "val_loss": ""}, {"epoch": "4", "val_acc": "0.7", "val_loss": ""}]
    assert plots.best_epoch(rows, "val_acc") == (3, 0.7, "val_acc")       # csv strings; the first of equals
    assert plots.best_epoch(rows, "val_loss") is None                     # no value: nothing to mark
    assert plots.best_epoch(history(), "train_loss") == (6, pytest.approx(1 / 6), "train_loss")


def test_a_training_run_titles_its_curves_and_marks_best_npz_epoch(tmp_path, figures):
    from nntrain.config import load_config
    from nntrain.training.checkpoint import load_checkpoint
    from nntrain.training.runner import train
    from conftest import write_config

    cfg = write_config(tmp_path / "tiny.yaml", tiny_config(train={"epochs": 3, "batch_size": 64,
                                                                  "checkpoint_monitor": "val_loss"}))
    run = tmp_path / "run-7"
    train(load_config(cfg), run_dir=run, progress=False)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epoch = load_checkpoint(run / "checkpoints" / "best.npz").meta["epoch"]
    value = float(rows[epoch - 1]["val_loss"])
    assert value == min(float(r["val_loss"]) for r in rows)
    loss = figures["loss.png"].axes[0]
    assert loss.get_title() == "run-7 · cross-entropy loss per epoch"
    assert annotations(loss) == [f"best: epoch {epoch}, {value:.4g}"]
    assert figures["loss.png"].axes[1].get_ylabel() == "learning rate"
    assert figures["health.png"].get_suptitle().startswith("run-7 · training health per layer")


def test_confusion_matrix_title_carries_the_accuracy_and_a_colour_bar(tmp_path, figures):
    cm = np.array([[50, 2, 0], [3, 40, 5], [0, 1, 49]])
    plots.plot_confusion(cm, ["cat", "dog", "bird"], tmp_path / "confusion.png", title="run-1 · test · best.npz")
    fig = figures["confusion.png"]
    ax, bar = fig.axes
    assert ax.get_title() == f"run-1 · test · best.npz · confusion matrix · accuracy {139 / 150:.4f}"
    assert "accuracy 0.9267" in ax.get_title()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert bar.get_ylabel() == "samples" and bar.get_ylim() == pytest.approx((0, 50))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "bird"]
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(cm.ravel().tolist())
    plots.plot_confusion(np.zeros((2, 2), dtype=int), ["a", "b"], tmp_path / "confusion.png")
    assert figures["confusion.png"].axes[0].get_title() == "confusion matrix"   # no samples: no accuracy


def test_robustness_health_lr_find_and_compare_take_a_title(tmp_path, figures):
    plots.plot_robustness({"rotate": [(0, 0.99), (15, 0.9)], "noise": [(0, 0.99), (0.5, 0.6)]},
                          tmp_path / "robustness.png", title="run-1 · test")
    fig = figures["robustness.png"]
    assert fig.get_suptitle() == "run-1 · test · accuracy under perturbations"
    assert [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes] == [
        ("rotate", "rotation (degrees)", "accuracy"), ("noise", "noise std", "accuracy")]

    rows = [{"epoch": e, "layer": "1", "type": "linear", "grad_norm": 0.1 * e, "update_ratio": 1e-3}
            for e in (1, 2)] + [{"epoch": e, "layer": "2", "type": "relu", "std": 0.5, "dead": 0.1} for e in (1, 2)]
    plots.plot_health(rows, tmp_path / "health.png", title="run-1")
    fig = figures["health.png"]
    assert fig.get_suptitle().startswith("run-1 · training health per layer")
    assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() for ax in fig.axes)

    lrs = [10 ** (k / 10 - 5) for k in range(40)]
    losses = [2.3 - 0.02 * k if k < 30 else 2.3 + k for k in range(40)]
    plots.plot_lr_find(lrs, losses, losses, 1e-3, tmp_path / "lr_find.png", title="tiny")
    ax = figures["lr_find.png"].axes[0]
    assert ax.get_title() == "tiny · learning-rate range test (40 batches)"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("learning rate", "training loss")

    size = plots.plot_compare([("a", history()), ("b", history(4))], tmp_path / "compare.png", title="lr sweep")
    assert size == png_size(tmp_path / "compare.png") == (1300, 500)
    fig = figures["compare.png"]
    assert fig.get_suptitle() == "lr sweep · 2 runs compared"
    assert [ax.get_ylabel() for ax in fig.axes] == ["cross-entropy loss", "accuracy"]
    plots.plot_compare([("a", history())], tmp_path / "compare.png")
    assert figures["compare.png"].get_suptitle() == "1 run compared"
