"""Every layer module is imported here so that its registration runs; LAYERS then lists them all."""

from nntrain.nn.layers import activations, blocks, conv, dropout, linear, norm, pool, shape  # noqa: F401  (registration)
from nntrain.nn.layers.base import LAYERS, Layer

__all__ = ["LAYERS", "Layer"]
