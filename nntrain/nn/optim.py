"""Optimizers (SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta) with PyTorch 2.13's exact update rules, and
their YAML registry.

An optimizer is built from the model's `(name, param, grad)` triples; `step()` updates the params in
place from the grads. Before the updates it measures the global gradient norm ‖(‖g_1‖, …, ‖g_n‖)‖₂
(recorded, see `take_grad_norm`) and, where `clip_grad_norm` or `clip_grad_value` is set, clips the
grads in place as torch.nn.utils.clip_grad_norm_ / clip_grad_value_ do; otherwise the grads are only
read. State (momentum, moments) lives in arrays of the params' dtype and is saved/restored exactly
through `state_dict()` / `load_state_dict()`.
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


def global_grad_norm(grads: Sequence[np.ndarray]) -> float:
    """The L2 norm of all gradients viewed as one vector, as torch.nn.utils.clip_grad_norm_ computes it:
    ‖(‖g_1‖₂, …, ‖g_n‖₂)‖₂ — one pass over the grads, nothing allocated (each ‖g_i‖² is a BLAS dot
    product of the flat buffer with itself). 0.0 for no grads."""
    norms = [math.sqrt(float(np.dot(g.reshape(-1), g.reshape(-1)))) for g in grads]
    return math.hypot(*norms)


def clip_grads_by_norm(grads: Sequence[np.ndarray], max_norm: float, total_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_'s scaling, in place: g_i ← g_i · min(max_norm / (total_norm + 1e-6), 1).
    A coefficient of 1 leaves the grads untouched; a NaN norm makes them NaN, as in torch."""
    coef = max_norm / (total_norm + 1e-6)
    if not coef >= 1.0:   # also NaN
        for g in grads:
            g *= coef


def clip_grads_by_value(grads: Sequence[np.ndarray], clip_value: float) -> None:
    """torch.nn.utils.clip_grad_value_, in place: every gradient element clamped to [-v, v]."""
    for g in grads:
        np.clip(g, -clip_value, clip_value, out=g)


def l2_gradient(p: np.ndarray, g: np.ndarray, wd: float, out: np.ndarray) -> np.ndarray:
    """d = g + wd·p (weight decay added to the gradient, as torch.optim does), written into `out`;
    g itself when wd is 0 (nothing is computed or copied)."""
    if wd == 0:
        return g
    np.multiply(p, wd, out=out)
    out += g
    return out


def ema_square(v: np.ndarray, d: np.ndarray, beta: float, tmp: np.ndarray) -> None:
    """v ← β·v + (1 − β)·d² in place (torch: v.mul_(β).addcmul_(d, d, value=1 − β)); `tmp` is scratch."""
    v *= beta
    np.multiply(d, d, out=tmp)
    tmp *= 1.0 - beta
    v += tmp


