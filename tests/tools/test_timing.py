"""Per-layer profile (`nntrain time`): a row per layer plus loss (and optimizer), positive times,
shares summing to 100 %, GFLOP/s where a FLOP count is known, and a table naming every layer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nntrain import build_loss, build_model
from nntrain.tools.timing import GemmPeak, ProfileRow, format_profile, gemm_peak, profile_config, profile_model

SPEC = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "linear", "out_features": 16},
        {"type": "relu"},
        {"type": "linear", "out_features": 10}]


def small_model():
    model = build_model(SPEC, (1, 12, 12), seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 12, 12)).astype(np.float32)
    labels = rng.integers(0, 10, size=8)
    return model, x, labels


def test_rows_cover_every_layer_with_positive_times_and_shares_summing_to_100():
    model, x, labels = small_model()
    rows = profile_model(model, build_loss(None), x, labels, batches=3, warmup=1)
    assert [r.layer for r in rows] == list(range(len(SPEC))) + [None]
    assert rows[-1].name == "loss"
    for r, layer, shape in zip(rows, model.layers, model.shapes):
        assert r.name.startswith(layer.type_name)
        assert r.output_shape == shape
    assert all(r.forward_ms > 0 and r.backward_ms > 0 for r in rows)
    assert math.isclose(sum(r.share for r in rows), 100.0, rel_tol=1e-9)
    assert all(math.isclose(r.share, 100 * r.total_ms / sum(q.total_ms for q in rows)) for r in rows)


def test_layers_run_in_training_order():
    """As Model.forward/backward in training: the relu before a maxpool runs after it (and is named so),
    and the first layer is told it needs no input gradient (and returns none)."""
    model, x, labels = small_model()
    forward_calls, backward_calls = [], []
    for k, layer in enumerate(model.layers):
        def fwd(h, train=False, k=k, original=layer.forward):
            forward_calls.append(k)
            return original(h, train)

        def bwd(g, need_input_grad=True, k=k, original=layer.backward):
            dx = original(g, need_input_grad)
            backward_calls.append((k, need_input_grad, dx is None))
            return dx

        layer.forward, layer.backward = fwd, bwd
    rows = profile_model(model, build_loss(None), x, labels, batches=2, warmup=0)
    assert forward_calls == [0, 2, 1, 3, 4, 5, 6] * 2
    one_batch = [(6, True, False), (5, True, False), (4, True, False), (3, True, False), (1, True, False),
                 (2, True, False), (0, False, True)]
    assert backward_calls == one_batch * 2
    assert rows[1].name.endswith("(runs after the pool)") and "after" not in rows[5].name
    assert all("after" not in r.name for r in rows if r.layer != 1)


def test_gflops_only_where_flops_are_known():
    model, x, labels = small_model()
    rows = profile_model(model, build_loss(None), x, labels, batches=2, warmup=0)
    shapes = [model.input_shape] + model.shapes[:-1]
    for r, layer, shape in zip(rows, model.layers, shapes):
        flops = layer.flops(shape)
        if flops:
            # forward GFLOP/s = N·flops / forward time; backward counted as 2× the forward FLOPs, 1× for
            # the first layer (as in training, it computes no input gradient)
            factor = 1 if r.layer == 0 else 2
            assert math.isclose(r.forward_gflops, x.shape[0] * flops / (r.forward_ms * 1e6), rel_tol=1e-9)
            assert math.isclose(r.backward_gflops, factor * x.shape[0] * flops / (r.backward_ms * 1e6), rel_tol=1e-9)
        else:
            assert r.forward_gflops is None and r.backward_gflops is None
    assert rows[-1].forward_gflops is None  # the loss has no FLOP count
    assert any(r.forward_gflops for r in rows)  # linear (at least) counts its FLOPs


def test_optimizer_step_is_timed_and_applied():
    pytest.importorskip("nntrain.nn.optim")
    from nntrain.nn.optim import build_optimizer

    model, x, labels = small_model()
    w_before = model.layers[0].params["W"].copy()
    opt = build_optimizer({"type": "sgd", "lr": 0.1}, list(model.parameters()))
    rows = profile_model(model, build_loss(None), x, labels, batches=2, warmup=1, optimizer=opt)
    assert rows[-1].name == "optimizer" and rows[-1].backward_ms > 0 and rows[-1].forward_ms == 0
    assert math.isclose(sum(r.share for r in rows), 100.0, rel_tol=1e-9)
    assert not np.array_equal(model.layers[0].params["W"], w_before)  # 3 real steps were taken


def test_bad_batch_counts_are_rejected():
    model, x, labels = small_model()
    with pytest.raises(ValueError, match="batches"):
        profile_model(model, build_loss(None), x, labels, batches=0)


def test_profile_config_uses_the_config_batch_size_and_format_names_every_layer():
    cfg = {"seed": 1, "data": {"dataset": "mnist-mini"}, "model": SPEC,
           "loss": {"type": "softmax_cross_entropy"}, "train": {"batch_size": 5}}
    rows = profile_config(cfg, batches=2, warmup=0)
    assert len(rows) == len(SPEC) + 1
    assert rows[0].output_shape == (4, 28, 28)
    assert rows[0].forward_gflops is None or rows[0].forward_gflops > 0
    assert all(r.batch_size == 5 for r in rows)
    text = format_profile(rows)
    lines = text.splitlines()
    assert "fwd ms" in lines[0] and "share" in lines[0] and "GFLOP/s" in lines[0]
    for r in rows:   # index column, then the name: "10 conv2d..." lines up under " 9 relu()"
        assert any(r.name in line for line in lines), r.name
    starts = {line.index(r.name) for r in rows for line in lines if r.name in line}
    assert len(starts) == 1, "every name starts in the same column"
    total = sum(r.total_ms for r in rows)
    assert lines[-1].startswith("total ") and f"{5 / (total / 1e3):,.0f} samples/s" in lines[-1]


def test_format_profile_shows_numbers_and_dashes():
    rows = [ProfileRow("linear(out_features=10)", 0, (10,), 1.5, 3.0, 75.0, 2.0, 4.0),
            ProfileRow("loss", None, None, 0.5, 1.0, 25.0, None, None)]
    text = format_profile(rows)
    lines = text.splitlines()
    row0 = next(line for line in lines if line.split()[:2] == ["0", "linear(out_features=10)"])
    assert "1.500" in row0 and "3.000" in row0 and "4.500" in row0 and "75.0%" in row0
    loss_row = next(line for line in lines if line.split()[0] == "loss")
    assert loss_row.split()[-2:] == ["-", "-"]
    assert lines[-1].startswith("total 6.000 ms per batch (forward 2.000 ms")
    assert "samples/s" not in lines[-1]  # no batch size known
    assert format_profile(rows, batch_size=12).endswith(", 2,000 samples/s")


def test_gemm_peak_is_a_positive_rate_of_the_product_it_names():
    peak = gemm_peak(size=64, repeats=2, threads=3)
    assert peak.size == 64 and peak.threads == 3 and peak.gflops > 0


def test_rows_carry_their_share_of_the_gemm_peak_and_the_summary_says_where_time_goes():
    model, x, labels = small_model()
    peak = GemmPeak(gflops=50.0, size=1024, threads=2)
    rows = profile_model(model, build_loss(None), x, labels, batches=2, warmup=0, peak=peak)
    for r in rows:
        if r.flops > 0:   # share = (forward + backward FLOPs / total time) / peak
            assert r.peak_share == pytest.approx(100 * r.flops / (r.total_ms * 1e6) / 50.0)
        else:
            assert r.peak_share is None
    text = format_profile(rows, peak=peak)
    lines = text.splitlines()
    assert "of peak" in lines[0]
    assert lines[-3] == "GEMM peak: 50.0 GFLOP/s (float32 1024x1024 product, 2 BLAS threads)"
    flops, total = sum(r.flops for r in rows), sum(r.total_ms for r in rows)
    assert lines[-2].startswith(f"the step: {flops / 1e9:.2f} GFLOP in {total:.1f} ms")
    assert f"{100 * flops / (total * 1e6) / 50.0:.0f}% of peak" in lines[-2]
    gemm_ms = sum(r.total_ms for r in rows if r.flops > 0)
    assert lines[-1].startswith(f"layers with matrix products: {gemm_ms:.1f} ms")
    assert f"everything else (element-wise, pooling, loss, optimizer): {total - gemm_ms:.1f} ms" in lines[-1]
    assert "of peak" not in format_profile(rows)   # no peak given: the table as before
