"""Numerical gradient check: passes on every registered layer type (with weight decay), fails naming
the tensor when a backward pass is deliberately broken, leaves the model as it found it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import SHIPPED_CONFIGS
from nntrain import build_loss, build_model
from nntrain.tools.gradcheck import GradcheckRow, format_gradcheck, gradcheck, gradcheck_config, gradcheck_failed
from nntrain.nn.layers import LAYERS, Layer

WD = 0.05  # weight decay on every layer that takes it, so dW += λW is checked too

# One or more small models per layer type: (per-sample input shape, layers before the common head).
# The layer under test is the last one in the list; the head (flatten, linear) produces 3 logits.
LAYER_CASES: dict[str, list[tuple[tuple[int, ...], list[dict]]]] = {
    "linear": [((7,), [{"type": "linear", "out_features": 5, "weight_decay": WD}]),
               ((7,), [{"type": "linear", "out_features": 5, "bias": False, "weight_decay": WD}])],
    "conv2d": [((3, 7, 6), [{"type": "conv2d", "out_channels": 4, "kernel_size": [3, 2], "stride": 2,
                             "padding": 1, "weight_decay": WD}]),
               ((2, 5, 5), [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "weight_decay": WD}])],
    "maxpool2d": [((2, 7, 7), [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1,
                                "weight_decay": WD},
                               {"type": "maxpool2d", "kernel_size": 3, "stride": 2}])],
    "avgpool2d": [((2, 7, 7), [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1,
                                "weight_decay": WD},
                               {"type": "avgpool2d", "kernel_size": 2}])],
    "flatten": [((2, 3, 3), [{"type": "flatten"}])],
    "relu": [((6,), [{"type": "linear", "out_features": 8, "weight_decay": WD}, {"type": "relu"}])],
    "leaky_relu": [((6,), [{"type": "linear", "out_features": 8, "weight_decay": WD}, {"type": "leaky_relu"}])],
    "sigmoid": [((6,), [{"type": "linear", "out_features": 8, "weight_decay": WD}, {"type": "sigmoid"}])],
    "tanh": [((6,), [{"type": "linear", "out_features": 8, "weight_decay": WD}, {"type": "tanh"}])],
    "softmax": [((6,), [{"type": "linear", "out_features": 8, "weight_decay": WD}, {"type": "softmax"}])],
    "gelu": [((6,), [{"type": "linear", "out_features": 8, "weight_decay": WD}, {"type": "gelu"}])],
    "dropout": [((6,), [{"type": "linear", "out_features": 8, "weight_decay": WD}, {"type": "dropout", "p": 0.5}])],
    "batchnorm": [((6,), [{"type": "linear", "out_features": 5, "weight_decay": WD}, {"type": "batchnorm"}]),
                  ((2, 5, 4), [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1,
                                "weight_decay": WD},
                               {"type": "batchnorm"}])],
    "global_avgpool": [((2, 5, 4), [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1,
                                     "weight_decay": WD},
                                    {"type": "global_avgpool"}])],
    "residual": [
        # a basic block with the identity shortcut
        ((2, 5, 4), [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1, "weight_decay": WD},
                     {"type": "residual", "body": [
                         {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1, "bias": False,
                          "weight_decay": WD},
                         {"type": "batchnorm"}, {"type": "relu"},
                         {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1, "bias": False,
                          "weight_decay": WD},
                         {"type": "batchnorm"}]}]),   # (a bias before a batchnorm has no effect, no gradient)
        # stride 2 with a 1x1-conv + batchnorm projection shortcut, the first layer (its dx skipped in training)
        ((2, 7, 6), [{"type": "residual", "body": [
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False,
             "weight_decay": WD},
            {"type": "batchnorm"}, {"type": "relu"},
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1, "weight_decay": WD}],
            "shortcut": [{"type": "conv2d", "out_channels": 4, "kernel_size": 1, "stride": 2, "bias": False,
                          "weight_decay": WD},
                         {"type": "batchnorm"}]}]),
        # nested blocks, a relu -> maxpool pair inside (run swapped) and dropout (its masks replayed)
        ((2, 5, 5), [{"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1, "weight_decay": WD},
                     {"type": "residual", "body": [
                         {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1, "weight_decay": WD},
                         {"type": "relu"},
                         {"type": "residual", "body": [
                             {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1,
                              "weight_decay": WD},
                             {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 3, "stride": 1, "padding": 1},
                             {"type": "dropout", "p": 0.3}]}],
                      "shortcut": [{"type": "avgpool2d", "kernel_size": 3, "stride": 1, "padding": 1}]}]),
    ],
}


def build_case(input_shape, layers, seed=0):
    head = [{"type": "flatten"}, {"type": "linear", "out_features": 3, "weight_decay": WD}]
    model = build_model(layers + head, input_shape, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((4, *input_shape))
    labels = rng.integers(0, 3, size=4)
    return model, x, labels


def registered_cases(with_params_only=False):
    """(type, case index) for every registered type; only types that create parameters if asked."""
    return [pytest.param(name, i, id=f"{name}-{i}")
            for name in sorted(LAYERS) for i in range(len(LAYER_CASES.get(name, [])))
            if not with_params_only or LAYERS[name]._create is not Layer._create]


def test_every_registered_layer_has_a_case():
    missing = sorted(set(LAYERS) - set(LAYER_CASES))
    assert not missing, f"add a gradcheck case to LAYER_CASES for: {missing}"


@pytest.mark.parametrize("name,case", registered_cases())
def test_gradcheck_passes_on_every_layer_type(name, case):
    input_shape, layers = LAYER_CASES[name][case]
    model, x, labels = build_case(input_shape, layers)
    rows = gradcheck(model, build_loss(None), x, labels, full=True, rng=np.random.default_rng(0))
    assert not gradcheck_failed(rows), format_gradcheck(rows)
    # every parameter tensor and the input were checked, each entry of each
    expected = {"input"} | {name for name, _, _ in model.parameters()}
    assert {r.name for r in rows} == expected
    assert all(r.checked == r.size for r in rows)
    assert all(0.0 <= r.max_rel_error <= 1e-6 for r in rows)


def break_backward(monkeypatch, layer, param=None, factor=1.01):
    """Scale the layer's `param` gradient (or, with param None, its input gradient) by `factor`."""
    original = layer.backward

    def broken(grad, need_input_grad=True):
        dx = original(grad, need_input_grad)
        if param is None:
            return dx * factor
        layer.grads[param] *= factor
        return dx

    monkeypatch.setattr(layer, "backward", broken)


