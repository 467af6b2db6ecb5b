"""Callbacks: what happens at the end of an epoch, kept out of the training loop (as Keras does).

The trainer calls every callback in order after each epoch with the epoch's metrics; one that returns
True asks the run to stop (early stopping, a pruned hyperparameter trial). Callbacks with state (the
early-stopping count) save it in every checkpoint, so a resumed run decides exactly as an
uninterrupted one. The trainer's own list ends with `Checkpoints` then `MetricsLog`: a stop decided
earlier in the list is already part of the checkpoint, and metrics.csv never runs ahead of last.npz
by more than the epoch being written.
"""

from __future__ import annotations

import csv
import io
import logging
from typing import TYPE_CHECKING, Any, Mapping

from nntrain.atomic import atomic_write_text
from nntrain.monitor import Monitor
from nntrain.training.checkpoint import save_checkpoint

if TYPE_CHECKING:   # only for type hints: the trainer imports this module
    from nntrain.training.run_folder import RunFolder
    from nntrain.training.trainer import Trainer

log = logging.getLogger("nntrain")

# grad_norm: the epoch's mean global gradient norm before clipping (the optimizer measures it every step)
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "grad_norm", "seconds")


class Callback:
    """Hooks around training. `name` keys the callback's state in checkpoints."""

    name = ""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Called once before the first epoch (also on a resumed run)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: Mapping[str, float]) -> bool:
        """`epoch`: 1-based number of the epoch just finished; `metrics`: its row (lr, train_loss, ...).
        Return True to stop the run after this epoch."""
        return False

    def on_interrupt(self, trainer: Trainer) -> None:
        """Ctrl-C or SIGTERM inside an epoch: the run's position is about to be lost unless saved."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()` output (from a checkpoint: check what you read)."""


class EarlyStopping(Callback):
    """Stop once `monitor` has not improved by more than `min_delta` for `patience` epochs."""

    name = "early_stopping"

    def __init__(self, monitor: str, patience: int, mode: str = "auto", min_delta: float = 0.0):
        self.tracker = Monitor(monitor, mode, min_delta)
        self.patience = patience

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: Mapping[str, float]) -> bool:
        self.tracker.update(metrics[self.tracker.metric], epoch)
        if self.tracker.bad_epochs >= self.patience:
            n = self.tracker.bad_epochs
            log.info("early stopping: %s has not improved for %d epoch%s (best %.4g at epoch %s)",
                     self.tracker.metric, n, "" if n == 1 else "s", self.tracker.best, self.tracker.best_epoch)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracker.load_state_dict(state, "early stopping")


class Checkpoints(Callback):
    """best.npz whenever `monitor` improves, then last.npz, after every epoch; last.npz on an interrupt."""

    name = "checkpoints"

    def __init__(self, folder: RunFolder, monitor: str):
        self.folder = folder
        self.best = Monitor(monitor)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: Mapping[str, float]) -> bool:
        value = metrics.get(self.best.metric)
        if value is not None and self.best.update(value, epoch):
            save_checkpoint(self.folder.best, trainer.snapshot())
        save_checkpoint(self.folder.last, trainer.snapshot())
        return False

    def on_interrupt(self, trainer: Trainer) -> None:
        save_checkpoint(self.folder.last, trainer.snapshot())

    def state_dict(self) -> dict[str, Any]:
        return self.best.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best.load_state_dict(state, "best-checkpoint")


class MetricsLog(Callback):
    """metrics.csv (one row per epoch, rewritten whole and atomically) and the loss/accuracy curves,
    titled with the run folder's name, the best epoch by `monitor` (the checkpoint monitor) marked."""

    name = "metrics"

    def __init__(self, folder: RunFolder, monitor: str | None = None):
        self.folder = folder
        self.monitor = monitor

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: Mapping[str, float]) -> bool:
        self.write(trainer.state.history)
        return False

    def write(self, history: list[dict]) -> None:
        from nntrain.training.plots import plot_curves   # matplotlib: loaded when the first epoch ends

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in history:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in METRIC_COLUMNS})
        atomic_write_text(self.folder.metrics, buf.getvalue())
        plot_curves(history, self.folder.plots, title=self.folder.path.name, monitor=self.monitor)


class TensorBoard(Callback):
    """Per-epoch scalars as TensorBoard events in RUN_DIR/tb/ (`logging: {tensorboard: true}`), through
    tensorboardX's protobufs and record writer: loss/train, loss/val, accuracy/train, accuracy/val, lr and
    grad_norm, the step being the epoch number. Written synchronously and flushed every epoch (its
    SummaryWriter queues events on a thread, so a crash could lose the last epochs); a resumed run adds
    another events file to the folder."""

    TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train",
            "val_acc": "accuracy/val", "lr": "lr", "grad_norm": "grad_norm"}

    def __init__(self, folder: RunFolder):
        self.logdir = folder.path / "tb"
        self.writer: Any = None

    def _event(self, **fields: Any) -> bytes:
        import time

        from tensorboardX.proto.event_pb2 import Event

        return Event(wall_time=time.time(), **fields).SerializeToString()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: Mapping[str, float]) -> bool:
        from tensorboardX.record_writer import RecordWriter   # an optional extra: imported only when asked for
        from tensorboardX.summary import scalar

        if self.writer is None:
            import os
            import socket
            import time

            self.logdir.mkdir(parents=True, exist_ok=True)
            name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
            self.writer = RecordWriter(str(self.logdir / name))
            self.writer.write(self._event(file_version="brain.Event:2"))
        for key, tag in self.TAGS.items():
            if metrics.get(key) is not None:
                self.writer.write(self._event(step=epoch, summary=scalar(tag, float(metrics[key]))))
        self.writer.flush()
        return False


def logging_callbacks(cfg: Mapping[str, Any], folder: RunFolder) -> list[Callback]:
    """The callbacks the config's optional `logging` section asks for (TensorBoard events)."""
    return [TensorBoard(folder)] if (cfg.get("logging") or {}).get("tensorboard") else []
