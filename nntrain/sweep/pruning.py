"""The training callback that reports each epoch's metric to its Optuna trial and stops the run when
the pruner says so.

The decision is part of the callback's state, saved in the checkpoint with the stop itself, so a trial
killed after being pruned and then taken up again is still known to be pruned (its run has nothing
left to train and does not call the callback again).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any, Mapping

from nntrain.errors import CheckpointError
from nntrain.training.callbacks import Callback

if TYPE_CHECKING:
    import optuna

    from nntrain.training.trainer import Trainer

log = logging.getLogger(__name__)


class PruningCallback(Callback):
    """trial.report(metric, epoch) after every epoch; True (stop) when trial.should_prune()."""

    name = "sweep_pruning"

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric
        self.pruned_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: Mapping[str, float]) -> bool:
        value = metrics.get(self.metric)
        if value is None:
            return False
        with warnings.catch_warnings():   # an epoch replayed after a kill is reported twice: ignored
            warnings.simplefilter("ignore")
            self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            log.info("trial %d pruned at epoch %d (%s %.4g): the run stops here", self.trial.number, epoch,
                     self.metric, value)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"pruned_epoch": self.pruned_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        epoch = state.get("pruned_epoch")
        if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1):
            raise CheckpointError(f"the sweep pruning state holds an invalid epoch {epoch!r}")
        self.pruned_epoch = epoch
