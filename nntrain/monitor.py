"""The one rule for "did this metric improve?", shared by best.npz, early stopping and reduce_on_plateau.

Lives on the ground floor because the engine's reduce_on_plateau schedule and the training loop's
callbacks both need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from nntrain.errors import CheckpointError


def mode_for(metric: str, mode: str | None = "auto") -> str:
    """'max' for accuracies, 'min' for losses, unless `mode` says min or max."""
    if mode in ("min", "max"):
        return mode
    return "max" if metric.endswith("acc") else "min"


@dataclass
class Monitor:
    """The best value of one metric so far and how many updates in a row failed to beat it.

    A value improves on `best` when it is better by more than `min_delta`: absolutely
    (max: v > best + δ; min: v < best − δ), or with `relative` as PyTorch's threshold_mode 'rel'
    (max: v > best·(1 + δ); min: v < best·(1 − δ)). A NaN never improves; anything else improves on
    nothing.
    """

    metric: str
    mode: str = "auto"
    min_delta: float = 0.0
    relative: bool = False
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        self.mode = mode_for(self.metric, self.mode)

    def improves(self, value: float) -> bool:
        """Whether `value` beats the best so far (without recording it)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        d = self.min_delta
        if self.mode == "max":
            return value > (self.best * (1.0 + d) if self.relative else self.best + d)
        return value < (self.best * (1.0 - d) if self.relative else self.best - d)

    def update(self, value: float, epoch: int | None = None) -> bool:
        """Record one value: a new best resets the bad-epoch count, anything else adds one. Returns
        whether it improved."""
        if self.improves(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any], what: str = "monitor") -> None:
        """Restore `state_dict()` output; every field is checked (a checkpoint is not trusted)."""
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{what} state must be a mapping, got {type(state).__name__}")
        best, epoch, bad = state.get("best"), state.get("best_epoch"), state.get("bad_epochs")
        if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool) or math.isnan(best)):
            raise CheckpointError(f"{what} state: 'best' must be a number or null, got {best!r}")
        for key, v, nullable in (("best_epoch", epoch, True), ("bad_epochs", bad, False)):
            if (v is None and not nullable) or (v is not None and (not isinstance(v, int) or isinstance(v, bool)
                                                                   or v < 0)):
                raise CheckpointError(f"{what} state: '{key}' must be a non-negative integer, got {v!r}")
        self.best = None if best is None else float(best)
        self.best_epoch, self.bad_epochs = epoch, bad
