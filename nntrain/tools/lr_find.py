"""`nntrain lr-find`: the learning-rate range test.

A fresh model (the config's, with its initial weights) is trained for up to `steps` batches while the
learning rate grows exponentially from `start` to `end`:

    lr_i = start · (end / start)^(i / (steps − 1)),   i = 0 … steps − 1

(the config's optimizer with its momentum, weight decay and clipping; its schedule is not used). The
per-batch loss L_i is smoothed by a bias-corrected exponential moving average (β = 0.95, which lags
the raw loss by about 1/(1 − β) = 20 batches):

    a_i = β·a_{i−1} + (1 − β)·L_i,  a_{−1} = 0,    S_i = a_i / (1 − β^(i+1))

and the test stops early once S_i > 4·min_{j≤i} S_j (or a loss is not finite): the loss has diverged.

The suggested learning rate is the one where the smoothed loss falls fastest, the most negative
slope dS/d(ln lr) before the minimum of S, skipping the first tenth of the points (where the average
is still settling). The slope at i is taken across w = max(1, n/40) points on either side,
(S_{i+w} − S_{i−w}) / (ln lr_{i+w} − ln lr_{i−w}) (one-sided at the ends), so batch noise does not pick it. Where fewer than `MIN_POINTS` points precede the
minimum, it is instead the lr of the minimum divided by 10. `LRFind.method` says which one was used.

Batches come from the training split (with the config's augmentation), in an order drawn from the
seed's `lr_find` stream, so the result is the same for the same config and seed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from nntrain.data import iterate_batches
from nntrain.data.prepare import prepare
from nntrain.errors import NNTrainError
from nntrain.rng import stream
from nntrain.training.runner import build_parts

log = logging.getLogger("nntrain")

BETA = 0.95
DIVERGE_FACTOR = 4.0
MIN_POINTS = 5
STEEPEST = "steepest descent of the smoothed loss"
MIN_OVER_10 = "the smoothed loss's minimum / 10"


@dataclass
class LRFind:
    """The range test's curve (lrs, raw and smoothed losses, one per batch trained) and its reading."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    method: str            # STEEPEST or MIN_OVER_10
    min_lr: float          # the lr where the smoothed loss was lowest
    stop_reason: str

    def summary(self) -> str:
        return (f"suggested learning rate: {self.suggestion:.3g} ({self.method})\n"
                f"lowest smoothed loss {min(self.smoothed):.4g} at lr {self.min_lr:.3g} (a tenth of it: "
                f"{self.min_lr / 10:.3g})\n"
                f"{len(self.lrs)} batches, lr {self.lrs[0]:.3g} to {self.lrs[-1]:.3g}: {self.stop_reason}")


def lr_schedule(start: float, end: float, steps: int) -> np.ndarray:
    """lr_i = start·(end/start)^(i/(steps−1)); one value (start) for steps = 1."""
    if not (0 < start < end and math.isfinite(end)) or steps < 1:
        raise NNTrainError(f"lr-find needs 0 < start < end and at least one step, got start={start:g}, "
                           f"end={end:g}, steps={steps}")
    return start * (end / start) ** (np.arange(steps) / max(steps - 1, 1))


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """The bias-corrected exponential moving average S_i of the module docstring."""
    out, avg = [], 0.0
    for i, value in enumerate(losses):
        avg = beta * avg + (1 - beta) * value
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, str]:
    """(suggested lr, method): the steepest descent of S before its minimum, else the minimum's lr / 10
    (clamped to the tested range)."""
    k = int(np.argmin(smoothed))
    skip = len(smoothed) // 10
    if k + 1 - skip >= MIN_POINTS:
        s, x = np.asarray(smoothed[:k + 1]), np.log(np.asarray(lrs[:k + 1]))
        w = max(1, len(smoothed) // 40)
        lo, hi = np.maximum(np.arange(k + 1) - w, 0), np.minimum(np.arange(k + 1) + w, k)
        slope = (s[hi] - s[lo]) / (x[hi] - x[lo])
        i = skip + int(np.argmin(slope[skip:]))
        return float(lrs[i]), STEEPEST
    return float(min(max(lrs[k] / 10, lrs[0]), lrs[-1])), MIN_OVER_10


def _batches(cfg: Mapping[str, Any], data: Any, augment: Any, rng: np.random.Generator) -> Iterator[tuple]:
    """Training batches forever: epoch after epoch, each in a new order drawn from `rng`."""
    batch_size = min(int(cfg["train"]["batch_size"]), len(data.train_y))
    transform = None if augment is None else (lambda x: augment(x, rng))
    while True:
        yield from iterate_batches(data.train_x, data.train_y, batch_size, rng=rng, mean=data.mean, std=data.std,
                                   transform=transform, drop_last=True)


def lr_find(cfg: Mapping[str, Any], start: float = 1e-6, end: float = 10.0, steps: int = 200,
            progress: bool = False) -> LRFind:
    """Run the range test for a resolved config (see the module docstring)."""
    lrs = lr_schedule(start, end, steps)
    seed = int(cfg["seed"])
    data = prepare(cfg["data"], seed, progress=progress)
    if not len(data.train_y):
        raise NNTrainError("lr-find needs training images, and the training split is empty")
    parts = build_parts(cfg, data.info.input_shape, data.train_y)
    model, loss, opt = parts.model, parts.loss, parts.optimizer
    tried: list[float] = []
    losses: list[float] = []
    best, avg = math.inf, 0.0
    reason = f"reached the end of the range ({end:g})"
    batches = _batches(cfg, data, parts.augment, stream(seed, "lr_find"))
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for lr in lrs:
                x, y = next(batches)
                opt.lr = float(lr)
                value = loss.forward(model.forward(x, train=True), y)
                if not math.isfinite(value):
                    reason = f"stopped at lr {lr:.3g}: the loss became {value}"
                    break
                tried.append(float(lr))
                losses.append(float(value))
                avg = BETA * avg + (1 - BETA) * value
                s = avg / (1 - BETA ** len(losses))   # = smooth(losses)[-1]
                best = min(best, s)
                if s > DIVERGE_FACTOR * best:
                    reason = f"stopped at lr {lr:.3g}: the smoothed loss exceeded {DIVERGE_FACTOR:g}x its best"
                    break
                model.backward(loss.backward(), need_input_grad=False)
                opt.step()
    finally:
        model.close()
    if not losses:
        raise NNTrainError(f"lr-find: the loss was not finite even at the start lr {start:g}; lower --start")
    smoothed = smooth(losses)
    suggestion, method = suggest(tried, smoothed)
    return LRFind(tried, losses, smoothed, suggestion, method, tried[int(np.argmin(smoothed))], reason)


def write_lr_find_plot(result: LRFind, path: str | Path, *, title: str = "") -> Path:
    """The range test's plot; `title` (e.g. the config's name) goes before the figure's own title."""
    from nntrain.training.plots import plot_lr_find   # matplotlib: loaded only here

    return plot_lr_find(result.lrs, result.losses, result.smoothed, result.suggestion, Path(path),
                        label=result.method, title=title)
