"""nntrain: neural networks from scratch in NumPy, trained from YAML configs.

The public names are loaded lazily, so that the `nntrain` command can put OpenBLAS's load-time
settings (OPENBLAS_THREAD_TIMEOUT) into the environment before NumPy is first imported.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "nntrain.config", "build_model": "nntrain.nn.model", "Model": "nntrain.nn.model",
    "build_loss": "nntrain.nn.losses", "SoftmaxCrossEntropy": "nntrain.nn.losses",
    "build_optimizer": "nntrain.nn.optim", "build_scheduler": "nntrain.nn.schedulers",
    "NNTrainError": "nntrain.errors", "ConfigError": "nntrain.errors", "ShapeError": "nntrain.errors",
    "DataError": "nntrain.errors", "CheckpointError": "nntrain.errors", "NumericalError": "nntrain.errors",
    "train": "nntrain.training.runner", "Trainer": "nntrain.training.trainer",
    "Callback": "nntrain.training.callbacks", "load_run": "nntrain.training.run_folder",
    "LAYERS": "nntrain.nn.layers", "Layer": "nntrain.nn.layers", "OPTIMIZERS": "nntrain.nn.optim",
    "SCHEDULERS": "nntrain.nn.schedulers", "LOSSES": "nntrain.nn.losses",
}

__all__ = sorted(_EXPORTS)


def __dir__() -> list[str]:
    return [*__all__, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nntrain' has no attribute {name!r}")