class Optimizer(Configurable):
    """Base class: declared `options`, the current `lr`, named state arrays and a step counter.

    Subclasses set `state_names` (the per-parameter state arrays, each shaped like its param),
    `scratch_count` (flat scratch buffers the update needs) and implement
    `_update(i, param, grad, *scratch)` for one parameter. `momentum_option` names what a one-cycle
    schedule cycles: "momentum" (SGD, RMSprop), "betas" (β1 of Adam/AdamW) or None.
    """

    state_names: ClassVar[tuple[str, ...]] = ()
    scratch_count: ClassVar[int] = 2
    momentum_option: ClassVar[str | None] = None

    @classmethod
    def check(cls, values: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        if values.get("clip_grad_norm") is not None and values.get("clip_grad_value") is not None:
            raise ConfigError("set one of clip_grad_norm and clip_grad_value, not both (got "
                              f"{values['clip_grad_norm']} and {values['clip_grad_value']})", "clip_grad_value")
        return values

    def __init__(self, params: Sequence[ParamTriple], **options: Any):
        self.config: dict[str, Any] = dict(options)   # resolved by OPTIMIZERS: checked and complete
        self.lr = options["lr"]
        self.steps = 0  # number of completed step() calls
        self.grad_norm = 0.0   # global gradient norm of the last step, before clipping
        self._norm_sum, self._norm_count = 0.0, 0   # since the last take_grad_norm()
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
        # `scratch_count` flat scratch buffers per dtype, sized for the largest param and viewed in each
        # param's shape: the hot loop allocates nothing.
        sizes: dict[np.dtype, int] = {}
        for p in self.params:
            sizes[p.dtype] = max(p.size, sizes.get(p.dtype, 0))
        flat = {dt: tuple(np.empty(n, dt) for _ in range(self.scratch_count)) for dt, n in sizes.items()}
        self._scratch = [tuple(f[:p.size].reshape(p.shape) for f in flat[p.dtype]) for p in self.params]

    @property
    def lr(self) -> float:
        """The current learning rate (schedulers set it); always a Python float, so float32 stays float32."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = float(value)

    @property
    def momentum(self) -> float | None:
        """The momentum factor a one-cycle schedule cycles (SGD/RMSprop `momentum`, Adam/AdamW β1);
        None for optimizers without one."""
        key = self.momentum_option
        if key is None:
            return None
        return self.config["betas"][0] if key == "betas" else self.config[key]

    @momentum.setter
    def momentum(self, value: float) -> None:
        key = self.momentum_option
        if key is None:
            raise ValueError(f"the {self.type_name} optimizer has no momentum to set")
        if key == "betas":   # a new list: a state_dict()'s options taken earlier keep their value
            self.config["betas"] = [float(value), self.config["betas"][1]]
        else:
            self.config[key] = float(value)

    def _active_state(self) -> tuple[str, ...]:
        return self.state_names

    def step(self) -> None:
        """Measure the global gradient norm, clip the grads where configured, then update every parameter."""
        self.steps += 1
        self.grad_norm = global_grad_norm(self.grads)
        self._norm_sum += self.grad_norm
        self._norm_count += 1
        if self.config.get("clip_grad_norm") is not None:
            clip_grads_by_norm(self.grads, self.config["clip_grad_norm"], self.grad_norm)
        elif self.config.get("clip_grad_value") is not None:
            clip_grads_by_value(self.grads, self.config["clip_grad_value"])
        for i, (p, g, scratch) in enumerate(zip(self.params, self.grads, self._scratch)):
            self._update(i, p, g, *scratch)

    def take_grad_norm(self) -> float | None:
        """The mean global gradient norm (before clipping) over the steps since the last call, then reset;
        None when no step was taken. The trainer takes it at each epoch's end (metrics.csv `grad_norm`)."""
        mean = self._norm_sum / self._norm_count if self._norm_count else None
        self._norm_sum, self._norm_count = 0.0, 0
        return mean

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, *scratch: np.ndarray) -> None:
        raise NotImplementedError

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays keyed "<state>/<param name>" e.g. "momentum/3.W", JSON-able meta). The meta holds the
        gradient-norm running sum of the epoch in progress, so a resumed epoch records the same mean."""
        arrays = {f"{s}/{n}": a.copy() for s, bufs in self.state.items() for n, a in zip(self.names, bufs)}
        meta = {"type": self.type_name, "steps": self.steps, "lr": self.lr, "options": dict(self.config),
                "params": list(self.names), "grad_norm_sum": self._norm_sum, "grad_norm_count": self._norm_count}
        return arrays, meta

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore exactly what `state_dict` saved; strict on type, names and shapes (CheckpointError).
        The gradient-norm sums are absent from checkpoints written before they existed: 0 then."""
        if meta.get("type") != self.type_name:
            raise CheckpointError(f"the checkpoint holds a '{meta.get('type')}' optimizer state, "
                                  f"the config asks for '{self.type_name}'")
        steps, lr = meta.get("steps"), meta.get("lr")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise CheckpointError(f"optimizer state: 'steps' must be a non-negative integer, got {steps!r}")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr < 0:
            raise CheckpointError(f"optimizer state: 'lr' must be a number >= 0, got {lr!r}")
        norm_sum, norm_count = meta.get("grad_norm_sum", 0.0), meta.get("grad_norm_count", 0)
        if not isinstance(norm_sum, (int, float)) or isinstance(norm_sum, bool) or norm_sum < 0:
            raise CheckpointError(f"optimizer state: 'grad_norm_sum' must be a number >= 0, got {norm_sum!r}")
        if not isinstance(norm_count, int) or isinstance(norm_count, bool) or norm_count < 0:
            raise CheckpointError(f"optimizer state: 'grad_norm_count' must be a non-negative integer, "
                                  f"got {norm_count!r}")
        targets = {f"{s}/{n}": a for s, bufs in self.state.items() for n, a in zip(self.names, bufs)}
        load_arrays_into(targets, arrays, "optimizer state", "this model")
        self.steps = steps
        self.lr = float(lr)
        self._norm_sum, self._norm_count = float(norm_sum), norm_count


# YAML type name -> optimizer class: `@OPTIMIZERS.register("name")` makes it `type: name`.
OPTIMIZERS = Registry("optimizer")

