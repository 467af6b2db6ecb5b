"""Every layer's forward and backward (input grad and each param grad) against PyTorch 2.13, in
float64 (rtol 1e-5) and float32 (rtol 1e-4); plus the loop references, dtypes, untouched inputs,
dropout statistics, batchnorm running statistics and shape errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DTYPES, RTOL, close, readonly
from nntrain.errors import ConfigError, ShapeError
from nntrain.nn.layers import LAYERS

try:
    import reference
except ImportError:  # tests/ imported as a package
    from tests import reference

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def make(spec: dict, input_shape, dtype=np.float64, seed: int = 0):
    """A built layer from a YAML-like spec, its init drawn from a fixed Generator."""
    layer = LAYERS.build(spec)
    layer.build(tuple(input_shape), np.dtype(dtype), np.random.default_rng(seed), np.random.default_rng(seed + 1))
    return layer




def run(layer, x: np.ndarray, g_seed: int = 1, train: bool = True):
    """Forward read-only x, backward a read-only random grad; check neither was modified. -> (y, g, dx)."""
    x = readonly(x)
    x_before = x.copy()
    y = layer.forward(x, train=train)
    g = readonly(np.random.default_rng(g_seed).standard_normal(y.shape).astype(x.dtype))
    g_before = g.copy()
    dx = layer.backward(g)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(g, g_before)
    return y, g, dx


def torch_fwd_bwd(fn, x: np.ndarray, g: np.ndarray, *params: np.ndarray):
    """y = fn(x, *params) in torch; returns (y, dx, [dparam...]) for upstream gradient g."""
    tx = torch.tensor(x, requires_grad=True)
    tps = [torch.tensor(p, requires_grad=True) for p in params]
    ty = fn(tx, *tps)
    ty.backward(torch.tensor(g))
    return ty, tx.grad, [p.grad for p in tps]


# --- conv2d ------------------------------------------------------------------------------------
# (N, C, H, W, out, kernel, stride, padding): batch 1, odd sizes, non-square kernels, strides 1-3,
# padding 0/1/2, channels 1/3/7.
CONV_CASES = [
    (1, 1, 5, 5, 2, 3, 1, 0),
    (2, 3, 7, 9, 4, (3, 2), (2, 3), (1, 2)),
    (3, 7, 11, 6, 5, (2, 3), 3, 2),
    (1, 3, 8, 8, 1, 1, 2, 0),
    (4, 1, 9, 7, 3, (5, 1), (1, 2), (2, 0)),
    (2, 7, 6, 5, 7, 3, 2, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_matches_torch(case, dtype, bias):
    n, c, h, w, o, k, s, p = case
    layer = make({"type": "conv2d", "out_channels": o, "kernel_size": k, "stride": s, "padding": p,
                  "bias": bias, "init": "he_uniform"}, (c, h, w), dtype)
    if bias:  # a non-zero bias, so that its gradient and forward term are really tested
        layer.params["b"][...] = np.random.default_rng(3).standard_normal(o)
    x = np.random.default_rng(2).standard_normal((n, c, h, w)).astype(dtype)
    y, g, dx = run(layer, x)
    assert y.shape == (n, *layer.output_shape((c, h, w)))
    params = [layer.params["W"]] + ([layer.params["b"]] if bias else [])
    ty, tdx, tgrads = torch_fwd_bwd(
        lambda tx, tw, *tb: F.conv2d(tx, tw, tb[0] if tb else None, stride=layer.stride, padding=layer.padding),
        x, g, *params)
    close(y, ty, dtype)
    close(dx, tdx, dtype)
    close(layer.grads["W"], tgrads[0], dtype)
    if bias:
        close(layer.grads["b"], tgrads[1], dtype)


@pytest.mark.parametrize("case", CONV_CASES[:4])
def test_conv2d_matches_loop_reference(case):
    n, c, h, w, o, k, s, p = case
    layer = make({"type": "conv2d", "out_channels": o, "kernel_size": k, "stride": s, "padding": p}, (c, h, w))
    layer.params["b"][...] = np.arange(o)
    x = np.random.default_rng(5).standard_normal((n, c, h, w))
    y, g, dx = run(layer, x)
    np.testing.assert_allclose(y, reference.conv2d_forward(x, layer.params["W"], layer.params["b"],
                                                           layer.stride, layer.padding), rtol=1e-10, atol=1e-12)
    rdx, rdw, rdb = reference.conv2d_backward(x, layer.params["W"], g, layer.stride, layer.padding)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], rdw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], rdb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel, stride, padding, transposed", [
    ((3, 3), 1, 1, True), ((3, 3), 1, 0, True), ((3, 2), 1, (2, 1), True), ((5, 5), 1, 2, True),
    ((1, 1), 1, 1, False),   # padding > kernel - 1: dx by col2im
    ((3, 3), 2, 1, False),   # stride 2: dx by col2im
])
def test_conv2d_input_gradient_paths_match_loop_reference(monkeypatch, kernel, stride, padding, transposed):
    """dx takes the flipped-kernel convolution of the padded gradient for stride 1 (padding < kernel)
    and col2im otherwise; both equal the loop reference, the batch of 3 in uneven chunks (2 + 1)."""
    import nntrain.nn.layers.conv as conv
    monkeypatch.setattr(conv, "samples_per_chunk", lambda n, sample_bytes: 2)
    layer = make({"type": "conv2d", "out_channels": 6, "kernel_size": kernel, "stride": stride,
                  "padding": padding}, (5, 9, 8))
    x = np.random.default_rng(2).standard_normal((3, 5, 9, 8))
    y, g, dx = run(layer, x)
    rdx, rdw, _ = reference.conv2d_backward(x, layer.params["W"], g, layer.stride, layer.padding)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], rdw, rtol=1e-10, atol=1e-12)
    assert (("padded_grad", 0) in layer.scratch) == transposed


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 7), h=st.integers(1, 9), w=st.integers(1, 9),
       o=st.integers(1, 4), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2))
def test_conv2d_random_shapes_match_torch(n, c, h, w, o, kh, kw, sh, sw, ph, pw):
    spec = {"type": "conv2d", "out_channels": o, "kernel_size": [kh, kw], "stride": [sh, sw], "padding": [ph, pw]}
    if kh > h + 2 * ph or kw > w + 2 * pw:
        with pytest.raises(ShapeError):
            make(spec, (c, h, w))
        return
    layer = make(spec, (c, h, w))
    x = np.random.default_rng(n * 100 + h).standard_normal((n, c, h, w))
    y, g, dx = run(layer, x)
    ty, tdx, (tdw, tdb) = torch_fwd_bwd(
        lambda tx, tw, tb: F.conv2d(tx, tw, tb, stride=(sh, sw), padding=(ph, pw)), x, g,
        layer.params["W"], layer.params["b"])
    for ours, ref in ((y, ty), (dx, tdx), (layer.grads["W"], tdw), (layer.grads["b"], tdb)):
        close(ours, ref, np.float64)


@pytest.mark.parametrize("c", [3, 7])   # both column layouts (planar for few channels)
def test_conv2d_channels_last_input_and_grad_give_same_result(c):
    """The conv returns a channels-last view; feeding such views (input and grad) must not change results."""
    layer = make({"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, (c, 6, 5), np.float32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c, 6, 5)).astype(np.float32)
    g = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    y1 = layer.forward(x, True)
    dx1, dw1 = layer.backward(g), layer.grads["W"].copy()
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    g_cl = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(layer.forward(x_cl, True), y1)
    np.testing.assert_array_equal(layer.backward(g_cl), dx1)
    np.testing.assert_array_equal(layer.grads["W"], dw1)


def test_conv2d_weight_decay_and_reused_buffers():
    """dW gets λW added; a second batch of another size reuses nothing stale."""
    layer = make({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "weight_decay": 0.5}, (1, 5, 5))
    rng = np.random.default_rng(0)
    for n in (3, 1, 3):
        x = rng.standard_normal((n, 1, 5, 5))
        y, g, dx = run(layer, x)
        ty, tdx, (tdw, _) = torch_fwd_bwd(lambda tx, tw, tb: F.conv2d(tx, tw, tb), x, g,
                                          layer.params["W"], layer.params["b"])
        close(y, ty, np.float64)
        close(dx, tdx, np.float64)
        close(layer.grads["W"], tdw.numpy() + 0.5 * layer.params["W"], np.float64)


def test_conv2d_backward_without_input_grad():
    layer = make({"type": "conv2d", "out_channels": 2, "kernel_size": 3}, (1, 5, 5))
    x = np.random.default_rng(0).standard_normal((2, 1, 5, 5))
    y = layer.forward(x, True)
    assert layer.backward(np.ones_like(y), need_input_grad=False) is None
    _, _, (tdw, _) = torch_fwd_bwd(lambda tx, tw, tb: F.conv2d(tx, tw, tb), x, np.ones_like(y),
                                   layer.params["W"], layer.params["b"])
    close(layer.grads["W"], tdw, np.float64)


def test_linear_matches_torch_and_backward_without_input_grad():
    for dtype in DTYPES:
        layer = make({"type": "linear", "out_features": 5, "weight_decay": 0.1}, (7,), dtype)
        layer.params["b"][...] = np.arange(5)
        x = np.random.default_rng(0).standard_normal((3, 7)).astype(dtype)
        y, g, dx = run(layer, x)
        ty, tdx, (tdw, tdb) = torch_fwd_bwd(lambda tx, tw, tb: tx @ tw + tb, x, g, layer.params["W"], layer.params["b"])
        close(y, ty, dtype)
        close(dx, tdx, dtype)
        close(layer.grads["W"], tdw.numpy() + dtype(0.1) * layer.params["W"], dtype)
        close(layer.grads["b"], tdb, dtype)
        layer.forward(x, True)
        assert layer.backward(g, need_input_grad=False) is None
        close(layer.grads["W"], tdw.numpy() + dtype(0.1) * layer.params["W"], dtype)
        close(layer.grads["b"], tdb, dtype)


def test_conv2d_init_fan_in_and_flops():
    layer = make({"type": "conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1}, (32, 14, 14))
    assert layer.params["W"].shape == (64, 32, 3, 3) and layer.params["b"].shape == (64,)
    assert abs(layer.params["W"].std() - np.sqrt(2 / (32 * 9))) < 0.05 * np.sqrt(2 / (32 * 9))
    assert layer.flops((32, 14, 14)) == 2 * 64 * 14 * 14 * 32 * 9
    lin = make({"type": "linear", "out_features": 10}, (100,))
    assert lin.flops((100,)) == 2 * 100 * 10


@pytest.mark.parametrize("spec, shape, match", [
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 5}, (1, 4, 4), "5x5 is larger than the padded input 4x4"),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": [3, 6], "padding": 1}, (1, 9, 3), "3x6"),
    ({"type": "maxpool2d", "kernel_size": 3}, (1, 2, 2), "larger than the padded input 2x2"),
    ({"type": "avgpool2d", "kernel_size": [1, 4]}, (1, 5, 3), "larger than the padded input"),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 3}, (10,), "expects a per-sample input with 3 axes"),
    ({"type": "batchnorm"}, (3, 4), "batchnorm takes"),
])
def test_shape_errors(spec, shape, match):
    with pytest.raises(ShapeError, match=match):
        make(spec, shape)


@pytest.mark.parametrize("spec, key", [
    ({"type": "conv2d", "out_channels": 0, "kernel_size": 3}, "out_channels"),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": [3, 3, 3]}, "kernel_size"),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "stride": 0}, "stride"),
    ({"type": "maxpool2d", "kernel_size": 2, "padding": 2}, "padding"),
    ({"type": "dropout", "p": 1.0}, "p"),
    ({"type": "gelu", "approximate": "fast"}, "approximate"),
    ({"type": "batchnorm", "momentum": 2}, "momentum"),
])
def test_bad_options_name_the_key(spec, key):
    with pytest.raises(ConfigError) as e:
        LAYERS.build(spec, path="model[1]")
    assert e.value.path == f"model[1].{key}"


# --- pooling -----------------------------------------------------------------------------------
# (N, C, H, W, kernel, stride, padding)
POOL_CASES = [
    (2, 3, 8, 8, 2, None, 0),          # tiles exactly: the fast path
    (1, 1, 7, 9, 2, None, 0),          # odd sizes: the last row/column is dropped
    (2, 7, 9, 7, (3, 2), (2, 3), (1, 1)),
    (3, 3, 6, 5, 3, 1, 1),             # overlapping windows
    (1, 2, 11, 10, (2, 4), 3, (1, 2)),
    (2, 1, 5, 5, 5, 2, 2),
]


def torch_pool(mode: str, layer):
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    if mode == "max":
        return lambda tx: F.max_pool2d(tx, k, s, p)
    return lambda tx: F.avg_pool2d(tx, k, s, p)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_matches_torch(mode, case, dtype):
    n, c, h, w, k, s, p = case
    layer = make({"type": f"{mode}pool2d", "kernel_size": k, "stride": s, "padding": p}, (c, h, w), dtype)
    x = np.random.default_rng(4).standard_normal((n, c, h, w)).astype(dtype)
    y, g, dx = run(layer, x)
    assert y.shape == (n, *layer.output_shape((c, h, w)))
    ty, tdx, _ = torch_fwd_bwd(torch_pool(mode, layer), x, g)
    close(y, ty, dtype)
    close(dx, tdx, dtype)


@pytest.mark.parametrize("case", POOL_CASES[:4])
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_matches_loop_reference_channels_last(mode, case):
    """Same result for channels-last memory (what a conv hands over) as the loop reference."""
    n, c, h, w, k, s, p = case
    layer = make({"type": f"{mode}pool2d", "kernel_size": k, "stride": s, "padding": p}, (c, h, w))
    x = np.random.default_rng(6).standard_normal((n, h, w, c)).transpose(0, 3, 1, 2)
    y, g, dx = run(layer, x)
    args = (layer.kernel_size, layer.stride, layer.padding, mode)
    np.testing.assert_allclose(y, reference.pool2d_forward(x, *args), rtol=1e-12)
    np.testing.assert_allclose(dx, reference.pool2d_backward(x, g, *args), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c, h, w, k", [(1, 3, 6, 6, 2), (4, 7, 9, 12, 3), (2, 5, 8, 12, (2, 4)),
                                           (3, 2, 10, 6, (5, 1)), (2, 4, 6, 6, (1, 3))])
def test_maxpool_evaluation_of_tiling_windows_matches_torch(n, c, h, w, k, dtype):
    """The evaluation forward for windows that tile a channels-last input (rows first, then columns)
    gives PyTorch's result, NaN included, and the same as the training forward."""
    layer = make({"type": "maxpool2d", "kernel_size": k}, (c, h, w), dtype)
    x = np.random.default_rng(8).standard_normal((n, h, w, c)).astype(dtype).transpose(0, 3, 1, 2)
    x[0, 0, 0, 0] = np.nan
    y = layer.forward(readonly(x), train=False)
    assert y.dtype == dtype and y.transpose(0, 2, 3, 1).flags.c_contiguous   # channels-last stays so
    ty = F.max_pool2d(torch.from_numpy(np.ascontiguousarray(x)), k).numpy()
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(y, layer.forward(x, train=True))


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_evaluation_forward_matches_torch_in_either_layout(mode, channels_last):
    """Evaluation (train=False) of tiling and overlapping windows, on NCHW and on channels-last memory
    (what a conv hands over), equals PyTorch: each pooling keeps its own operation on every path."""
    for k, s in ((2, None), (3, 2)):
        layer = make({"type": f"{mode}pool2d", "kernel_size": k, "stride": s}, (3, 8, 8))
        x = np.random.default_rng(9).standard_normal((2, 8, 8, 3) if channels_last else (2, 3, 8, 8))
        x = x.transpose(0, 3, 1, 2) if channels_last else x
        ty = torch_pool(mode, layer)(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        np.testing.assert_allclose(layer.forward(readonly(x), train=False), ty, rtol=1e-12)


@pytest.mark.parametrize("k, s", [(2, 2), (3, 1), (2, 1)])
def test_maxpool_ties_route_to_one_element_like_torch(k, s):
    """Ties (e.g. all zeros after ReLU) send each window's gradient to a single element, PyTorch's."""
    x = np.zeros((2, 3, 6, 6))
    x[:, :, ::3, 1::2] = 1.0
    layer = make({"type": "maxpool2d", "kernel_size": k, "stride": s}, (3, 6, 6))
    y, g, dx = run(layer, x)
    ty, tdx, _ = torch_fwd_bwd(lambda tx: F.max_pool2d(tx, k, s), x, g)
    close(y, ty, np.float64)
    close(dx, tdx, np.float64)


def test_pool_stride_defaults_to_kernel():
    layer = make({"type": "maxpool2d", "kernel_size": [2, 3]}, (1, 6, 9))
    assert tuple(layer.stride) == (2, 3) and layer.output_shape((1, 6, 9)) == (1, 3, 3)
    assert layer.config["stride"] is None


# --- element-wise activations -------------------------------------------------------------------
ACTIVATIONS = [
    ({"type": "relu"}, F.relu),
    ({"type": "leaky_relu"}, lambda t: F.leaky_relu(t, 0.01)),
    ({"type": "leaky_relu", "slope": 0.2}, lambda t: F.leaky_relu(t, 0.2)),
    ({"type": "sigmoid"}, torch.sigmoid),
    ({"type": "tanh"}, torch.tanh),
    ({"type": "gelu"}, F.gelu),
    ({"type": "gelu", "approximate": "tanh"}, lambda t: F.gelu(t, approximate="tanh")),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7), (3, 2, 5, 4)])
