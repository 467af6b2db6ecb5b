"""Training health, per layer: what the gradients, the updates and the activations look like after
every epoch, and warnings in plain words when they look wrong.

At the start of training a fixed sample of training images is drawn once (`sample_batches` batches of
the run's batch size, from the seed's `health` stream; never from a training stream). After every
epoch the model's current weights are measured on that sample:

* per parameterised layer (linear, conv2d, batchnorm; those inside residual blocks too), over all its
  parameters θ (W and b together):
  - `grad_norm` = ‖ḡ‖₂, ḡ = (1/B) Σ_b ∇θ L_b, the gradient of the mean loss of the B sample batches
    (per-layer weight decay included, as training's backward has it; the optimizer's weight_decay is
    not, it is part of the step);
  - `weight_norm` = ‖θ‖₂;
  - `update_ratio` = ‖Δθ‖₂ / ‖θ‖₂, Δθ the update the optimizer would make from ḡ right now, with the
    lr the epoch trained with (metrics.csv's, not the next epoch's that the schedule has already set),
    its current momentum or moments, and clipping: one real `step()`, after which the parameters and
    the optimizer state are put back exactly. (≈1e-3 is the usual healthy value for SGD.)
* per activation layer (relu, leaky_relu, sigmoid, tanh, gelu; nested ones too), over every output
  value on the sample: `mean`, `std`, and for relu and leaky_relu `dead`, the fraction of units that
  are never positive on any sample image. A unit is a feature of a flat output (N, F), a channel of
  an image output (N, C, H, W) (a filter that fires nowhere).
* one `model` row: the global gradient norm, weight norm and update ratio.

The sample runs as a training step does (forward with train=True, so dropout and batchnorm behave as
in training), and everything the measurement touches is restored: the model Generator's state (dropout
draws), batchnorm's running statistics, the gradients, the parameters and the optimizer state. The
run's results are therefore bit-identical with or without this callback. The cost is B forward and
backward passes plus one optimizer step per epoch (see bench/results/health.md).

Warnings (`health_warnings`), logged at the end of the epoch where they happen and kept in health.csv's
`warning` column: a loss exploding before it reaches NaN, vanishing gradients in the first layer, a
layer with more than half of its units dead, and accuracy stuck at chance.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from nntrain.atomic import atomic_write_text
from nntrain.data import iterate_batches
from nntrain.errors import NNTrainError
from nntrain.nn.layers.base import Layer
from nntrain.nn.layers.blocks import Block
from nntrain.rng import stream
from nntrain.training.callbacks import Callback

if TYPE_CHECKING:
    from nntrain.nn.model import Model
    from nntrain.training.run_folder import RunFolder
    from nntrain.training.trainer import Trainer

log = logging.getLogger("nntrain")

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu")
DEAD_TYPES = ("relu", "leaky_relu")   # activations whose output is never positive for a "dead" unit
COLUMNS = ("epoch", "layer", "type", "grad_norm", "weight_norm", "update_ratio", "mean", "std", "dead", "warning")

EXPLODE_FACTOR = 10.0     # train loss > 10x the first epoch's ...
EXPLODE_LN_K = 3.0        # ... or > 3·ln K and rising (ln K: the loss of a uniform guess)
VANISH_RATIO = 1e-4       # first layer's grad norm < 1e-4 x the last's
DEAD_FRACTION = 0.5       # more than half of a layer's units dead
CHANCE_MARGIN = 0.02      # accuracy <= 1/K + 0.02


def leaf_layers(layers: Sequence[Layer], prefix: str = "") -> Iterator[tuple[str, Layer]]:
    """(name, layer) for every layer that is not a block, depth first; names follow the parameter names
    ("3", "4.body.0", "4.body.2.shortcut.0")."""
    for i, layer in enumerate(layers):
        yield from _leaves(layer, f"{prefix}{i}")


def _leaves(layer: Layer, name: str) -> Iterator[tuple[str, Layer]]:
    if isinstance(layer, Block):
        for child_name, child in layer.children():
            yield from _leaves(child, f"{name}.{child_name}")
    else:
        yield name, layer


@dataclass
class ActivationStats:
    """Running sums over the sample of one activation layer's outputs (float64)."""

    count: int = 0
    total: float = 0.0
    squares: float = 0.0
    fired: np.ndarray | None = None   # per unit: positive for some sample image

    def add(self, y: np.ndarray, dead_units: bool) -> None:
        y64 = y.astype(np.float64)
        self.count += y.size
        self.total += float(y64.sum())
        self.squares += float(np.square(y64).sum())
        if dead_units and y.ndim >= 2:
            axes = (0,) if y.ndim == 2 else (0, *range(2, y.ndim))
            fired = (y > 0).any(axis=axes)
            self.fired = fired if self.fired is None else self.fired | fired

    def row(self) -> dict[str, float | None]:
        mean = self.total / max(self.count, 1)
        var = max(self.squares / max(self.count, 1) - mean * mean, 0.0)
        dead = None if self.fired is None else float(1.0 - self.fired.mean())
        return {"mean": mean, "std": math.sqrt(var), "dead": dead}


