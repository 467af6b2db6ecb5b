"""The fused evaluation forward (nntrain.nn.layers.fused): which layers it groups, and that its outputs equal the
layer-by-layer reference (Model.forward_layers) and PyTorch's eval-mode forward: odd sizes, stride 2,
padding 0-2, one and many input channels (the planar and channels-last columns), batchnorm folded with
real running statistics, ReLU before or after a tiling max-pool, pools that do not tile (left unfused),
residual blocks with projection shortcuts, batch 1, both dtypes, and any thread count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nntrain.config import load_config
from nntrain.nn.layers.fused import ConvStage, LayerStage, compile_chain
from nntrain.nn.model import build_model

REPO = Path(__file__).resolve().parents[2]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def conv(out: int, k=3, stride=1, padding=1, bias=True) -> dict:
    return {"type": "conv2d", "out_channels": out, "kernel_size": k, "stride": stride, "padding": padding,
            "bias": bias}


BN, RELU, POOL = {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}


def with_statistics(model, x: np.ndarray, seed: int = 0):
    """Random gammas and betas, and running statistics that are real batch statistics (a training
    forward with momentum 1, then the weights moved a little), so that folding is really tested."""
    rng = np.random.default_rng(seed)

    def walk(layers):
        for layer in layers:
            yield layer
            for branch in getattr(layer, "branches", {}).values():
                yield from walk(branch)

    for layer in walk(model.layers):
        if layer.type_name == "batchnorm":
            layer.momentum = 1.0
    model.forward(x, train=True)
    for name, p, _ in model.parameters():
        if name.endswith(("gamma", "beta", ".b")):
            p[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("gamma") else rng.normal(0, 0.3, p.shape)
    return model


CHAINS = {
    # spec list, input shape, the stages compile_chain must make (layer types per stage)
    "conv-relu-pool": ([conv(6), RELU, POOL], (1, 10, 14), [["conv2d", "relu", "maxpool2d"]]),
    "conv-pool-relu": ([conv(6), POOL, RELU], (3, 8, 8), [["conv2d", "relu", "maxpool2d"]]),
    "conv-bn-relu": ([conv(5, bias=False), BN, RELU], (7, 9, 7), [["conv2d", "batchnorm", "relu"]]),
    "conv-bn-relu-pool, bias": ([conv(8), BN, RELU, POOL], (4, 10, 6), [["conv2d", "batchnorm", "relu", "maxpool2d"]]),
    "strided conv-bn": ([conv(5, 3, 2, 0), BN], (3, 11, 13), [["conv2d", "batchnorm"]]),
    "padding 2, 5x5": ([conv(4, 5, 1, 2), RELU], (2, 7, 9), [["conv2d", "relu"]]),
    # channels-last columns, at most 32 outputs, stride 1, even output width: two outputs per GEMM row
    "pairs, 5x5": ([conv(7, 5, 1, 2), BN, RELU], (6, 7, 10), [["conv2d", "batchnorm", "relu"]]),
    "pairs, 3x3 then pool": ([conv(32, bias=False), POOL, RELU], (9, 6, 8), [["conv2d", "relu", "maxpool2d"]]),
    # cifar_resnet's order: the batchnorm after the pool runs on the pooled chunk (not folded into W)
    "conv-pool-bn-relu": ([conv(6, bias=False), POOL, BN, RELU], (3, 8, 10),
                          [["conv2d", "maxpool2d", "batchnorm", "relu"]]),
    "pairs, conv-pool-bn": ([conv(32, bias=False), POOL, BN], (9, 6, 8), [["conv2d", "maxpool2d", "batchnorm"]]),
    "conv-relu-pool, then bn": ([conv(5), RELU, POOL, BN], (4, 6, 6),
                                [["conv2d", "relu", "maxpool2d"], ["batchnorm"]]),
    "pool that does not tile": ([conv(4), RELU, POOL], (3, 7, 7), [["conv2d", "relu"], ["maxpool2d"]]),
    "3x3 pool": ([conv(4), {"type": "maxpool2d", "kernel_size": 3}, RELU], (2, 9, 6),
                 [["conv2d", "relu", "maxpool2d"]]),
    "two convs, flat head": ([conv(6), RELU, conv(8, bias=False), BN, POOL, RELU, {"type": "flatten"},
                              {"type": "linear", "out_features": 5}], (3, 8, 8),
                             [["conv2d", "relu"], ["conv2d", "batchnorm", "relu", "maxpool2d"], ["flatten"],
                              ["linear"]]),
    "residual, projection": ([conv(6), BN, RELU,
                              {"type": "residual", "body": [conv(8, stride=2, bias=False), BN, RELU,
                                                            conv(8, bias=False), BN],
                               "shortcut": [conv(8, 1, 2, 0, bias=False), BN]}, RELU,
                              {"type": "global_avgpool"}], (3, 9, 9),
                             [["conv2d", "batchnorm", "relu"], ["residual"], ["relu"], ["global_avgpool"]]),
}


@pytest.mark.parametrize("name", CHAINS)
def test_compile_chain_groups_conv_with_what_follows(name):
    specs, shape, want = CHAINS[name]
    model = build_model(specs, shape)
    assert [[layer.type_name for layer in stage.layers] for stage in model.stages] == want
    # every layer is run by exactly one stage
    ran = [layer for stage in model.stages for layer in stage.layers]
    assert sorted(map(id, ran)) == sorted(map(id, model.layers))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("name", CHAINS)
def test_fused_equals_layer_by_layer(name, batch, dtype):
    specs, shape, _ = CHAINS[name]
    model = build_model(specs, shape, dtype=dtype, threads=2)
    rng = np.random.default_rng(1)
    with_statistics(model, rng.standard_normal((6, *shape)).astype(dtype))
    x = rng.standard_normal((batch, *shape)).astype(dtype)
    want = model.forward_layers(x, train=False)
    got = model.forward(x, train=False)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOL[dtype])
    # a channels-last (N, C, H, W) view gives the same as contiguous NCHW
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(model.forward(xl, train=False), got)


def test_batchnorm_after_the_pool_with_negative_scales():
    """A batchnorm after the pool with some γ < 0: max then scale is not scale then max, so the
    stage must apply it to the pooled values (as the layers do), not fold it into the conv."""
    model = build_model([conv(8, bias=False), POOL, BN, RELU], (5, 6, 6), dtype=np.float64)
    rng = np.random.default_rng(5)
    with_statistics(model, rng.standard_normal((6, 5, 6, 6)))
    model.layers[2].params["gamma"][::2] *= -1
    x = rng.standard_normal((3, 5, 6, 6))
    np.testing.assert_allclose(model.forward(x, train=False), model.forward_layers(x, train=False),
                               **TOL[np.float64])


def test_pair_weights_give_both_neighbours():
    """One row of pair columns times the pair weights = the two adjacent outputs of the plain conv."""
    from nntrain.nn.layers.fused import pair_columns, pair_weights
    rng = np.random.default_rng(7)
    wf = rng.standard_normal((3, 2, 4, 5))          # (kh, kw, C, O)
    xp = rng.standard_normal((2, 5, 7, 4))          # (S, Hp, Wp, C); OH = 3, OW = 6
    cols = pair_columns(xp, (3, 2), (3, 6), True, np.empty((2 * 3 * 3, 3 * 3 * 4 + 1)))
    w2 = pair_weights(wf).reshape(-1, 10)
    y = (cols[:, :-1] @ w2).reshape(2, 3, 6, 5)     # (S, OH, OW, O)
    want = np.einsum("nijabc,abco->nijo", np.stack([np.stack([xp[:, i:i + 3, j:j + 2] for j in range(6)], 1)
                                                    for i in range(3)], 1), wf)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    assert (cols[:, -1] == 1).all()


def test_fused_results_do_not_depend_on_threads():
    specs, shape, _ = CHAINS["two convs, flat head"]
    x = np.random.default_rng(2).standard_normal((37, *shape)).astype(np.float32)
    outs = []
    for threads in (1, 2, 3):
        model = build_model(specs, shape, threads=threads)
        with_statistics(model, x[:8])
        outs.append(model.forward(x, train=False))
        model.close()
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


def test_fused_output_is_fresh_and_input_untouched():
    """Scratch is reused across batches, results are not: an earlier output survives a later forward."""
    specs, shape, _ = CHAINS["conv-bn-relu-pool, bias"]
    model = build_model(specs, shape)
    x1, x2 = (np.random.default_rng(s).standard_normal((3, *shape)).astype(np.float32) for s in (3, 4))
    keep = x1.copy()
    y1 = model.forward(x1)
    y1_copy = y1.copy()
    model.forward(x2)
    np.testing.assert_array_equal(y1, y1_copy)
    np.testing.assert_array_equal(x1, keep)


def test_batchnorm_folding_tracks_the_current_statistics():
    """Folded weights are made from the parameters and running statistics of each call, so training in
    between (which changes both) is seen by the next evaluation."""
    specs, shape, _ = CHAINS["conv-bn-relu"]
    model = build_model(specs, shape)
    x = np.random.default_rng(5).standard_normal((4, *shape)).astype(np.float32)
    before = model.forward(x)
    with_statistics(model, x)
    after = model.forward(x)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, model.forward_layers(x), **TOL[np.float32])


def test_compile_chain_of_nothing_and_of_plain_layers():
    assert compile_chain([]) == []
    model = build_model([{"type": "flatten"}, {"type": "linear", "out_features": 3}], (2, 3, 3))
    assert all(isinstance(s, LayerStage) for s in model.stages)


def torch_twin(torch, layers):
    """The nntrain layer list as a torch.nn.Sequential with the same weights and running statistics
    (the layer types of the shipped conv nets)."""
    nn = torch.nn
    mods = []
    for layer in layers:
        t = layer.type_name
        p = {k: torch.from_numpy(v.copy()) for k, v in {**layer.params, **layer.buffers}.items()}
        if t == "conv2d":
            m = nn.Conv2d(layer.input_shape[0], layer.out_channels, layer.kernel_size, layer.stride,
                          layer.padding, bias=layer.bias).double()
            m.weight.data, m.bias = p["W"], (nn.Parameter(p["b"]) if layer.bias else None)
        elif t == "batchnorm":
            m = (nn.BatchNorm2d if len(layer.input_shape) == 3 else nn.BatchNorm1d)(layer.input_shape[0],
                                                                                  eps=layer.eps).double()
            m.weight.data, m.bias.data = p["gamma"], p["beta"]
            m.running_mean.data, m.running_var.data = p["running_mean"], p["running_var"]
        elif t == "linear":
            m = nn.Linear(*layer.params["W"].shape).double()
            m.weight.data, m.bias.data = p["W"].T.contiguous(), p["b"]
        elif t == "residual":
            body, short = (torch_twin(torch, layer.branches[k]) for k in ("body", "shortcut"))

            class Res(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body, self.short = body, short

                def forward(self, x):
                    return self.body(x) + self.short(x)
            m = Res()
        elif t == "maxpool2d":
            m = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        else:
            m = {"relu": nn.ReLU(), "flatten": nn.Flatten(), "dropout": nn.Identity()}[t]   # eval: dropout is the identity
        mods.append(m)
    return nn.Sequential(*mods)


@pytest.mark.parametrize("config", ["cifar_resnet.yaml", "cnn_bn.yaml", "cifar_cnn.yaml"])
def test_shipped_models_match_torch_in_eval_mode(config):
    """The shipped conv nets with batchnorm statistics, fused, against PyTorch's eval forward of the
    same net with the same weights, in float64."""
    torch = pytest.importorskip("torch")
    cfg = load_config(REPO / "configs" / config)
    shape = (3, 32, 32) if "cifar" in config else (1, 28, 28)
    model = build_model(cfg["model"], shape, dtype=np.float64)
    x = np.random.default_rng(6).standard_normal((3, *shape))
    with_statistics(model, x)
    net = torch_twin(torch, model.layers).eval()
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = model.forward(x, train=False)
    assert any(isinstance(s, ConvStage) for s in model.stages)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
