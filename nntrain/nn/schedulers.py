"""Learning-rate schedulers and their YAML registry: per-epoch closed forms, per-batch warmup, one-cycle.

A scheduler owns the optimizer's `lr`. The trainer calls `step_batch()` after every optimizer step and
`step(metrics)` after every epoch; the scheduler counts both (`steps`, `epoch`) and sets the lr the next
batch uses. `step`, `multistep`, `exponential`, `cosine` and `constant` are closed-form in the epoch e,
with an optional linear warmup that equals PyTorch's
`SequentialLR([LinearLR(start_factor=warmup_start_factor, total_iters=W), main], milestones=[W])`:

    lr(e) = base·(s + (1 − s)·e/W)   for e < W          (s = warmup_start_factor, W = warmup_epochs)
    lr(e) = main(e − W)              for e ≥ W          (the main schedule counts epochs from W)

or a warmup counted in optimizer steps t (batches), which multiplies the epoch schedule as a
`LinearLR(start_factor=s, total_iters=S)` stepped every batch on the same optimizer does:

    lr(e, t) = main(e)·(s + (1 − s)·t/S)   for t < S,   main(e) for t ≥ S      (S = warmup_steps)

`onecycle` is torch.optim.lr_scheduler.OneCycleLR stepped every batch (total steps = epochs × batches
per epoch), cycling the momentum too. `reduce_on_plateau` follows torch's ReduceLROnPlateau on one
monitored metric. Every state is a few counters (JSON), so a run resumed inside an epoch continues the
same lr sequence.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from typing import Any, ClassVar, Mapping

from nntrain.errors import CheckpointError, ConfigError
from nntrain.monitor import Monitor
from nntrain.nn.optim import OPTIMIZERS, Optimizer
from nntrain.options import Option
from nntrain.registry import Configurable, Registry

logger = logging.getLogger(__name__)

WARMUP_OPTIONS: dict[str, Option] = {
    "warmup_epochs": Option("int", default=0, minimum=0,
                            doc="epochs of linear warmup before the main schedule starts (0: none)"),
    "warmup_steps": Option("int", default=0, minimum=0,
                           doc="optimizer steps (batches) of linear warmup multiplying the schedule's lr "
                               "(0: none; not with warmup_epochs)"),
    "warmup_start_factor": Option("float", default=0.1, minimum=0.0, exclusive_min=True, maximum=1.0,
                                  doc="lr factor in the first warmup epoch or step, in (0, 1]; rises linearly to 1"),
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
    """Base class: a closed-form schedule `lr_at(epoch, step)` (with warmup) driving `optimizer.lr`.

    Subclasses declare `options` (including WARMUP_OPTIONS where warmup applies) and implement
    `_main_lr(k)`, the lr k epochs after an epoch warmup ends, from `self.base_lr`. `per_batch`
    schedules change the lr at every `step_batch()`; the others only while a warmup_steps warmup runs.
    """

    per_batch: ClassVar[bool] = False

    def __init__(self, optimizer: Optimizer, epochs: int, batches_per_epoch: int | None = None, **options: Any):
        self._set_options(options)   # resolved by SCHEDULERS: checked and complete
        self.optimizer = optimizer
        self.epochs = epochs
        self.batches_per_epoch = batches_per_epoch   # None: not known (no per-batch schedule possible)
        self.base_lr = float(optimizer.lr)  # the configured optimizer.lr: the schedule's peak
        self.epoch = 0  # number of step() calls so far
        self.steps = 0  # number of step_batch() calls (optimizer steps) so far
        self.epoch_start_step = 0   # `steps` when the epoch in progress began
        self._prepare()
        warmup_steps = self.config.get("warmup_steps", 0)
        if warmup_steps and batches_per_epoch is not None and warmup_steps >= epochs * batches_per_epoch:
            logger.warning("scheduler.warmup_steps %d is not shorter than the run (%d steps): the lr never "
                           "reaches the %s schedule's", warmup_steps, epochs * batches_per_epoch, self.type_name)
        self._apply()

    def _prepare(self) -> None:
        """Resolve defaults that depend on `epochs` or on other options (before the first lr is set)."""

    @classmethod
    def check(cls, values: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """One warmup at most. A warmup as long as the run (a one-epoch smoke run of a config with
        warmup) is shortened to leave one epoch of the main schedule, with a warning that says so."""
        epochs, warmup = context.get("epochs"), values.get("warmup_epochs", 0)
        if warmup and values.get("warmup_steps", 0):
            raise ConfigError(f"set warmup_epochs or warmup_steps, not both (got {warmup} and "
                              f"{values['warmup_steps']})", "warmup_steps")
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

    def lr_at(self, epoch: int, step: int = 0) -> float:
        """The learning rate of 0-based `epoch` after `step` optimizer steps in all: the epoch warmup or
        the main schedule, times the step warmup's factor."""
        warmup = self.config.get("warmup_epochs", 0)
        s = self.config.get("warmup_start_factor", 1.0)
        if epoch < warmup:
            lr = self.base_lr * (s + (1.0 - s) * epoch / warmup)
        else:
            lr = self._main_lr(epoch - warmup)
        warmup_steps = self.config.get("warmup_steps", 0)
        if step < warmup_steps:
            lr *= s + (1.0 - s) * step / warmup_steps
        return lr

    def epoch_start_lr(self) -> float:
        """The lr the epoch in progress started with (what metrics.csv records), also inside an epoch."""
        return self.lr_at(self.epoch, self.epoch_start_step)

    def _main_lr(self, k: int) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        """Set the optimizer's lr for the position (epoch, steps)."""
        self.optimizer.lr = self.lr_at(self.epoch, self.steps)

    def step_batch(self) -> None:
        """Called after every optimizer step: counts it, and moves a per-batch schedule or warmup."""
        self.steps += 1
        if self.per_batch or self.steps <= self.config.get("warmup_steps", 0):
            self._apply()

    def step(self, metrics: Mapping[str, float] | None = None) -> None:
        """Called once after each epoch; sets the lr of the next epoch. `metrics` is unused here."""
        self.epoch += 1
        self.epoch_start_step = self.steps
        self._apply()

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: type, epochs and optimizer steps counted, base lr and the current lr."""
        return {"type": self.type_name, "epoch": self.epoch, "base_lr": self.base_lr, "lr": self.optimizer.lr,
                "steps": self.steps, "epoch_start_step": self.epoch_start_step}

    def load_state_dict(self, meta: Mapping[str, Any]) -> None:
        """Restore `state_dict()` output (strict: CheckpointError) and set the optimizer's lr from it."""
        self._check_type(meta)
        self._load_counts(meta)
        self._apply()

    def _load_counts(self, meta: Mapping[str, Any]) -> None:
        """epoch, base_lr and the step counters (absent from checkpoints written before per-batch
        schedules existed: 0, which is where such a run's schedule stands)."""
        epoch, base_lr = _check_int(meta, "epoch"), _check_float(meta, "base_lr")
        counts = {k: _check_int(meta, k) if k in meta else 0 for k in ("steps", "epoch_start_step")}
        if counts["epoch_start_step"] > counts["steps"]:
            raise CheckpointError(f"scheduler state: 'epoch_start_step' {counts['epoch_start_step']} is past "
                                  f"'steps' {counts['steps']}")
        self.epoch, self.base_lr = epoch, base_lr
        self.steps, self.epoch_start_step = counts["steps"], counts["epoch_start_step"]

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