@contextmanager
def _recording(layers: Sequence[tuple[str, Layer]]) -> Iterator[dict[str, ActivationStats]]:
    """While inside, every listed layer's forward also adds its output to that layer's ActivationStats
    (an instance attribute shadowing the class's method, removed on exit)."""
    stats = {name: ActivationStats() for name, _ in layers}
    try:
        for name, layer in layers:
            def forward(x: np.ndarray, train: bool = False, _layer: Layer = layer,
                        _stats: ActivationStats = stats[name]) -> np.ndarray:
                y = type(_layer).forward(_layer, x, train)
                _stats.add(y, _layer.type_name in DEAD_TYPES)
                return y
            layer.forward = forward   # type: ignore[method-assign]
        yield stats
    finally:
        for _, layer in layers:
            layer.__dict__.pop("forward", None)


def _norm(arrays: Sequence[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.dot(a.reshape(-1).astype(np.float64), a.reshape(-1).astype(np.float64)))
                         for a in arrays))


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 and math.isfinite(num) and math.isfinite(den) else None


def measure(trainer: Trainer, sample: Sequence[tuple[np.ndarray, np.ndarray]], lr: float | None = None
            ) -> list[dict[str, Any]]:
    """One row per parameterised layer, per activation layer, and the `model` row (see the module
    docstring), measured on `sample` ((x, y) float batches, normalised as training's); the update with
    learning rate `lr` (None: the optimizer's). Leaves the model, the optimizer and every Generator as
    it found them."""
    p = trainer.parts
    model, opt = p.model, p.optimizer
    leaves = list(leaf_layers(model.layers))
    param_layers = [(n, layer) for n, layer in leaves if layer.params]
    acts = [(n, layer) for n, layer in leaves if layer.type_name in ACTIVATIONS]
    saved_rng = model.rng.bit_generator.state
    saved_buffers = [(b, b.copy()) for _, b in model.buffers()]
    saved_grads = [g.copy() for g in opt.grads]
    mean_grads = [np.zeros(g.shape, np.float64) for g in opt.grads]
    try:
        with _recording(acts) as stats, np.errstate(over="ignore", invalid="ignore"):
            for x, y in sample:
                z = model.forward(x, train=True)
                p.loss.forward(z, y)
                model.backward(p.loss.backward(), need_input_grad=False)
                for acc, g in zip(mean_grads, opt.grads):
                    acc += g
        for acc, g in zip(mean_grads, opt.grads):
            acc /= len(sample)
            np.copyto(g, acc, casting="unsafe")
        deltas = _update_deltas(trainer, lr)
    finally:
        model.rng.bit_generator.state = saved_rng
        for b, copy in saved_buffers:
            np.copyto(b, copy)
        for g, copy in zip(opt.grads, saved_grads):
            np.copyto(g, copy)
    index = {id(param): i for i, param in enumerate(opt.params)}
    rows: list[dict[str, Any]] = []
    for name, layer in param_layers:
        ids = [index[id(a)] for a in layer.params.values() if id(a) in index]
        wn = _norm([opt.params[i] for i in ids])
        rows.append({"layer": name, "type": layer.type_name, "grad_norm": _norm([mean_grads[i] for i in ids]),
                     "weight_norm": wn, "update_ratio": _ratio(_norm([deltas[i] for i in ids]), wn)})
    rows += [{"layer": name, "type": layer.type_name, **stats[name].row()} for name, layer in acts]
    wn = _norm(opt.params)
    rows.append({"layer": "model", "type": "model", "grad_norm": _norm(mean_grads), "weight_norm": wn,
                 "update_ratio": _ratio(_norm(deltas), wn)})
    return rows


