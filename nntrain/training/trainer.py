"""The training loop: data, model, optimizer and schedule from a resolved config, one run folder per run.

Everything a run needs to continue exactly lives in its checkpoints: parameters, optimizer and
scheduler state, the position (epoch, batch), every Generator's state, the metric history and the
normalisation statistics. Resuming from `last.npz` replays the rest of the run to the bit.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from nntrain.atomic import atomic_write_text, create_unique_dir
from nntrain.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from nntrain.errors import CheckpointError, ConfigError, NNTrainError, NumericalError
from nntrain.data import iterate_batches, num_batches
from nntrain.training.evaluate import evaluate
from nntrain.nn.losses import build_loss
from nntrain.nn.model import Model, build_model

log = logging.getLogger("nntrain")

METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")


class Interrupted(NNTrainError):
    """Training stopped by Ctrl-C after saving a resumable checkpoint (exit 130)."""

    exit_code = 130


@dataclass
class RunState:
    """The mutable position of a run, saved in every checkpoint's metadata."""

    epoch: int = 0                       # the epoch in progress (0-based); == epochs when finished
    batch: int = 0                       # batches of `epoch` already trained
    history: list[dict] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0                  # epochs since the monitored metric last improved
    epoch_shuffle_state: dict | None = None  # shuffle Generator state before this epoch's permutation
    sums: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "count": 0, "seconds": 0.0})
    stopped_early: bool = False


def create_run_dir(name: str, base: str | os.PathLike = "runs") -> Path:
    """runs/<name>-<YYYYmmdd-HHMMSS>, never shared by two runs started in the same second."""
    return create_unique_dir(base, name)


def _mode_for(metric: str, mode: str = "auto") -> str:
    if mode != "auto":
        return mode
    return "max" if metric.endswith("acc") else "min"


def _improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