@pytest.mark.parametrize("spec, fn", ACTIVATIONS, ids=lambda v: "-".join(map(str, v.values())) if isinstance(v, dict) else "")
def test_activation_matches_torch(spec, fn, shape, dtype):
    layer = make(spec, shape[1:], dtype)
    x = (4 * np.random.default_rng(7).standard_normal(shape)).astype(dtype)
    x.flat[:3] = [0.0, -30.0, 30.0]          # the kink, and saturation
    y, g, dx = run(layer, x)
    ty, tdx, _ = torch_fwd_bwd(fn, x, g)
    close(y, ty, dtype)
    close(dx, tdx, dtype)


@pytest.mark.parametrize("spec, fn", ACTIVATIONS[1:], ids=lambda v: v["type"] if isinstance(v, dict) else "")
def test_activation_extreme_inputs_stay_finite(spec, fn):
    x = np.array([[-1e4, -100.0, -10.0, 0.0, 10.0, 100.0, 1e4]], dtype=np.float32)
    layer = make(spec, (7,), np.float32)
    with np.errstate(over="raise", divide="raise", invalid="raise"):   # underflow to 0 is fine
        y = layer.forward(x, True)
        dx = layer.backward(np.ones_like(y))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    ty, tdx, _ = torch_fwd_bwd(fn, x, np.ones_like(y))
    close(y, ty, np.float32)
    close(dx, tdx, np.float32)



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k", [(1, 10), (5, 3), (4, 7)])
def test_softmax_matches_torch_and_survives_huge_inputs(n, k, dtype):
    layer = make({"type": "softmax"}, (k,), dtype)
    x = (4 * np.random.default_rng(n + k).standard_normal((n, k))).astype(dtype)
    x[0, 0] = 1e4 if dtype == np.float64 else 80.0   # exp would overflow without the max shift
    y, g, dx = run(layer, x)
    ty, tdx, _ = torch_fwd_bwd(lambda t: F.softmax(t, dim=1), x, g)
    close(y, ty, dtype)
    close(dx, tdx, dtype)
    assert np.all(np.isfinite(y)) and np.allclose(y.sum(axis=1), 1.0)


