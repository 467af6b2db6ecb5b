"""Epoch-based learning-rate schedulers and their YAML registry.

A scheduler owns the optimizer's `lr`: the lr used in epoch e (0-based) is the one set after e calls
to `step(metrics)`. `step`, `multistep`, `exponential`, `cosine` and `constant` are closed-form in
the epoch, with an optional linear warmup that equals PyTorch's
`SequentialLR([LinearLR(start_factor=warmup_start_factor, total_iters=W), main], milestones=[W])`:

    lr(e) = base·(s + (1 − s)·e/W)   for e < W          (s = warmup_start_factor, W = warmup_epochs)
    lr(e) = main(e − W)              for e ≥ W          (the main schedule counts epochs from W)

`reduce_on_plateau` follows torch.optim.lr_scheduler.ReduceLROnPlateau on one monitored metric.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from typing import Any, Mapping

from nntrain.errors import CheckpointError, ConfigError
from nntrain.monitor import Monitor
from nntrain.nn.optim import Optimizer
from nntrain.options import Option
from nntrain.registry import Configurable, Registry

logger = logging.getLogger(__name__)

WARMUP_OPTIONS: dict[str, Option] = {
    "warmup_epochs": Option("int", default=0, minimum=0,
                            doc="epochs of linear warmup before the main schedule starts (0: none)"),
    "warmup_start_factor": Option("float", default=0.1, minimum=0.0, exclusive_min=True, maximum=1.0,
                                  doc="lr factor in the first warmup epoch, in (0, 1]; rises linearly to 1"),
}


def _check_int(meta: Mapping[str, Any], key: str) -> int:
    v = meta.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise CheckpointError(f"scheduler state: '{key}' must be a non-negative integer, got {v!r}")
    return v


def _check_float(meta: Mapping[str, Any], key: str, nullable: bool = False) -> float | None:
    v = meta.get(key)
    if v is None and nullable:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise CheckpointError(f"scheduler state: '{key}' must be a finite number, got {v!r}")
    return float(v)


class Scheduler(Configurable):
    """Base class: a closed-form schedule `lr_at(epoch)` (with warmup) driving `optimizer.lr`.

    Subclasses declare `options` (including WARMUP_OPTIONS where warmup applies) and implement
    `_main_lr(k)`, the lr k epochs after warmup ends, from `self.base_lr`.
    """

    def __init__(self, optimizer: Optimizer, epochs: int, **options: Any):
        self._set_options(options)   # resolved by SCHEDULERS: checked and complete
        self.optimizer = optimizer
        self.epochs = epochs
        self.base_lr = float(optimizer.lr)  # the configured optimizer.lr: the schedule's peak
        self.epoch = 0  # number of step() calls so far
        self._prepare()
        self.optimizer.lr = self.lr_at(0)

    def _prepare(self) -> None:
        """Resolve defaults that depend on `epochs` or on other options (before the first lr is set)."""

    @classmethod
    def check(cls, values: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """A warmup as long as the run (a one-epoch smoke run of a config with warmup) is shortened to
        leave one epoch of the main schedule, with a warning that says so."""
        epochs, warmup = context.get("epochs"), values.get("warmup_epochs", 0)
        if epochs is not None and warmup >= epochs:
            logger.warning("scheduler.warmup_epochs %d leaves no epoch of the %s schedule in a run of %d "
                           "epoch%s: warmup shortened to %d", warmup, cls.type_name, epochs,
                           "" if epochs == 1 else "s", epochs - 1)
            values = {**values, "warmup_epochs": epochs - 1}
        return values

    @property
    def lr(self) -> float:
        """The learning rate the optimizer uses now."""
        return self.optimizer.lr

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 0-based `epoch`: warmup, then the main schedule."""
        warmup = self.config.get("warmup_epochs", 0)
        if epoch < warmup:
            s = self.config["warmup_start_factor"]
            return self.base_lr * (s + (1.0 - s) * epoch / warmup)
        return self._main_lr(epoch - warmup)

    def _main_lr(self, k: int) -> float:
        raise NotImplementedError

    def step(self, metrics: Mapping[str, float] | None = None) -> None:
        """Called once after each epoch; sets the lr of the next epoch. `metrics` is unused here."""
        self.epoch += 1
        self.optimizer.lr = self.lr_at(self.epoch)

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: type, epochs stepped, base lr and the current lr."""
        return {"type": self.type_name, "epoch": self.epoch, "base_lr": self.base_lr, "lr": self.optimizer.lr}

    def load_state_dict(self, meta: Mapping[str, Any]) -> None:
        """Restore `state_dict()` output (strict: CheckpointError) and set the optimizer's lr from it."""
        self._check_type(meta)
        epoch, base_lr = _check_int(meta, "epoch"), _check_float(meta, "base_lr")
        self.epoch, self.base_lr = epoch, base_lr
        self.optimizer.lr = self.lr_at(epoch)

    def _check_type(self, meta: Mapping[str, Any]) -> None:
        if not isinstance(meta, Mapping) or meta.get("type") != self.type_name:
            found = meta.get("type") if isinstance(meta, Mapping) else meta
            raise CheckpointError(f"the checkpoint holds a '{found}' scheduler state, "
                                  f"the config asks for '{self.type_name}'")


