"""Chains and blocks: how a list of layers runs, and layers made of layer lists (residual blocks).

A *chain* is a list of layers run one after the other; the model is one, and so is each branch of a
block. `plan_steps` fixes the order a chain's forward runs its layers in (a relu directly followed by a
max-pool runs after the pool, on 4x fewer values, with bit-identical results), and `backward_calls`
the layer backward calls that follow it, skipping work nobody needs when the chain's input gradient
is not wanted.

A *block* is a layer whose work is done by child layers in named branches:

    residual:  y = body(x) + shortcut(x)       (an empty shortcut is the identity: y = body(x) + x)

Its children's parameters, gradients and buffers are its own, keyed "<branch>.<index>.<name>"
(`body.0.W`, `shortcut.1.running_mean`; nested blocks go deeper: `body.2.body.0.W`), the very same
arrays, so a model names them "<index>.body.0.W" in parameters(), state_dict and checkpoints, and an
optimizer, gradcheck or a checkpoint load reaches them as any other layer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from nntrain.errors import ConfigError, ShapeError
from nntrain.nn.layers import fused   # the module, used at call time (it imports the other layer modules)
from nntrain.nn.layers.base import LAYERS, Layer, Option, Shape
from nntrain.nn.layers.conv import conv_output_size
from nntrain.nn.parallel import split
from nntrain.registry import _kind


# --- chains ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One step of a chain's plan: `layers` holds listed layer indices in the order forward runs them
    (backward runs them reversed). One layer, or a swapped pair (pool, layer before it): see plan_steps."""

    layers: tuple[int, ...]

    @property
    def swapped(self) -> bool:
        """True for a pair that runs in the opposite of the listed order."""
        return len(self.layers) > 1


def plan_steps(layers: Sequence[Layer]) -> list[Step]:
    """The steps forward runs `layers` in: one per layer, except that a layer which `commutes_with_max`
    (relu) directly followed by a max-pool becomes one step (pool, layer).

    max_w relu(x) = relu(max_w x), and the first maximum of relu(x) in a window is the first maximum of
    x wherever relu does not zero the gradient, so outputs and gradients are bit-identical to the
    listed order, while the relu works on the pool's smaller output (4x smaller for 2x2 pooling).
    """
    steps, i = [], 0
    while i < len(layers):
        if i + 1 < len(layers) and layers[i].commutes_with_max and layers[i + 1].is_max_pool:
            steps.append(Step((i + 1, i)))
            i += 2
        else:
            steps.append(Step((i,)))
            i += 1
    return steps


def backward_calls(layers: Sequence[Layer], plan: Sequence[Step], need_input_grad: bool = True
                   ) -> list[tuple[int, bool]]:
    """The layer backward calls of a chain's backward, in order: (layer index, need_input_grad for it).

    The plan's steps reversed; with need_input_grad=False they stop at the first step that has
    parameters (the steps before it would only compute dx), whose first layer skips its dx. A chain
    without parameters then makes no call at all.
    """
    steps = list(plan)
    if not need_input_grad:
        first = next((s for s, step in enumerate(steps) if any(layers[k].params for k in step.layers)), len(steps))
        steps = steps[first:]
    calls = [(k, True) for step in reversed(steps) for k in reversed(step.layers)]
    if calls and not need_input_grad:
        calls[-1] = (calls[-1][0], False)
    return calls


def chain_forward(layers: Sequence[Layer], plan: Sequence[Step], x: np.ndarray, train: bool) -> np.ndarray:
    """x through `layers` in the order `plan` says (x itself for an empty chain)."""
    for step in plan:
        for k in step.layers:
            x = layers[k].forward_layers(x, train)
    return x


def chain_backward(layers: Sequence[Layer], plan: Sequence[Step], grad: np.ndarray,
                   need_input_grad: bool = True) -> np.ndarray | None:
    """dL/d(chain output) -> dL/d(chain input) (None when not needed), filling every layer's grads;
    follows the last chain_forward(train=True). An empty chain passes `grad` itself through."""
    for k, need in backward_calls(layers, plan, need_input_grad):
        grad = layers[k].backward(grad, need)
    return grad if need_input_grad else None


# --- the layers option ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LayersOption(Option):
    """An option whose value is a list of layer specs ({type: ..., ...options}), each resolved through
    LAYERS, so that a mistake inside is reported at its own key path (`body[2].out_channels`, put
    below the block's own path by the registry). `min_layers` is the shortest list accepted; null
    reads as the empty list."""

    min_layers: int = 0

    def describe(self) -> str:
        if self.min_layers > 1:
            return f"a list of at least {self.min_layers} layers ({{type: NAME, ...options}})"
        return f"a {'non-empty ' if self.min_layers else ''}list of layers ({{type: NAME, ...options}})"

    def validate(self, value: Any, path: str) -> list[dict[str, Any]]:
        if value is None:
            value = []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"got {_kind(value)}, expected {self.describe()}", path)
        if len(value) < self.min_layers:
            raise ConfigError(f"got an empty list, expected {self.describe()}", path)
        return [LAYERS.resolve(spec, f"{path}[{j}]") for j, spec in enumerate(value)]


