"""Optimizers (SGD, Adam, AdamW) with PyTorch 2.13's exact update rules, and their YAML registry.

An optimizer is built from the model's `(name, param, grad)` triples; `step()` reads the grads (never
writes them) and updates the params in place. State (momentum, moments) lives in arrays of the
params' dtype and is saved/restored exactly through `state_dict()` / `load_state_dict()`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from nntrain.nn.state import load_arrays_into
from nntrain.errors import CheckpointError, ConfigError
from nntrain.options import Option
from nntrain.registry import Configurable, Registry

ParamTriple = tuple[str, np.ndarray, np.ndarray]


class Optimizer(Configurable):
    """Base class: declared `options`, the current `lr`, named state arrays and a step counter.

    Subclasses set `state_names` (the per-parameter state arrays, each shaped like its param) and
    implement `_update(i, param, grad, scratch_a, scratch_b)` for one parameter.
    """

    state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Sequence[ParamTriple], **options: Any):
        self.config: dict[str, Any] = dict(options)   # resolved by OPTIMIZERS: checked and complete
        self.lr = options["lr"]
        self.steps = 0  # number of completed step() calls
        self.names: list[str] = []
        self.params: list[np.ndarray] = []
        self.grads: list[np.ndarray] = []
        for name, p, g in params:
            if name in self.names:
                raise ValueError(f"parameter name '{name}' appears twice")
            if p.shape != g.shape or p.dtype != g.dtype or not np.issubdtype(p.dtype, np.floating):
                raise ValueError(f"parameter '{name}': param {p.shape} {p.dtype} and grad {g.shape} {g.dtype} "
                                 "must be floating arrays of the same shape and dtype")
            self.names.append(name)
            self.params.append(p)
            self.grads.append(g)
        self.state: dict[str, list[np.ndarray]] = {
            s: [np.zeros_like(p) for p in self.params] for s in self._active_state()}
        # Two flat scratch buffers per dtype, sized for the largest param and viewed in each param's
        # shape: the hot loop allocates nothing.
        sizes: dict[np.dtype, int] = {}
        for p in self.params:
            sizes[p.dtype] = max(p.size, sizes.get(p.dtype, 0))
        flat = {dt: (np.empty(n, dt), np.empty(n, dt)) for dt, n in sizes.items()}
        self._scratch = [tuple(f[:p.size].reshape(p.shape) for f in flat[p.dtype]) for p in self.params]

    @property
    def lr(self) -> float:
        """The current learning rate (schedulers set it); always a Python float, so float32 stays float32."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = float(value)

    def _active_state(self) -> tuple[str, ...]:
        return self.state_names

    def step(self) -> None:
        """One update of every parameter from its current gradient."""
        self.steps += 1
        for i, (p, g, (tmp_a, tmp_b)) in enumerate(zip(self.params, self.grads, self._scratch)):
            self._update(i, p, g, tmp_a, tmp_b)

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, tmp_a: np.ndarray, tmp_b: np.ndarray) -> None:
        raise NotImplementedError

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays keyed "<state>/<param name>" e.g. "momentum/3.W", JSON-able meta)."""
        arrays = {f"{s}/{n}": a.copy() for s, bufs in self.state.items() for n, a in zip(self.names, bufs)}
        meta = {"type": self.type_name, "steps": self.steps, "lr": self.lr, "options": dict(self.config),
                "params": list(self.names)}
        return arrays, meta

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore exactly what `state_dict` saved; strict on type, names and shapes (CheckpointError)."""
        if meta.get("type") != self.type_name:
            raise CheckpointError(f"the checkpoint holds a '{meta.get('type')}' optimizer state, "
                                  f"the config asks for '{self.type_name}'")
        steps, lr = meta.get("steps"), meta.get("lr")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise CheckpointError(f"optimizer state: 'steps' must be a non-negative integer, got {steps!r}")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr < 0:
            raise CheckpointError(f"optimizer state: 'lr' must be a number >= 0, got {lr!r}")
        targets = {f"{s}/{n}": a for s, bufs in self.state.items() for n, a in zip(self.names, bufs)}
        load_arrays_into(targets, arrays, "optimizer state", "this model")
        self.steps = steps
        self.lr = float(lr)


# YAML type name -> optimizer class: `@OPTIMIZERS.register("name")` makes it `type: name`.
OPTIMIZERS = Registry("optimizer")

