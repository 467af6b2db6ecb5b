"""Residual blocks: forward and backward against PyTorch 2.13 (float64 rtol 1e-5, float32 1e-4; identity
and projection shortcuts, strides, odd sizes, batch 1, pools in a body, nested blocks, flat inputs);
need_input_grad, parameter and buffer names, state dicts and checkpoints, workers, dropout's Generator,
kink states, the summary, config errors with nested key paths, the memory check, and the bench's
cifar-resnet against its PyTorch twin."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import DTYPES, RTOL, close, readonly
from nntrain.errors import ConfigError, ShapeError
from nntrain.nn.layers import LAYERS
from nntrain.nn.layers.blocks import Block, Residual, backward_calls, leaves, plan_steps
from nntrain.nn.model import build_model

torch = pytest.importorskip("torch")
F = torch.nn.functional

REPO = Path(__file__).resolve().parents[2]


def conv(out: int, k=3, stride=1, padding=1, bias=True, **extra) -> dict:
    return {"type": "conv2d", "out_channels": out, "kernel_size": k, "stride": stride, "padding": padding,
            "bias": bias, **extra}


BN, RELU = {"type": "batchnorm"}, {"type": "relu"}


def basic(c: int, stride: int = 1, projection: bool = False) -> dict:
    """A ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, identity or conv1x1-BN shortcut."""
    block = {"type": "residual", "body": [conv(c, stride=stride, bias=False), BN, RELU, conv(c, bias=False), BN]}
    if projection:
        block["shortcut"] = [conv(c, 1, stride, 0, bias=False), BN]
    return block


def make(spec: dict, input_shape, dtype=np.float64, seed: int = 0):
    """A built layer, its init from a fixed Generator; biases, gammas and betas set to random values so
    that their terms and gradients are really tested."""
    layer = LAYERS.build(spec)
    layer.build(tuple(input_shape), np.dtype(dtype), np.random.default_rng(seed), np.random.default_rng(seed + 1))
    rng = np.random.default_rng(seed + 2)
    for name, p in layer.params.items():
        if name.endswith((".b", ".beta")):
            p[...] = rng.standard_normal(p.shape)
        elif name.endswith(".gamma"):
            p[...] = rng.uniform(0.5, 2.0, p.shape)
    return layer




def run(layer, x: np.ndarray, g_seed: int = 1, need_input_grad: bool = True):
    """Forward read-only x, backward a read-only random grad; neither may change. -> (y, g, dx)."""
    x = readonly(x)
    x_before = x.copy()
    y = layer.forward(x, train=True)
    g = readonly(np.random.default_rng(g_seed).standard_normal(y.shape).astype(x.dtype))
    dx = layer.backward(g, need_input_grad)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(g, np.random.default_rng(g_seed).standard_normal(y.shape).astype(x.dtype))
    return y, g, dx


# --- the same computation in PyTorch, from our layers' options and parameters ----------------------
def torch_layer(layer, tx, tp: dict, prefix: str):
    """Our built `layer` applied to tx in torch; its params are tp[prefix + name] (leaf tensors)."""
    kind = layer.type_name
    if kind == "residual":
        h = torch_chain(layer.branches["body"], tx, tp, prefix + "body.")
        return h + torch_chain(layer.branches["shortcut"], tx, tp, prefix + "shortcut.")
    if kind == "conv2d":
        return F.conv2d(tx, tp[prefix + "W"], tp.get(prefix + "b"), stride=tuple(layer.stride),
                        padding=tuple(layer.padding))
    if kind == "batchnorm":
        return F.batch_norm(tx, None, None, tp[prefix + "gamma"], tp[prefix + "beta"], training=True, eps=layer.eps)
    if kind == "linear":
        y = tx @ tp[prefix + "W"]
        return y + tp[prefix + "b"] if prefix + "b" in tp else y
    simple = {"relu": F.relu, "tanh": torch.tanh, "flatten": lambda t: t.flatten(1),
              "global_avgpool": lambda t: t.mean(dim=(2, 3)),
              "maxpool2d": lambda t: F.max_pool2d(t, layer.kernel_size, layer.stride, layer.padding),
              "avgpool2d": lambda t: F.avg_pool2d(t, layer.kernel_size, layer.stride, layer.padding)}
    return simple[kind](tx)


def torch_chain(layers, tx, tp: dict, prefix: str):
    for j, layer in enumerate(layers):
        tx = torch_layer(layer, tx, tp, f"{prefix}{j}.")
    return tx


def torch_reference(layer, x: np.ndarray, g: np.ndarray):
    """(y, dx, {param name: grad}) of the block in torch, for upstream gradient g."""
    tx = torch.tensor(x, requires_grad=True)
    tp = {name: torch.tensor(p, requires_grad=True) for name, p in layer.params.items()}
    ty = torch_layer(layer, tx, tp, "")
    ty.backward(torch.tensor(g))
    return ty, tx.grad, {name: t.grad for name, t in tp.items()}


# (id, per-sample input shape, batch, spec)
CASES = [
    ("identity", (4, 7, 5), 3, basic(4)),
    ("identity-batch1", (4, 7, 5), 1, basic(4)),
    ("projection-stride2", (3, 9, 7), 2, basic(6, stride=2, projection=True)),
    ("projection-stride-3x2", (2, 11, 8), 2,
     {"type": "residual", "body": [conv(5, 3, (3, 2), 1), RELU, conv(5, (3, 1), 1, (1, 0))],
      "shortcut": [conv(5, 1, (3, 2), 0, bias=False)]}),
    ("pools", (2, 8, 6), 2,          # relu -> maxpool swapped inside the body; avgpool in the shortcut
     {"type": "residual", "body": [conv(4), RELU, {"type": "maxpool2d", "kernel_size": 2}, conv(4)],
      "shortcut": [{"type": "avgpool2d", "kernel_size": 2}, conv(4, 1, 1, 0)]}),
    ("nested", (3, 6, 6), 2,
     {"type": "residual", "body": [
         conv(3), RELU,
         {"type": "residual", "body": [conv(3, bias=False), BN, RELU, {"type": "residual", "body": [conv(3)]}]},
         BN]}),
    ("nested-in-shortcut", (3, 5, 7), 2,
     {"type": "residual", "body": [basic(3)], "shortcut": [basic(3, projection=True)]}),
    ("flat", (6,), 4, {"type": "residual", "body": [{"type": "linear", "out_features": 6}, BN, RELU,
                                                   {"type": "linear", "out_features": 6}]}),
    ("flat-projection-batch1", (5,), 1,
     {"type": "residual", "body": [{"type": "linear", "out_features": 7}, {"type": "tanh"}],
      "shortcut": [{"type": "linear", "out_features": 7, "bias": False}]}),
    ("global-avgpool", (3, 4, 5), 2,
     {"type": "residual", "body": [conv(4), {"type": "global_avgpool"}],
      "shortcut": [{"type": "global_avgpool"}, {"type": "linear", "out_features": 4}]}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, n, spec", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_residual_matches_torch(shape, n, spec, dtype):
    layer = make(spec, shape, dtype)
    x = np.random.default_rng(3).standard_normal((n, *shape)).astype(dtype)
    y, g, dx = run(layer, x)
    assert y.shape == (n, *layer.output_shape(shape))
    ty, tdx, tgrads = torch_reference(layer, x, g)
    close(y, ty, dtype)
    close(dx, tdx, dtype)
    assert set(layer.grads) == set(tgrads) and layer.grads
    for name, grad in layer.grads.items():
        close(grad, tgrads[name], dtype)


def test_residual_with_channels_last_input_and_grad_gives_the_same_result():
    """A conv hands over channels-last views; the block's results do not depend on the layout."""
    layer = make(basic(4, stride=2, projection=True), (3, 6, 5), np.float32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    y1 = layer.forward(x, True)
    g = rng.standard_normal(y1.shape).astype(np.float32)
    dx1 = layer.backward(g)
    grads1 = {k: v.copy() for k, v in layer.grads.items()}
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    g_cl = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(layer.forward(x_cl, True), y1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.backward(g_cl), dx1, rtol=1e-5, atol=1e-5)
    for k, v in layer.grads.items():
        np.testing.assert_allclose(v, grads1[k], rtol=1e-4, atol=1e-4)


def test_output_is_fresh_and_in_the_body_layout():
    """The sum goes into a new array (no operand is written, not even a body output the body keeps,
    as a tanh keeps its y), laid out as the body's output (channels-last after a conv)."""
    layer = make({"type": "residual", "body": [conv(3), {"type": "tanh"}]}, (3, 5, 4))
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4))
    y = layer.forward(x, True)
    tanh = layer.branches["body"][1]
    assert not np.shares_memory(y, tanh.y) and not np.shares_memory(y, x)
    assert np.abs(tanh.y).max() <= 1   # still tanh's own output
    np.testing.assert_array_equal(y, tanh.y + x)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous      # channels-last memory, as the conv's output
    g = np.ones_like(y)
    dx = layer.backward(g)
    assert not np.shares_memory(dx, g) and (g == 1).all()


