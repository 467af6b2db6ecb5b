"""The layer contract, declared options and the registry that maps YAML names to layer classes.

A layer is one class: it declares its YAML options in `options` (which drive config validation),
infers its output shape, creates its `params` (with matching `grads`) in `build`, and implements
`forward(x, train)` / `backward(grad, need_input_grad)`. Shapes exclude the batch axis: `(C, H, W)` or
`(features,)`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from nntrain.errors import ShapeError
from nntrain.nn.initializers import INITS
from nntrain.nn.parallel import Scratch
from nntrain.options import Option
from nntrain.registry import Configurable, Registry

Shape = tuple[int, ...]


def weight_options(bias_doc: str) -> dict[str, Option]:
    """The options every layer with a weight and a bias shares (linear, conv2d)."""
    return {
        "bias": Option("bool", True, doc=bias_doc),
        "weight_decay": Option("float", 0.0, minimum=0.0, doc="L2 coefficient λ: dW += λW"),
        "init": Option("str", "he_normal", choices=INITS, doc="weight initialiser"),
        "init_std": Option("float", 0.01, minimum=0.0, doc="std for init: normal"),
    }


class Layer(Configurable):
    """Base class of every layer.

    Subclasses are registered in LAYERS (which sets `type_name`), declare `options`, and override `output_shape`,
    `build` (when they have parameters), `forward` and `backward`. `params` and `grads` have the same
    keys and shapes; `buffers` hold non-trained state saved in checkpoints (batchnorm statistics).
    `decayed` names the params that the per-layer `weight_decay` λ applies to (dW += λW).

    Array policy:
    - Layers never modify the arrays passed to forward/backward.
    - forward/backward return arrays the caller owns: fresh arrays (or views of the caller's own
      input, as flatten's reshape), never a layer's reused internal buffer, so a caller may keep
      a result across later calls. Internal scratch (conv's column matrices and col2im products, in
      the model's shared Scratch) is reused across batches and layers and never handed out.
    - forward(x, train=True) keeps what backward needs (masks, indices, saved inputs/columns); the
      large arrays among them (a conv's padded input, a batchnorm's input) are let go by backward, so
      that between steps no batch-sized array stays alive and a second backward raises;
      forward(x, train=False) keeps none of it (and no buffers sized for evaluation batches), so
      backward after an evaluation forward raises RuntimeError.
    - `workers` (a nntrain.nn.parallel.Workers, set by the Model; None: one thread) splits element-wise
      work over the batch axis; results do not depend on the number of threads.

    Capabilities the Model plans with (class attributes, see nntrain.nn.model.plan_steps):
    - `is_max_pool`: forward takes the maximum over windows and backward routes each window's
      gradient to its first maximum (row-major window order).
    - `commutes_with_max`: element-wise y = f(x) with f non-decreasing, and f(a) = f(b) for a != b
      only where f' = 0; then f(max_w x) = max_w f(x) and the first maximum of f(x) is the first
      maximum of x wherever the gradient is not zeroed, so the layer may run after a max-pool that
      follows it, on the pool's smaller output, with the same outputs and gradients.
    """

    decayed: ClassVar[tuple[str, ...]] = ()
    is_max_pool: ClassVar[bool] = False
    commutes_with_max: ClassVar[bool] = False
    workers: Any = None   # nntrain.nn.parallel.Workers or None; set by Model

    def __init__(self, **options: Any):
        self._set_options(options)   # resolved by LAYERS: checked and complete
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.input_shape: Shape | None = None
        self.dtype = np.dtype(np.float32)

    # --- shape inference -------------------------------------------------------------------------
    def output_shape(self, input_shape: Shape) -> Shape:
        """Per-sample output shape for a per-sample `input_shape`; raises ShapeError if impossible."""
        return tuple(input_shape)

    # --- construction ----------------------------------------------------------------------------
    def build(self, input_shape: Shape, dtype: np.dtype, init_rng: np.random.Generator,
              rng: np.random.Generator) -> Shape:
        """Create parameters for `input_shape` (init drawn from `init_rng`); keep `rng` for noise
        (dropout). Returns the output shape."""
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        out = self.output_shape(self.input_shape)
        self._create(self.input_shape, init_rng)
        self.rng = rng
        return out

    def num_params(self, input_shape: Shape) -> int:
        """Trainable values this layer will create for `input_shape`, known before anything is allocated
        (the config refuses a model whose parameters cannot fit in memory)."""
        return 0

    def _create(self, input_shape: Shape, init_rng: np.random.Generator) -> None:
        """Create params/grads/buffers; layers without parameters need not override this."""

    def add_param(self, name: str, value: np.ndarray) -> None:
        """Register a trainable array (cast to the layer dtype) and its zeroed gradient buffer."""
        self.params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        self.grads[name] = np.zeros_like(self.params[name])

    # --- computation -----------------------------------------------------------------------------
    @property
    def scratch(self) -> Scratch:
        """Per-thread-slot scratch buffers (conv's columns, batchnorm's chunk copies): the model's (its
        workers', shared by all its layers, which run one at a time), else the layer's own."""
        if self.workers is not None:
            return self.workers.scratch
        if "_own_scratch" not in self.__dict__:
            self._own_scratch = Scratch()
        return self._own_scratch

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        raise NotImplementedError

    def forward_layers(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """forward without the fused evaluation stages of nntrain.nn.layers.fused, the reference they are tested
        against: forward itself for a plain layer; a block runs its children this way."""
        return self.forward(x, train)

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """grad: dL/dy -> dL/dx; fills `grads`. need_input_grad=False (nobody uses dx, as for a first
        layer in training) lets a layer skip the dx work and return None; most ignore it."""
        raise NotImplementedError

    def kink_state(self) -> np.ndarray | None:
        """The discrete state of the last forward(train=True) where the layer is only piecewise smooth
        (which side of each kink every element was on), None for a smooth layer. Two inputs with equal
        states lie on the same smooth piece; gradcheck uses it to spot a finite difference crossing a
        kink. The array is the layer's own: read it before the next forward, do not modify it."""
        return None

    def _cached(self, name: str) -> Any:
        """The array forward(train=True) kept as `name`; RuntimeError (see _no_cache) when there is none."""
        value = getattr(self, name, None)
        if value is None:
            raise self._no_cache()
        return value

    def _no_cache(self) -> RuntimeError:
        return RuntimeError(f"{self.type_name}.backward needs a forward(x, train=True) before it "
                            "(an evaluation forward keeps nothing for backward)")

    def apply_weight_decay(self) -> None:
        """Add λ·p to the gradient of each decayed param: the per-layer L2 penalty λ/2·||p||² (dW += λW)."""
        lam = self.config.get("weight_decay", 0.0)
        if lam:
            for name in self.decayed:
                self.grads[name] += lam * self.params[name]

    def regularization_loss(self) -> float:
        """λ/2 · Σ||p||² over decayed params: the term whose gradient apply_weight_decay adds."""
        lam = self.config.get("weight_decay", 0.0)
        if not lam:
            return 0.0
        return float(sum(0.5 * lam * np.sum(self.params[n].astype(np.float64) ** 2) for n in self.decayed))

    def flops(self, input_shape: Shape) -> int:
        """Forward multiply-adds ×2 per sample, where known (for profiling); 0 if not counted."""
        return 0



# YAML type name -> layer class: `@LAYERS.register("name")` on a class makes it `type: name` in a config.
LAYERS = Registry("layer")


def require_shape(layer: Layer, input_shape: Shape, ndim: int, hint: str) -> None:
    """Raise ShapeError unless the per-sample shape has `ndim` axes."""
    if len(input_shape) != ndim:
        raise ShapeError(f"{layer.type_name} expects a per-sample input with {ndim} axes, "
                         f"got shape {tuple(input_shape)}; {hint}")