_LR = Option("float", default=1e-3, minimum=0.0, exclusive_min=True, doc="learning rate (> 0)")
_WD = Option("float", default=0.0, minimum=0.0, doc="L2 penalty added to the gradient: g + wd·p")


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """SGD with momentum, dampening, Nesterov and weight decay, as torch.optim.SGD:

    d = g + wd·p;  b = d (first step) else μ·b + (1−τ)·d;  d = d + μ·b (Nesterov) else b;  p −= lr·d.
    """

    options = {
        "lr": _LR,
        "momentum": Option("float", default=0.0, minimum=0.0, doc="momentum factor μ"),
        "dampening": Option("float", default=0.0, minimum=0.0, maximum=1.0, doc="dampening τ of the momentum"),
        "nesterov": Option("bool", default=False, doc="Nesterov momentum (needs momentum > 0, dampening 0)"),
        "weight_decay": _WD,
    }
    state_names = ("momentum",)

    @classmethod
    def check(cls, values: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        if values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
            raise ConfigError("nesterov: true requires momentum > 0 and dampening 0 "
                              f"(got momentum {values['momentum']}, dampening {values['dampening']})", "nesterov")
        return values

    def _active_state(self) -> tuple[str, ...]:
        return self.state_names if self.config["momentum"] != 0 else ()

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, tmp_a: np.ndarray, tmp_b: np.ndarray) -> None:
        wd, mu, tau = self.config["weight_decay"], self.config["momentum"], self.config["dampening"]
        d = g
        if wd != 0:
            np.multiply(p, wd, out=tmp_a)
            tmp_a += g
            d = tmp_a
        if mu != 0:
            buf = self.state["momentum"][i]
            if self.steps == 1:
                np.copyto(buf, d)
            else:
                buf *= mu
                if tau != 0:
                    np.multiply(d, 1.0 - tau, out=tmp_b)
                    buf += tmp_b
                else:
                    buf += d
            if self.config["nesterov"]:
                np.multiply(buf, mu, out=tmp_b)
                tmp_b += d
                d = tmp_b
            else:
                d = buf
        np.multiply(d, self.lr, out=tmp_a)  # d may be tmp_a itself: elementwise in place is safe
        p -= tmp_a


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adam as torch.optim.Adam (L2 weight decay added to the gradient):

    d = g + wd·p;  m = m + (1−β1)(d − m);  v = β2·v + (1−β2)·d²;
    p −= lr/(1−β1ᵗ) · m / (√v / √(1−β2ᵗ) + eps).
    """

    decoupled: ClassVar[bool] = False
    options = {
        "lr": _LR,
        "betas": Option("floats", default=[0.9, 0.999], length=2, minimum=0.0, maximum=1.0, exclusive_max=True,
                        doc="(β1, β2): decay rates of the first and second moment averages"),
        "eps": Option("float", default=1e-8, minimum=0.0, doc="added to the denominator for stability"),
        "weight_decay": _WD,
    }
    state_names = ("exp_avg", "exp_avg_sq")

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, tmp_a: np.ndarray, tmp_b: np.ndarray) -> None:
        (b1, b2), eps, wd, lr = self.config["betas"], self.config["eps"], self.config["weight_decay"], self.lr
        m, v = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
        d = g
        if wd != 0:
            if self.decoupled:
                p *= 1.0 - lr * wd
            else:
                np.multiply(p, wd, out=tmp_a)
                tmp_a += g
                d = tmp_a
        np.subtract(d, m, out=tmp_b)  # m.lerp_(d, 1 − β1)
        tmp_b *= 1.0 - b1
        m += tmp_b
        v *= b2
        np.multiply(d, d, out=tmp_b)
        tmp_b *= 1.0 - b2
        v += tmp_b
        step_size = lr / (1.0 - b1 ** self.steps)
        bias_correction2_sqrt = (1.0 - b2 ** self.steps) ** 0.5
        np.sqrt(v, out=tmp_b)
        tmp_b /= bias_correction2_sqrt
        tmp_b += eps
        np.divide(m, tmp_b, out=tmp_b)
        tmp_b *= step_size
        p -= tmp_b


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """AdamW as torch.optim.AdamW: Adam with decoupled weight decay p ← p·(1 − lr·wd) before the update."""

    decoupled = True
    options = {**Adam.options,
               "weight_decay": Option("float", default=0.01, minimum=0.0,
                                      doc="decoupled decay: p ← p·(1 − lr·wd)")}


def build_optimizer(spec: Mapping[str, Any], params: Sequence[ParamTriple]) -> Optimizer:
    """The optimizer of `spec` = {type: sgd|adam|adamw, option: value} over `(name, param, grad)` triples."""
    return OPTIMIZERS.build(spec, list(params), path="optimizer")
