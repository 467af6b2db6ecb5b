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


def plot_curves(history: Sequence[dict], plots_dir: Path) -> None:
    """loss.png and accuracy.png: train and val curves against epochs."""
    for (metric, label), fname in zip(METRICS, ("loss.png", "accuracy.png")):
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        _plot_splits(ax, history, metric, {"train": "-o", "val": "-s"}, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, plots_dir / fname)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Confusion matrix heat map with counts; rows are true classes, columns predictions."""
    k = len(class_names)
    fig = Figure(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > top / 2 else "black")
    save_figure(fig, path)


def plot_robustness(results: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """Accuracy against perturbation level, one panel per perturbation kind."""
    units = {"rotate": "degrees", "shift": "pixels", "noise": "noise std"}
    fig = Figure(figsize=(4 * len(results), 3.5))
    for i, (kind, rows) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        ax.plot([lv for lv, _ in rows], [acc for _, acc in rows], "-o")
        ax.set_title(kind)
        ax.set_xlabel(units.get(kind, "level"))
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def tile_grid(tiles: np.ndarray, titles: Sequence[str], path: Path, cols: int = 8, tile_px: int = 100,
              signed: bool = False) -> tuple[int, int]:
    """Tile float images into a PNG of exactly (cols·tile_px, rows·tile_px) pixels; returns (width, height).

    tiles: (n, H, W) grey or (n, H, W, 3) RGB, values in [0, 1]; with `signed`, grey tiles hold values
    in [-1, 1] drawn with a diverging map (blue negative, white zero, red positive). One axes holds
    every tile (fast for 64 tiles); no tight bounding box, so the pixel size is known in advance.
    """
    n = len(tiles)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    dpi = 100
    fig = Figure(figsize=(cols * tile_px / dpi, rows * tile_px / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.axis("off")
    title_h = 0.16 if len(titles) else 0.04
    for i in range(n):
        r, c = divmod(i, cols)
        extent = (c + 0.06, c + 0.94, r + 0.97, r + title_h)
        if tiles.ndim == 4:
            ax.imshow(np.clip(tiles[i], 0.0, 1.0), extent=extent, interpolation="nearest", aspect="auto")
        elif signed:
            ax.imshow(tiles[i], cmap="RdBu_r", vmin=-1.0, vmax=1.0, extent=extent, interpolation="nearest",
                      aspect="auto")
        else:
            ax.imshow(tiles[i], cmap="gray", vmin=0.0, vmax=1.0, extent=extent, interpolation="nearest",
                      aspect="auto")
        if i < len(titles):
            ax.text(c + 0.5, r + title_h - 0.02, titles[i], ha="center", va="bottom", fontsize=6)
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    save_figure(fig, path, dpi=dpi, tight=False)
    return cols * tile_px, rows * tile_px


def plot_compare(curves: Sequence[tuple[str, Sequence[dict]]], path: Path) -> tuple[int, int]:
    """Overlaid loss and accuracy curves of several runs (one colour per run; train dashed, val solid).

    curves: (label, metrics.csv rows) per run. The PNG is exactly 1300 x 500 pixels; returns (width, height).
    """
    fig = Figure(figsize=(13, 5), dpi=100)
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
    fig.subplots_adjust(left=0.06, right=0.99, top=0.93, bottom=0.1, wspace=0.2)
    save_figure(fig, path, dpi=100, tight=False)
    return 1300, 500


def plot_health(rows: Sequence[dict], path: Path) -> Path:
    """health.png from health.csv's rows: four panels against epochs, one line per layer: gradient norm,
    update-to-weight ratio (log scales), activation std (log scale) and dead-unit fraction."""
    panels = (("grad_norm", "gradient norm ‖g‖", True), ("update_ratio", "update / weight ‖Δw‖/‖w‖", True),
              ("std", "activation std", True), ("dead", "dead units (fraction)", False))
    fig = Figure(figsize=(12, 8))
    fig.subplots_adjust(hspace=0.3, wspace=0.2)
    for k, (key, title, log_scale) in enumerate(panels):
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
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7, ncol=2 if len(layers) > 8 else 1, loc="upper right")   # "best" is slow
    return save_figure(fig, path)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggestion: float | None,
                 path: Path, label: str = "steepest descent") -> Path:
    """lr_find.png: the raw and smoothed training loss against the learning rate (log scale), the
    suggested learning rate marked."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
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
