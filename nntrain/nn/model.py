"""A model is a stack of layers: forward runs them in order, backward in reverse."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from nntrain.nn.state import load_arrays_into
from nntrain.errors import ConfigError
from nntrain.nn.layers import layer_from_spec
from nntrain.nn.layers.activations import ReLU
from nntrain.nn.layers.base import Layer, Shape
from nntrain.nn.layers.pool import MaxPool2D
from nntrain.nn.parallel import Workers


def model_rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The two Generators a model draws from: weight init and run-time noise (dropout).

    Separate streams derived from the one config seed, so adding dropout does not change the init.
    """
    return np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])


class Model:
    """Sequential stack of built layers.

    `parameters()` yields (name, param, grad) with names "<index>.<param>" (e.g. "0.W"); the grad
    arrays are the layers' persistent buffers, filled by `backward`.

    The model owns a `Workers` pool (`threads`, default: the BLAS thread count) that its layers use to
    split element-wise work over the batch axis; results are the same for any thread count.
    `close()` stops its threads (garbage collection does too).
    """

    def __init__(self, layers: Sequence[Layer], input_shape: Shape, dtype: np.dtype, rng: np.random.Generator,
                 threads: int | None = None):
        self.layers = list(layers)
        self.workers = Workers(threads)
        for layer in self.layers:
            layer.workers = self.workers
        # indices i of relu layers directly followed by a maxpool: forward runs the pair swapped
        self._relu_pool = {i for i in range(len(self.layers) - 1)
                           if type(self.layers[i]) is ReLU and type(self.layers[i + 1]) is MaxPool2D}
        self._swapped: dict[int, np.ndarray | None] = {}
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        self.rng = rng
        shape = self.input_shape
        self.shapes: list[Shape] = []
        for layer in self.layers:
            shape = layer.output_shape(shape)
            self.shapes.append(shape)
        self.output_shape = shape

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """x: (N, *input_shape) -> (N, *output_shape).

        A relu directly followed by a maxpool runs after it instead: max and relu commute
        (max_w relu(x) = relu(max_w x)), and the first maximum of relu(x) in a window is the first
        maximum of x whenever the gradient is not zeroed by the relu, so outputs and gradients are the
        same, while the relu works on the pool's smaller output (4x smaller for 2x2 pooling).
        """
        self._swapped = {}
        for i in self.execution_order():
            x = self.layers[i].forward(x, train)
            if train and i in self._relu_pool:   # backward takes the swapped order only while the relu
                self._swapped[i] = self.layers[i].mask   # still holds this mask
        return x

    def execution_order(self) -> list[int]:
        """Layer indices in the order forward runs them (each relu-maxpool pair swapped)."""
        order, i = [], 0
        while i < len(self.layers):
            if i in self._relu_pool:
                order += [i + 1, i]
                i += 2
            else:
                order.append(i)
                i += 1
        return order

    def first_with_params(self) -> int:
        """Index of the first layer with parameters (len(layers) if none): training's backward stops there."""
        return next((i for i, layer in enumerate(self.layers) if layer.params), len(self.layers))

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """grad: dL/d(output) -> dL/dx; fills every layer's grads (including weight decay).

        input_grad=False (training) returns None and skips work nobody needs, as PyTorch does for an
        input without requires_grad: the parameter-free layers before the first parameterised one, and
        that layer's own dx (its `skip_input_grad`). Works after Model.forward and after running the
        layers' forward one by one in order (as gradcheck does).
        """
        stop = 0
        if not input_grad:
            stop = self.first_with_params()
        i = len(self.layers) - 1
        while i >= stop:
            layer = self.layers[i]
            j = i - 1
            mask = self._swapped.get(j)
            if j >= stop and mask is not None and mask is getattr(self.layers[j], "mask", None):
                grad = self.layers[j].backward(grad)   # relu (it ran after the pool)
                grad = layer.backward(grad)            # maxpool
                i -= 2
                continue
            if i == stop and not input_grad and hasattr(layer, "skip_input_grad"):
                layer.skip_input_grad = True
                try:
                    grad = layer.backward(grad)
                finally:
                    layer.skip_input_grad = False
            else:
                grad = layer.backward(grad)
            i -= 1
        return grad if input_grad else None

    __call__ = forward

    def close(self) -> None:
        """Stop the worker threads (the model stays usable: a later call starts them again)."""
        self.workers.close()

    def parameters(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for i, layer in enumerate(self.layers):
            for key, p in layer.params.items():
                yield f"{i}.{key}", p, layer.grads[key]

    def buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for i, layer in enumerate(self.layers):
            for key, b in layer.buffers.items():
                yield f"{i}.{key}", b

    def num_params(self) -> int:
        return sum(p.size for _, p, _ in self.parameters())

    def regularization_loss(self) -> float:
        """Σ over layers of λ/2·||W||²: the per-layer weight decay written as a loss term."""
        return sum(layer.regularization_loss() for layer in self.layers)

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed "<index>.<name>"."""
        state = {n: p.copy() for n, p, _ in self.parameters()}
        state.update({n: b.copy() for n, b in self.buffers()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Strict load into the existing arrays: every name present, same shapes, nothing extra."""
        targets = {n: p for n, p, _ in self.parameters()}
        targets.update(dict(self.buffers()))
        load_arrays_into(targets, state, "weight", "the model")

    def summary(self) -> str:
        """Keras-style table: layer, output shape, parameter count."""
        rows = [("#", "layer", "output shape", "params"), ("", "input", str(self.input_shape), "")]
        for i, (layer, shape) in enumerate(zip(self.layers, self.shapes)):
            rows.append((str(i), layer.describe(), str(shape), f"{sum(p.size for p in layer.params.values()):,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = "-" * (sum(widths) + 6)
        out = [line]
        for k, r in enumerate(rows):
            out.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
            if k == 0:
                out.append(line)
        out += [line, f"total parameters: {self.num_params():,}  ({self.dtype.name})"]
        return "\n".join(out)


def build_model(layers_spec: Sequence[Any], input_shape: Sequence[int], seed: int = 0,
                dtype: Any = np.float32, threads: int | None = None) -> Model:
    """Build a model from YAML layer specs, inferring in_features / in_channels from `input_shape`.

    layers_spec: list of `{type: ..., option: value}`; input_shape: per-sample, e.g. (1, 28, 28).
    threads: element-wise worker threads (default: the BLAS thread count; results do not depend on it).
    Raises ConfigError / ShapeError with the key path (`model[3].kernel_size`).
    """
    if isinstance(layers_spec, dict) and "layers" in layers_spec:  # accept a `model: {layers: [...]}` section
        layers_spec = layers_spec["layers"]
    if not isinstance(layers_spec, (list, tuple)) or not layers_spec:
        raise ConfigError("the model must be a non-empty list of layers", "model")
    init_rng, rng = model_rngs(seed)
    shape = tuple(int(s) for s in input_shape)
    layers = []
    for i, spec in enumerate(layers_spec):
        path = f"model[{i}]"
        layer = layer_from_spec(spec, path)
        try:
            shape = layer.build(shape, np.dtype(dtype), init_rng, rng)
        except ConfigError as e:
            raise e.located(prefix=path) from None
        layers.append(layer)
    return Model(layers, input_shape, dtype, rng, threads)