@pytest.mark.parametrize("name,case", registered_cases(with_params_only=True))
def test_gradcheck_names_a_broken_param_gradient(monkeypatch, name, case):
    input_shape, layers = LAYER_CASES[name][case]
    model, x, labels = build_case(input_shape, layers)
    k = len(layers) - 1  # the layer under test
    layer = model.layers[k]
    assert layer.params, f"{name} overrides _create but made no parameters in this case"
    for param in list(layer.params):
        with monkeypatch.context() as mp:
            break_backward(mp, layer, param)
            rows = gradcheck(model, build_loss(None), x, labels, rng=np.random.default_rng(0))
        bad = [r.name for r in gradcheck_failed(rows)]
        assert bad == [f"{k}.{param}"], format_gradcheck(rows)
        text = format_gradcheck(rows)
        assert "FAIL" in text and f"{k}.{param}" in text.splitlines()[-1]


@pytest.mark.parametrize("name,case", registered_cases())
def test_gradcheck_names_a_broken_input_gradient(monkeypatch, name, case):
    """Breaking the first layer's dx corrupts only dL/dx: the input row fails, nothing else."""
    input_shape, layers = LAYER_CASES[name][case]
    model, x, labels = build_case(input_shape, layers)
    break_backward(monkeypatch, model.layers[0], None)
    rows = gradcheck(model, build_loss(None), x, labels, rng=np.random.default_rng(0))
    assert [r.name for r in gradcheck_failed(rows)] == ["input"], format_gradcheck(rows)


