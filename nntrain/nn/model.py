"""A model is a stack of layers: forward runs them in order, backward in reverse (as planned by `plan_steps`).

A layer may be a block of layers (nntrain.nn.layers.blocks: residual); the model sees it as one layer
whose parameters are named below its index ("4.body.0.W")."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from nntrain.nn.state import load_arrays_into
from nntrain.errors import ConfigError
from nntrain.nn.layers import LAYERS
from nntrain.nn.layers.base import Layer, Shape
from nntrain.nn.layers.blocks import Block, Step, backward_calls, plan_steps
from nntrain.nn.layers.fused import Stage, compile_chain, run_chain
from nntrain.nn.parallel import Workers
from nntrain.rng import stream
from nntrain.tables import format_table, rule_for


class Model:
    """Sequential stack of built layers.

    `parameters()` yields (name, param, grad) with names "<index>.<param>" (e.g. "0.W"; inside a
    block "4.body.0.W", see nntrain.nn.layers.blocks); the grad arrays are the layers' persistent
    buffers, filled by `backward`. `buffers()` are named the same way.

    The model owns a `Workers` pool (`threads`, default: the BLAS thread count) that its layers use to
    split element-wise work over the batch axis; results are the same for any thread count.
    `close()` stops its threads (garbage collection does too).

    `plan` (from plan_steps, fixed at construction) is the order forward runs the layers in; backward
    runs it reversed (`backward_calls`), and the per-layer profiler follows both.
    """

    def __init__(self, layers: Sequence[Layer], input_shape: Shape, dtype: np.dtype, rng: np.random.Generator,
                 threads: int | None = None):
        self.layers = list(layers)
        self.workers = Workers(threads)
        for layer in self.layers:
            layer.workers = self.workers
        self.plan: list[Step] = plan_steps(self.layers)
        self.stages: list[Stage] = compile_chain(self.layers)
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
        """x: (N, *input_shape) -> (N, *output_shape). Training runs the layers step by step as `plan`
        says; evaluation runs the fused stages of nntrain.nn.layers.fused (conv, batchnorm, relu and max-pool in
        one pass per chunk), which agree with `forward_layers` up to rounding."""
        if not train:
            return run_chain(self.stages, x)
        return self.forward_layers(x, train)

    def forward_layers(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """The layer-by-layer forward (the reference the fused evaluation forward is tested against)."""
        for step in self.plan:
            for k in step.layers:
                x = self.layers[k].forward_layers(x, train)
        return x

    def backward_calls(self, need_input_grad: bool = True) -> list[tuple[int, bool]]:
        """The layer backward calls of `backward`, in order: (layer index, need_input_grad for it).

        The plan's steps reversed; with need_input_grad=False they stop at the first step that has
        parameters (the steps before it would only compute dx), whose first layer skips its dx.
        """
        return backward_calls(self.layers, self.plan, need_input_grad)

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """grad: dL/d(output) -> dL/dx; fills every layer's grads (including weight decay).

        Follows the last Model.forward(x, train=True). need_input_grad=False (training) returns None and
        skips work nobody needs, as PyTorch does for an input without requires_grad: the
        parameter-free layers before the first parameterised one, and that layer's own dx.
        """
        for k, need in self.backward_calls(need_input_grad):
            grad = self.layers[k].backward(grad, need)
        return grad if need_input_grad else None

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
        """Keras-style table: layer, output shape, parameter count; a block's children are listed
        below it, indented, each with its own output shape and count ("body.0: conv2d(...)")."""
        rows = [("", "input", str(self.input_shape), "")]
        for i, (layer, shape) in enumerate(zip(self.layers, self.shapes)):
            rows.append((i, layer.describe(), str(shape), f"{sum(p.size for p in layer.params.values()):,}"))
            if isinstance(layer, Block):
                rows += [("", *row) for row in layer.summary_rows()]
        table = format_table(("#", "layer", "output shape", "params"), rows, align="rllr", rule=True)
        line = rule_for(table)
        return "\n".join([line, table, line, f"total parameters: {self.num_params():,}  ({self.dtype.name})"])

    __str__ = summary


def build_model(layers_spec: Sequence[Any], input_shape: Sequence[int], seed: int = 0,
                dtype: Any = np.float32, threads: int | None = None) -> Model:
    """Build a model from YAML layer specs, inferring in_features / in_channels from `input_shape`.

    layers_spec: list of `{type: ..., option: value}` (resolved specs from the config are used as they
    are; plain dicts are resolved first); input_shape: per-sample, e.g. (1, 28, 28).
    threads: element-wise worker threads (default: the BLAS thread count; results do not depend on it).
    Raises ConfigError / ShapeError with the key path (`model[3].kernel_size`).
    """
    if not isinstance(layers_spec, (list, tuple)) or not layers_spec:
        raise ConfigError("the model must be a non-empty list of layers", "model")
    init_rng, rng = stream(seed, "init"), stream(seed, "model")
    shape = tuple(int(s) for s in input_shape)
    layers = []
    for i, spec in enumerate(layers_spec):
        path = f"model[{i}]"
        layer = LAYERS.build(spec, path=path)
        try:
            shape = layer.build(shape, np.dtype(dtype), init_rng, rng)
        except ConfigError as e:
            raise e.located(prefix=path) from None
        layers.append(layer)
    return Model(layers, input_shape, dtype, rng, threads)
