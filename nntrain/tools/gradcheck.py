r"""Numerical gradient check: compare every analytic gradient of model + loss with central differences.

For each parameter tensor of each layer, and for the input x, a sample of entries θ_i is perturbed and

    n_i = (f(θ + h e_i) − f(θ − h e_i)) / (2h),   f = data loss + Σ_layers λ/2·||W||²,

is compared with the analytic a_i from one `model.backward` by the relative error

    r_i = |a_i − n_i| / max(|a_i| + |n_i|, tiny).

Why these numbers (float64, h = 1e-6): the truncation error of a central difference is h²/6·|f'''| ≈
1e-13, and the rounding error is about u·|f|/h with u = 2.2e-16 (a few ulps of the loss, lost in the
subtraction, divided by h) ≈ 1e-9 for losses of order one. So a correct gradient entry of size ≥ 1e-3
agrees to ~1e-6 relative or better, and entries smaller than the rounding floor cannot be resolved at
all: `tiny = floor / tol` turns the test for those into the absolute one |a − n| ≤ floor, where
floor = 64·u·max(|f|, 1)/h (64 ulps: the loss is a sum of many rounded terms). Overall an entry passes
iff |a − n| ≤ max(tol·(|a| + |n|), floor) (floor ≈ 3e-8 for f ≈ 2.3): a 1 % error in a backward pass
is ~5e-3 relative, 5000× over `tol`, on every entry larger than 100·floor.

Making f a deterministic function of θ, smooth where it is compared:
- run in train mode (batchnorm uses batch statistics); dropout masks are made identical in every
  forward by restoring the model's Generator state (`model.rng.bit_generator.state`) before it;
- ReLU and max-pool are only piecewise smooth: a step h that moves a pre-activation across 0, or
  changes which element of a pooling window is the maximum, puts f(θ ± h) on another smooth piece
  and the difference measures no derivative (a 32-channel 32x32 feature map of a batch of 4 has 131k
  units, and a weight moves thousands of them). Such crossings are detected exactly: every layer
  reports the discrete state of its last forward (`Layer.kink_state()`: relu's sign pattern, max-pool's
  argmax offsets; a block such as residual joins those of the layers inside it), and an entry counts
  only where the states at θ + h and θ − h both equal those at θ (then f is smooth on [θ − h, θ + h],
  unless a unit crossed a kink and came back within h, which takes a curvature of order 1/h).
  Otherwise it is re-measured with h/10, then h/100 (each judged against its own rounding floor), and
  where the states differ even then, the entry is skipped and counted ("kinks" in the table). The
  decision uses forward states alone, so a wrong backward pass can never be excused as a kink.

The forward runs in the model's plan (`Model.plan`, whose steps backward follows), and only steps
from the one holding the perturbed layer onwards are re-run: each step's input and the Generator
state before it are recorded in the reference forward, so a partial forward reproduces the full one
exactly. The model is left as it was found (parameters, buffers such as batchnorm running
statistics, and the Generator state are restored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from nntrain.data.registry import data_info
from nntrain.errors import ConfigError
from nntrain.nn.layers.base import Layer
from nntrain.nn.layers.blocks import Block
from nntrain.nn.layers.norm import BatchNorm
from nntrain.nn.losses import build_loss
from nntrain.nn.model import Model, build_model
from nntrain.rng import stream
from nntrain.tables import format_table

_ULP = np.finfo(np.float64).eps
_ROUNDING_ULPS = 64  # rounding error of the loss, in ulps of max(|f|, 1): see the module docstring
_STEP_DIVISORS = (1.0, 10.0, 100.0)  # steps eps / each of these, tried in turn while f(θ ± h) crosses a kink


@dataclass(frozen=True)
class GradcheckRow:
    """Result for one tensor: `layer` is the layer index (None for the input), `tensor` the param name
    ("W", "b", "gamma", ...; inside a block its path, "body.0.W") or "input"; `checked` entries were
    drawn (of `size`), `kinks` of them skipped because every step crossed a kink; `max_rel_error` the
    largest r_i over the others (NaN if none), `worst_index` where it occurred, `passed` whether it is
    ≤ `tol` (False if none was compared)."""

    layer: int | None
    layer_type: str
    tensor: str
    checked: int
    size: int
    max_rel_error: float
    worst_index: tuple[int, ...] | None
    tol: float
    passed: bool
    kinks: int = 0

    @property
    def name(self) -> str:
        """Model-level name: "3.W", or "input"."""
        return self.tensor if self.layer is None else f"{self.layer}.{self.tensor}"


def config_input_shape(cfg: Mapping[str, Any]) -> tuple[int, ...]:
    """Per-sample input shape (C, H, W) for a loaded config, from its `data.dataset`; ConfigError if unknown."""
    data = cfg.get("data") or {}
    if not isinstance(data, Mapping) or "dataset" not in data:
        raise ConfigError("the config needs data.dataset to know the input shape", "data.dataset")
    return tuple(int(s) for s in data_info(data).input_shape)


class _Objective:
    """f(θ) evaluated from a step of the model's plan onwards, reproducing the reference forward
    exactly, and whether every layer it ran stayed on the reference forward's smooth piece."""

    def __init__(self, model: Model, loss: Any, x: np.ndarray, labels: np.ndarray):
        self.model, self.loss, self.labels = model, loss, labels
        self.step_of = {k: s for s, step in enumerate(model.plan) for k in step.layers}
        self.inputs: list[np.ndarray] = []
        self.states: list[dict] = []
        h = x
        for step in model.plan:
            self.inputs.append(h)
            self.states.append(model.rng.bit_generator.state)
            for k in step.layers:
                h = model.layers[k].forward(h, train=True)
        self.value = loss.forward(h, labels) + model.regularization_loss()
        self.kinks = [_copy(layer.kink_state()) for layer in model.layers]

    def __call__(self, start: int, reg_layer: int | None) -> tuple[float, bool]:
        """(f, same piece): the data loss from plan step `start` on, plus the weight-decay term of layer
        `reg_layer` (the only one that changes when that layer's params move; constant terms are left
        out of f± so that they do not add rounding error to the difference); and whether the kink
        state of every layer re-run equals the reference's."""
        model = self.model
        model.rng.bit_generator.state = self.states[start]
        h = self.inputs[start]
        same = True
        for step in model.plan[start:]:
            for k in step.layers:
                layer = model.layers[k]
                h = layer.forward(h, train=True)
                same = same and _same(layer.kink_state(), self.kinks[k])
        f = self.loss.forward(h, self.labels)
        if reg_layer is not None:
            f += model.layers[reg_layer].regularization_loss()
        return f, same