def test_broken_inner_input_gradient_fails_everything_upstream(monkeypatch):
    """dx of layer 2 feeds layer 0's grads and the input: all of those fail, layer 2's params pass."""
    model, x, labels = build_case((6,), [{"type": "linear", "out_features": 8, "weight_decay": WD},
                                         {"type": "relu"}])
    break_backward(monkeypatch, model.layers[3], None)  # the head's linear
    rows = gradcheck(model, build_loss(None), x, labels, rng=np.random.default_rng(0))
    assert [r.name for r in gradcheck_failed(rows)] == ["input", "0.W", "0.b"], format_gradcheck(rows)


def test_missing_weight_decay_gradient_fails(monkeypatch):
    """A backward that forgets dW += λW disagrees with the loss, which includes λ/2·||W||²."""
    model, x, labels = build_case((6,), [{"type": "linear", "out_features": 8, "weight_decay": 0.1}])
    layer = model.layers[0]
    monkeypatch.setattr(layer, "apply_weight_decay", lambda: None)
    rows = gradcheck(model, build_loss(None), x, labels, rng=np.random.default_rng(0))
    assert [r.name for r in gradcheck_failed(rows)] == ["0.W"]


def test_sampling_checks_at_most_samples_entries_per_tensor():
    model, x, labels = build_case((30,), [{"type": "linear", "out_features": 20, "weight_decay": WD}])
    rows = gradcheck(model, build_loss(None), x, labels, samples=50, rng=np.random.default_rng(0))
    by_name = {r.name: r for r in rows}
    assert by_name["0.W"].checked == 50 and by_name["0.W"].size == 600
    assert by_name["0.b"].checked == 20  # smaller than `samples`: all of it
    assert by_name["input"].checked == 50 and by_name["input"].size == 120
    assert not gradcheck_failed(rows)


def test_gradcheck_leaves_the_model_unchanged():
    model, x, labels = build_case((6,), [{"type": "linear", "out_features": 8, "weight_decay": WD},
                                         {"type": "relu"}])
    before = model.state_dict()
    rng_state = model.rng.bit_generator.state
    x_before = x.copy()
    gradcheck(model, build_loss(None), x, labels, rng=np.random.default_rng(0))
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert model.rng.bit_generator.state == rng_state
    assert np.array_equal(x, x_before)


def test_gradcheck_rejects_float32_models():
    model = build_model([{"type": "linear", "out_features": 3}], (4,), dtype=np.float32)
    with pytest.raises(ValueError, match="float64"):
        gradcheck(model, build_loss(None), np.zeros((2, 4)), np.array([0, 1]), rng=np.random.default_rng(0))


def test_relu_kink_inside_the_step_is_remeasured():
    """A pre-activation 3e-7 from the ReLU kink: the ±1e-6 difference of its bias straddles the kink
    (and is wrong), the retry with a smaller step does not, so the correct backward passes."""
    model = build_model([{"type": "linear", "out_features": 2}, {"type": "relu"},
                         {"type": "linear", "out_features": 3}], (2,), dtype=np.float64)
    x = np.array([[1.0, -0.5], [0.3, 0.8]])
    labels = np.array([0, 2])
    lin = model.layers[0]
    lin.params["b"][0] = 3e-7 - x[0] @ lin.params["W"][:, 0]  # z[0, 0] = 3e-7 > 0, alive
    loss = build_loss(None)
    z = x @ lin.params["W"] + lin.params["b"]
    assert 0 < z[0, 0] < 1e-6
    # the plain central difference at h = 1e-6 is off by far more than the tolerance
    rows = gradcheck(model, loss, x, labels, full=True, rng=np.random.default_rng(0))
    analytic_db0 = _analytic(model, loss, x, labels)["0.b"][0]
    b = lin.params["b"]

    def f():
        return loss.forward(model.forward(x, train=True), labels)

    orig = b[0]
    b[0] = orig + 1e-6
    up = f()
    b[0] = orig - 1e-6
    down = f()
    b[0] = orig
    naive = (up - down) / 2e-6
    assert abs(naive - analytic_db0) / (abs(naive) + abs(analytic_db0)) > 1e-3
    assert not gradcheck_failed(rows), format_gradcheck(rows)