# YAML type name -> scheduler class: `@SCHEDULERS.register("name")` makes it `type: name`.
SCHEDULERS = Registry("scheduler")


@SCHEDULERS.register("constant")
class ConstantLR(Scheduler):
    """The optimizer's lr throughout (after the optional warmup). Also what `scheduler: null` builds."""

    options = dict(WARMUP_OPTIONS)

    def _main_lr(self, k: int) -> float:
        return self.base_lr


@SCHEDULERS.register("step")
class StepLR(Scheduler):
    """lr = base·γ^⌊k / step_size⌋ (torch StepLR), k = epochs after warmup."""

    options = {
        "step_size": Option("int", minimum=1, doc="epochs between decays"),
        "gamma": Option("float", default=0.1, minimum=0.0, exclusive_min=True, doc="decay factor"),
        **WARMUP_OPTIONS,
    }

    def _main_lr(self, k: int) -> float:
        return self.base_lr * self.gamma ** (k // self.step_size)


@SCHEDULERS.register("multistep")
class MultiStepLR(Scheduler):
    """lr = base·γ^(number of milestones ≤ k) (torch MultiStepLR), k = epochs after warmup."""

    options = {
        "milestones": Option("ints", minimum=1, doc="increasing epochs (counted after warmup) at which lr *= gamma"),
        "gamma": Option("float", default=0.1, minimum=0.0, exclusive_min=True, doc="decay factor"),
        **WARMUP_OPTIONS,
    }

    @classmethod
    def check(cls, values: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        values = super().check(values, context)
        m = values["milestones"]
        if not m or any(b <= a for a, b in zip(m, m[1:])):
            raise ConfigError(f"got {m!r}, expected a non-empty, strictly increasing list of epochs >= 1",
                              "milestones")
        return values

    def _main_lr(self, k: int) -> float:
        return self.base_lr * self.gamma ** bisect_right(self.milestones, k)


@SCHEDULERS.register("exponential")
class ExponentialLR(Scheduler):
    """lr = base·γ^k (torch ExponentialLR), k = epochs after warmup."""

    options = {
        "gamma": Option("float", minimum=0.0, exclusive_min=True, doc="decay factor per epoch"),
        **WARMUP_OPTIONS,
    }

    def _main_lr(self, k: int) -> float:
        return self.base_lr * self.gamma ** k


@SCHEDULERS.register("cosine")
class CosineAnnealingLR(Scheduler):
    """lr = η_min + (base − η_min)·(1 + cos(π·k/T_max))/2 (torch CosineAnnealingLR's closed form),
    k = epochs after warmup; T_max defaults to train.epochs − warmup_epochs."""

    options = {
        "T_max": Option("int", default=None, minimum=1, nullable=True,
                        doc="epochs of the half cosine (null: train.epochs - warmup_epochs)"),
        "eta_min": Option("float", default=0.0, minimum=0.0, doc="the lowest lr, reached after T_max epochs"),
        **WARMUP_OPTIONS,
    }

    def _prepare(self) -> None:
        if self.T_max is None:
            self.T_max = self.epochs - self.warmup_epochs

    def _main_lr(self, k: int) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + math.cos(math.pi * k / self.T_max)) / 2.0


# metric name -> the mode it is optimised in
MONITORS = {"val_loss": "min", "val_acc": "max", "train_loss": "min", "train_acc": "max"}


@SCHEDULERS.register("reduce_on_plateau")
class ReduceLROnPlateau(Scheduler):
    """torch ReduceLROnPlateau on `metrics[monitor]`: after more than `patience` epochs without an
    improvement beyond `threshold`, lr ← max(lr·factor, min_lr) (ignored if the change is ≤ eps),
    then `cooldown` epochs in which bad epochs are not counted."""

    options = {
        "monitor": Option("str", default="val_loss", choices=tuple(MONITORS), doc="the metric watched"),
        "mode": Option("str", default=None, choices=("min", "max"), nullable=True,
                       doc="min: lower is better; null: min for losses, max for accuracies"),
        "factor": Option("float", default=0.1, minimum=0.0, exclusive_min=True, maximum=1.0, exclusive_max=True,
                         doc="lr multiplier on a plateau, in (0, 1)"),
        "patience": Option("int", default=10, minimum=0, doc="bad epochs tolerated before reducing"),
        "threshold": Option("float", default=1e-4, minimum=0.0, doc="the least change that counts as improvement"),
        "threshold_mode": Option("str", default="rel", choices=("rel", "abs"),
                                 doc="rel: relative to the best value; abs: absolute"),
        "cooldown": Option("int", default=0, minimum=0, doc="epochs after a reduction before counting again"),
        "min_lr": Option("float", default=0.0, minimum=0.0, doc="lower bound of the lr"),
        "eps": Option("float", default=1e-8, minimum=0.0, doc="reductions smaller than this are skipped"),
    }

    def _prepare(self) -> None:
        # torch's rule: better than best·(1 ∓ threshold) ('rel') or best ∓ threshold ('abs')
        self.plateau = Monitor(self.monitor, self.mode or MONITORS[self.monitor], self.threshold,
                               relative=self.threshold_mode == "rel")
        self.cooldown_counter = 0

    def lr_at(self, epoch: int) -> float:
        return self.optimizer.lr  # not a function of the epoch: the state is the lr itself

    def step(self, metrics: Mapping[str, float] | None = None) -> None:
        """Read `metrics[monitor]` of the epoch just finished and reduce the lr on a plateau."""
        value = None if metrics is None else metrics.get(self.monitor)
        if value is None:
            have = ", ".join(sorted(k for k, v in (metrics or {}).items() if v is not None)) or "none"
            raise ConfigError(f"reduce_on_plateau monitors '{self.monitor}', which this run does not compute "
                              f"(available: {have}); choose one of those", "scheduler.monitor")
        self.epoch += 1
        self.plateau.update(float(value), self.epoch)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.plateau.bad_epochs = 0  # bad epochs in cooldown are ignored
        if self.plateau.bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
                logger.info("reduce_on_plateau: %s has not improved for %d epochs; lr %.6g -> %.6g",
                            self.monitor, self.plateau.bad_epochs, old, new)
            self.cooldown_counter = self.cooldown
            self.plateau.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; an infinite `best` (nothing seen yet) is stored as null."""
        return {**super().state_dict(), "best": self.plateau.best, "num_bad_epochs": self.plateau.bad_epochs,
                "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, meta: Mapping[str, Any]) -> None:
        self._check_type(meta)
        epoch, lr = _check_int(meta, "epoch"), _check_float(meta, "lr")
        best = _check_float(meta, "best", nullable=True)
        bad, cooldown = _check_int(meta, "num_bad_epochs"), _check_int(meta, "cooldown_counter")
        base_lr = _check_float(meta, "base_lr")
        if lr < 0:
            raise CheckpointError(f"scheduler state: 'lr' must be >= 0, got {lr!r}")
        self.epoch, self.base_lr, self.cooldown_counter = epoch, base_lr, cooldown
        self.plateau.best, self.plateau.bad_epochs = best, bad
        self.optimizer.lr = lr


def build_scheduler(spec: Mapping[str, Any] | None, optimizer: Optimizer, epochs: int) -> Scheduler:
    """The scheduler for `spec` ({type: ..., options}; None: constant lr) driving `optimizer.lr` over
    `epochs` epochs. Sets the lr of epoch 0 on the optimizer."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(f"got {epochs!r}, expected an integer >= 1", "train.epochs")
    return SCHEDULERS.build(spec if spec is not None else {"type": "constant"}, optimizer, epochs,
                            path="scheduler", context={"epochs": epochs})
