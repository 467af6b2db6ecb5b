"""Every layer module is imported here so that its @register runs; REGISTRY then lists them all."""

from nntrain.layers import activations, linear, shape  # noqa: F401  (registration side effect)
from nntrain.layers.base import REGISTRY, Layer, Option, layer_from_spec, register

__all__ = ["REGISTRY", "Layer", "Option", "layer_from_spec", "register"]
