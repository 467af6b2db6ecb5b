"""The figures nntrain writes (run folders, eval, compare, model weights). Uses matplotlib's object API
(no pyplot global state); every PNG goes through `save_figure`, an atomic write, so a plot being redrawn
when a run is killed is never left half-written."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nntrain.atomic import atomic_write_bytes


def save_figure(fig: Figure, path: str | Path, dpi: int = 100, tight: bool = True) -> Path:
    """Write `fig` as a PNG atomically (making its folder) and return the path. `tight` crops to the
    drawn content; without it the PNG is exactly the figure's size in pixels (figsize x dpi)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    atomic_write_bytes(path, buf.getvalue())
    return path


METRICS = (("loss", "cross-entropy loss"), ("acc", "accuracy"))  # metrics.csv column suffix, axis label


def heading(title: str, what: str) -> str:
    """A figure's title: what it shows, after the caller's `title` (run name, split, checkpoint) if any."""
    return f"{title} · {what}" if title else what


def _column(history: Sequence[dict], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in history]


def _plot_splits(ax, history: Sequence[dict], metric: str, styles: dict[str, str], label: str = "",
                 **kwargs) -> None:
    """Draw a run's `<split>_<metric>` columns of metrics.csv against epochs, one line per split in
    `styles` (split -> format string) that has any value; lines are labelled `split` or `label (split)`."""
    epochs = [int(r["epoch"]) for r in history]
    for split, style in styles.items():
        values = _column(history, f"{split}_{metric}")
        if values and not all(math.isnan(v) for v in values):
            ax.plot(epochs, values, style, label=f"{label} ({split})" if label else split, **kwargs)


def best_epoch(history: Sequence[dict], monitor: str) -> tuple[int, float, str] | None:
    """(epoch, value, monitor) of the best `monitor` value in metrics.csv rows (e.g. "val_acc"), by the
    rule that picks best.npz (`Monitor`: max for accuracies, min for losses, the first of equal values,
    NaN never best); None when the column has no value."""
    from nntrain.monitor import Monitor

    tracker = Monitor(monitor)
    for r, value in zip(history, _column(history, monitor)):
        tracker.update(value, int(r["epoch"]))
    if tracker.best_epoch is None or tracker.best is None:
        return None
    return tracker.best_epoch, tracker.best, monitor


def _format_value(metric: str, value: float) -> str:
    return f"{value:.4f}" if metric.endswith("acc") else f"{value:.4g}"


def _mark_best(ax, best: tuple[int, float, str], epochs: Sequence[int], annotate: bool) -> None:
    """A dotted line at the best epoch; with `annotate`, a star on the curve and "best: epoch 7, 0.9922",
    placed below a maximum (accuracy) or above a minimum (loss), towards the middle of the plot."""
    epoch, value, metric = best
    ax.axvline(epoch, color="0.5", linestyle=":", linewidth=1, label=f"best epoch by {metric}")
    if annotate:
        ax.plot([epoch], [value], "*", color="C3", markersize=14, zorder=5, label=f"best {metric}")
        right_half = bool(epochs) and epoch > (min(epochs) + max(epochs)) / 2
        ax.annotate(f"best: epoch {epoch}, {_format_value(metric, value)}", (epoch, value),
                    xytext=(-30 if right_half else 30, -40 if metric.endswith("acc") else 40),
                    textcoords="offset points", ha="right" if right_half else "left", va="center", fontsize=9,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "C3", "alpha": 0.9},
                    arrowprops={"arrowstyle": "->", "color": "C3"})


def _plot_lr(ax, history: Sequence[dict]) -> list:
    """The learning rate per epoch (metrics.csv's `lr`) on a secondary y axis of `ax`, on a log scale when
    it changes tenfold or more; returns its lines (none when the column is empty)."""
    epochs = [int(r["epoch"]) for r in history]
    lrs = _column(history, "lr")
    if not lrs or all(math.isnan(v) for v in lrs):
        return []
    ax2 = ax.twinx()
    lines = ax2.plot(epochs, lrs, "--", color="0.45", linewidth=1.2, label="learning rate (right axis)")
    ax2.set_ylabel("learning rate")
    positive = [v for v in lrs if v > 0]
    if positive and max(positive) >= 10 * min(positive):
        ax2.set_yscale("log")
    return lines