# --- blocks ---------------------------------------------------------------------------------------
class Block(Layer):
    """A layer whose work is done by child layers in named branches (`branch_names`, each a chain
    given by the option of that name).

    Children are made in __init__ and built by `build` in branch order (their initial values drawn
    from the model's init Generator in that order; their noise, dropout's, from the model's
    Generator). `params`, `grads` and `buffers` hold the children's arrays under
    "<branch>.<index>.<name>". The model's `workers` reach every child. `kink_state` joins the
    children's, so gradcheck sees every relu and max-pool inside.
    """

    branch_names: tuple[str, ...] = ()

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.branches: dict[str, list[Layer]] = {
            name: [LAYERS.build(spec, path=f"{name}[{j}]") for j, spec in enumerate(getattr(self, name) or [])]
            for name in self.branch_names}
        self.plans: dict[str, list[Step]] = {name: plan_steps(layers) for name, layers in self.branches.items()}
        self.child_shapes: dict[str, list[Shape]] = {}   # each child's output shape, set by build
        self._workers: Any = None

    # --- children --------------------------------------------------------------------------------
    def children(self) -> Iterator[tuple[str, Layer]]:
        """("<branch>.<index>", layer) for every child, in branch order."""
        for name, layers in self.branches.items():
            for j, layer in enumerate(layers):
                yield f"{name}.{j}", layer

    @property
    def workers(self) -> Any:   # type: ignore[override]
        return self._workers

    @workers.setter
    def workers(self, value: Any) -> None:
        self._workers = value
        for _, layer in self.children():
            layer.workers = value

    def branch_shape(self, name: str, input_shape: Shape) -> Shape:
        """Output shape of branch `name` for `input_shape` (the input shape for an empty branch);
        a child's ShapeError is reported at its key path below the block (`body[2].kernel_size`)."""
        shape = tuple(input_shape)
        for j, layer in enumerate(self.branches[name]):
            try:
                shape = tuple(int(s) for s in layer.output_shape(shape))
            except ConfigError as e:
                raise e.located(prefix=f"{name}[{j}]") from None
        return shape

    def child_inputs(self, input_shape: Shape) -> Iterator[tuple[str, Layer, Shape]]:
        """(config key "<branch>[<index>]", child, its per-sample input shape) for every child."""
        for name, layers in self.branches.items():
            shape = tuple(input_shape)
            for j, layer in enumerate(layers):
                yield f"{name}[{j}]", layer, shape
                shape = layer.output_shape(shape)

    # --- construction ----------------------------------------------------------------------------
    def build(self, input_shape: Shape, dtype: np.dtype, init_rng: np.random.Generator,
              rng: np.random.Generator) -> Shape:
        self.rng = rng   # the children's noise Generator, before _create builds them
        return super().build(input_shape, dtype, init_rng, rng)

    def _create(self, input_shape: Shape, init_rng: np.random.Generator) -> None:
        for name, layers in self.branches.items():
            shape, shapes = tuple(input_shape), []
            for layer in layers:
                shape = layer.build(shape, self.dtype, init_rng, self.rng)
                shapes.append(tuple(shape))
            self.child_shapes[name] = shapes
        self.stages = {name: fused.compile_chain(layers) for name, layers in self.branches.items()}
        for prefix, layer in self.children():
            for key, p in layer.params.items():
                self.params[f"{prefix}.{key}"] = p
                self.grads[f"{prefix}.{key}"] = layer.grads[key]
            for key, b in layer.buffers.items():
                self.buffers[f"{prefix}.{key}"] = b

    def num_params(self, input_shape: Shape) -> int:
        return sum(layer.num_params(shape) for _, layer, shape in self.child_inputs(input_shape))

    def flops(self, input_shape: Shape) -> int:
        return sum(layer.flops(shape) for _, layer, shape in self.child_inputs(input_shape))

    # --- what the model and the tools read -------------------------------------------------------
    def regularization_loss(self) -> float:
        """Σ over children of λ/2·||W||² (each applies its own decay in its backward)."""
        return sum(layer.regularization_loss() for _, layer in self.children())

    def kink_state(self) -> np.ndarray | None:
        """The children's kink states (see Layer.kink_state), flattened and joined in child order, as
        a fresh int64 array; None when every child is smooth."""
        states = [s for _, layer in self.children() if (s := layer.kink_state()) is not None]
        if not states:
            return None
        return np.concatenate([np.ravel(s) for s in states], dtype=np.int64)

    def describe(self) -> str:
        """`residual()`: the children are described on rows of their own (summary_rows)."""
        return f"{self.type_name}()"

    def summary_rows(self, depth: int = 1) -> list[tuple[str, str, str]]:
        """(layer, output shape, parameter count) rows for the children of a built block, indented by
        `depth`, nested blocks' children below them, an empty branch as "<branch>: identity"; a
        model's summary lists them under the block's own row."""
        rows = []
        pad = "  " * depth
        for name, layers in self.branches.items():
            if not layers:
                rows.append((f"{pad}{name}: identity", str(self.input_shape), "0"))
            for j, layer in enumerate(layers):
                count = sum(p.size for p in layer.params.values())
                rows.append((f"{pad}{name}.{j}: {layer.describe()}", str(self.child_shapes[name][j]), f"{count:,}"))
                if isinstance(layer, Block):
                    rows += layer.summary_rows(depth + 1)
        return rows