def test_kink_states_of_the_piecewise_layers():
    """relu and leaky_relu report their input's sign pattern, maxpool2d the offset of each window's
    first maximum; smooth layers report None."""
    model = build_model([{"type": "conv2d", "out_channels": 2, "kernel_size": 3}, {"type": "leaky_relu"},
                         {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"},
                         {"type": "linear", "out_features": 3}, {"type": "tanh"}], (1, 6, 6), dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6))
    model.forward(x, train=True)
    conv, leaky, relu, pool = model.layers[:4]
    z = conv.forward(x, train=True)
    np.testing.assert_array_equal(leaky.kink_state(), z > 0)
    # the relu runs after the pool (plan), so its state is the sign of the pooled values
    pooled = z.reshape(2, 2, 2, 2, 2, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(relu.kink_state(), pooled > 0)
    windows = z.reshape(2, 2, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 2, 2, 2, 4)
    np.testing.assert_array_equal(pool.kink_state(), windows.argmax(axis=-1))
    assert all(model.layers[k].kink_state() is None for k in (0, 4, 5, 6))


def test_kink_crossed_at_every_step_is_skipped_and_counted():
    """A pre-activation 3e-9 from the ReLU kink is crossed even by the smallest step (1e-8): the entries
    that move it are skipped, counted per tensor and in the verdict, and everything else passes."""
    model = build_model([{"type": "linear", "out_features": 2}, {"type": "relu"},
                         {"type": "linear", "out_features": 3}], (2,), dtype=np.float64)
    x = np.array([[1.0, -0.5], [0.3, 0.8]])
    labels = np.array([0, 2])
    lin = model.layers[0]
    lin.params["b"][0] = 3e-9 - x[0] @ lin.params["W"][:, 0]
    rows = gradcheck(model, build_loss(None), x, labels, full=True, rng=np.random.default_rng(0))
    by_name = {r.name: r for r in rows}
    assert by_name["0.b"].kinks == 1 and by_name["0.W"].kinks == 2   # b[0], W[0, 0] and W[1, 0] move z[0, 0]
    assert by_name["2.W"].kinks == 0 and by_name["2.b"].kinks == 0
    assert not gradcheck_failed(rows), format_gradcheck(rows)
    text = format_gradcheck(rows)
    assert "kinks" in text.splitlines()[0]
    assert f"{sum(r.kinks for r in rows)} entries skipped" in text.splitlines()[-1]


def test_maxpool_argmax_change_inside_the_step_is_remeasured():
    """Two window values 3e-7 apart (behind a relu, which runs after the pool): a ±1e-6 step of the
    smaller one changes the window's argmax; the difference is then wrong, the retry at 1e-7 is not."""
    model = build_model([{"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"},
                         {"type": "linear", "out_features": 3}], (1, 2, 2), dtype=np.float64)
    assert model.plan[0].layers == (1, 0)
    x = np.array([[[[0.5, 0.5 + 3e-7], [-1.0, 0.2]]], [[[0.1, -0.3], [0.7, 0.4]]]])
    labels = np.array([1, 2])
    loss = build_loss(None)
    rows = gradcheck(model, loss, x, labels, full=True, rng=np.random.default_rng(0))
    assert not gradcheck_failed(rows), format_gradcheck(rows)
    assert all(r.kinks == 0 for r in rows)

    def f(v):
        xp = x.copy()
        xp[0, 0, 0, 0] = v
        return loss.forward(model.forward(xp, train=True), labels)

    naive = (f(0.5 + 1e-6) - f(0.5 - 1e-6)) / 2e-6   # the analytic gradient of x[0, 0, 0, 0] is 0
    assert abs(naive) > 1e-3


def test_a_backward_wrong_only_near_kinks_still_fails(monkeypatch):
    """A relu whose backward also passes the gradient for -0.5 < x <= 0 is wrong only near its kink;
    the check compares those units where the step crosses no kink, and fails (dL/dx and the first
    layer's params), rather than excusing the difference as a kink."""
    model, x, labels = build_case((6,), [{"type": "linear", "out_features": 8, "weight_decay": WD},
                                         {"type": "relu"}])
    relu = model.layers[1]
    seen = {}
    forward = relu.forward

    def recording_forward(h, train=False):
        seen["x"] = h
        return forward(h, train)

    def wrong_backward(grad, need_input_grad=True):
        return grad * (seen["x"] > -0.5)

    monkeypatch.setattr(relu, "forward", recording_forward)
    monkeypatch.setattr(relu, "backward", wrong_backward)
    z = model.layers[0].forward(x)
    assert ((z > -0.5) & (z <= 0)).any()   # some units sit in the band where the backward is wrong
    rows = gradcheck(model, build_loss(None), x, labels, full=True, rng=np.random.default_rng(0))
    assert {r.name for r in gradcheck_failed(rows)} == {"input", "0.W", "0.b"}, format_gradcheck(rows)
    assert all(r.kinks == 0 for r in rows)


def _analytic(model, loss, x, labels):
    loss.forward(model.forward(x, train=True), labels)
    model.backward(loss.backward())
    return {name: g.copy() for name, _, g in model.parameters()}


def test_gradcheck_config_builds_from_a_config_dict():
    cfg = {"seed": 3, "data": {"dataset": "mnist-mini"},
           "model": [{"type": "flatten"}, {"type": "linear", "out_features": 16, "weight_decay": 1e-4},
                     {"type": "relu"}, {"type": "linear", "out_features": 10}],
           "loss": {"type": "softmax_cross_entropy", "label_smoothing": 0.1}}
    rows = gradcheck_config(cfg, samples=40)
    assert [r.name for r in rows] == ["input", "1.W", "1.b", "3.W", "3.b"]
    assert rows[0].size == 2 * 28 * 28 and rows[0].checked == 40   # the default batch of 2
    assert not gradcheck_failed(rows)
    again = gradcheck_config(cfg, samples=40)
    assert [r.max_rel_error for r in again] == [r.max_rel_error for r in rows]  # reproducible


def test_input_shape_comes_from_the_dataset_registry():
    """The input shape is the dataset's (nntrain.data.dataset_info); an unknown dataset is a ConfigError
    naming data.dataset, and so is a config without one."""
    from nntrain.errors import ConfigError
    from nntrain.tools.gradcheck import config_input_shape

    assert config_input_shape({"data": {"dataset": "cifar10"}}) == (3, 32, 32)
    assert config_input_shape({"data": {"dataset": "mnist-mini"}}) == (1, 28, 28)
    for cfg in ({"data": {"dataset": "no-such-set"}}, {"data": {}}):
        with pytest.raises(ConfigError, match="data.dataset"):
            config_input_shape(cfg)


def test_format_gradcheck_lists_every_tensor_and_the_verdict():
    rows = [GradcheckRow(None, "input", "input", 10, 10, 1e-9, (0,), 1e-6, True),
            GradcheckRow(0, "linear", "W", 200, 600, 3e-2, (1, 2), 1e-6, False, kinks=3)]
    text = format_gradcheck(rows)
    lines = text.splitlines()
    assert "max rel. error" in lines[0] and "kinks" in lines[0]
    assert any("input" in line and "pass" in line and "1.00e-09" in line for line in lines)
    assert any(" W " in line and "FAIL" in line and "3.00e-02" in line and "200/600      3" in line for line in lines)
    assert lines[-1].startswith("FAILED: 0.W") and "(3 entries skipped" in lines[-1]
    assert format_gradcheck(rows[:1]).splitlines()[-1] == "all 1 tensors within tolerance 1e-06"


def test_input_gradient_is_checked_after_a_training_backward():
    """A training backward (need_input_grad=False: the first conv returns no dx) before the check does
    not keep gradcheck from computing and checking dL/dx in full."""
    if "conv2d" not in LAYERS:
        pytest.skip("conv2d not registered")
    model, x, labels = build_case((2, 5, 5), [{"type": "conv2d", "out_channels": 2, "kernel_size": 3}])
    loss = build_loss(None)
    loss.forward(model.forward(x, train=True), labels)
    assert model.backward(loss.backward(), need_input_grad=False) is None
    rows = gradcheck(model, loss, x, labels, full=True, rng=np.random.default_rng(0))
    assert rows[0].name == "input" and rows[0].passed and rows[0].checked == rows[0].size == x.size


QUICKSTART = next(p for p in SHIPPED_CONFIGS if p.name == "quickstart.yaml")
CNN = next(p for p in SHIPPED_CONFIGS if p.name == "cnn.yaml")
SEEDS = range(5)


def distinct_checks() -> list[list[Path]]:
    """The shipped configs grouped by what gradcheck reads (dataset, model, loss; the seed is set per
    test): configs that differ only in training settings (cnn.yaml, cnn_augment.yaml) give identical
    checks, and one of each group is run."""
    groups: dict[str, list[Path]] = {}
    for path in SHIPPED_CONFIGS:
        raw = yaml.safe_load(path.read_text())
        key = json.dumps([raw["data"]["dataset"], raw["model"], raw.get("loss")], sort_keys=True)
        groups.setdefault(key, []).append(path)
    return list(groups.values())


# A check costs one forward (from the perturbed layer on) per entry and step: the ResNet of
# cifar_resnet.yaml takes over a minute at the defaults, so the suite checks it for one seed with 5
# entries per tensor (every tensor and the input still compared, kinks handled alike); the full default
# check passes too (`nntrain gradcheck configs/cifar_resnet.yaml`).
REDUCED = {"cifar_resnet": ["--samples", "5"]}


def default_checks() -> list:
    """(configs, seed, extra options) for test_gradcheck_command_passes_at_default_settings."""
    cases = []
    for paths in distinct_checks():
        extra = next((REDUCED[p.stem] for p in paths if p.stem in REDUCED), [])
        # the ports of published setups (configs/ports/) are checked for one seed: their layers are the
        # ones the other configs check for five
        few = extra or all(p.parent.name == "ports" for p in paths)
        for seed in SEEDS[:1] if few else SEEDS:
            cases.append(pytest.param(paths, seed, extra, id=f"{'+'.join(p.stem for p in paths)}-seed{seed}"))
    return cases


@pytest.mark.parametrize("paths, seed, extra", default_checks())
def test_gradcheck_command_passes_at_default_settings(paths, seed, extra):
    """`nntrain gradcheck CONFIG -s seed=K` with its defaults (50 entries per tensor, a batch of 2)
    passes on every shipped config, the CNNs' relu and max-pool kinks included (and those inside
    residual blocks), one row per parameter tensor and the input."""
    from click.testing import CliRunner

    from nntrain.cli import cli
    from nntrain.config import load_config
    from nntrain.tools.gradcheck import config_input_shape

    args = ["gradcheck", str(paths[0]), "-s", f"seed={seed}", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "gradcheck passed"
    cfg = load_config(paths[0])
    n_tensors = len(list(build_model(cfg["model"], config_input_shape(cfg)).parameters()))
    assert sum(line.endswith(" pass") for line in result.output.splitlines()) == 1 + n_tensors


def break_weight_grad(monkeypatch, layer_class) -> None:
    """Make `layer_class`'s backward leave dW 1 % too large (a deliberately wrong gradient)."""
    real = layer_class.backward

    def broken(self, grad, need_input_grad=True):
        dx = real(self, grad, need_input_grad)
        self.grads["W"] *= 1.01
        return dx

    monkeypatch.setattr(layer_class, "backward", broken)


def test_gradcheck_command_fails_on_a_broken_conv_backward(monkeypatch):
    """A conv2d backward whose dW is 1 % off fails the default check of configs/cnn.yaml (kinks and
    all), naming both conv weights, with exit 1; every other tensor passes."""
    from click.testing import CliRunner

    from nntrain.cli import cli
    from nntrain.nn.layers.conv import Conv2D

    break_weight_grad(monkeypatch, Conv2D)
    result = CliRunner().invoke(cli, ["gradcheck", str(CNN)])
    assert result.exit_code == 1, result.output
    assert "gradcheck FAILED for 2 tensor(s): 0.W, 3.W" in result.output
    failing = [line.split()[:3] for line in result.output.splitlines() if line.rstrip().endswith("FAIL")]
    assert failing == [["0", "conv2d", "W"], ["3", "conv2d", "W"]]


def test_gradcheck_command_exit_codes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from nntrain.cli import cli

    runner = CliRunner()
    good = runner.invoke(cli, ["gradcheck", str(QUICKSTART), "--samples", "20"])
    assert good.exit_code == 0, good.output
    assert "gradcheck passed" in good.output
    # a deliberately broken backward: the command fails with exit 1 and names the tensor
    from nntrain.nn.layers.linear import Linear

    break_weight_grad(monkeypatch, Linear)
    bad = runner.invoke(cli, ["gradcheck", str(QUICKSTART), "--samples", "20"])
    assert bad.exit_code == 1, bad.output
    assert "FAIL" in bad.output and ".W" in bad.output


# --- the default batch ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, input_shape, batch", [
    ([{"type": "flatten"}, {"type": "linear", "out_features": 3}], (2, 3, 3), 2),       # no batchnorm
    ([{"type": "batchnorm"}, {"type": "linear", "out_features": 3}], (6,), 8),          # 1 value per sample
    ([{"type": "batchnorm"}, {"type": "flatten"}, {"type": "linear", "out_features": 3}], (3, 2, 2), 2),
    ([{"type": "batchnorm"}, {"type": "flatten"}, {"type": "linear", "out_features": 3}], (3, 1, 3), 3),
    ([{"type": "residual", "body": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3, "stride": 3},
                                    {"type": "batchnorm"}],
      "shortcut": [{"type": "avgpool2d", "kernel_size": 3}, {"type": "conv2d", "out_channels": 2, "kernel_size": 1}]},
      {"type": "flatten"}, {"type": "linear", "out_features": 3}], (1, 3, 3), 8),       # inside a block
])
def test_default_batch_gives_every_batchnorm_eight_values(spec, input_shape, batch):
    """Batch statistics over 2 values are nearly singular (x̂ = ±1), which breaks central differences:
    the default batch grows until every batchnorm, blocks included, sees at least 8 values per feature."""
    from nntrain.tools.gradcheck import default_batch_size

    model = build_model(spec, input_shape, seed=0, dtype=np.float64)
    assert default_batch_size(model) == batch


def test_gradcheck_config_uses_the_default_batch_and_passes_with_a_flat_batchnorm():
    """An MLP with a batchnorm on its hidden features: checked on 8 samples (not 2), and it passes."""
    spec = [{"type": "flatten"}, {"type": "linear", "out_features": 5}, {"type": "batchnorm"}, {"type": "relu"},
            {"type": "linear", "out_features": 10}]
    rows = gradcheck_config({"seed": 0, "data": {"dataset": "mnist"}, "model": spec}, samples=5)
    assert rows[0].name == "input" and rows[0].size == 8 * 28 * 28
    assert not gradcheck_failed(rows)
    assert gradcheck_config({"seed": 0, "data": {"dataset": "mnist"}, "model": spec}, samples=5,
                            batch_size=3)[0].size == 3 * 28 * 28