def test_softmax_needs_flat_input():
    with pytest.raises(ShapeError, match="flatten"):
        make({"type": "softmax"}, (2, 3, 3), np.float32)


# --- dropout -------------------------------------------------------------------------------------
def test_dropout_eval_is_identity():
    layer = make({"type": "dropout", "p": 0.5}, (10,), np.float32)
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    y, g, dx = run(layer, x, train=False)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, g)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_train_zeroes_p_and_scales(p, dtype):
    layer = make({"type": "dropout", "p": p}, (3, 50, 50), dtype)
    x = readonly(np.random.default_rng(0).uniform(1, 2, (8, 3, 50, 50)).astype(dtype))
    y = layer.forward(x, train=True)
    assert y.dtype == dtype
    dropped = y == 0
    assert abs(dropped.mean() - p) < 0.01                  # 60 000 draws: σ ≈ 0.002
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - p), rtol=RTOL[dtype])
    g = readonly(np.ones_like(x))
    dx = layer.backward(g)
    np.testing.assert_array_equal(dx == 0, dropped)         # the same mask in backward
    np.testing.assert_allclose(dx[~dropped], 1 / (1 - p), rtol=RTOL[dtype])


def test_dropout_mask_comes_from_the_generator():
    x = np.ones((4, 100), dtype=np.float32)
    a, b = make({"type": "dropout"}, (100,), seed=1), make({"type": "dropout"}, (100,), seed=1)
    first = a.forward(x, True)
    np.testing.assert_array_equal(first, b.forward(x, True))      # same seed: same masks
    assert not np.array_equal(first, a.forward(x, True))          # the stream advances


