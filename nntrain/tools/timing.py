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

Beside each layer's GFLOP/s stands its share of the machine's GEMM peak: the GFLOP/s of one large square
float32 matrix product (`gemm_peak`, measured once per profile with the same BLAS and thread count), the
most the arithmetic of these layers could run at. The closing lines give the whole step's share and how
its time divides between layers with matrix products and the rest (element-wise layers, pooling, loss,
optimizer): the time that is not arithmetic.
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
    flops: float = 0.0                  # forward + backward FLOPs per batch (0: none known)
    peak_share: float | None = None     # (flops / total time) / GEMM peak, in percent

    @property
    def total_ms(self) -> float:
        return self.forward_ms + self.backward_ms


@dataclass(frozen=True)
class GemmPeak:
    """GFLOP/s of an (n x n) @ (n x n) float32 product on `threads` BLAS threads (best of `repeats`)."""

    gflops: float
    size: int
    threads: int


def gemm_peak(size: int = 1024, repeats: int = 5, threads: int | None = None) -> GemmPeak:
    """Measure the BLAS's float32 GEMM speed: the best of `repeats` products C = A·B of (size x size)
    matrices (2·size³ FLOPs each) after one warm-up, with the BLAS at its current thread count (what
    `nntrain --threads N` set). The best, not the median: the peak is what the hardware allows, and a
    slower repeat only measures a busy machine. `threads` is recorded as given (default: the BLAS's)."""
    from nntrain.nn.parallel import blas_threads

    rng = stream(0, "timing")
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty((size, size), dtype=np.float32)
    np.matmul(a, b, out=c)
    best = min(_seconds(lambda: np.matmul(a, b, out=c)) for _ in range(max(1, repeats)))
    return GemmPeak(2.0 * size ** 3 / best / 1e9, size, blas_threads() if threads is None else threads)


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _gflops(flops: float, ms: float) -> float | None:
    return flops / (ms * 1e6) if flops > 0 and ms > 0 else None


def profile_model(model: Model, loss: Any, x: np.ndarray, labels: np.ndarray, batches: int = 10,
                  warmup: int = 2, optimizer: Any = None, peak: GemmPeak | None = None) -> list[ProfileRow]:
    """Time every layer's forward and backward (train mode) on the batch (x, labels).

    x: (N, *model.input_shape); loss: forward(z, labels) / backward(); optimizer: anything with
    step(), timed after backward (it updates the model's params, as in training).
    Returns one row per layer in order, then "loss" (its forward in forward_ms, backward in
    backward_ms) and "optimizer" if given; with `peak`, each row with FLOPs carries its share of it.
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

    def share(flops: float, ms_total: float) -> float | None:
        rate = _gflops(flops, ms_total)
        return None if peak is None or rate is None else 100.0 * rate / peak.gflops

    return [ProfileRow(name, k, out, f, b, 100.0 * (f + b) / total if total > 0 else 0.0,
                       _gflops(flops, f), _gflops(bflops, b), n, float(flops + bflops), share(flops + bflops, f + b))
            for name, k, out, f, b, flops, bflops in stages]


def profile_config(cfg: Mapping[str, Any], batches: int = 10, batch_size: int | None = None,
                   warmup: int = 2, peak: GemmPeak | None = None) -> list[ProfileRow]:
    """Profile the config's model (float32, its seed) on a random batch of the dataset's input shape
    (with `peak`, the GEMM peak the rows' shares are of).

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
    return profile_model(model, loss, x, labels, batches=batches, warmup=warmup, optimizer=optimizer, peak=peak)


def format_profile(rows: Sequence[ProfileRow], batch_size: int | None = None, peak: GemmPeak | None = None) -> str:
    """Table: stage, output shape, forward ms, backward ms, total ms, share %, forward and backward
    GFLOP/s (and with `peak`, the stage's share of the GEMM peak); then the total per batch and samples/s
    (batch size from the rows unless given), and with `peak` where the step's time goes."""

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    header = ["#", "layer", "output", "fwd ms", "bwd ms", "total ms", "share", "fwd GFLOP/s", "bwd GFLOP/s"]
    body = [["" if r.layer is None else r.layer, r.name,
             "" if r.output_shape is None else "x".join(map(str, r.output_shape)), f"{r.forward_ms:.3f}",
             f"{r.backward_ms:.3f}", f"{r.total_ms:.3f}", f"{r.share:.1f}%", num(r.forward_gflops, ".1f"),
             num(r.backward_gflops, ".1f")] for r in rows]
    if peak is not None:
        header.append("of peak")
        for line, r in zip(body, rows):
            line.append(num(r.peak_share, ".0f") + ("%" if r.peak_share is not None else ""))
    table = format_table(header, body, align="rll" + "r" * (len(header) - 3), rule=True)
    rule = rule_for(table)
    lines = [table, rule]
    total = sum(r.total_ms for r in rows)
    fwd = sum(r.forward_ms for r in rows)
    summary = f"total {total:.3f} ms per batch (forward {fwd:.3f} ms, backward and step {total - fwd:.3f} ms)"
    batch_size = batch_size or (rows[0].batch_size if rows else None)
    if batch_size and total > 0:
        summary += f", {batch_size / (total / 1e3):,.0f} samples/s"
    lines.append(summary)
    if peak is not None:
        lines += peak_summary(rows, peak)
    return "\n".join(lines)


def peak_summary(rows: Sequence[ProfileRow], peak: GemmPeak) -> list[str]:
    """Where the step's time goes, against the GEMM peak: the whole step's FLOP rate and share of the
    peak, the time of the stages with matrix products (and their own rate), and the rest."""
    total = sum(r.total_ms for r in rows)
    flops = sum(r.flops for r in rows)
    gemm_ms = sum(r.total_ms for r in rows if r.flops > 0)
    out = [f"GEMM peak: {peak.gflops:.1f} GFLOP/s (float32 {peak.size}x{peak.size} product, "
           f"{peak.threads} BLAS thread{'s' if peak.threads != 1 else ''})"]
    if total > 0 and flops > 0:
        rate = flops / (total * 1e6)
        floor_ms = flops / (peak.gflops * 1e6)
        out.append(f"the step: {flops / 1e9:.2f} GFLOP in {total:.1f} ms = {rate:.1f} GFLOP/s, "
                   f"{100 * rate / peak.gflops:.0f}% of peak (at peak it would take {floor_ms:.1f} ms)")
        out.append(f"layers with matrix products: {gemm_ms:.1f} ms ({100 * gemm_ms / total:.0f}%, "
                   f"{flops / (gemm_ms * 1e6):.1f} GFLOP/s, {100 * flops / (gemm_ms * 1e6) / peak.gflops:.0f}% "
                   f"of peak); everything else (element-wise, pooling, loss, optimizer): "
                   f"{total - gemm_ms:.1f} ms ({100 * (total - gemm_ms) / total:.0f}%)")
    return out