def plot_curves(history: Sequence[dict], plots_dir: Path, *, title: str = "",
                best: tuple[int, float, str] | None = None, monitor: str | None = None) -> None:
    """loss.png and accuracy.png: train and val curves against epochs; loss.png carries the learning
    rate on a second y axis.

    title: the run's name (and whatever else identifies it), put before each figure's own title.
    best: (epoch, value, metric) to mark, e.g. (7, 0.9922, "val_acc"); without it, `monitor` (the run's
    train.checkpoint_monitor) picks it from `history` as best.npz was picked. The best epoch gets a
    dotted line on both figures, and on the one of its metric a star and "best: epoch 7, 0.9922".
    """
    if best is None and monitor:
        best = best_epoch(history, monitor)
    for (metric, label), fname in zip(METRICS, ("loss.png", "accuracy.png")):
        fig = Figure(figsize=(7, 4.5))
        ax = fig.add_subplot()
        _plot_splits(ax, history, metric, {"train": "-o", "val": "-s"}, markersize=3)
        if best is not None:
            _mark_best(ax, best, [int(r["epoch"]) for r in history], annotate=best[2].endswith(metric))
        extra = _plot_lr(ax, history) if metric == "loss" else []
        ax.set_title(heading(title, f"{label} per epoch"))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles or extra:
            ax.legend(handles + extra, labels + [ln.get_label() for ln in extra], fontsize=8)
        save_figure(fig, plots_dir / fname)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: Path, *, title: str = "") -> None:
    """Confusion matrix heat map with counts and a colour bar; rows are true classes, columns predictions.
    The title ends with the overall accuracy, trace / sum of the matrix."""
    k = len(class_names)
    cm = np.asarray(cm)
    total = cm.sum()
    what = "confusion matrix" + (f" · accuracy {np.trace(cm) / total:.4f}" if total > 0 else "")
    fig = Figure(figsize=(2.2 + 0.6 * k, 1.2 + 0.6 * k))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, label="samples", fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(heading(title, what), fontsize=9, wrap=True)
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > top / 2 else "black")
    save_figure(fig, path)


def plot_robustness(results: dict[str, list[tuple[float, float]]], path: Path, *, title: str = "") -> None:
    """Accuracy against perturbation level, one panel per perturbation kind."""
    units = {"rotate": "rotation (degrees)", "shift": "shift (pixels)", "noise": "noise std"}
    fig = Figure(figsize=(4 * max(1, len(results)), 3.8), layout="constrained")
    fig.suptitle(heading(title, "accuracy under perturbations"))
    for i, (kind, rows) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        ax.plot([lv for lv, _ in rows], [acc for _, acc in rows], "-o")
        ax.set_title(kind)
        ax.set_xlabel(units.get(kind, "level"))
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def _text_lines(text: str, width_px: int, char_px: float) -> int:
    """About how many lines `text` wraps to in `width_px` (for sizing the bands of `tile_grid`)."""
    return sum(max(1, math.ceil(len(line) * char_px / max(width_px - 20, 1))) for line in text.split("\n"))