class Trainer:
    """Trains one run. `run()` returns the final summary; progress goes to `log` and a tqdm bar."""

    def __init__(self, cfg: dict, run_dir: Path, *, resume: bool = False, init_from: str | None = None,
                 progress: bool | None = None, interrupt_handling: bool = True):
        from nntrain.config import dump_config
        from nntrain.data import channel_stats, dataset_info, load_dataset, split_validation
        from nntrain.data.augment import build_augment
        from nntrain.nn.optim import build_optimizer
        from nntrain.nn.schedulers import build_scheduler

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.plots_dir = self.run_dir / "plots"
        self.progress = progress
        self.interrupt_handling = interrupt_handling
        self._stop_requested = False
        data_cfg, train_cfg = cfg["data"], cfg["train"]
        seed = int(cfg["seed"])

        self.info = dataset_info(data_cfg["dataset"])
        ds = load_dataset(data_cfg["dataset"], root=data_cfg.get("root"), download=data_cfg.get("download", True),
                          progress=progress is not False)
        split_rng = np.random.default_rng([seed, 2])
        (self.train_x, self.train_y, self.val_x, self.val_y) = split_validation(
            ds.train_images, ds.train_labels, data_cfg["val_size"], split_rng)
        self.test_x, self.test_y = ds.test_images, ds.test_labels
        if data_cfg.get("normalize", True):
            self.mean, self.std = channel_stats(self.train_x)
        else:
            self.mean = self.std = None

        self.model: Model = build_model(cfg["model"], self.info.input_shape, seed=seed, dtype=np.float32)
        self.loss = build_loss(cfg["loss"])
        self.optimizer = build_optimizer(cfg["optimizer"], list(self.model.parameters()))
        self.scheduler = build_scheduler(cfg.get("scheduler"), self.optimizer, train_cfg["epochs"])
        self.augment = build_augment(data_cfg.get("augment") or [])
        self.shuffle_rng = np.random.default_rng([seed, 3])
        self.augment_rng = np.random.default_rng([seed, 4])
        self.state = RunState()

        has_val = len(self.val_y) > 0
        es = train_cfg.get("early_stopping")
        if es and es["monitor"].startswith("val") and not has_val:
            raise ConfigError(f"early stopping monitors {es['monitor']} but data.val_size is 0: hold out a "
                              "validation set or monitor train_loss/train_acc", "train.early_stopping.monitor")
        self.monitor = train_cfg.get("checkpoint_monitor", "val_acc")
        if self.monitor.startswith("val") and not has_val:
            self.monitor = self.monitor.replace("val", "train")
        self.monitor_mode = _mode_for(self.monitor)

        if resume:
            self._restore(load_checkpoint(self.ckpt_dir / "last.npz"))
        else:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            self.plots_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
            if init_from:
                self._init_weights(init_from)

    # --- checkpoints -----------------------------------------------------------------------------
    def _checkpoint(self) -> Checkpoint:
        opt_arrays, opt_meta = self.optimizer.state_dict()
        s = self.state
        meta = {
            "config": self.cfg,
            "epoch": s.epoch, "batch": s.batch, "history": s.history,
            "best_value": s.best_value, "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs,
            "stopped_early": s.stopped_early, "sums": s.sums,
            "epoch_shuffle_state": s.epoch_shuffle_state,
            "rng": {"shuffle": self.shuffle_rng.bit_generator.state, "augment": self.augment_rng.bit_generator.state,
                    "model": self.model.rng.bit_generator.state},
            "optimizer": opt_meta, "scheduler": self.scheduler.state_dict(),
            "dataset": self.info.name, "input_shape": list(self.info.input_shape),
            "class_names": list(self.info.class_names),
        }
        extra = {}
        if self.mean is not None:
            extra = {"norm_mean": np.asarray(self.mean), "norm_std": np.asarray(self.std)}
        return Checkpoint(params=self.model.state_dict(), optim=opt_arrays, extra=extra, meta=meta)

    def _restore(self, ckpt: Checkpoint) -> None:
        m = ckpt.meta
        try:
            self.model.load_state_dict(ckpt.params)
            self.optimizer.load_state_dict(ckpt.optim, m["optimizer"])
            self.scheduler.load_state_dict(m["scheduler"])
            self.shuffle_rng.bit_generator.state = m["rng"]["shuffle"]
            self.augment_rng.bit_generator.state = m["rng"]["augment"]
            self.model.rng.bit_generator.state = m["rng"]["model"]
            self.state = RunState(epoch=m["epoch"], batch=m["batch"], history=m["history"],
                                  best_value=m["best_value"], best_epoch=m["best_epoch"], bad_epochs=m["bad_epochs"],
                                  epoch_shuffle_state=m["epoch_shuffle_state"], sums=m["sums"],
                                  stopped_early=m.get("stopped_early", False))
        except CheckpointError as e:  # weights or state of another model: name the file
            raise CheckpointError(f"cannot resume from {self.ckpt_dir / 'last.npz'}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint in {self.ckpt_dir} is incomplete or inconsistent ({e})") from None

    def _init_weights(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt.params)
        except CheckpointError as e:  # a checkpoint of another architecture: name the file
            raise CheckpointError(f"cannot initialise from {path}: {e}") from None
        log.info("initialised weights from %s (fresh optimizer state)", path)

    def _save(self, name: str) -> None:
        save_checkpoint(self.ckpt_dir / name, self._checkpoint())

    # --- one epoch -------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> bool:
        """Train the rest of `epoch`; returns False if interrupted (checkpoint saved)."""
        s = self.state
        bs = self.cfg["train"]["batch_size"]
        n = len(self.train_y)
        if s.batch == 0:
            s.epoch_shuffle_state = self.shuffle_rng.bit_generator.state
            s.sums = {"loss": 0.0, "correct": 0, "count": 0, "seconds": 0.0}
            order_rng = self.shuffle_rng
        else:  # resuming mid-epoch: redraw this epoch's order from the Generator state it started with
            order_rng = np.random.default_rng()
            order_rng.bit_generator.state = s.epoch_shuffle_state
        n_batches = num_batches(n, bs)
        transform = None
        if self.augment is not None:
            aug, aug_rng = self.augment, self.augment_rng
            transform = lambda x: aug(x, aug_rng)  # noqa: E731
        batches = iterate_batches(self.train_x, self.train_y, bs, rng=order_rng, mean=self.mean, std=self.std,
                                  transform=transform, start_batch=s.batch)
        bar = tqdm(total=n_batches, initial=s.batch, desc=f"epoch {epoch + 1}/{self.cfg['train']['epochs']}",
                   leave=False, unit="batch", disable=None if self.progress is None else not self.progress,
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            # overflow on the way to a NaN loss is reported once, by the NaN stop, not as NumPy warnings
            with np.errstate(over="ignore", invalid="ignore"):
                for b, (x, y) in enumerate(batches, start=s.batch):
                    z = self.model.forward(x, train=True)
                    value = self.loss.forward(z, y)
                    if not math.isfinite(value):
                        raise NumericalError(
                            f"the training loss became {value} at epoch {epoch + 1}, batch {b + 1}: the run is "
                            f"stopped. The last good checkpoint is {self.ckpt_dir / 'last.npz'}. A smaller learning rate "
                            f"(now {self.optimizer.lr:g}) usually helps.")
                    self.model.backward(self.loss.backward(), need_input_grad=False)
                    self.optimizer.step()
                    s.sums["loss"] += value * len(y)
                    s.sums["correct"] += int((z.argmax(axis=1) == y).sum())
                    s.sums["count"] += len(y)
                    s.batch = b + 1
                    bar.update(1)
                    if b % 20 == 0 or b == n_batches - 1:
                        bar.set_postfix(loss=f"{s.sums['loss'] / s.sums['count']:.4f}",
                                        acc=f"{s.sums['correct'] / s.sums['count']:.4f}", refresh=False)
                    if self._stop_requested and s.batch < n_batches:
                        s.sums["seconds"] += time.perf_counter() - t0
                        self._save("last.npz")
                        return False
        finally:
            bar.close()
        s.sums["seconds"] += time.perf_counter() - t0
        return True

    def _end_epoch(self, epoch: int, lr: float) -> bool:
        """Validate, record metrics, step the schedule, checkpoint; returns True to stop early."""
        s = self.state
        tcfg = self.cfg["train"]
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr,
                               "train_loss": s.sums["loss"] / max(s.sums["count"], 1),
                               "train_acc": s.sums["correct"] / max(s.sums["count"], 1),
                               "val_loss": None, "val_acc": None}
        if len(self.val_y):
            ev = evaluate(self.model, self.loss, self.val_x, self.val_y, tcfg["eval_batch_size"], self.mean, self.std)
            row["val_loss"], row["val_acc"] = ev.loss, ev.accuracy
        row["seconds"] = round(s.sums["seconds"], 3)
        s.history.append(row)
        log.info("epoch %d/%d  lr %.4g  train loss %.4f acc %.4f%s  %.1fs", epoch + 1, tcfg["epochs"], lr,
                 row["train_loss"], row["train_acc"],
                 f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}" if row["val_loss"] is not None else "",
                 row["seconds"])
        metrics = {k: v for k, v in row.items() if v is not None}
        self.scheduler.step(metrics)
        s.epoch, s.batch = epoch + 1, 0

        stop = False
        value = metrics.get(self.monitor)
        new_best = value is not None and _improved(value, s.best_value, self.monitor_mode)
        if new_best:
            s.best_value, s.best_epoch = value, epoch + 1
        es = tcfg.get("early_stopping")
        if es:
            es_value = metrics[es["monitor"]]
            es_mode = _mode_for(es["monitor"], es.get("mode", "auto"))
            if self._es_improved(es_value, es_mode, es.get("min_delta", 0.0)):
                s.bad_epochs = 0
            else:
                s.bad_epochs += 1
                if s.bad_epochs >= es["patience"]:
                    stop = True
                    s.stopped_early = True
                    log.info("early stopping: %s has not improved for %d epochs", es["monitor"], s.bad_epochs)
        if new_best:
            self._save("best.npz")
        self._save("last.npz")
        self._write_metrics()
        return stop

    def _es_improved(self, value: float, mode: str, min_delta: float) -> bool:
        es = self.cfg["train"]["early_stopping"]
        past = [r[es["monitor"]] for r in self.state.history[:-1] if r.get(es["monitor"]) is not None]
        if not past:
            return True
        best = max(past) if mode == "max" else min(past)
        return _improved(value, best, mode, min_delta)

    def _write_metrics(self) -> None:
        from nntrain.training.plots import plot_curves

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.state.history:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in METRIC_COLUMNS})
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())
        plot_curves(self.state.history, self.plots_dir)

    # --- the run ---------------------------------------------------------------------------------
    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:  # second Ctrl-C: stop at once (atomic writes keep every file whole)
            raise KeyboardInterrupt
        self._stop_requested = True
        log.warning("interrupt received: finishing the current batch and saving a checkpoint "
                    "(press Ctrl-C again to stop at once)")

    def run(self) -> dict:
        epochs = self.cfg["train"]["epochs"]
        old_handler = None
        if self.interrupt_handling:
            try:
                old_handler = signal.signal(signal.SIGINT, self._on_sigint)
            except ValueError:  # not in the main thread
                old_handler = None
        try:
            while self.state.epoch < epochs and not self.state.stopped_early:
                epoch = self.state.epoch
                lr = self.optimizer.lr
                if not self._train_epoch(epoch):
                    raise Interrupted(
                        f"interrupted during epoch {epoch + 1}; the run was saved to "
                        f"{self.ckpt_dir / 'last.npz'}. Resume with: nntrain train {self.run_dir / 'config.yaml'} "
                        f"--resume {self.run_dir}")
                if self._end_epoch(epoch, lr):
                    break
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        return self._finish()

    def _finish(self) -> dict:
        """Test-set loss and accuracy from the best checkpoint (or the final weights), saved as test.json."""
        import json

        if self.state.history:  # a run killed between its last checkpoint and metrics.csv resumes straight here
            self._write_metrics()
        es = self.cfg["train"].get("early_stopping") or {}
        best_path = self.ckpt_dir / "best.npz"
        source = "last"
        if best_path.exists() and (es.get("restore_best", True) or not es):
            self.model.load_state_dict(load_checkpoint(best_path).params)
            source = "best"
        ev = evaluate(self.model, self.loss, self.test_x, self.test_y, self.cfg["train"]["eval_batch_size"],
                      self.mean, self.std)
        summary = {"test_loss": ev.loss, "test_acc": ev.accuracy, "checkpoint": f"{source}.npz",
                   "best_epoch": self.state.best_epoch, "best_" + self.monitor: self.state.best_value,
                   "epochs_trained": self.state.epoch, "stopped_early": self.state.stopped_early}
        atomic_write_text(self.run_dir / "test.json", json.dumps(summary, indent=2) + "\n")
        log.info("test loss %.4f  test accuracy %.4f  (%s checkpoint, epoch %s)", ev.loss, ev.accuracy, source,
                 self.state.best_epoch if source == "best" else self.state.epoch)
        return summary