def _copy(state: np.ndarray | None) -> np.ndarray | None:
    return None if state is None else np.array(state, copy=True)


def _same(state: np.ndarray | None, reference: np.ndarray | None) -> bool:
    if state is None or reference is None:
        return state is reference
    return state.shape == reference.shape and bool(np.array_equal(state, reference))


def _check_tensor(f, array: np.ndarray, analytic: np.ndarray, indices: np.ndarray, eps: float,
                  tol: float, scale: float) -> tuple[float, int, int]:
    """(max relative error, its flat index, entries skipped at kinks) over `indices` (flat) of
    `array`, perturbed in place and restored exactly.

    f() -> (objective, same piece) at the current value of `array`. An entry is compared at the
    first step h (eps, eps/10, eps/100) where f(θ + h) and f(θ − h) both stay on θ's smooth piece;
    there the central difference is accurate and a disagreement is the backward's.
    """
    if not array.flags.c_contiguous:  # reshape would copy, and the perturbation would be lost
        raise ValueError("gradcheck perturbs arrays in place through a flat view: params must be C-contiguous")
    flat = array.reshape(-1)
    a_flat = analytic.reshape(-1)
    worst, worst_i, kinks = -1.0, int(indices[0]), 0
    for i in indices:
        i = int(i)
        a = float(a_flat[i])
        orig = flat[i]
        err = None
        for div in _STEP_DIVISORS:
            h = eps / div
            flat[i] = orig + h
            (up, same), step_up = f(), flat[i] - orig
            if same:   # else θ − h need not be evaluated at this step
                flat[i] = orig - h
                (down, same), step_down = f(), orig - flat[i]
            flat[i] = orig
            if same:
                n = (up - down) / (step_up + step_down)  # the steps actually taken, not the nominal h
                floor = _ROUNDING_ULPS * _ULP * scale / h
                err = abs(a - n) / max(abs(a) + abs(n), floor / tol)
                err = err if math.isfinite(err) else math.inf
                break
        if err is None:
            kinks += 1
        elif err > worst:
            worst, worst_i = err, i
    return (worst if worst >= 0 else math.nan), worst_i, kinks