def test_identity_body_does_not_alias_its_input():
    """A body that hands its input back (dropout at evaluation) still gives a fresh y = 2x."""
    layer = make({"type": "residual", "body": [{"type": "dropout", "p": 0.5}]}, (4,))
    x = readonly(np.arange(8.0).reshape(2, 4))
    y = layer.forward(x, train=False)
    np.testing.assert_array_equal(y, 2 * x)
    assert not np.shares_memory(y, x)


def test_backward_after_an_evaluation_forward_raises():
    layer = make({"type": "residual", "body": [{"type": "dropout", "p": 0.5}]}, (4,))
    x = np.ones((2, 4))
    layer.forward(x, train=False)
    with pytest.raises(RuntimeError, match="train=True"):
        layer.backward(np.ones((2, 4)))
    layer.forward(x, train=True)
    assert layer.backward(np.ones((2, 4))).shape == (2, 4)


# --- need_input_grad -----------------------------------------------------------------------------
def spy_calls(block) -> list[tuple[str, bool]]:
    """Record (child name, need_input_grad) of every child backward call."""
    calls: list[tuple[str, bool]] = []
    for name, child in block.children():
        def spy(grad, need_input_grad=True, name=name, original=child.backward):
            calls.append((name, need_input_grad))
            return original(grad, need_input_grad)
        child.backward = spy
    return calls