def train(cfg: dict, run_dir: str | os.PathLike | None = None, *, resume: str | os.PathLike | None = None,
          init_from: str | None = None, progress: bool | None = None,
          runs_base: str | os.PathLike = "runs", on_start: Callable[[Trainer], None] | None = None) -> tuple[Path, dict]:
    """Train from a resolved config. Returns (run folder, test summary).

    resume: a run folder to continue from its `checkpoints/last.npz`; run_dir: the folder to create
    (must not already hold a run); otherwise runs/<name>-<timestamp>.
    """
    if resume is not None:
        folder = Path(resume)
        if not (folder / "checkpoints" / "last.npz").exists():
            raise CheckpointError(f"cannot resume from {folder}: it has no checkpoints/last.npz")
    elif run_dir is not None:
        folder = Path(run_dir)
        if folder.exists() and any(folder.iterdir()):
            raise NNTrainError(f"run folder {folder} already exists and is not empty; choose another --run-dir "
                               "or use --resume to continue it")
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = create_run_dir(cfg["name"], runs_base)
    handler = logging.FileHandler(folder / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:  # library use without the CLI: log.txt still gets the epochs
        log.setLevel(logging.INFO)
    try:
        trainer = Trainer(cfg, folder, resume=resume is not None, init_from=init_from, progress=progress)
        if on_start:
            on_start(trainer)
        return folder, trainer.run()
    finally:
        log.removeHandler(handler)
        handler.close()