def _update_deltas(trainer: Trainer, lr: float | None) -> list[np.ndarray]:
    """Δθ of one optimizer step (learning rate `lr`) from the gradients now in the grad arrays; the
    parameters and the optimizer (state arrays, step count, lr, gradient-norm sums) are restored after."""
    opt = trainer.parts.optimizer
    arrays, meta = opt.state_dict()
    grad_norm = opt.grad_norm
    before = [param.copy() for param in opt.params]
    try:
        if lr is not None:
            opt.lr = lr
        with np.errstate(over="ignore", invalid="ignore"):
            type(opt).step(opt)   # the class's step: not a training step, so nothing watching those sees it
        return [param.astype(np.float64) - b for param, b in zip(opt.params, before)]
    finally:
        for param, b in zip(opt.params, before):
            np.copyto(param, b)
        opt.load_state_dict(arrays, meta)
        opt.grad_norm = grad_norm


def health_warnings(rows: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]], classes: int,
                    lr: float) -> list[tuple[str, str]]:
    """(layer or "model", message) for every problem seen in an epoch: `rows` its health rows, `history`
    the metrics rows so far (the epoch's last), `classes` K, `lr` the learning rate the epoch used."""
    out: list[tuple[str, str]] = []
    row, first = history[-1], history[0]
    epoch, loss = int(row["epoch"]), float(row["train_loss"])
    ln_k = math.log(max(classes, 2))
    rising = len(history) > 1 and loss > float(history[-2]["train_loss"])
    if math.isfinite(loss) and ((len(history) > 1 and loss > EXPLODE_FACTOR * float(first["train_loss"]))
                                or (loss > EXPLODE_LN_K * ln_k and (rising or len(history) == 1))):
        since = f", epoch 1 scored {float(first['train_loss']):.3g}" if len(history) > 1 else ""
        out.append(("model", f"epoch {epoch}: the training loss is exploding ({loss:.3g}; a uniform guess "
                             f"scores ln {classes} = {ln_k:.2f}{since}) though it is not NaN yet. Lower the "
                             f"learning rate (this epoch's was {lr:g}), e.g. 10x, or clip the gradients "
                             "(optimizer.clip_grad_norm: 1.0)."))
    params = [r for r in rows if r["type"] != "model" and r.get("grad_norm") is not None]
    if len(params) >= 2:
        f, last = params[0], params[-1]
        if last["grad_norm"] > 0 and f["grad_norm"] < VANISH_RATIO * last["grad_norm"]:
            last_name = f"the last layer {last['layer']} ({last['type']})"
            how = (f"no gradient at all while {last_name} gets {last['grad_norm']:.2g}" if f["grad_norm"] == 0 else
                   f"a gradient of norm {f['grad_norm']:.2g}, {f['grad_norm'] / last['grad_norm']:.1g} times that "
                   f"of {last_name}")
            out.append((f["layer"], f"epoch {epoch}: vanishing gradients: the first layer {f['layer']} ({f['type']}) "
                                    f"gets {how}, so it barely learns. Use relu instead of sigmoid/tanh, a He "
                                    "initialisation (he_normal), batchnorm between the layers, "
                                    "or residual blocks."))
    for r in rows:
        if r.get("dead") is not None and r["dead"] > DEAD_FRACTION:
            out.append((r["layer"], f"epoch {epoch}: {r['dead']:.0%} of the units of layer {r['layer']} "
                                    f"({r['type']}) are dead: never positive on any sample image, so they learn "
                                    f"nothing. Lower the learning rate (this epoch's was {lr:g}), check the "
                                    "initialisation (he_normal, no large negative bias), or use leaky_relu or "
                                    "batchnorm."))
    acc_key = "val_acc" if row.get("val_acc") is not None else "train_acc"
    acc = row.get(acc_key)
    if acc is not None and float(acc) <= 1.0 / classes + CHANCE_MARGIN:
        out.append(("model", f"epoch {epoch}: {acc_key.replace('_acc', '')} accuracy {float(acc):.3f} is at "
                             f"chance level (1/{classes} = {1 / classes:.3f}): the model is not learning. Check "
                             f"the learning rate (this epoch's was {lr:g}: 10x larger if the loss barely moves, "
                             "smaller if it jumped), the initialisation, and that the labels match the images."))
    return out