def tile_grid(tiles: np.ndarray, titles: Sequence[str], path: Path, cols: int = 8, tile_px: int = 100,
              signed: bool = False, *, title: str = "", caption: str = "",
              value_range: tuple[float, float] | None = None, colorbar_label: str = "value") -> tuple[int, int]:
    """Tile float images into a PNG of a known size in pixels; returns (width, height).

    tiles: (n, H, W) grey or (n, H, W, 3) RGB, values in [0, 1]; with `signed`, grey tiles hold values
    in [-1, 1] drawn with a diverging map (blue negative, white zero, red positive). One axes holds
    every tile (fast for 64 tiles); no tight bounding box, so the pixel size is known in advance: the
    grid is (cols·tile_px, rows·tile_px), with a band above it for `title`, one below for `caption`
    (what a tile shows, e.g. "each tile: true → predicted (probability of the prediction)") and, when
    `value_range` is given, a colour bar on the right: the values that the tiles' lowest and highest
    colour stand for (for RGB tiles, the scale of each colour channel), labelled `colorbar_label`.
    """
    n = len(tiles)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    dpi = 100
    grid_w, grid_h = cols * tile_px, rows * tile_px
    bar_w = 110 if value_range is not None else 0
    width = max(grid_w + bar_w, 400 if title or caption else 0)
    head = 14 + 17 * _text_lines(title, width, 7.0) if title else 0
    foot = 10 + 14 * _text_lines(caption, width, 5.6) if caption else 0
    height = grid_h + head + foot
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    left = (width - bar_w - grid_w) // 2
    ax = fig.add_axes((left / width, foot / height, grid_w / width, grid_h / height))
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.axis("off")
    title_h = 0.16 if len(titles) else 0.04
    cmap = "RdBu_r" if signed else "gray"
    for i in range(n):
        r, c = divmod(i, cols)
        extent = (c + 0.06, c + 0.94, r + 0.97, r + title_h)
        if tiles.ndim == 4:
            ax.imshow(np.clip(tiles[i], 0.0, 1.0), extent=extent, interpolation="nearest", aspect="auto")
        else:
            ax.imshow(tiles[i], cmap=cmap, vmin=-1.0 if signed else 0.0, vmax=1.0, extent=extent,
                      interpolation="nearest", aspect="auto")
        if i < len(titles):
            ax.text(c + 0.5, r + title_h - 0.02, titles[i], ha="center", va="bottom", fontsize=6)
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    if title:
        fig.suptitle(title, y=1 - 6 / height, va="top", fontsize=10, wrap=True)
    if caption:
        fig.text(0.5, 4 / height, caption, ha="center", va="bottom", fontsize=8, wrap=True)
    if value_range is not None:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        pad = min(10, grid_h // 10)
        cax = fig.add_axes(((left + grid_w + 16) / width, (foot + pad) / height, 14 / width,
                            (grid_h - 2 * pad) / height))
        bar_map = "gray" if tiles.ndim == 4 else cmap
        fig.colorbar(ScalarMappable(Normalize(*value_range), bar_map), cax=cax, label=colorbar_label)
        cax.tick_params(labelsize=7)
        cax.yaxis.label.set_fontsize(8)
    save_figure(fig, path, dpi=dpi, tight=False)
    return width, height


def plot_compare(curves: Sequence[tuple[str, Sequence[dict]]], path: Path, *, title: str = "") -> tuple[int, int]:
    """Overlaid loss and accuracy curves of several runs (one colour per run; train dashed, val solid).

    curves: (label, metrics.csv rows) per run; title: drawn above both panels. The PNG is exactly
    1300 x 500 pixels; returns (width, height).
    """
    fig = Figure(figsize=(13, 5), dpi=100)
    fig.suptitle(heading(title, f"{len(curves)} run{'' if len(curves) == 1 else 's'} compared"), fontsize=11)
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    colours = [f"C{i % 10}" for i in range(len(curves))]
    for (label, history), colour in zip(curves, colours):
        for ax, (metric, _) in zip(axes, METRICS):
            _plot_splits(ax, history, metric, {"train": "--", "val": "-"}, label, color=colour, marker="o",
                         markersize=2.5)
    for ax, (_, name) in zip(axes, METRICS):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{name}: train dashed, val solid", fontsize=9)
        ax.grid(alpha=0.3)
    if curves:
        axes[1].legend(fontsize=7, loc="lower right")
    fig.subplots_adjust(left=0.06, right=0.99, top=0.88, bottom=0.1, wspace=0.2)
    save_figure(fig, path, dpi=100, tight=False)
    return 1300, 500


def plot_health(rows: Sequence[dict], path: Path, *, title: str = "") -> Path:
    """health.png from health.csv's rows: four panels against epochs, one line per layer: gradient norm,
    update-to-weight ratio (log scales), activation std (log scale) and dead-unit fraction. `title`
    (the run's name) goes before the figure's own title."""
    panels = (("grad_norm", "gradient norm ‖g‖", "‖g‖ (log scale)", True),
              ("update_ratio", "update / weight ‖Δw‖/‖w‖", "‖Δw‖/‖w‖ (log scale)", True),
              ("std", "activation std", "std of the layer's outputs (log scale)", True),
              ("dead", "dead units (fraction)", "fraction never positive", False))
    fig = Figure(figsize=(12, 8))
    fig.suptitle(heading(title, "training health per layer (on a fixed sample of training images)"))
    fig.subplots_adjust(hspace=0.3, wspace=0.2)
    for k, (key, name, ylabel, log_scale) in enumerate(panels):
        ax = fig.add_subplot(2, 2, k + 1)
        layers: dict[str, tuple[list[int], list[float]]] = {}
        for r in rows:
            value = r.get(key)
            if r.get("layer") == "model" or value in (None, ""):
                continue
            xs, ys = layers.setdefault(f"{r['layer']} {r['type']}", ([], []))
            xs.append(int(r["epoch"]))
            ys.append(float(value) if float(value) > 0 or not log_scale else math.nan)   # 0: a gap on a log axis
        for label, (xs, ys) in layers.items():
            if log_scale and not any(y > 0 for y in ys):
                continue
            ax.plot(xs, ys, "-o", markersize=3, label=label)
        if log_scale and any(y > 0 for _, ys in layers.values() for y in ys):
            ax.set_yscale("log")
        elif not log_scale:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7, ncol=2 if len(layers) > 8 else 1, loc="upper right")   # "best" is slow
    return save_figure(fig, path)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggestion: float | None,
                 path: Path, label: str = "steepest descent", *, title: str = "") -> Path:
    """lr_find.png: the raw and smoothed training loss against the learning rate (log scale), the
    suggested learning rate marked; `title` (the config's name) goes before the figure's own title."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.set_title(heading(title, f"learning-rate range test ({len(lrs)} batches)"))
    ax.plot(lrs, losses, color="0.75", linewidth=0.8, label="loss (per batch)")
    ax.plot(lrs, smoothed, color="C0", label="loss (smoothed)")
    if suggestion is not None:
        ax.axvline(suggestion, color="C3", linestyle="--", label=f"suggested lr {suggestion:.3g} ({label})")
    ax.set_xscale("log")
    finite = [v for v in list(smoothed) + list(losses) if math.isfinite(v)]
    if finite and math.isfinite(smoothed[0]):   # from the lowest loss to a little above the starting one
        lo, hi = min(finite), max(smoothed[0], min(smoothed)) * 1.15
        if hi > lo:
            ax.set_ylim(lo - 0.05 * (hi - lo), hi)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save_figure(fig, path)