def test_backward_without_input_grad_skips_only_work_nobody_needs():
    """need_input_grad=False: each branch stops at its first layer with parameters, which skips its own
    dx; the parameter-free layers before it are not called; the gradients equal a full backward's."""
    spec = {"type": "residual", "body": [RELU, conv(3), RELU, conv(3)],
            "shortcut": [{"type": "avgpool2d", "kernel_size": 1}, conv(3, 1, 1, 0)]}
    layer = make(spec, (2, 5, 4))
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 4))
    _, g, dx = run(layer, x)
    full = {k: v.copy() for k, v in layer.grads.items()}
    calls = spy_calls(layer)
    _, _, none = run(layer, x, need_input_grad=False)
    assert none is None and dx.shape == x.shape
    assert calls == [("body.3", True), ("body.2", True), ("body.1", False), ("shortcut.1", False)]
    for k, v in layer.grads.items():
        np.testing.assert_array_equal(v, full[k])
    assert backward_calls(layer.branches["body"], layer.plans["body"], False) == [(3, True), (2, True), (1, False)]
    assert backward_calls([make(RELU, (3,))], plan_steps([make(RELU, (3,))]), False) == []


@pytest.mark.parametrize("first_is_block", [True, False])
def test_model_passes_need_input_grad_to_a_block_only_where_it_is_first(first_is_block):
    spec = [basic(2, projection=True), {"type": "flatten"}, {"type": "linear", "out_features": 3}]
    if not first_is_block:
        spec = [conv(2, bias=False)] + spec
    model = build_model(spec, (2, 4, 4), dtype=np.float64)
    k = 0 if first_is_block else 1
    calls = spy_calls(model.layers[k])
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4))
    y = model.forward(x, train=True)
    assert model.backward(np.ones_like(y), need_input_grad=False) is None
    assert (k, not first_is_block) in model.backward_calls(need_input_grad=False)
    assert ("body.0", not first_is_block) in calls and ("shortcut.0", not first_is_block) in calls