def gradcheck(model: Model, loss: Any, x: np.ndarray, labels: np.ndarray, *, samples: int = 200,
              full: bool = False, eps: float = 1e-6, tol: float = 1e-6,
              rng: np.random.Generator | None = None) -> list[GradcheckRow]:
    """Check every parameter gradient of every layer and dL/dx against central differences.

    model: built in float64; x: (N, *model.input_shape), labels: (N,) class indices; loss: an object
    with forward(z, labels) -> float and backward() -> dL/dz (SoftmaxCrossEntropy). `samples` entries
    per tensor are checked (drawn without replacement from `rng`), all of them if `full`.
    Returns one row per tensor: the input first, then the params in layer order.
    """
    if model.dtype != np.float64 or any(p.dtype != np.float64 for _, p, _ in model.parameters()):
        raise ValueError("gradcheck needs a float64 model: build_model(..., dtype=np.float64)")
    rng = np.random.default_rng(0) if rng is None else rng
    x = np.array(x, dtype=np.float64, copy=True, order="C")  # ours to perturb
    labels = np.asarray(labels)
    saved = model.state_dict()
    noise_state = model.rng.bit_generator.state
    try:
        # Reference pass (records each step's input, the Generator state before it and the kink
        # states), then backward, which follows the same plan.
        f = _Objective(model, loss, x, labels)
        dx = model.backward(loss.backward(), need_input_grad=True).copy()
        grads = {(k, name): g.copy() for k, layer in enumerate(model.layers) for name, g in layer.grads.items()}
        scale = max(abs(f.value), 1.0)

        def pick(size: int) -> np.ndarray:
            if full or size <= samples:
                return np.arange(size)
            return np.sort(rng.choice(size, size=samples, replace=False))

        rows = []
        targets = [(None, "input", "input", x, dx)]
        for k, layer in enumerate(model.layers):
            for name, p in layer.params.items():
                targets.append((k, layer.type_name, name, p, grads[(k, name)]))
        for k, kind, name, array, analytic in targets:
            if array.size == 0:
                continue
            idx = pick(array.size)
            start, reg = (0, None) if k is None else (f.step_of[k], k)
            err, at, kinks = _check_tensor(lambda: f(start, reg), array, analytic, idx, eps, tol, scale)
            rows.append(GradcheckRow(k, kind, name, len(idx), array.size, err,
                                     tuple(int(j) for j in np.unravel_index(at, array.shape)), tol,
                                     bool(err <= tol), kinks))   # False for NaN: nothing compared
        return rows
    finally:
        model.load_state_dict(saved)
        model.rng.bit_generator.state = noise_state


# Fewest values per feature a batchnorm should normalise over in the check (see default_batch_size).
MIN_BATCHNORM_VALUES = 8


