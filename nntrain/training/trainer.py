"""The training loop and nothing else: epochs of shuffled batches, validation, the schedule, callbacks.

The trainer receives its built parts (model, loss, optimizer, scheduler, data, Generators, callbacks)
and owns only the run's position (`RunState`). Everything a run needs to continue exactly is in
`snapshot()`: resuming from it replays the rest of the run to the bit.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from nntrain.data import iterate_batches, num_batches
from nntrain.data.prepare import PreparedData
from nntrain.errors import NNTrainError, NumericalError
from nntrain.nn.losses import SoftmaxCrossEntropy
from nntrain.nn.model import Model
from nntrain.nn.optim import Optimizer
from nntrain.nn.schedulers import Scheduler
from nntrain.training.callbacks import Callback
from nntrain.training.evaluate import evaluate
from nntrain.training.state import RunState, empty_sums

log = logging.getLogger("nntrain")


class Interrupted(NNTrainError):
    """Training stopped by Ctrl-C or SIGTERM after saving a resumable checkpoint (exit 130)."""

    exit_code = 130


def format_seconds(seconds: float) -> str:
    """Two significant digits, never in exponent form: 0.0042, 0.85, 17, 640."""
    return f"{seconds:.2g}" if seconds < 100 else f"{seconds:.0f}"


@dataclass
class Parts:
    """What a trainer trains with, built from a resolved config."""

    model: Model
    loss: SoftmaxCrossEntropy
    optimizer: Optimizer
    scheduler: Scheduler
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None
    shuffle_rng: np.random.Generator
    augment_rng: np.random.Generator


class Trainer:
    """Trains `parts` on `data` for `epochs`; `run()` returns when done, stopped or interrupted."""

    def __init__(self, parts: Parts, data: PreparedData, *, epochs: int, batch_size: int, eval_batch_size: int,
                 callbacks: Sequence[Callback] = (), progress: bool | None = None,
                 snapshot: Callable[[Trainer], Any] | None = None, tta: str = "none"):
        self.parts, self.data = parts, data
        self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size
        self.tta = tta   # test-time augmentation of the validation (nntrain.data.tta)
        self.callbacks = list(callbacks)
        self.progress = progress
        self.state = RunState()
        self.stop_requested = False   # set by a signal handler: finish the batch, save, stop
        self._snapshot = snapshot

    def snapshot(self) -> Any:
        """The checkpoint of this moment (composed by the caller, which knows the config)."""
        return self._snapshot(self)

    def run(self) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(self)
        while self.state.epoch < self.epochs and not self.state.stopped_early:
            lr = self.parts.scheduler.epoch_start_lr()   # also when resuming inside the epoch
            if not self._train_epoch():
                for cb in self.callbacks:
                    cb.on_interrupt(self)
                raise Interrupted(f"interrupted during epoch {self.state.epoch + 1}, batch {self.state.batch}")
            self._end_epoch(lr)

    def _train_epoch(self) -> bool:
        """Train the rest of the epoch in progress; False if a stop was requested inside it."""
        s, p = self.state, self.parts
        if s.batch == 0:
            s.epoch_shuffle_state, s.sums = p.shuffle_rng.bit_generator.state, empty_sums()
            order_rng = p.shuffle_rng
        else:  # resuming mid-epoch: redraw this epoch's order from the Generator state it started with
            order_rng = np.random.default_rng()
            order_rng.bit_generator.state = s.epoch_shuffle_state
        transform = None
        if p.augment is not None:
            transform = lambda x: p.augment(x, p.augment_rng)  # noqa: E731
        n_batches = num_batches(len(self.data.train_y), self.batch_size)
        batches = iterate_batches(self.data.train_x, self.data.train_y, self.batch_size, rng=order_rng,
                                  mean=self.data.mean, std=self.data.std, transform=transform, start_batch=s.batch)
        bar = tqdm(total=n_batches, initial=s.batch, desc=f"epoch {s.epoch + 1}/{self.epochs}", leave=False,
                   unit="batch", disable=None if self.progress is None else not self.progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            # overflow on the way to a NaN loss is reported once, by the NaN stop, not as NumPy warnings
            with np.errstate(over="ignore", invalid="ignore"):
                for b, (x, y) in enumerate(batches, start=s.batch):
                    z = p.model.forward(x, train=True)
                    value = p.loss.forward(z, y)
                    if not math.isfinite(value):
                        raise NumericalError(f"the training loss became {value} at epoch {s.epoch + 1}, batch "
                                             f"{b + 1}: the run is stopped. A smaller learning rate (now "
                                             f"{p.optimizer.lr:g}) usually helps.")
                    p.model.backward(p.loss.backward(), need_input_grad=False)
                    p.optimizer.step()   # clips the grads first where configured
                    p.scheduler.step_batch()
                    s.sums["loss"] += value * len(y)
                    s.sums["correct"] += int((z.argmax(axis=1) == y).sum())
                    s.sums["count"] += len(y)
                    s.batch = b + 1
                    bar.update(1)
                    if b % 20 == 0 or b == n_batches - 1:
                        bar.set_postfix(loss=f"{s.sums['loss'] / s.sums['count']:.4f}",
                                        acc=f"{s.sums['correct'] / s.sums['count']:.4f}", refresh=False)
                    if self.stop_requested and s.batch < n_batches:
                        s.sums["seconds"] += time.perf_counter() - t0
                        return False
        finally:
            bar.close()
        s.sums["seconds"] += time.perf_counter() - t0
        return True

    def _end_epoch(self, lr: float) -> None:
        """Validate, record the metrics row, step the schedule, then the callbacks (which checkpoint).
        grad_norm: the mean over the epoch's batches of the global gradient norm before clipping."""
        s, p = self.state, self.parts
        count = max(s.sums["count"], 1)
        row: dict[str, Any] = {"epoch": s.epoch + 1, "lr": lr, "train_loss": s.sums["loss"] / count,
                               "train_acc": s.sums["correct"] / count, "val_loss": None, "val_acc": None,
                               "grad_norm": p.optimizer.take_grad_norm()}
        if len(self.data.val_y):
            ev = evaluate(p.model, p.loss, self.data.val_x, self.data.val_y, self.eval_batch_size, self.data.mean,
                          self.data.std, tta=self.tta)
            row["val_loss"], row["val_acc"] = ev.loss, ev.accuracy
        row["seconds"] = round(s.sums["seconds"], 3)
        s.history.append(row)
        log.info("epoch %d/%d  lr %.4g  train loss %.4f acc %.4f%s  %ss", s.epoch + 1, self.epochs, lr,
                 row["train_loss"], row["train_acc"],
                 f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}" if row["val_loss"] is not None else "",
                 format_seconds(row["seconds"]))
        metrics = {k: v for k, v in row.items() if v is not None}
        p.scheduler.step(metrics)
        s.epoch, s.batch = s.epoch + 1, 0
        for cb in self.callbacks:   # in order: a stop asked for earlier is in the checkpoint saved later
            if cb.on_epoch_end(self, s.epoch, metrics):
                s.stopped_early = True