# --- names, state, summary -------------------------------------------------------------------------
NET = [conv(4, bias=False), BN, RELU, basic(4), RELU,
       {"type": "residual", "body": [conv(6, stride=2, bias=False), BN, RELU, basic(6)],
        "shortcut": [conv(6, 1, 2, 0, bias=False), BN]},
       RELU, {"type": "global_avgpool"}, {"type": "linear", "out_features": 3}]


def test_parameter_and_buffer_names_are_paths():
    model = build_model(NET, (3, 8, 8), dtype=np.float64)
    names = [n for n, _, _ in model.parameters()]
    assert names == ["0.W", "1.gamma", "1.beta",
                     "3.body.0.W", "3.body.1.gamma", "3.body.1.beta", "3.body.3.W", "3.body.4.gamma", "3.body.4.beta",
                     "5.body.0.W", "5.body.1.gamma", "5.body.1.beta",
                     "5.body.3.body.0.W", "5.body.3.body.1.gamma", "5.body.3.body.1.beta",
                     "5.body.3.body.3.W", "5.body.3.body.4.gamma", "5.body.3.body.4.beta",
                     "5.shortcut.0.W", "5.shortcut.1.gamma", "5.shortcut.1.beta", "8.W", "8.b"]
    buffers = dict(model.buffers())
    assert "5.body.3.body.4.running_var" in buffers and "5.shortcut.1.running_mean" in buffers
    assert len(buffers) == 2 * 7
    block = model.layers[5]
    # the block's arrays are its children's own
    inner = block.branches["body"][3].branches["body"][0]
    assert block.params["body.3.body.0.W"] is inner.params["W"] and block.grads["body.3.body.0.W"] is inner.grads["W"]
    assert block.buffers["shortcut.1.running_mean"] is block.branches["shortcut"][1].buffers["running_mean"]
    assert model.num_params() == sum(p.size for _, p, _ in model.parameters())
    assert block.num_params((4, 8, 8)) == sum(p.size for p in block.params.values())