# --- batchnorm ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 5), (2, 3), (3, 4, 5, 3), (1, 7, 3, 2), (2, 1, 5, 5)])
def test_batchnorm_train_matches_torch(shape, dtype):
    c = shape[1]
    layer = make({"type": "batchnorm"}, shape[1:], dtype)
    rng = np.random.default_rng(8)
    layer.params["gamma"][...] = rng.uniform(0.5, 2, c)
    layer.params["beta"][...] = rng.standard_normal(c)
    x = (3 * rng.standard_normal(shape) + 1).astype(dtype)
    y, g, dx = run(layer, x)
    ty, tdx, (tdg, tdb) = torch_fwd_bwd(
        lambda tx, tg, tb: F.batch_norm(tx, None, None, tg, tb, training=True, eps=1e-5),
        x, g, layer.params["gamma"], layer.params["beta"])
    close(y, ty, dtype)
    close(dx, tdx, dtype)
    close(layer.grads["gamma"], tdg, dtype)
    close(layer.grads["beta"], tdb, dtype)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "flat"])
def test_batchnorm_chunks_threads_and_layouts(monkeypatch, layout):
    """Several chunks (the last one shorter) on one thread or three: the same bits, for each memory layout
    of the input and of the gradient (channels-last, plain NCHW, a strided view, (N, F)), and PyTorch's values;
    outputs keep the input's layout."""
    import nntrain.nn.layers.norm as norm
    from nntrain.nn.parallel import Workers
    shape = (7, 6) if layout == "flat" else (7, 3, 4, 5)
    monkeypatch.setattr(norm, "CHUNK_ITEMS", 2 * int(np.prod(shape[1:])))   # 2 samples a chunk: 2, 2, 2, 1
    rng = np.random.default_rng(3)
    x = (2 * rng.standard_normal(shape) + 5).astype(np.float32)
    if layout == "channels_last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif layout == "strided":
        x = np.repeat(x, 2, axis=3)[..., ::2]
    results = []
    for threads in (1, 3):
        layer = make({"type": "batchnorm"}, shape[1:], np.float32)
        layer.params["gamma"][...] = rng.uniform(0.5, 2, shape[1]) if threads == 1 else results[0][3]
        workers = layer.workers = Workers(threads) if threads > 1 else None
        y, g, dx = run(layer, x)
        assert y.strides == np.empty_like(x).strides or layout == "strided"
        results.append((y, dx, layer.grads["gamma"].copy(), layer.params["gamma"].copy(), layer.grads["beta"].copy()))
        if workers is not None:
            workers.close()
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    ty, tdx, (tdg, tdb) = torch_fwd_bwd(
        lambda tx, tg, tb: F.batch_norm(tx, None, None, tg, tb, training=True, eps=1e-5),
        np.ascontiguousarray(x), g, results[0][3], np.zeros(shape[1], np.float32))
    y, dx, dgamma, _, dbeta = results[0]
    close(y, ty, np.float32)
    close(dx, tdx, np.float32)
    close(dgamma, tdg, np.float32)
    close(dbeta, tdb, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 6), (4, 3, 5, 5)])