def _all_layers(layers: Sequence[Layer]) -> Iterator[Layer]:
    """The layers and, depth first, the layers inside their blocks."""
    for layer in layers:
        yield layer
        if isinstance(layer, Block):
            yield from _all_layers([child for _, child in layer.children()])


def default_batch_size(model: Model) -> int:
    """2, or more where a batchnorm would see fewer than MIN_BATCHNORM_VALUES values per feature.

    Why: batch statistics over M values are nearly singular for small M (with M = 2, x̂ = ±1 whatever
    the input), so f is sharply curved there, the central difference's truncation error h²/6·|f'''|
    reaches the tolerance, and a correct backward fails the check: a batchnorm on flat features
    before the classifier, with a batch of 2, gave 3e-6 on 4.beta of cifar_resnet.yaml (batch 8: 1e-8).
    """
    batch = 2
    for layer in _all_layers(model.layers):
        if isinstance(layer, BatchNorm) and layer.input_shape is not None:
            per_sample = math.prod(layer.input_shape[1:])   # H·W values per sample (1 for flat features)
            batch = max(batch, -(-MIN_BATCHNORM_VALUES // per_sample))
    return batch


def gradcheck_config(cfg: Mapping[str, Any], full: bool = False, batch_size: int | None = None,
                     samples: int = 50) -> list[GradcheckRow]:
    """Build the config's model in float64 (its seed) and loss, draw a random batch, run `gradcheck`.

    cfg: a loaded config dict with `seed`, `data.dataset`, `model` (layer specs) and `loss`.
    The batch x ~ N(0, 1) and labels come from a Generator derived from the seed, apart from the
    model's own streams; a continuous x makes maxpool ties and exact ReLU kinks improbable.
    batch_size None: `default_batch_size(model)` (2 unless a batchnorm needs more).
    """
    seed = int(cfg.get("seed", 0) or 0)
    input_shape = config_input_shape(cfg)
    model = build_model(cfg["model"], input_shape, seed=seed, dtype=np.float64)
    loss = build_loss(cfg.get("loss"))
    if len(model.output_shape) != 1:
        raise ConfigError(f"the model's output must be class scores of shape (classes,), "
                          f"got {model.output_shape}; end it with a linear layer", "model")
    if batch_size is None:
        batch_size = default_batch_size(model)
    rng = stream(seed, "gradcheck")  # the check's own stream, apart from the model's init and noise
    x = rng.standard_normal((batch_size, *input_shape))
    labels = rng.integers(0, model.output_shape[0], size=batch_size)
    return gradcheck(model, loss, x, labels, samples=samples, full=full, rng=rng)


def gradcheck_failed(rows: Sequence[GradcheckRow]) -> list[GradcheckRow]:
    """The rows over tolerance (empty when the check passes)."""
    return [r for r in rows if not r.passed]


def format_gradcheck(rows: Sequence[GradcheckRow]) -> str:
    """Table: layer, type, tensor, entries checked, entries skipped at kinks, max relative error,
    pass/FAIL; then a verdict line."""
    lines = [format_table(
        ("layer", "type", "tensor", "checked", "kinks", "max rel. error", "result"),
        [("-" if r.layer is None else r.layer, r.layer_type, r.tensor, f"{r.checked}/{r.size}", r.kinks,
          f"{r.max_rel_error:.2e}", "pass" if r.passed else "FAIL") for r in rows], align="rllrrrl", rule=True)]
    bad = gradcheck_failed(rows)
    tol = rows[0].tol if rows else 0.0
    kinks = sum(r.kinks for r in rows)
    skipped = f" ({kinks} entries skipped: f(θ ± h) crossed a kink at every step)" if kinks else ""
    if bad:
        lines.append(f"FAILED: {', '.join(r.name for r in bad)} over tolerance {tol:g}{skipped}")
    else:
        lines.append(f"all {len(rows)} tensors within tolerance {tol:g}{skipped}")
    return "\n".join(lines)
