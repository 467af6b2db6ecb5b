"""Hyperparameter search on Optuna: a sweep file (spec.py) names a base config and the key paths to
search; workers (worker.py), processes on one machine or many, take the trials one at a time from a
shared study (study.py) and train each as an ordinary run folder; the results are a table, the best
config and plots (outputs.py).

    nntrain sweep configs/sweeps/quickstart_lr.yaml --workers 2
    nntrain sweep --join runs/sweeps/quickstart-lr-20261125-101500     # more workers, same study
    nntrain sweep --resume runs/sweeps/quickstart-lr-20261125-101500   # after a crash or Ctrl-C

Optuna is the optional extra `sweep`; nothing here imports it until a sweep starts.
"""

from __future__ import annotations

from nntrain.errors import NNTrainError

__all__ = ["require_optuna"]

INSTALL_HINT = 'pip install "nntrain[sweep]"'


def require_optuna() -> None:
    """Raise NNTrainError (exit 2) with the install command when Optuna is not installed."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise NNTrainError(f"nntrain sweep needs Optuna, which is not installed: {INSTALL_HINT}") from None