def test_batchnorm_running_stats_and_eval_match_torch(shape, dtype):
    layer = make({"type": "batchnorm", "momentum": 0.3, "eps": 1e-3}, shape[1:], dtype)
    tbn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(
        shape[1], eps=1e-3, momentum=0.3).to(TORCH_DTYPE[dtype])
    rng = np.random.default_rng(9)
    for step in range(5):
        x = (2 * rng.standard_normal(shape) + step).astype(dtype)
        layer.forward(readonly(x), train=True)
        tbn(torch.tensor(x))
    close(layer.buffers["running_mean"], tbn.running_mean, dtype)
    close(layer.buffers["running_var"], tbn.running_var, dtype)
    tbn.eval()
    x = rng.standard_normal(shape).astype(dtype)
    y, g, dx = run(layer, x, train=False)
    tx = torch.tensor(x, requires_grad=True)
    ty = tbn(tx)
    ty.backward(torch.tensor(g))
    close(y, ty, dtype)
    close(dx, tx.grad, dtype)
    close(layer.grads["gamma"], tbn.weight.grad, dtype)
    close(layer.grads["beta"], tbn.bias.grad, dtype)


def test_batchnorm_train_needs_more_than_one_value():
    layer = make({"type": "batchnorm"}, (4,))
    with pytest.raises(ShapeError, match="more than one value"):
        layer.forward(np.ones((1, 4)), train=True)
    assert layer.forward(np.ones((1, 4)), train=False).shape == (1, 4)   # eval is fine


