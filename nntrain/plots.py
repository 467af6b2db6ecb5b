"""Figures written into a run folder. Uses matplotlib's object API (no pyplot global state) and
atomic writes, so a plot being redrawn when a run is killed is never left half-written."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nntrain.atomic import atomic_write_bytes


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _column(history: Sequence[dict], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in history]


def plot_curves(history: Sequence[dict], plots_dir: Path) -> None:
    """loss.png and accuracy.png: train and val curves against epochs."""
    epochs = [int(r["epoch"]) for r in history]
    for metric, fname, label in (("loss", "loss.png", "cross-entropy loss"), ("acc", "accuracy.png", "accuracy")):
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for split, style in (("train", "-o"), ("val", "-s")):
            values = _column(history, f"{split}_{metric}")
            if not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, style, label=split, markersize=3)
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


def image_grid(images: np.ndarray, titles: Sequence[str], path: Path, cols: int = 8) -> None:
    """Tile uint8 images (n, C, H, W) with a title each (grey for C=1, RGB for C=3)."""
    n = len(images)
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(1.4 * cols, 1.6 * rows))
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.axis("off")
        if i < n:
            img = images[i]
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(np.transpose(img, (1, 2, 0)))
            ax.set_title(titles[i], fontsize=7)
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