def _momentum_problem(optimizer_type: str, momentum: float | None) -> str | None:
    """Why the optimizer `optimizer_type` (with its configured `momentum`) cannot have its momentum
    cycled, or None when it can: SGD and RMSprop need momentum > 0 (their momentum buffers exist only
    then), Adam/AdamW cycle β1, Adagrad/Adadelta have nothing to cycle."""
    key = OPTIMIZERS[optimizer_type].momentum_option if optimizer_type in OPTIMIZERS else None
    if key is None:
        return f"the {optimizer_type} optimizer has no momentum or beta1 to cycle"
    if key == "momentum" and not (momentum or 0.0) > 0:
        return f"the {optimizer_type} optimizer has momentum 0 (set optimizer.momentum > 0 to cycle it)"
    return None


def _anneal(strategy: str, start: float, end: float, pct: float) -> float:
    """torch OneCycleLR's annealing from `start` (pct 0) to `end` (pct 1): cosine or linear."""
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


@SCHEDULERS.register("onecycle")
class OneCycleLR(Scheduler):
    """torch OneCycleLR stepped every batch over T = epochs × batches per epoch steps: the lr rises from
    max_lr/div_factor to max_lr in the first pct_start·T steps, then anneals to
    max_lr/(div_factor·final_div_factor); the momentum (SGD/RMSprop momentum, Adam/AdamW β1) moves
    the opposite way, max_momentum → base_momentum → max_momentum.

    Phases (end step, lr from → to, momentum from → to), with step t counted from 0:
    two-phase: (pct·T − 1, initial → max, max_m → base_m), (T − 1, max → min, base_m → max_m);
    three_phase: (pct·T − 1, initial → max, max_m → base_m), (2·pct·T − 2, max → initial, base_m → max_m),
    (T − 1, initial → min, max_m). In a phase from a to b, pct = (t − a)/(b − a) and the value is
    end + (start − end)/2·(cos(π·pct) + 1) (cos) or start + (end − start)·pct (linear).
    """

    per_batch = True
    options = {
        "max_lr": Option("float", default=None, minimum=0.0, exclusive_min=True, nullable=True,
                         doc="the peak lr; null: optimizer.lr"),
        "pct_start": Option("float", default=0.3, minimum=0.0, maximum=1.0,
                            doc="fraction of the steps spent raising the lr"),
        "anneal_strategy": Option("str", default="cos", choices=("cos", "linear"), doc="shape of each phase"),
        "cycle_momentum": Option("bool", default=True,
                                 doc="cycle the momentum (SGD/RMSprop momentum, Adam β1) inversely to the lr"),
        "base_momentum": Option("float", default=0.85, minimum=0.0, doc="momentum at the lr's peak"),
        "max_momentum": Option("float", default=0.95, minimum=0.0, doc="momentum at the start and the end"),
        "div_factor": Option("float", default=25.0, minimum=0.0, exclusive_min=True,
                             doc="initial lr = max_lr / div_factor"),
        "final_div_factor": Option("float", default=1e4, minimum=0.0, exclusive_min=True,
                                   doc="final lr = initial lr / final_div_factor"),
        "three_phase": Option("bool", default=False,
                              doc="rise, symmetric fall back to the initial lr, then anneal to the final lr"),
    }

    @classmethod
    def check(cls, values: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """three_phase needs pct_start <= 0.5; cycle_momentum needs an optimizer with a momentum to cycle
        (`context["optimizer"]`, when known)."""
        values = super().check(values, context)
        if values["three_phase"] and values["pct_start"] > 0.5:
            raise ConfigError(f"three_phase: true needs pct_start <= 0.5 (the rise and the fall back each take "
                              f"pct_start of the steps), got {values['pct_start']}", "pct_start")
        opt = context.get("optimizer")
        if values["cycle_momentum"] and isinstance(opt, Mapping):
            problem = _momentum_problem(opt.get("type"), opt.get("momentum"))
            if problem:
                raise ConfigError(f"cycle_momentum: {problem}; or set cycle_momentum: false", "cycle_momentum")
        return values

    def _prepare(self) -> None:
        if self.batches_per_epoch is None:
            raise ValueError("onecycle steps every batch: build_scheduler needs batches_per_epoch")
        if self.cycle_momentum:
            problem = _momentum_problem(self.optimizer.type_name, self.optimizer.momentum)
            if problem:
                raise ConfigError(f"cycle_momentum: {problem}; or set cycle_momentum: false",
                                  "scheduler.cycle_momentum")
        self.total_steps = self.epochs * self.batches_per_epoch
        peak = self.max_lr if self.max_lr is not None else self.base_lr
        initial = peak / self.div_factor
        final = initial / self.final_div_factor
        hi, lo = self.max_momentum, self.base_momentum
        rise = float(self.pct_start * self.total_steps) - 1
        # (end step, start lr, end lr, start momentum, end momentum), as torch's _schedule_phases
        self._phases: list[tuple[float, float, float, float, float]] = [(rise, initial, peak, hi, lo)]
        if self.three_phase:
            self._phases += [(float(2 * self.pct_start * self.total_steps) - 2, peak, initial, lo, hi),
                             (self.total_steps - 1, initial, final, hi, hi)]
        else:
            self._phases += [(self.total_steps - 1, peak, final, lo, hi)]

    def at(self, step: int) -> tuple[float, float]:
        """(lr, momentum) after `step` optimizer steps (torch's get_lr at last_epoch = step). From the last
        step on, the schedule stays where it ended: torch extrapolates its last phase one step further
        (where linear annealing gives a negative lr, which a checkpoint then holds), then refuses."""
        t = min(step, self.total_steps - 1)
        start = 0.0
        for i, (end, lr0, lr1, m0, m1) in enumerate(self._phases):
            if t <= end or i == len(self._phases) - 1:
                pct = (t - start) / (end - start) if end != start else 1.0   # a phase of no steps: its end
                return (_anneal(self.anneal_strategy, lr0, lr1, pct), _anneal(self.anneal_strategy, m0, m1, pct))
            start = end
        raise AssertionError("unreachable: the last phase always matches")

    def lr_at(self, epoch: int, step: int = 0) -> float:
        return self.at(step)[0]

    def _apply(self) -> None:
        lr, momentum = self.at(self.steps)
        self.optimizer.lr = lr
        if self.cycle_momentum:
            self.optimizer.momentum = momentum


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

    def lr_at(self, epoch: int, step: int = 0) -> float:
        return self.optimizer.lr  # not a function of the epoch: the state is the lr itself

    def step(self, metrics: Mapping[str, float] | None = None) -> None:
        """Read `metrics[monitor]` of the epoch just finished and reduce the lr on a plateau."""
        value = None if metrics is None else metrics.get(self.monitor)
        if value is None:
            have = ", ".join(sorted(k for k, v in (metrics or {}).items() if v is not None)) or "none"
            raise ConfigError(f"reduce_on_plateau monitors '{self.monitor}', which this run does not compute "
                              f"(available: {have}); choose one of those", "scheduler.monitor")
        self.epoch += 1
        self.epoch_start_step = self.steps
        self.plateau.update(float(value), self.epoch)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.plateau.bad_epochs = 0  # bad epochs in cooldown are ignored
        if self.plateau.bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
                logger.info("reduce_on_plateau: %s has not improved for %d epoch%s; lr %.6g -> %.6g", self.monitor,
                            self.plateau.bad_epochs, "" if self.plateau.bad_epochs == 1 else "s", old, new)
            self.cooldown_counter = self.cooldown
            self.plateau.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; an infinite `best` (nothing seen yet) is stored as null."""
        return {**super().state_dict(), "best": self.plateau.best, "num_bad_epochs": self.plateau.bad_epochs,
                "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, meta: Mapping[str, Any]) -> None:
        self._check_type(meta)
        lr = _check_float(meta, "lr")
        best = _check_float(meta, "best", nullable=True)
        bad, cooldown = _check_int(meta, "num_bad_epochs"), _check_int(meta, "cooldown_counter")
        if lr < 0:
            raise CheckpointError(f"scheduler state: 'lr' must be >= 0, got {lr!r}")
        self._load_counts(meta)
        self.cooldown_counter = cooldown
        self.plateau.best, self.plateau.bad_epochs = best, bad
        self.optimizer.lr = lr


def build_scheduler(spec: Mapping[str, Any] | None, optimizer: Optimizer, epochs: int,
                    batches_per_epoch: int | None = None) -> Scheduler:
    """The scheduler for `spec` ({type: ..., options}; None: constant lr) driving `optimizer.lr` over
    `epochs` epochs of `batches_per_epoch` optimizer steps (needed by onecycle). Sets the lr of the
    first step on the optimizer."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(f"got {epochs!r}, expected an integer >= 1", "train.epochs")
    if batches_per_epoch is not None and (not isinstance(batches_per_epoch, int) or batches_per_epoch < 1):
        raise ValueError(f"batches_per_epoch must be an integer >= 1, got {batches_per_epoch!r}")
    context = {"epochs": epochs, "optimizer": {"type": optimizer.type_name, **optimizer.config}}
    return SCHEDULERS.build(spec if spec is not None else {"type": "constant"}, optimizer, epochs,
                            batches_per_epoch=batches_per_epoch, path="scheduler", context=context)