# --- every layer: dtype kept, inputs untouched ----------------------------------------------------
ALL_SPECS = [
    ({"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}, (2, 5, 6)),
    ({"type": "maxpool2d", "kernel_size": 2}, (2, 5, 6)),
    ({"type": "maxpool2d", "kernel_size": 3, "stride": 2, "padding": 1}, (2, 5, 6)),
    ({"type": "avgpool2d", "kernel_size": 2, "padding": 1}, (2, 5, 6)),
    ({"type": "flatten"}, (2, 5, 6)),
    ({"type": "linear", "out_features": 4}, (6,)),
    ({"type": "relu"}, (2, 5, 6)),
    ({"type": "leaky_relu"}, (2, 5, 6)),
    ({"type": "sigmoid"}, (6,)),
    ({"type": "tanh"}, (6,)),
    ({"type": "gelu"}, (2, 5, 6)),
    ({"type": "gelu", "approximate": "tanh"}, (6,)),
    ({"type": "softmax"}, (6,)),
    ({"type": "dropout", "p": 0.3}, (2, 5, 6)),
    ({"type": "batchnorm"}, (2, 5, 6)),
    ({"type": "batchnorm"}, (6,)),
    ({"type": "global_avgpool"}, (2, 5, 6)),
    ({"type": "residual", "body": [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1},
                                   {"type": "relu"}, {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}],
      "shortcut": [{"type": "conv2d", "out_channels": 3, "kernel_size": 1, "stride": 2}]}, (2, 5, 6)),
]


def test_all_registered_layers_are_covered():
    assert {s["type"] for s, _ in ALL_SPECS} == set(LAYERS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("spec, shape", ALL_SPECS, ids=lambda v: v["type"] if isinstance(v, dict) else "")
def test_layer_keeps_dtype_and_leaves_inputs_untouched(spec, shape, dtype, train):
    layer = make(spec, shape, dtype)
    x = np.random.default_rng(0).standard_normal((3, *shape)).astype(dtype)
    if not train:   # an evaluation forward, then a training one (backward needs it)
        y = layer.forward(readonly(x), train=False)
        assert y.dtype == dtype and y.shape == (3, *layer.output_shape(shape))
    y, g, dx = run(layer, x, train=True)   # run() asserts x and g are unchanged (and read-only)
    assert y.dtype == dtype and dx.dtype == dtype
    assert y.shape == (3, *layer.output_shape(shape)) and dx.shape == x.shape
    for name, grad in layer.grads.items():
        assert grad.dtype == dtype and grad.shape == layer.params[name].shape


@pytest.mark.parametrize("spec, shape", ALL_SPECS, ids=lambda v: v["type"] if isinstance(v, dict) else "")
def test_layer_takes_an_empty_batch(spec, shape):
    layer = make(spec, shape, np.float32)
    train = spec["type"] != "batchnorm"          # batch statistics of nothing are undefined
    y = layer.forward(np.zeros((0, *shape), np.float32), train=train)
    assert y.shape == (0, *layer.output_shape(shape))
    assert layer.backward(np.zeros_like(y)).shape == (0, *shape)


# --- worker threads, evaluation caches, returned arrays --------------------------------------------
CNN_SPEC = [
    {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 3, "stride": 2, "padding": 1},
    {"type": "conv2d", "out_channels": 5, "kernel_size": 2, "stride": 2}, {"type": "relu"},
    {"type": "avgpool2d", "kernel_size": 2, "padding": 1},
    {"type": "flatten"}, {"type": "linear", "out_features": 7}, {"type": "relu"},
    {"type": "linear", "out_features": 3},
]


def _cnn_pass(threads: int, train_batches: int = 2):
    from nntrain.nn.model import build_model
    model = build_model(CNN_SPEC, (2, 16, 12), seed=3, dtype=np.float32, threads=threads)
    rng = np.random.default_rng(5)
    out = []
    for _ in range(train_batches):
        x = rng.standard_normal((7, 2, 16, 12)).astype(np.float32)
        y = model.forward(x, train=True)
        dx = model.backward(rng.standard_normal(y.shape).astype(np.float32))
        out += [y, dx] + [g.copy() for _, _, g in model.parameters()]
    out.append(model.forward(rng.standard_normal((9, 2, 16, 12)).astype(np.float32), train=False))
    model.close()
    return out


def test_worker_threads_give_bit_identical_results(monkeypatch):
    """Element-wise work split over the batch across 2 or 3 threads equals one thread, bit for bit."""
    import nntrain.nn.parallel
    monkeypatch.setattr(nntrain.nn.parallel, "MIN_ITEMS_PER_PIECE", 1)   # split even these small arrays
    reference = _cnn_pass(1)
    for threads in (2, 3):
        for a, b in zip(reference, _cnn_pass(threads)):
            assert a.dtype == b.dtype == np.float32
            np.testing.assert_array_equal(a, b)


def test_workers_split_pieces_errors_and_close():
    from nntrain.nn.parallel import Workers, split
    w = Workers(3)
    assert [(p.start, p.stop) for p in w.pieces(10, items_per_sample=1 << 20)] == [(0, 3), (3, 6), (6, 10)]
    assert w.pieces(10, items_per_sample=1) == [slice(0, 10)]          # too little work to split
    assert w.pieces(0, items_per_sample=1 << 20) == [slice(0, 0)]
    out = np.zeros(10)
    split(w, lambda s: out.__setitem__(s, s.start), 10, 1 << 20)
    assert out.tolist() == [0] * 3 + [3] * 3 + [6] * 4

    def boom(s):
        if s.start == 6:
            raise ValueError("piece 3")
    with pytest.raises(ValueError, match="piece 3"):
        w.split(boom, 10, 1 << 20)
    w.close()
    split(w, lambda s: out.__setitem__(s, -1), 10, 1 << 20)   # usable again after close
    assert (out == -1).all()
    w.close()
    split(None, lambda s: out.__setitem__(s, 2), 10)            # no pool: one call, this thread
    assert (out == 2).all()


EVAL_SPECS = [
    ({"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}, (2, 5, 6)),
    ({"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}, (6, 5, 6)),
    ({"type": "maxpool2d", "kernel_size": 2}, (2, 5, 6)),
    ({"type": "avgpool2d", "kernel_size": 2, "padding": 1}, (2, 5, 6)),
    ({"type": "linear", "out_features": 4}, (6,)),
    ({"type": "relu"}, (2, 5, 6)),
    ({"type": "leaky_relu"}, (2, 5, 6)),
    ({"type": "sigmoid"}, (7,)),
    ({"type": "tanh"}, (7,)),
    ({"type": "gelu"}, (7,)),
    ({"type": "gelu", "approximate": "tanh"}, (7,)),
    ({"type": "softmax"}, (7,)),
    ({"type": "global_avgpool"}, (2, 5, 6)),
    ({"type": "residual", "body": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                                   {"type": "relu"}]}, (2, 5, 6)),
]


@pytest.mark.parametrize("spec, shape, kept", [
    ({"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}, (2, 6, 5), "_saved"),
    ({"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}, (6, 6, 5), "_saved"),
    ({"type": "batchnorm"}, (3, 4, 5), "_saved"),
    ({"type": "batchnorm"}, (7,), "_saved"),
])
def test_backward_lets_go_of_the_batch(spec, shape, kept):
    """The large arrays a training forward keeps (a conv's padded input, a batchnorm's input) are dropped
    by backward, so that no batch-sized array lives on between steps; a second backward then raises,
    and the next forward/backward works as before."""
    layer = make(spec, shape, np.float32)
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    y = layer.forward(x, train=True)
    assert getattr(layer, kept) is not None
    dx = layer.backward(np.ones_like(y))
    assert getattr(layer, kept) is None
    with pytest.raises(RuntimeError, match="train=True"):
        layer.backward(np.ones_like(y))
    layer.forward(x, train=True)
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), dx)


@pytest.mark.parametrize("planar", [True, False])
def test_conv_padded_buffer_has_a_zero_border_and_takes_the_interior(planar):
    from nntrain.nn.layers.conv import zero_border
    xp = np.full((2, 3, 7, 6), np.nan, dtype=np.float32)
    zero_border(xp, (2, 1), (2, 3))
    assert np.isnan(xp[:, :, 2:5, 1:5]).all()
    inner = np.zeros_like(xp, dtype=bool)
    inner[:, :, 2:5, 1:5] = True
    assert (xp[~inner] == 0).all()
    layer = make({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": (2, 1)}, (1 if planar else 5, 4, 4))
    assert layer._planar == planar


@pytest.mark.parametrize("spec, shape", EVAL_SPECS, ids=lambda v: v["type"] if isinstance(v, dict) else "")
def test_evaluation_forward_keeps_nothing_for_backward(spec, shape):
    """train=False keeps no masks / indices / saved inputs (backward then raises), and a conv keeps
    the buffers of its training batch size, not those of a larger evaluation batch."""
    layer = make(spec, shape, np.float32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, *shape)).astype(np.float32)
    y = layer.forward(x, train=True)
    kept = {k: v.shape for k, v in vars(layer).items() if isinstance(v, np.ndarray)}
    layer.forward(rng.standard_normal((11, *shape)).astype(np.float32), train=False)
    for k, v in vars(layer).items():
        if isinstance(v, np.ndarray):
            assert 11 not in v.shape[:2], f"{k} {v.shape} sized for the evaluation batch"
            if k in kept:
                assert v.shape == kept[k]
    with pytest.raises(RuntimeError, match="train=True"):
        layer.backward(np.ones_like(y))
    layer.forward(x, train=True)
    assert layer.backward(np.ones_like(y)).shape == x.shape


@pytest.mark.parametrize("spec, shape", ALL_SPECS, ids=lambda v: v["type"] if isinstance(v, dict) else "")
def test_returned_arrays_survive_later_calls(spec, shape):
    """forward/backward results belong to the caller: a second call (same shape) does not change them."""
    layer = make(spec, shape, np.float32)
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((3, *shape)).astype(np.float32) for _ in range(2))
    y1 = layer.forward(x1, train=True)
    g1 = rng.standard_normal(y1.shape).astype(np.float32)
    dx1 = layer.backward(g1)
    y1c, dx1c = y1.copy(), dx1.copy()
    y2 = layer.forward(x2, train=True)
    layer.backward(rng.standard_normal(y2.shape).astype(np.float32))
    np.testing.assert_array_equal(y1, y1c)
    np.testing.assert_array_equal(dx1, dx1c)


def _layerwise(model, x, g):
    """Forward each layer in its listed order, then backward in reverse: the model's definition."""
    h = x
    for layer in model.layers:
        h = layer.forward(h, train=True)
    y = h
    for layer in reversed(model.layers):
        g = layer.backward(g)
    return y, g, [p.copy() for _, _, p in model.parameters()]


@pytest.mark.parametrize("pool", [{"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1}])
def test_model_runs_relu_after_maxpool_with_identical_results(pool):
    """Model.forward runs relu -> maxpool as maxpool -> relu (they commute); outputs and all gradients
    equal the layer-by-layer order exactly, also with ties (constant regions) and all-negative windows;
    training's backward (need_input_grad=False) gives the same parameter gradients and no dx."""
    from nntrain.nn.model import build_model
    spec = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "relu"},
            {"type": "maxpool2d", **pool}, {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
            {"type": "flatten"}, {"type": "linear", "out_features": 3}]
    model = build_model(spec, (1, 12, 12), seed=1, dtype=np.float32)
    assert [step.layers for step in model.plan] == [(0,), (2, 1), (4, 3), (5,), (6,)]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 12, 12)).astype(np.float32)
    x[:, :, :6, :6] = 0.0            # a constant region: ties in every window of the conv output
    x[0] = -np.abs(x[0]) * 50         # mostly negative conv outputs
    y = model.forward(x, train=True)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx = model.backward(g)
    grads = [p.copy() for _, _, p in model.parameters()]
    y_ref, dx_ref, grads_ref = _layerwise(model, x, g)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    for a, b in zip(grads, grads_ref):
        np.testing.assert_array_equal(a, b)
    assert model.backward_calls(need_input_grad=False) == [(6, True), (5, True), (3, True), (4, True),
                                                            (1, True), (2, True), (0, False)]
    calls = []
    for k, layer in enumerate(model.layers):   # record the calls backward makes
        def spy(grad, need_input_grad=True, k=k, original=layer.backward):
            calls.append((k, need_input_grad))
            return original(grad, need_input_grad)
        layer.backward = spy
    np.testing.assert_array_equal(model.forward(x, train=True), y_ref)
    assert model.backward(g, need_input_grad=False) is None
    assert calls == model.backward_calls(need_input_grad=False)
    for (_, _, a), b in zip(model.parameters(), grads_ref):
        np.testing.assert_array_equal(a, b)


def test_plan_swaps_by_declared_capability():
    """plan_steps swaps a layer that declares commutes_with_max (relu) with a following max-pool
    (is_max_pool); leaky_relu (float rounding can make ties) and avgpool keep their order."""
    from nntrain.nn.model import plan_steps
    spec = [{"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}, {"type": "leaky_relu"},
            {"type": "maxpool2d", "kernel_size": 2}, {"type": "relu"}, {"type": "avgpool2d", "kernel_size": 2},
            {"type": "maxpool2d", "kernel_size": 1}, {"type": "relu"}]
    layers = [make(s, (1, 16, 16)) for s in spec]
    assert [step.layers for step in plan_steps(layers)] == [(1, 0), (2,), (3,), (4,), (5,), (6,), (7,)]
    assert [step.swapped for step in plan_steps(layers)][:2] == [True, False]


@pytest.mark.parametrize("channels", [2, 6])   # planar and channels-last columns
@pytest.mark.parametrize("skip", [False, True])
def test_conv2d_column_chunks_match_whole_batch(monkeypatch, skip, channels):
    """Columns are built a chunk of samples at a time (forward and backward): outputs and dx are
    bit-identical to one whole-batch GEMM, dW/db equal up to float32 summation order."""
    import nntrain.nn.layers.conv as conv
    spec = {"type": "conv2d", "out_channels": 5, "kernel_size": 3, "padding": 1, "weight_decay": 0.01}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, channels, 9, 8)).astype(np.float32)
    g = rng.standard_normal((7, 5, 9, 8)).astype(np.float32)
    results = []
    for per in (7, 3):   # whole batch; 3 samples per chunk (the last chunk has one)
        monkeypatch.setattr(conv, "CHUNK_BYTES", per * 72 * (9 * channels + 1) * 4)
        layer = make(spec, (channels, 9, 8), np.float32)
        for _ in range(2):   # second pass reuses the buffers
            y = layer.forward(x, train=True)
            dx = layer.backward(g, need_input_grad=not skip)
        assert layer.scratch[("cols", 0)].size == per * 72 * (9 * channels + 1)
        results.append((y, dx, layer.grads["W"].copy(), layer.grads["b"].copy()))
    (y0, dx0, w0, b0), (y1, dx1, w1, b1) = results
    np.testing.assert_array_equal(y0, y1)
    if skip:
        assert dx0 is None and dx1 is None
    else:
        np.testing.assert_array_equal(dx0, dx1)
    np.testing.assert_allclose(w0, w1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b0, b1, rtol=1e-5, atol=1e-5)


def test_workers_chunks_use_one_blas_thread_and_distinct_slots():
    """Workers.chunks: fixed pieces, each run once; no slot runs two pieces at once; the BLAS runs on
    one thread meanwhile and gets its thread count back afterwards (also after an error)."""
    import threading
    from nntrain.nn.parallel import Workers, chunk_slices, chunks
    assert chunk_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert chunk_slices(0, 4) == []
    w = Workers(3)
    blas = w._blas = _FakeBlas(3)   # record what chunks() asks of the BLAS
    busy, seen, lock = set(), [], threading.Lock()

    def fn(s, slot):
        with lock:
            assert slot not in busy and 0 <= slot < 3
            busy.add(slot)
            seen.append((s.start, s.stop, blas.threads))
        with lock:
            busy.discard(slot)

    w.chunks(fn, 25, 4)
    assert sorted(seen) == [(i, min(25, i + 4), 1) for i in range(0, 25, 4)]
    assert blas.threads == 3

    def boom(s, slot):
        if s.start == 8:
            raise ValueError("chunk at 8")
    with pytest.raises(ValueError, match="chunk at 8"):
        w.chunks(boom, 25, 4)
    assert blas.threads == 3
    out = np.zeros(6)
    chunks(None, lambda s, slot: out.__setitem__(s, slot + 1), 6, 4)   # no pool: slot 0, this thread
    assert (out == 1).all()
    w.close()


class _FakeBlas:
    def __init__(self, threads: int):
        self.threads = threads

    def get_threads(self) -> int:
        return self.threads

    def set_threads(self, threads: int) -> None:
        self.threads = threads


def test_numpy_blas_thread_count_is_found_and_settable():
    """nntrain.nn.blas finds NumPy's BLAS through threadpoolctl and sets it from any thread (not only the
    first one that set it); Workers.chunks runs its pieces on one BLAS thread and restores the count."""
    import threading
    from nntrain.nn.blas import find_blas
    from nntrain.nn.parallel import Workers
    blas = find_blas()
    if blas is None:
        pytest.skip("NumPy's BLAS is not controllable through threadpoolctl here")
    before = blas.get_threads()
    w = Workers(2)
    try:
        blas.set_threads(1)
        assert blas.get_threads() == 1
        other = threading.Thread(target=blas.set_threads, args=(2,))
        other.start()
        other.join()
        if blas.get_threads() != 2:
            pytest.skip("this BLAS runs on one thread at most")
        seen = []
        w.chunks(lambda s, slot: seen.append(blas.get_threads()), 10, 2)
        assert seen == [1] * 5 and blas.get_threads() == 2
    finally:
        w.close()
        blas.set_threads(before)
    assert blas.get_threads() == before


def test_threads_option_sets_the_blas_for_the_command_only(monkeypatch):
    """`nntrain --threads N` sets the loaded BLAS at run time (gradcheck defaults to 1) and the count
    is restored when the command ends."""
    from click.testing import CliRunner
    import nntrain.cli
    import nntrain.tools.gradcheck
    from nntrain.nn.blas import find_blas
    blas = find_blas()
    if blas is None or blas.get_threads() < 2:
        pytest.skip("NumPy's BLAS is not controllable through threadpoolctl here, or has one thread")
    seen = []
    monkeypatch.setattr(nntrain.cli, "_load", lambda config, overrides: {})
    monkeypatch.setattr(nntrain.tools.gradcheck, "gradcheck_config",
                        lambda cfg, **kwargs: seen.append(blas.get_threads()) or [])
    before = blas.get_threads()
    runner = CliRunner()
    for args in (["gradcheck", "c.yaml"], ["--threads", "2", "gradcheck", "c.yaml"]):
        result = runner.invoke(nntrain.cli.cli, args)
        assert result.exit_code == 0, result.output
        assert blas.get_threads() == before
    assert seen == [1, 2]


@pytest.mark.parametrize("kind, var", [("he_normal", lambda fi, fo: 2 / fi), ("he_uniform", lambda fi, fo: 2 / fi),
                                       ("xavier_normal", lambda fi, fo: 2 / (fi + fo)),
                                       ("xavier_uniform", lambda fi, fo: 2 / (fi + fo)),
                                       ("fan_in_uniform", lambda fi, fo: 1 / (3 * fi))])
def test_initialisers_have_their_variance(kind, var):
    from nntrain.nn.initializers import initialize

    w = initialize(kind, (400, 300), 400, 300, np.random.default_rng(0), np.float64)
    assert w.var() == pytest.approx(var(400, 300), rel=0.03)
    if kind == "fan_in_uniform":  # PyTorch's default bound for nn.Linear(400, ...)
        bound = 1 / np.sqrt(400)
        assert w.max() <= bound and w.min() >= -bound and w.max() > 0.99 * bound


# --- global_avgpool ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 1, 1), (3, 2, 8, 8), (2, 5, 1, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_global_avgpool_matches_torch(shape, dtype, channels_last):
    """y = mean over H, W (PyTorch's adaptive_avg_pool2d to 1x1, flattened); dx = g / (H·W) in the
    input's memory layout."""
    layer = make({"type": "global_avgpool"}, shape[1:], dtype)
    x = (3 * np.random.default_rng(1).standard_normal(shape) + 1).astype(dtype)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y, g, dx = run(layer, x)
    assert y.shape == (shape[0], shape[1]) == (shape[0], *layer.output_shape(shape[1:]))
    ty, tdx, _ = torch_fwd_bwd(lambda t: F.adaptive_avg_pool2d(t, 1).flatten(1), x, g)
    close(y, ty, dtype)
    close(dx, tdx, dtype)
    if shape[2] * shape[3] > 1:   # (1x1 images are both layouts at once)
        assert dx.transpose(0, 2, 3, 1).flags.c_contiguous == channels_last


def test_global_avgpool_needs_images():
    with pytest.raises(ShapeError, match="global_avgpool takes images"):
        make({"type": "global_avgpool"}, (12,))

