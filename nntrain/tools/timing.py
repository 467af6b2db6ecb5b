"""Per-layer timing of forward and backward passes, as Caffe's `caffe time` (`nntrain time CONFIG`).

Each batch runs forward layer by layer, the loss, backward layer by layer and (optionally) one
optimizer step, timing every call with time.perf_counter. Layers run as Model.forward/backward run
them in training, following the model's plan: a relu followed by a maxpool runs after the pool, and
backward stops at the first layer with parameters, which skips its own input gradient
(Model.backward_calls(need_input_grad=False)). After `warmup` untimed batches, each
row reports the median milliseconds per batch over `batches` batches; medians resist the odd
scheduler hiccup better than means. GFLOP/s uses `layer.flops(input_shape)` (forward FLOPs per
sample); backward is counted as 2× the forward FLOPs (one GEMM for the input gradient, one for the
weight gradient), 1× for the first layer, which skips its input gradient.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from nntrain.nn.losses import build_loss
from nntrain.nn.model import Model, build_model
from nntrain.rng import stream
from nntrain.tables import format_table, rule_for
from nntrain.tools.gradcheck import config_input_shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileRow:
    """Median timing of one stage per batch.

    name: "conv2d(out_channels=64, ...)" for a layer, "loss" or "optimizer"; `layer` the index
    (None for loss/optimizer); the optimizer step's time is in `backward_ms` (its forward_ms is 0); `share` the percentage of the summed total of all rows;
    `forward_gflops` / `backward_gflops` None where the FLOP count is unknown; `batch_size` the N timed.
    """

    name: str
    layer: int | None
    output_shape: tuple[int, ...] | None
    forward_ms: float
    backward_ms: float
    share: float
    forward_gflops: float | None
    backward_gflops: float | None
    batch_size: int | None = None

    @property
    def total_ms(self) -> float:
        return self.forward_ms + self.backward_ms


def _gflops(flops: float, ms: float) -> float | None:
    return flops / (ms * 1e6) if flops > 0 and ms > 0 else None


def profile_model(model: Model, loss: Any, x: np.ndarray, labels: np.ndarray, batches: int = 10,
                  warmup: int = 2, optimizer: Any = None) -> list[ProfileRow]:
    """Time every layer's forward and backward (train mode) on the batch (x, labels).

    x: (N, *model.input_shape); loss: forward(z, labels) / backward(); optimizer: anything with
    step(), timed after backward (it updates the model's params, as in training).
    Returns one row per layer in order, then "loss" (its forward in forward_ms, backward in
    backward_ms) and "optimizer" if given.
    """
    if batches < 1 or warmup < 0:
        raise ValueError(f"need batches >= 1 and warmup >= 0, got batches={batches}, warmup={warmup}")
    layers = model.layers
    n_layers = len(layers)
    forward_calls = [k for step in model.plan for k in step.layers]
    backward_calls = model.backward_calls(need_input_grad=False)
    skips_dx = {k for k, need in backward_calls if not need}
    fwd = [[] for _ in range(n_layers + 1)]  # last slot: the loss
    bwd = [[] for _ in range(n_layers + 1)]
    opt_times: list[float] = []
    clock = time.perf_counter
    for b in range(warmup + batches):
        keep = b >= warmup
        h = x
        for k in forward_calls:
            t0 = clock()
            h = layers[k].forward(h, True)
            t1 = clock()
            if keep:
                fwd[k].append(t1 - t0)
        t0 = clock()
        loss.forward(h, labels)
        t1 = clock()
        g = loss.backward()
        t2 = clock()
        if keep:
            fwd[n_layers].append(t1 - t0)
            bwd[n_layers].append(t2 - t1)
        for k, need in backward_calls:
            t0 = clock()
            g = layers[k].backward(g, need)
            t1 = clock()
            if keep:
                bwd[k].append(t1 - t0)
        if optimizer is not None:
            t0 = clock()
            optimizer.step()
            t1 = clock()
            if keep:
                opt_times.append(t1 - t0)

    def ms(samples: list[float]) -> float:
        return 1e3 * statistics.median(samples) if samples else 0.0   # layers backward does not call

    n = x.shape[0]
    moved = {k for step in model.plan if step.swapped for k in step.layers[1:]}   # run after the pool
    stages = []  # (name, layer, output shape, fwd ms, bwd ms, forward flops, backward flops per batch)
    shape = tuple(model.input_shape)
    for k, layer in enumerate(layers):
        flops = n * layer.flops(shape)
        out = model.shapes[k]
        note = " (runs after the pool)" if k in moved else ""
        stages.append((f"{layer.describe()}{note}", k, out, ms(fwd[k]), ms(bwd[k]), flops,
                       flops if k in skips_dx else 2 * flops))
        shape = out
    stages.append(("loss", None, None, ms(fwd[n_layers]), ms(bwd[n_layers]), 0, 0))
    if optimizer is not None:
        stages.append(("optimizer", None, None, 0.0, ms(opt_times), 0, 0))
    total = sum(f + b for _, _, _, f, b, _, _ in stages)
    return [ProfileRow(name, k, out, f, b, 100.0 * (f + b) / total if total > 0 else 0.0,
                       _gflops(flops, f), _gflops(bflops, b), n)
            for name, k, out, f, b, flops, bflops in stages]


def profile_config(cfg: Mapping[str, Any], batches: int = 10, batch_size: int | None = None,
                   warmup: int = 2) -> list[ProfileRow]:
    """Profile the config's model (float32, its seed) on a random batch of the dataset's input shape.

    batch_size: default `train.batch_size` of the config, else 64. An `optimizer` section, if present,
    is built and its step timed too. Data values do not matter for timing, so no data is loaded.
    """
    seed = int(cfg.get("seed", 0) or 0)
    if batch_size is None:
        train = cfg.get("train") or {}
        batch_size = int(train.get("batch_size", 64)) if isinstance(train, Mapping) else 64
    input_shape = config_input_shape(cfg)
    model = build_model(cfg["model"], input_shape, seed=seed, dtype=np.float32)
    loss = build_loss(cfg.get("loss"))
    optimizer = None
    if cfg.get("optimizer"):
        from nntrain.nn.optim import build_optimizer  # only needed when the config has an optimizer
        optimizer = build_optimizer(cfg["optimizer"], list(model.parameters()))
    rng = stream(seed, "timing")
    x = rng.standard_normal((batch_size, *input_shape)).astype(np.float32)
    labels = rng.integers(0, model.output_shape[0], size=batch_size)
    log.debug("profiling %d batches of %d (after %d warm-up)", batches, batch_size, warmup)
    return profile_model(model, loss, x, labels, batches=batches, warmup=warmup, optimizer=optimizer)


def format_profile(rows: Sequence[ProfileRow], batch_size: int | None = None) -> str:
    """Table: stage, output shape, forward ms, backward ms, total ms, share %, forward and backward
    GFLOP/s; then the total per batch and samples/s (batch size from the rows unless given)."""

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    table = format_table(
        ("#", "layer", "output", "fwd ms", "bwd ms", "total ms", "share", "fwd GFLOP/s", "bwd GFLOP/s"),
        [("" if r.layer is None else r.layer, r.name,
          "" if r.output_shape is None else "x".join(map(str, r.output_shape)), f"{r.forward_ms:.3f}",
          f"{r.backward_ms:.3f}", f"{r.total_ms:.3f}", f"{r.share:.1f}%", num(r.forward_gflops, ".1f"),
          num(r.backward_gflops, ".1f")) for r in rows], align="rllrrrrrr", rule=True)
    rule = rule_for(table)
    lines = [table, rule]
    total = sum(r.total_ms for r in rows)
    fwd = sum(r.forward_ms for r in rows)
    summary = f"total {total:.3f} ms per batch (forward {fwd:.3f} ms, backward and step {total - fwd:.3f} ms)"
    batch_size = batch_size or (rows[0].batch_size if rows else None)
    if batch_size and total > 0:
        summary += f", {batch_size / (total / 1e3):,.0f} samples/s"
    lines.append(summary)
    return "\n".join(lines)