_LR = Option("float", default=1e-3, minimum=0.0, exclusive_min=True, doc="learning rate (> 0)")
_WD = Option("float", default=0.0, minimum=0.0, doc="L2 penalty added to the gradient: g + wd·p")
# Gradient clipping, declared by every optimizer (applied inside step(), before the update).
CLIP_OPTIONS: dict[str, Option] = {
    "clip_grad_norm": Option("float", default=None, minimum=0.0, exclusive_min=True, nullable=True,
                             doc="max global L2 norm of all grads: g ← g·min(c/(‖g‖+1e-6), 1) "
                                 "(torch clip_grad_norm_); null: off"),
    "clip_grad_value": Option("float", default=None, minimum=0.0, exclusive_min=True, nullable=True,
                              doc="clamp every gradient element to [-v, v] (torch clip_grad_value_); null: off"),
}


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
        **CLIP_OPTIONS,
    }
    state_names = ("momentum",)
    momentum_option = "momentum"

    @classmethod
    def check(cls, values: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        values = super().check(values, context)
        if values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
            raise ConfigError("nesterov: true requires momentum > 0 and dampening 0 "
                              f"(got momentum {values['momentum']}, dampening {values['dampening']})", "nesterov")
        return values

    def _active_state(self) -> tuple[str, ...]:
        return self.state_names if self.config["momentum"] != 0 else ()

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, tmp_a: np.ndarray, tmp_b: np.ndarray) -> None:
        wd, mu, tau = self.config["weight_decay"], self.config["momentum"], self.config["dampening"]
        d = l2_gradient(p, g, wd, tmp_a)
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
        **CLIP_OPTIONS,
    }
    state_names = ("exp_avg", "exp_avg_sq")
    momentum_option = "betas"

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, tmp_a: np.ndarray, tmp_b: np.ndarray) -> None:
        (b1, b2), eps, wd, lr = self.config["betas"], self.config["eps"], self.config["weight_decay"], self.lr
        m, v = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
        d = g
        if wd != 0:
            if self.decoupled:
                p *= 1.0 - lr * wd
            else:
                d = l2_gradient(p, g, wd, tmp_a)
        np.subtract(d, m, out=tmp_b)  # m.lerp_(d, 1 − β1)
        tmp_b *= 1.0 - b1
        m += tmp_b
        ema_square(v, d, b2, tmp_b)
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


@OPTIMIZERS.register("rmsprop")
class RMSprop(Optimizer):
    """RMSprop as torch.optim.RMSprop (L2 weight decay added to the gradient):

    d = g + wd·p;  v = α·v + (1−α)·d²;  centered: ḡ = ḡ + (1−α)(d − ḡ), a = √(v − ḡ²) + eps, else
    a = √v + eps;  momentum μ > 0: b = μ·b + d/a, p −= lr·b;  else p −= lr·d/a.
    """

    options = {
        "lr": Option("float", default=1e-2, minimum=0.0, exclusive_min=True, doc="learning rate (> 0)"),
        "alpha": Option("float", default=0.99, minimum=0.0, maximum=1.0, doc="smoothing constant α of v"),
        "eps": Option("float", default=1e-8, minimum=0.0, doc="added to the denominator for stability"),
        "weight_decay": _WD,
        "momentum": Option("float", default=0.0, minimum=0.0, doc="momentum factor μ (0: none)"),
        "centered": Option("bool", default=False,
                           doc="normalise by the estimated variance v − ḡ² instead of v"),
        **CLIP_OPTIONS,
    }
    state_names = ("square_avg", "momentum_buffer", "grad_avg")
    momentum_option = "momentum"

    def _active_state(self) -> tuple[str, ...]:
        return ("square_avg",) + (("momentum_buffer",) if self.config["momentum"] > 0 else ()) \
            + (("grad_avg",) if self.config["centered"] else ())

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, tmp_a: np.ndarray, tmp_b: np.ndarray) -> None:
        alpha, eps, wd, mu = self.config["alpha"], self.config["eps"], self.config["weight_decay"], \
            self.config["momentum"]
        v = self.state["square_avg"][i]
        d = l2_gradient(p, g, wd, tmp_a)
        ema_square(v, d, alpha, tmp_b)
        if self.config["centered"]:
            avg = self.state["grad_avg"][i]
            np.subtract(d, avg, out=tmp_b)   # ḡ.lerp_(d, 1 − α)
            tmp_b *= 1.0 - alpha
            avg += tmp_b
            np.multiply(avg, avg, out=tmp_b)
            np.subtract(v, tmp_b, out=tmp_b)
            np.sqrt(tmp_b, out=tmp_b)
        else:
            np.sqrt(v, out=tmp_b)
        tmp_b += eps
        np.divide(d, tmp_b, out=tmp_b)   # d / a
        if mu > 0:
            buf = self.state["momentum_buffer"][i]
            buf *= mu
            buf += tmp_b
            np.multiply(buf, self.lr, out=tmp_b)
        else:
            tmp_b *= self.lr
        p -= tmp_b


