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
from typing import Any, ClassVar, Mapping

from nntrain.errors import CheckpointError, ConfigError
from nntrain.nn.optim import Optimizer
from nntrain.options import Option, split_typed_spec, validate_options

logger = logging.getLogger(__name__)

WARMUP_OPTIONS: dict[str, Option] = {
    "warmup_epochs": Option("int", default=0, minimum=0,
                            doc="epochs of linear warmup before the main schedule starts (0: none)"),
    "warmup_start_factor": Option("float", default=0.1, minimum=0.0, maximum=1.0,
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


class Scheduler:
    """Base class: a closed-form schedule `lr_at(epoch)` (with warmup) driving `optimizer.lr`.

    Subclasses declare `options` (including WARMUP_OPTIONS where warmup applies) and implement
    `_main_lr(k)`, the lr k epochs after warmup ends, from `self.base_lr`.
    """

    type_name: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, optimizer: Optimizer, epochs: int, **opts: Any):
        values = self.validate(opts, epochs)
        self.config: dict[str, Any] = values
        for key, v in values.items():
            setattr(self, key, v)
        self.optimizer = optimizer
        self.epochs = epochs
        self.base_lr = float(optimizer.lr)  # the configured optimizer.lr: the schedule's peak
        self.epoch = 0  # number of step() calls so far
        self._prepare()
        self.optimizer.lr = self.lr_at(0)

    def _prepare(self) -> None:
        """Resolve defaults that depend on `epochs` or on other options (before the first lr is set)."""

    @classmethod
    def validate(cls, given: Mapping[str, Any], epochs: int | None = None) -> dict[str, Any]:
        """Options with defaults filled in; ConfigError (path = the key). `epochs` (train.epochs)
        enables the checks that depend on it; None skips them."""
        values = validate_options(cls.options, given, f"scheduler '{cls.type_name}'")
        if "warmup_start_factor" in values and not values["warmup_start_factor"] > 0:
            raise ConfigError(f"got {values['warmup_start_factor']!r}, expected a number in (0, 1]",
                              "warmup_start_factor")
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


class ConstantLR(Scheduler):
    """The optimizer's lr throughout (after the optional warmup). Also what `scheduler: null` builds."""

    type_name = "constant"
    options = dict(WARMUP_OPTIONS)

    def _main_lr(self, k: int) -> float:
        return self.base_lr


class StepLR(Scheduler):
    """lr = base·γ^⌊k / step_size⌋ (torch StepLR), k = epochs after warmup."""

    type_name = "step"
    options = {
        "step_size": Option("int", minimum=1, doc="epochs between decays"),
        "gamma": Option("float", default=0.1, minimum=0.0, exclusive_min=True, doc="decay factor"),
        **WARMUP_OPTIONS,
    }

    def _main_lr(self, k: int) -> float:
        return self.base_lr * self.gamma ** (k // self.step_size)


class MultiStepLR(Scheduler):
    """lr = base·γ^(number of milestones ≤ k) (torch MultiStepLR), k = epochs after warmup."""

    type_name = "multistep"
    options = {
        "milestones": Option("ints", minimum=1, doc="increasing epochs (counted after warmup) at which lr *= gamma"),
        "gamma": Option("float", default=0.1, minimum=0.0, exclusive_min=True, doc="decay factor"),
        **WARMUP_OPTIONS,
    }

    @classmethod
    def validate(cls, given: Mapping[str, Any], epochs: int | None = None) -> dict[str, Any]:
        values = super().validate(given, epochs)
        m = values["milestones"]
        if not m or any(b <= a for a, b in zip(m, m[1:])):
            raise ConfigError(f"got {m!r}, expected a non-empty, strictly increasing list of epochs >= 1",
                              "milestones")
        return values

    def _main_lr(self, k: int) -> float:
        return self.base_lr * self.gamma ** bisect_right(self.milestones, k)


class ExponentialLR(Scheduler):
    """lr = base·γ^k (torch ExponentialLR), k = epochs after warmup."""

    type_name = "exponential"
    options = {
        "gamma": Option("float", minimum=0.0, exclusive_min=True, doc="decay factor per epoch"),
        **WARMUP_OPTIONS,
    }

    def _main_lr(self, k: int) -> float:
        return self.base_lr * self.gamma ** k


class CosineAnnealingLR(Scheduler):
    """lr = η_min + (base − η_min)·(1 + cos(π·k/T_max))/2 (torch CosineAnnealingLR's closed form),
    k = epochs after warmup; T_max defaults to train.epochs − warmup_epochs."""

    type_name = "cosine"
    options = {
        "T_max": Option("int", default=None, minimum=1, nullable=True,
                        doc="epochs of the half cosine (null: train.epochs - warmup_epochs)"),
        "eta_min": Option("float", default=0.0, minimum=0.0, doc="the lowest lr, reached after T_max epochs"),
        **WARMUP_OPTIONS,
    }

    @classmethod
    def validate(cls, given: Mapping[str, Any], epochs: int | None = None) -> dict[str, Any]:
        values = super().validate(given, epochs)
        if values["T_max"] is None and epochs is not None and epochs - values["warmup_epochs"] < 1:
            raise ConfigError(f"T_max defaults to train.epochs - warmup_epochs = {epochs} - "
                              f"{values['warmup_epochs']}, which must be >= 1; set T_max or reduce warmup_epochs",
                              "warmup_epochs")
        return values

    def _prepare(self) -> None:
        if self.T_max is None:
            self.T_max = self.epochs - self.warmup_epochs

    def _main_lr(self, k: int) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + math.cos(math.pi * k / self.T_max)) / 2.0


# metric name -> the mode it is optimised in
MONITORS = {"val_loss": "min", "val_acc": "max", "train_loss": "min", "train_acc": "max"}


class ReduceLROnPlateau(Scheduler):
    """torch ReduceLROnPlateau on `metrics[monitor]`: after more than `patience` epochs without an
    improvement beyond `threshold`, lr ← max(lr·factor, min_lr) (ignored if the change is ≤ eps),
    then `cooldown` epochs in which bad epochs are not counted."""

    type_name = "reduce_on_plateau"
    options = {
        "monitor": Option("str", default="val_loss", choices=tuple(MONITORS), doc="the metric watched"),
        "mode": Option("str", default=None, choices=("min", "max"), nullable=True,
                       doc="min: lower is better; null: min for losses, max for accuracies"),
        "factor": Option("float", default=0.1, minimum=0.0, maximum=1.0, exclusive_max=True,
                         doc="lr multiplier on a plateau, in (0, 1)"),
        "patience": Option("int", default=10, minimum=0, doc="bad epochs tolerated before reducing"),
        "threshold": Option("float", default=1e-4, minimum=0.0, doc="the least change that counts as improvement"),
        "threshold_mode": Option("str", default="rel", choices=("rel", "abs"),
                                 doc="rel: relative to the best value; abs: absolute"),
        "cooldown": Option("int", default=0, minimum=0, doc="epochs after a reduction before counting again"),
        "min_lr": Option("float", default=0.0, minimum=0.0, doc="lower bound of the lr"),
        "eps": Option("float", default=1e-8, minimum=0.0, doc="reductions smaller than this are skipped"),
    }

    @classmethod
    def validate(cls, given: Mapping[str, Any], epochs: int | None = None) -> dict[str, Any]:
        values = super().validate(given, epochs)
        _positive(values, "factor")
        return values

    def _prepare(self) -> None:
        if self.mode is None:
            self.mode = MONITORS[self.monitor]
        self.best: float = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def lr_at(self, epoch: int) -> float:
        return self.optimizer.lr  # not a function of the epoch: the state is the lr itself

    def _is_better(self, a: float) -> bool:
        """torch's test: a < best·(1 − threshold) (min, rel), a < best − threshold (min, abs), mirrored for max."""
        rel = self.threshold_mode == "rel"
        if self.mode == "min":
            return a < (self.best * (1.0 - self.threshold) if rel else self.best - self.threshold)
        return a > (self.best * (1.0 + self.threshold) if rel else self.best + self.threshold)

    def step(self, metrics: Mapping[str, float] | None = None) -> None:
        """Read `metrics[monitor]` of the epoch just finished and reduce the lr on a plateau."""
        value = None if metrics is None else metrics.get(self.monitor)
        if value is None:
            have = ", ".join(sorted(k for k, v in (metrics or {}).items() if v is not None)) or "none"
            raise ConfigError(f"reduce_on_plateau monitors '{self.monitor}', which this run does not compute "
                              f"(available: {have}); choose one of those", "scheduler.monitor")
        current = float(value)
        self.epoch += 1
        if self._is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown are ignored
        if self.num_bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
                logger.info("reduce_on_plateau: %s has not improved for %d epochs; lr %.6g -> %.6g",
                            self.monitor, self.num_bad_epochs, old, new)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; an infinite `best` (nothing seen yet) is stored as null."""
        return {**super().state_dict(), "best": self.best if math.isfinite(self.best) else None,
                "num_bad_epochs": self.num_bad_epochs, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, meta: Mapping[str, Any]) -> None:
        self._check_type(meta)
        epoch, lr = _check_int(meta, "epoch"), _check_float(meta, "lr")
        best = _check_float(meta, "best", nullable=True)
        bad, cooldown = _check_int(meta, "num_bad_epochs"), _check_int(meta, "cooldown_counter")
        base_lr = _check_float(meta, "base_lr")
        if lr < 0:
            raise CheckpointError(f"scheduler state: 'lr' must be >= 0, got {lr!r}")
        self.epoch, self.base_lr, self.num_bad_epochs, self.cooldown_counter = epoch, base_lr, bad, cooldown
        self.best = best if best is not None else (math.inf if self.mode == "min" else -math.inf)
        self.optimizer.lr = lr


def _positive(values: dict[str, Any], key: str) -> None:
    if not values[key] > 0:
        raise ConfigError(f"got {values[key]!r}, expected a number > 0", key)


# The registry: YAML type name -> scheduler class. Read-only after import.
SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.type_name: cls for cls in (StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, ReduceLROnPlateau,
                                   ConstantLR)}


def validate_scheduler_spec(spec: Any, epochs: int | None = None, section: str = "scheduler") -> dict[str, Any] | None:
    """The `scheduler:` section checked and completed (`type` plus every option), or None for null.

    `epochs` (train.epochs) enables the checks that depend on it. ConfigError paths: `scheduler.gamma`.
    """
    if spec is None:
        return None
    cls, opts = split_typed_spec(spec, SCHEDULERS, section)
    try:
        return {"type": cls.type_name, **cls.validate(opts, epochs)}
    except ConfigError as e:
        raise e.located(prefix=section) from None


def build_scheduler(spec: Mapping[str, Any] | None, optimizer: Optimizer, epochs: int) -> Scheduler:
    """Build the scheduler for `spec` ({type: ..., options}; None: constant lr) driving `optimizer.lr`
    over `epochs` epochs. Sets the lr of epoch 0 on the optimizer."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(f"got {epochs!r}, expected an integer >= 1", "train.epochs")
    values = validate_scheduler_spec(spec, epochs)
    if values is None:
        return ConstantLR(optimizer, epochs)
    cls = SCHEDULERS[values.pop("type")]
    return cls(optimizer, epochs, **values)
