"""The layer contract, declared options and the registry that maps YAML names to layer classes.

A layer is one class: it declares its YAML options in `options` (which drive config validation),
infers its output shape, creates its `params` (with matching `grads`) in `build`, and implements
`forward(x, train)` / `backward(grad)`. Shapes exclude the batch axis: `(C, H, W)` or `(features,)`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from nntrain.errors import ConfigError, ShapeError

Shape = tuple[int, ...]
_REQUIRED = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Option:
    """One declared layer option.

    kind: "int", "float", "bool", "str" or "pair" (an int or a list of two ints, as kernel sizes).
    minimum/maximum bound numbers (for "pair", each element); `exclusive_max` makes maximum open;
    choices restrict strings; `default` omitted means required.
    """

    kind: str
    default: Any = _REQUIRED
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_max: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        """What a valid value looks like, for error messages."""
        what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "pair": "an integer or a list of two integers"}[self.kind]
        if self.choices:
            what = "one of " + ", ".join(self.choices)
        if self.minimum is not None and self.maximum is not None:
            what += f" in [{self.minimum}, {self.maximum}{')' if self.exclusive_max else ']'}"
        elif self.minimum is not None:
            what += f" >= {self.minimum}"
        elif self.maximum is not None:
            what += f" {'<' if self.exclusive_max else '<='} {self.maximum}"
        return what

    def _bounded(self, v: float) -> bool:
        if self.minimum is not None and v < self.minimum:
            return False
        if self.maximum is not None and (v >= self.maximum if self.exclusive_max else v > self.maximum):
            return False
        return True

    def validate(self, value: Any, path: str) -> Any:
        """Return `value` normalised (pairs become tuples, ints become floats where floats are wanted)."""
        bad = ConfigError(f"got {value!r}, expected {self.describe()}", path)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind == "int":
            if not _is_int(value) or not self._bounded(value):
                raise bad
            return int(value)
        if self.kind == "float":
            if not _is_number(value) or not np.isfinite(value) or not self._bounded(value):
                raise bad
            return float(value)
        if self.kind == "str":
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise bad
            return value
        if self.kind == "pair":
            pair = (value, value) if _is_int(value) else value
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(_is_int(p) and self._bounded(p) for p in pair)):
                raise bad
            return (int(pair[0]), int(pair[1]))
        raise AssertionError(f"unknown option kind {self.kind}")


class Layer:
    """Base class of every layer.

    Subclasses set `type_name` (via `@register`), declare `options`, and override `output_shape`,
    `build` (when they have parameters), `forward` and `backward`. `params` and `grads` have the same
    keys and shapes; `buffers` hold non-trained state saved in checkpoints (batchnorm statistics).
    `decayed` names the params that the per-layer `weight_decay` λ applies to (dW += λW).
    Layers never modify the arrays passed to forward/backward.
    """

    type_name: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    decayed: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **opts: Any):
        unknown = set(opts) - set(self.options)
        if unknown:
            raise ConfigError(unknown_key_message(sorted(unknown)[0], self.options, f"layer '{self.type_name}'"),
                              sorted(unknown)[0])
        values = {}
        for key, opt in self.options.items():
            if key in opts:
                values[key] = opt.validate(opts[key], key)
            elif opt.required:
                raise ConfigError(f"missing required option '{key}' ({opt.describe()})", key)
            else:
                values[key] = opt.default
        self.config: dict[str, Any] = values
        for key, v in values.items():
            setattr(self, key, v)
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

    def _create(self, input_shape: Shape, init_rng: np.random.Generator) -> None:
        """Create params/grads/buffers; layers without parameters need not override this."""

    def add_param(self, name: str, value: np.ndarray) -> None:
        """Register a trainable array (cast to the layer dtype) and its zeroed gradient buffer."""
        self.params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        self.grads[name] = np.zeros_like(self.params[name])

    # --- computation -----------------------------------------------------------------------------
    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_weight_decay(self) -> None:
        """Add λ·p to the gradient of each decayed param (L2 penalty λ/2·||p||², as in the report)."""
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

    def describe(self) -> str:
        """Short text for summaries: type and the options that differ from their defaults."""
        parts = [f"{k}={v}" for k, v in self.config.items()
                 if self.options[k].required or v != self.options[k].default]
        return f"{self.type_name}({', '.join(parts)})"


# The registry: YAML type name -> layer class. Filled once at import time by @register; read-only after.
REGISTRY: dict[str, type[Layer]] = {}


def register(name: str) -> Callable[[type[Layer]], type[Layer]]:
    """Class decorator: make a layer available in YAML as `type: name`."""

    def wrap(cls: type[Layer]) -> type[Layer]:
        if name in REGISTRY:
            raise ValueError(f"layer type '{name}' registered twice")
        cls.type_name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def unknown_key_message(key: str, valid: Any, where: str) -> str:
    """'unknown key X in WHERE (did you mean Y?); valid keys: ...'."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}' in {where}{hint}; valid keys: {', '.join(valid) if valid else 'none'}"


def layer_from_spec(spec: Any, path: str = "layer") -> Layer:
    """Create an (unbuilt) layer from a YAML spec `{type: conv2d, out_channels: 32, ...}`.

    Errors carry the key path, e.g. `model[3].kernel_size`.
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"a layer must be a mapping with a 'type' key, got {spec!r}", path)
    if "type" not in spec:
        raise ConfigError("a layer needs a 'type' key; known types: " + ", ".join(sorted(REGISTRY)), path)
    name = spec["type"]
    if name not in REGISTRY:
        close = difflib.get_close_matches(str(name), REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown layer type {name!r}{hint}; known types: {', '.join(sorted(REGISTRY))}",
                          path + ".type")
    opts = {k: v for k, v in spec.items() if k != "type"}
    try:
        return REGISTRY[name](**opts)
    except ConfigError as e:
        raise e.located(prefix=path) from None


def require_shape(layer: Layer, input_shape: Shape, ndim: int, hint: str) -> None:
    """Raise ShapeError unless the per-sample shape has `ndim` axes."""
    if len(input_shape) != ndim:
        raise ShapeError(f"{layer.type_name} expects a per-sample input with {ndim} axes, "
                         f"got shape {tuple(input_shape)}; {hint}")
