"""Every layer module is imported here so that its @register runs; REGISTRY then lists them all."""

from nntrain.nn.layers import activations, conv, dropout, linear, norm, pool, shape  # noqa: F401  (registration)
from nntrain.nn.layers.base import REGISTRY, Layer, Option, layer_from_spec, register

__all__ = ["REGISTRY", "Layer", "Option", "layer_from_spec", "register"]