def leaves(layer: Layer, input_shape: Shape, path: str) -> Iterator[tuple[str, Layer, Shape]]:
    """(config key path, layer, per-sample input shape) of every non-block layer in `layer`, itself
    if it is not a block: `model[4].body[0]`, ... Works on unbuilt layers (no arrays allocated)."""
    if not isinstance(layer, Block):
        yield path, layer, tuple(input_shape)
        return
    for key, child, shape in layer.child_inputs(input_shape):
        yield from leaves(child, shape, f"{path}.{key}")


def _projection_hint(input_shape: Shape, body: Shape) -> str:
    """A shortcut that maps `input_shape` to the body's (C, H, W) by a strided 1x1 conv and a
    batchnorm, as YAML, where one does; else ''."""
    if len(input_shape) != 3 or len(body) != 3:
        return ""
    (_, h, w), (c, bh, bw) = input_shape, body
    sh, sw = max(1, -(-h // bh)), max(1, -(-w // bw))
    if conv_output_size(h, 1, sh, 0) != bh or conv_output_size(w, 1, sw, 0) != bw:
        return ""
    stride = sh if sh == sw else [sh, sw]
    return (f"; a projection shortcut gives the body's shape: shortcut: [{{type: conv2d, out_channels: {c}, "
            f"kernel_size: 1, stride: {stride}, bias: false}}, {{type: batchnorm}}]")


@LAYERS.register("residual")
class Residual(Block):
    """y = body(x) + shortcut(x), a ResNet block: `body` and `shortcut` are lists of layers run in order
    on the same input (blocks nest); an empty or absent shortcut is the identity, y = body(x) + x. The
    two must give the same shape (checked when the config is read); where the body changes it, a
    projection shortcut (a 1x1 conv with the body's stride, then batchnorm) makes them agree.
    Parameters are named by branch and position: `body.0.W`, `shortcut.1.gamma` (in a model, `4.body.0.W`).

    Each branch runs with the plan of a model (a relu directly before a max-pool runs after it).
    Backward: both branches get the same g = dL/dy (unmodified), dL/dx = body'(x)ᵀg + shortcut'(x)ᵀg
    (g itself for the identity); the sum goes into a fresh array, split over the model's workers.
    With need_input_grad=False each branch skips the work before its first parameters, as a model does.
    """

    options = {
        "body": LayersOption("layers", min_layers=1, doc="the residual branch F(x): layers in order"),
        "shortcut": LayersOption("layers", (), doc="the shortcut branch: layers in order (e.g. a 1x1 conv "
                                                   "and batchnorm where the body changes the shape); "
                                                   "empty: the identity"),
    }
    branch_names = ("body", "shortcut")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._ready = False   # a training forward happened, so backward may run

    def output_shape(self, input_shape: Shape) -> Shape:
        body = self.branch_shape("body", input_shape)
        shortcut = self.branch_shape("shortcut", input_shape)
        if body != shortcut:
            what = "the identity shortcut gives" if not self.branches["shortcut"] else "shortcut gives"
            raise ShapeError(f"body gives {body}, {what} {shortcut}; the two are added, so they must have "
                             f"the same shape{_projection_hint(input_shape, body)}", "shortcut")
        return body

    def flops(self, input_shape: Shape) -> int:
        return super().flops(input_shape) + int(np.prod(self.output_shape(input_shape)))   # the add

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        if train:
            return self.forward_layers(x, train)
        self._ready = False   # evaluation: the branches' fused stages (nntrain.nn.layers.fused)
        return self._add(fused.run_chain(self.stages["body"], x), fused.run_chain(self.stages["shortcut"], x))

    def forward_layers(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        h = chain_forward(self.branches["body"], self.plans["body"], x, train)
        s = chain_forward(self.branches["shortcut"], self.plans["shortcut"], x, train)
        self._ready = train
        return self._add(h, s)

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if not self._ready:
            raise self._no_cache()
        gb = chain_backward(self.branches["body"], self.plans["body"], grad, need_input_grad)
        gs = chain_backward(self.branches["shortcut"], self.plans["shortcut"], grad, need_input_grad)
        return None if not need_input_grad else self._add(gb, gs)

    def _add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a + b in a fresh array in a's memory layout (neither operand is written: either may be a
        child's kept array or the caller's own)."""
        out = np.empty_like(a, dtype=np.result_type(a, b))
        split(self.workers, lambda s: np.add(a[s], b[s], out=out[s]), len(out), out[:1].size)
        return out
