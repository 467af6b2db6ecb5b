"""nntrain: neural networks from scratch in NumPy, trained from YAML configs."""

from nntrain.errors import CheckpointError, ConfigError, DataError, NNTrainError, ShapeError
from nntrain.losses import SoftmaxCrossEntropy, build_loss
from nntrain.model import Model, build_model

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataError", "Model", "NNTrainError", "ShapeError",
           "SoftmaxCrossEntropy", "build_loss", "build_model"]