@OPTIMIZERS.register("adagrad")
class Adagrad(Optimizer):
    """Adagrad as torch.optim.Adagrad (L2 weight decay added to the gradient), t = step number from 1:

    d = g + wd·p;  clr = lr / (1 + (t−1)·lr_decay);  s = s + d²  (s starts at initial_accumulator_value);
    p −= clr · d / (√s + eps).
    """

    options = {
        "lr": Option("float", default=1e-2, minimum=0.0, exclusive_min=True, doc="learning rate (> 0)"),
        "lr_decay": Option("float", default=0.0, minimum=0.0, doc="lr / (1 + (t−1)·lr_decay) at step t"),
        "weight_decay": _WD,
        "initial_accumulator_value": Option("float", default=0.0, minimum=0.0,
                                            doc="start value of the sum of squared gradients"),
        "eps": Option("float", default=1e-10, minimum=0.0, doc="added to the denominator for stability"),
        **CLIP_OPTIONS,
    }
    state_names = ("sum",)

    def __init__(self, params: Sequence[ParamTriple], **options: Any):
        super().__init__(params, **options)
        for s in self.state["sum"]:
            s.fill(self.config["initial_accumulator_value"])

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, tmp_a: np.ndarray, tmp_b: np.ndarray) -> None:
        wd, eps, decay = self.config["weight_decay"], self.config["eps"], self.config["lr_decay"]
        s = self.state["sum"][i]
        d = l2_gradient(p, g, wd, tmp_a)
        clr = self.lr / (1 + (float(self.steps) - 1) * decay)
        np.multiply(d, d, out=tmp_b)     # s.addcmul_(d, d, value=1)
        s += tmp_b
        np.sqrt(s, out=tmp_b)
        tmp_b += eps
        np.divide(d, tmp_b, out=tmp_b)
        tmp_b *= clr
        p -= tmp_b


@OPTIMIZERS.register("adadelta")
class Adadelta(Optimizer):
    """Adadelta as torch.optim.Adadelta (L2 weight decay added to the gradient):

    d = g + wd·p;  v = ρ·v + (1−ρ)·d²;  Δ = √(u + eps) / √(v + eps) · d;  u = ρ·u + (1−ρ)·Δ²;  p −= lr·Δ.
    """

    options = {
        "lr": Option("float", default=1.0, minimum=0.0, exclusive_min=True,
                     doc="coefficient scaling Δ before it is applied (> 0)"),
        "rho": Option("float", default=0.9, minimum=0.0, maximum=1.0, doc="decay rate ρ of both running averages"),
        "eps": Option("float", default=1e-6, minimum=0.0, doc="added inside both square roots"),
        "weight_decay": _WD,
        **CLIP_OPTIONS,
    }
    state_names = ("square_avg", "acc_delta")
    scratch_count = 3

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, tmp_a: np.ndarray, tmp_b: np.ndarray,
                tmp_c: np.ndarray) -> None:
        rho, eps, wd = self.config["rho"], self.config["eps"], self.config["weight_decay"]
        v, u = self.state["square_avg"][i], self.state["acc_delta"][i]
        d = l2_gradient(p, g, wd, tmp_a)
        ema_square(v, d, rho, tmp_b)
        np.add(v, eps, out=tmp_b)        # std = √(v + eps)
        np.sqrt(tmp_b, out=tmp_b)
        np.add(u, eps, out=tmp_c)        # Δ = √(u + eps) / std · d
        np.sqrt(tmp_c, out=tmp_c)
        tmp_c /= tmp_b
        tmp_c *= d
        u *= rho                         # u.mul_(ρ).addcmul_(Δ, Δ, value=1 − ρ)
        np.multiply(tmp_c, tmp_c, out=tmp_b)
        tmp_b *= 1.0 - rho
        u += tmp_b
        tmp_c *= self.lr
        p -= tmp_c


def build_optimizer(spec: Mapping[str, Any], params: Sequence[ParamTriple]) -> Optimizer:
    """The optimizer of `spec` = {type: sgd|adam|adamw|rmsprop|adagrad|adadelta, option: value} over
    `(name, param, grad)` triples."""
    return OPTIMIZERS.build(spec, list(params), path="optimizer")