def _clean(value: Any) -> Any:
    """Plain JSON-able values for checkpoint metadata: non-finite floats as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TrainingHealth(Callback):
    """Measures training health after every epoch (see the module docstring): health.csv rewritten
    whole and atomically, plots/health.png, and warnings logged. Its rows are its checkpointed state, so
    a resumed run keeps the earlier epochs'. Never stops the run."""

    name = "health"

    def __init__(self, folder: RunFolder | None, seed: int, sample_batches: int = 2):
        self.folder = folder
        self.seed = int(seed)
        self.sample_batches = sample_batches
        self.rows: list[dict[str, Any]] = []
        self.sample: list[tuple[np.ndarray, np.ndarray]] = []

    def on_train_begin(self, trainer: Trainer) -> None:
        data = trainer.data
        n = min(len(data.train_y), self.sample_batches * trainer.batch_size)
        pick = np.sort(stream(self.seed, "health").choice(len(data.train_y), size=n, replace=False))
        self.sample = [(x.copy(), y.copy()) for x, y in iterate_batches(
            data.train_x[pick], data.train_y[pick], trainer.batch_size, rng=None, mean=data.mean, std=data.std)]
        if self.rows:   # resumed: the file catches up with the checkpoint
            self.write()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: Mapping[str, float]) -> bool:
        if not self.sample:
            return False
        lr = float(metrics.get("lr", trainer.parts.optimizer.lr))
        try:
            rows = measure(trainer, self.sample, lr)
        except (NNTrainError, ValueError, ArithmeticError) as e:   # e.g. batchnorm on a 1-image sample
            log.warning("training health could not be measured after epoch %d: %s", epoch, e)
            return False
        classes = len(trainer.data.info.class_names)
        warnings = health_warnings(rows, trainer.state.history, classes, lr)
        by_layer: dict[str, list[str]] = {}
        for layer, message in warnings:
            log.warning("%s", message)
            by_layer.setdefault(layer, []).append(message)
        for r in rows:
            r["epoch"] = epoch
            r["warning"] = " | ".join(by_layer.get(r["layer"], [])) or None
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [{k: _clean(r.get(k)) for k in COLUMNS}
                                                                   for r in rows]
        self.write()
        return False

    def write(self) -> None:
        if self.folder is None:
            return
        from nntrain.training.plots import plot_health   # matplotlib: loaded when the first epoch ends

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
        atomic_write_text(self.folder.health, buf.getvalue())
        plot_health(self.rows, self.folder.plots / "health.png", title=self.folder.path.name)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        rows = state.get("rows", [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("epoch"), int)
                                                 for r in rows):
            log.warning("the checkpoint's training-health rows are unreadable: health.csv starts again")
            rows = []
        self.rows = [{k: r.get(k) for k in COLUMNS} for r in rows]