def test_state_dict_and_checkpoint_round_trip(tmp_path):
    """Training moves the batchnorm statistics inside blocks; a checkpoint of them, loaded into a model
    built with another seed, gives the same evaluation outputs."""
    from nntrain.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    a = build_model(NET, (3, 8, 8), seed=1, dtype=np.float32)
    b = build_model(NET, (3, 8, 8), seed=2, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    for _ in range(2):
        a.forward(x, train=True)
    state = a.state_dict()
    assert not np.array_equal(state["5.shortcut.1.running_mean"], 0)
    save_checkpoint(tmp_path / "c.npz", Checkpoint(params=state))
    b.load_state_dict(load_checkpoint(tmp_path / "c.npz").params)
    np.testing.assert_array_equal(b.forward(x), a.forward(x))
    del state["5.body.3.body.0.W"]
    with pytest.raises(Exception, match="5.body.3.body.0.W"):
        b.load_state_dict(state)


def test_summary_lists_children_indented_with_their_shapes_and_counts():
    import re

    model = build_model(NET, (3, 8, 8), dtype=np.float64)
    lines = model.summary().splitlines()

    def cells(line: str) -> list[str]:
        return re.split(r"\s{2,}", line.strip())

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    i = next(k for k, line in enumerate(lines) if line.startswith("5  residual()"))
    assert cells(lines[i]) == ["5", "residual()", "(6, 4, 4)", f"{sum(p.size for p in model.layers[5].params.values()):,}"]
    assert cells(lines[i + 1]) == ["body.0: conv2d(out_channels=6, kernel_size=[3, 3], stride=[2, 2], padding=[1, 1], "
                                   "bias=False)", "(6, 4, 4)", str(6 * 4 * 9)]
    assert cells(lines[i + 4]) == ["body.3: residual()", "(6, 4, 4)", str(2 * (6 * 6 * 9 + 12))]
    assert cells(lines[i + 5])[0].startswith("body.0: conv2d(out_channels=6") and cells(lines[i + 5])[2] == "324"
    assert cells(lines[i + 10]) == ["shortcut: identity", "(6, 4, 4)", "0"]
    assert cells(lines[i + 11]) == ["shortcut.0: conv2d(out_channels=6, kernel_size=[1, 1], stride=[2, 2], bias=False)",
                                    "(6, 4, 4)", "24"]
    assert [indent(lines[i + k]) for k in (1, 4, 5, 10, 11, 12)] == [5, 5, 7, 7, 5, 5]
    assert lines[i + 13].startswith("6  relu()")
    assert lines[-1] == f"total parameters: {model.num_params():,}  (float64)"


# --- workers, the model's Generator, kink states ------------------------------------------------------
def all_layers(layer):
    yield layer
    if isinstance(layer, Block):
        for _, child in layer.children():
            yield from all_layers(child)


def test_workers_and_the_noise_generator_reach_nested_layers():
    spec = [{"type": "residual", "body": [{"type": "linear", "out_features": 5}, {"type": "dropout", "p": 0.5},
                                          {"type": "residual", "body": [{"type": "dropout", "p": 0.3}]}]},
            {"type": "linear", "out_features": 3}]
    model = build_model(spec, (5,), seed=4, dtype=np.float64, threads=2)
    inner = list(all_layers(model.layers[0]))
    assert len(inner) == 5 and all(layer.workers is model.workers for layer in inner)
    dropouts = [layer for layer in inner if layer.type_name == "dropout"]
    assert all(d.rng is model.rng for d in dropouts)
    x = np.ones((6, 5))
    state = model.rng.bit_generator.state
    y = model.forward(x, train=True)
    assert model.rng.bit_generator.state != state          # the masks came from the model's stream
    again = build_model(spec, (5,), seed=4, dtype=np.float64, threads=1)
    np.testing.assert_array_equal(again.forward(x, train=True), y)
    model.close()


def test_worker_threads_give_bit_identical_results(monkeypatch):
    import nntrain.nn.parallel
    monkeypatch.setattr(nntrain.nn.parallel, "MIN_ITEMS_PER_PIECE", 1)   # split even these small arrays

    def one_pass(threads):
        model = build_model(NET, (3, 8, 8), seed=3, dtype=np.float32, threads=threads)
        rng = np.random.default_rng(5)
        x = rng.standard_normal((7, 3, 8, 8)).astype(np.float32)
        y = model.forward(x, train=True)
        dx = model.backward(rng.standard_normal(y.shape).astype(np.float32))
        out = [y, dx] + [g.copy() for _, _, g in model.parameters()] + [model.forward(x)]
        model.close()
        return out

    reference = one_pass(1)
    for a, b in zip(reference, one_pass(3)):
        np.testing.assert_array_equal(a, b)


def test_kink_state_joins_the_childrens():
    layer = make({"type": "residual", "body": [conv(2), RELU, {"type": "maxpool2d", "kernel_size": 2},
                                               {"type": "residual", "body": [{"type": "leaky_relu"}]}],
                  "shortcut": [{"type": "maxpool2d", "kernel_size": 2}, conv(2, 1, 1, 0)]}, (2, 4, 4))
    assert [step.layers for step in layer.plans["body"]] == [(0,), (2, 1), (3,)]
    layer.forward(np.random.default_rng(0).standard_normal((3, 2, 4, 4)), train=True)
    body, short = layer.branches["body"], layer.branches["shortcut"]
    parts = [body[1].kink_state(), body[2].kink_state(), body[3].branches["body"][0].kink_state(),
             short[0].kink_state()]
    np.testing.assert_array_equal(layer.kink_state(), np.concatenate([p.ravel() for p in parts]).astype(np.int64))
    smooth = make({"type": "residual", "body": [conv(2), {"type": "tanh"}]}, (2, 4, 4))
    smooth.forward(np.ones((2, 2, 4, 4)), train=True)
    assert smooth.kink_state() is None


def test_gradcheck_on_nested_blocks_counts_their_kinks_and_names_a_broken_one(monkeypatch):
    from nntrain import build_loss
    from nntrain.tools.gradcheck import format_gradcheck, gradcheck, gradcheck_failed

    spec = [conv(3, weight_decay=0.05), {"type": "residual", "body": [
        conv(3, bias=False), BN, RELU, {"type": "residual", "body": [conv(3, weight_decay=0.05), RELU,
                                                                    {"type": "maxpool2d", "kernel_size": 3,
                                                                     "stride": 1, "padding": 1}]}]},
            {"type": "global_avgpool"}, {"type": "linear", "out_features": 3}]
    model = build_model(spec, (2, 5, 5), seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((4, 2, 5, 5)), rng.integers(0, 3, size=4)
    rows = gradcheck(model, build_loss(None), x, labels, full=True, rng=np.random.default_rng(0))
    assert not gradcheck_failed(rows), format_gradcheck(rows)
    assert {r.name for r in rows} == {"input"} | {n for n, _, _ in model.parameters()}
    inner = model.layers[1].branches["body"][3].branches["body"][0]
    real = inner.backward

    def broken(grad, need_input_grad=True):
        dx = real(grad, need_input_grad)
        inner.grads["W"] *= 1.01
        return dx

    monkeypatch.setattr(inner, "backward", broken)
    rows = gradcheck(model, build_loss(None), x, labels, rng=np.random.default_rng(0))
    assert [r.name for r in gradcheck_failed(rows)] == ["1.body.3.body.0.W"], format_gradcheck(rows)


# --- config --------------------------------------------------------------------------------------------
def cfg(model: list) -> dict:
    return {"name": "t", "data": {"dataset": "cifar10"}, "model": model, "optimizer": {"type": "sgd", "lr": 0.1}}


HEAD = [{"type": "global_avgpool"}, {"type": "linear", "out_features": 10}]


@pytest.mark.parametrize("model, path, message", [
    ([conv(32), basic(64, stride=2)] + HEAD, "model[1].shortcut",
     "body gives (64, 16, 16), the identity shortcut gives (32, 32, 32)"),
    ([conv(32), {**basic(64, stride=2), "shortcut": [conv(64, 1, 1, 0)]}] + HEAD, "model[1].shortcut",
     "body gives (64, 16, 16), shortcut gives (64, 32, 32)"),
    ([conv(32), {"type": "residual", "body": [conv(32), {"type": "conv2d", "out_channels": 0, "kernel_size": 3}]}]
     + HEAD, "model[1].body[1].out_channels", "got 0"),
    ([conv(32), {"type": "residual", "body": [RELU, {"type": "residual", "body": [conv(32, 40)]}]}] + HEAD,
     "model[1].body[1].body[0].kernel_size", "larger than the padded input"),
    ([conv(32), {"type": "residual", "body": [RELU], "shortcut": [{"type": "reluu"}]}] + HEAD,
     "model[1].shortcut[0].type", "did you mean 'relu'"),
    ([conv(32), {"type": "residual", "body": []}] + HEAD, "model[1].body", "got an empty list"),
    ([conv(32), {"type": "residual", "body": {"type": "relu"}}] + HEAD, "model[1].body", "expected a non-empty list"),
    ([conv(32), {"type": "residual"}] + HEAD, "model[1].body", "missing required option 'body'"),
    ([conv(32), {"type": "residual", "body": [RELU], "bodyy": []}] + HEAD, "model[1].bodyy", "unknown key"),
    ([conv(32), {"type": "residual", "body": [{"type": "linear", "out_features": 3}]}] + HEAD,
     "model[1].body[0]", "add {type: flatten}"),
])
def test_config_errors_carry_the_nested_key_path(model, path, message):
    from nntrain.config import validate_config

    with pytest.raises(ConfigError) as e:
        validate_config(cfg(model))
    assert e.value.path == path and message in e.value.message, str(e.value)


def test_shape_mismatch_suggests_a_projection_shortcut_that_works():
    from nntrain.config import validate_config

    bad = [conv(32), basic(64, stride=2)] + HEAD
    with pytest.raises(ShapeError) as e:
        validate_config(cfg(bad))
    hint = e.value.message.split("shortcut: ", 1)[1]
    fixed = [conv(32), {**basic(64, stride=2), "shortcut": yaml.safe_load(hint)}] + HEAD
    assert validate_config(cfg(fixed))["model"][1]["shortcut"][0]["stride"] == [2, 2]


def test_config_file_error_names_the_line_and_resolves_nested_defaults(tmp_path):
    from nntrain.config import load_config

    text = ("name: t\ndata: {dataset: cifar10}\noptimizer: {type: sgd, lr: 0.1}\nmodel:\n"
            "  - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n"
            "  - type: residual\n    body:\n      - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n"
            "      - {type: batchnorm, momentum: 2}\n"
            "  - {type: global_avgpool}\n  - {type: linear, out_features: 10}\n")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.path == "model[1].body[1].momentum" and e.value.line == 9
    resolved = load_config(path, ["model[1].body[1].momentum=0.2"])
    block = resolved["model"][1]
    assert block["shortcut"] == [] and block["body"][1] == {"type": "batchnorm", "momentum": 0.2, "eps": 1e-5}
    assert block["body"][0]["stride"] == [1, 1]


def test_memory_check_names_the_largest_layer_inside_a_block():
    from nntrain.config.schema import validate

    model = [{"type": "flatten"}, {"type": "linear", "out_features": 10},
             {"type": "residual", "body": [{"type": "linear", "out_features": 2_000_000},
                                           {"type": "linear", "out_features": 10}]}]
    with pytest.raises(ConfigError) as e:
        validate({**cfg(model), "data": {"dataset": "mnist-mini"}}, available_memory=10 ** 8)
    assert e.value.path == "model[2].body[0]" and "linear model[2].body[0] alone has 22,000,000" in e.value.message
    layer = LAYERS.build(LAYERS.resolve(model[2], "model[2]"))
    assert [p for p, _, _ in leaves(layer, (10,), "model[2]")] == ["model[2].body[0]", "model[2].body[1]"]
    assert layer.num_params((10,)) == 22_000_000 + 20_000_010


def test_describe_and_resolved_spec():
    spec = LAYERS.resolve({"type": "residual", "body": [{"type": "relu"}], "shortcut": None}, "m")
    assert spec == {"type": "residual", "body": [{"type": "relu"}], "shortcut": []}
    assert LAYERS.resolve(spec, "m") is spec
    layer = LAYERS.build(spec)
    assert isinstance(layer, Residual) and layer.describe() == "residual()"
    assert layer.output_shape((3, 4, 4)) == (3, 4, 4)


# --- the bench's cifar-resnet ---------------------------------------------------------------------
def test_bench_cifar_resnet_is_the_same_net_in_both_frameworks(monkeypatch):
    """bench/configs/cifar-resnet.yaml and bench.torch_worker's net: equal parameter counts and shapes
    in the same order, and, with nntrain's weights copied over, the same training-mode outputs (one
    batch); configs/cifar_resnet.yaml has the same net."""
    from nntrain.config import load_config

    monkeypatch.syspath_prepend(str(REPO))
    from bench.torch_worker import build_net
    from bench.workloads import WORKLOADS

    wl = WORKLOADS["cifar-resnet"]
    model_spec = load_config(wl.config)["model"]
    assert [s["type"] for s in load_config(REPO / "configs" / "cifar_resnet.yaml")["model"]] == \
        [s["type"] for s in model_spec]
    model = build_model(model_spec, (3, 32, 32), seed=0, dtype=np.float64)
    net = build_net("cifar-resnet").double()
    ours, theirs = list(model.parameters()), list(net.parameters())
    assert model.num_params() == sum(p.numel() for p in theirs) == 1_646_634
    assert len(ours) == len(theirs)
    with torch.no_grad():
        for (name, p, _), t in zip(ours, theirs):
            value = p.T if name.endswith("W") and p.ndim == 2 else p   # linear W is (in, out) here
            assert tuple(value.shape) == tuple(t.shape), name
            t.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    net.train()
    np.testing.assert_allclose(model.forward(x, train=True), net(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-6, atol=1e-8)
