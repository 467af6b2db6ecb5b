"""Softmax cross-entropy against PyTorch (plain, label smoothing, class weights), its stability, and the report's
`softmax: false` mode."""

from __future__ import annotations

import numpy as np
import pytest

from nntrain import build_loss, build_model
from nntrain.errors import ConfigError, DataError
from nntrain.nn.losses import SoftmaxCrossEntropy

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("n, k", [(1, 10), (7, 3), (64, 10)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_torch_cross_entropy(dtype, rtol, n, k, smoothing) -> None:
    rng = np.random.default_rng(n * k)
    z = (rng.standard_normal((n, k)) * 3).astype(dtype)
    y = rng.integers(0, k, size=n)
    loss = SoftmaxCrossEntropy(label_smoothing=smoothing)
    value = loss.forward(z, y)
    dz = loss.backward()
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y), label_smoothing=smoothing)
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=rtol)
    np.testing.assert_allclose(dz, tz.grad.numpy(), rtol=max(rtol, 1e-6), atol=1e-7)
    assert dz.dtype == dtype


def test_gradient_is_p_minus_y_over_n() -> None:
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    loss = SoftmaxCrossEntropy()
    loss.forward(z, np.array([2, 0]))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(loss.backward(), (p - np.eye(3)[[2, 0]]) / 2, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_for_huge_logits(dtype) -> None:
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, 1e4]], dtype=dtype)
    loss = SoftmaxCrossEntropy()
    value = loss.forward(z, np.array([1, 2, 0]))
    grad = loss.backward()
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx((2e4 + 0 + np.log(3)) / 3, rel=1e-6)  # -log p of the wrong/right/tied rows


def test_softmax_false_takes_probabilities_and_matches_the_fused_loss() -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4))
    y = rng.integers(0, 4, size=5)
    fused = SoftmaxCrossEntropy()
    value = fused.forward(z, y)
    dz = fused.backward()
    # softmax layer + probability loss (the report's cancel_softmax) gives the same value and logit gradient
    model = build_model([{"type": "softmax"}], (4,), dtype=np.float64)
    split = build_loss({"type": "softmax_cross_entropy", "softmax": False})
    p = model.forward(z, train=True)
    assert split.forward(p, y) == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(model.backward(split.backward()), dz, rtol=1e-9, atol=1e-12)


def test_softmax_false_stays_finite_at_zero_probability() -> None:
    p = np.array([[0.0, 1.0], [0.5, 0.5]])
    loss = build_loss({"type": "softmax_cross_entropy", "softmax": False})
    value = loss.forward(p, np.array([0, 1]))
    grad = loss.backward()
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx((-np.log(1e-12) - np.log(0.5)) / 2)


def test_inputs_are_not_modified() -> None:
    z = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    z.flags.writeable = False
    y = np.array([0, 1, 2])
    loss = SoftmaxCrossEntropy(label_smoothing=0.1)
    loss.forward(z, y)
    loss.backward()


def test_bad_labels_and_options() -> None:
    loss = SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="out of range"):
        loss.forward(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="out of range"):
        loss.forward(np.zeros((2, 3)), np.array([-1, 0]))
    with pytest.raises(ValueError, match="class indices"):
        loss.forward(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ConfigError, match="label_smoothing"):
        build_loss({"type": "softmax_cross_entropy", "label_smoothing": 1.0})
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss({"type": "mse"})


WEIGHTS = {3: [0.5, 2.0, 1.25], 10: [1.0, 0.3, 2.5, 1.0, 0.7, 4.0, 1.1, 0.9, 1.0, 0.2]}


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("n, k", [(1, 10), (7, 3), (64, 10)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_class_weights_match_torch_weighted_mean(dtype, rtol, n, k, smoothing) -> None:
    """torch divides both the target term and the smoothing term by Σ_n w[y_n]:
    L = [(1-ε) Σ_n w_{y_n}·(-log p_{n,y_n}) + ε/K Σ_n Σ_k w_k·(-log p_nk)] / Σ_n w_{y_n}."""
    rng = np.random.default_rng(n * k + 1)
    z = (rng.standard_normal((n, k)) * 3).astype(dtype)
    y = rng.integers(0, k, size=n)
    loss = build_loss({"type": "softmax_cross_entropy", "label_smoothing": smoothing, "class_weights": WEIGHTS[k]})
    value = loss.forward(z, y)
    dz = loss.backward()
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y), weight=torch.tensor(WEIGHTS[k], dtype=tz.dtype),
                                           label_smoothing=smoothing)
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=rtol)
    np.testing.assert_allclose(dz, tz.grad.numpy(), rtol=max(rtol, 1e-6), atol=1e-7 if dtype == np.float32 else 1e-15)
    assert dz.dtype == dtype
    w = np.asarray(WEIGHTS[k])   # the mean really is divided by the batch's Σ w[y], not by N
    logp = torch.log_softmax(torch.tensor(z, dtype=torch.float64), 1).numpy()
    t = np.full((n, k), smoothing / k) + (1 - smoothing) * np.eye(k)[y]
    assert value == pytest.approx(-(t * w * logp).sum() / w[y].sum(), rel=rtol)


def test_equal_class_weights_are_the_plain_mean() -> None:
    rng = np.random.default_rng(2)
    z, y = rng.standard_normal((20, 4)), rng.integers(0, 4, size=20)
    plain, scaled = SoftmaxCrossEntropy(label_smoothing=0.1), SoftmaxCrossEntropy(label_smoothing=0.1,
                                                                                  class_weights=[3.0] * 4)
    assert scaled.forward(z, y) == pytest.approx(plain.forward(z, y), rel=1e-13)
    np.testing.assert_allclose(scaled.backward(), plain.backward(), rtol=1e-12, atol=1e-16)


def test_class_weights_with_softmax_false_match_the_fused_loss() -> None:
    rng = np.random.default_rng(3)
    z, y = rng.standard_normal((6, 3)), rng.integers(0, 3, size=6)
    fused = build_loss({"type": "softmax_cross_entropy", "class_weights": [1.0, 4.0, 0.5], "label_smoothing": 0.1})
    value, dz = fused.forward(z, y), fused.backward()
    model = build_model([{"type": "softmax"}], (3,), dtype=np.float64)
    split = build_loss({"type": "softmax_cross_entropy", "softmax": False, "class_weights": [1.0, 4.0, 0.5],
                        "label_smoothing": 0.1})
    assert split.forward(model.forward(z, train=True), y) == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(model.backward(split.backward()), dz, rtol=1e-9, atol=1e-12)


def test_balanced_weights_are_sklearns_from_the_training_labels(caplog) -> None:
    from nntrain.nn.losses import balanced_class_weights

    train = np.array([0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(balanced_class_weights(train, 3), [6 / 9, 6 / 3, 6 / 6], rtol=1e-15)
    loss = build_loss({"type": "softmax_cross_entropy", "class_weights": "balanced"}, train_labels=train,
                      num_classes=3)
    np.testing.assert_allclose(loss.weights, [2 / 3, 2.0, 1.0], rtol=1e-15)
    z, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 2, 2, 1])
    tz = torch.tensor(z, requires_grad=True)
    want = torch.nn.functional.cross_entropy(tz, torch.tensor(y), weight=torch.tensor([2 / 3, 2.0, 1.0],
                                                                                      dtype=torch.float64))
    assert loss.forward(z, y) == pytest.approx(want.item(), rel=1e-13)
    with pytest.raises(DataError, match="class 3 has none"):
        build_loss({"type": "softmax_cross_entropy", "class_weights": "balanced"}, train_labels=train, num_classes=4)
    with caplog.at_level("WARNING"):   # built without labels (a tool reading a config): equal weights, said so
        unlabelled = build_loss({"type": "softmax_cross_entropy", "class_weights": "balanced"})
    assert unlabelled.weights is None and "needs the training labels" in caplog.text


def test_class_weights_are_validated() -> None:
    from nntrain.nn.losses import LOSSES

    spec = {"type": "softmax_cross_entropy", "class_weights": [1.0, 2.0]}
    assert LOSSES.resolve(spec, "loss", {"num_classes": 2})["class_weights"] == [1.0, 2.0]
    with pytest.raises(ConfigError, match="2 weights, but the dataset has 10 classes") as info:
        LOSSES.resolve(spec, "loss", {"num_classes": 10})
    assert info.value.path == "loss.class_weights"
    for bad in ([1.0, 0.0], [1.0, -2.0], "balancd", 3.0, [1.0, "x"]):
        with pytest.raises(ConfigError, match='"balanced"') as info:
            build_loss({"type": "softmax_cross_entropy", "class_weights": bad})
        assert info.value.path == "loss.class_weights"
    assert LOSSES.resolve({"type": "softmax_cross_entropy"}, "loss")["class_weights"] is None
    loss = build_loss(spec)
    with pytest.raises(ValueError, match="2 entries, the input 3 classes"):
        loss.forward(np.zeros((2, 3)), np.array([0, 1]))


def test_a_config_checks_the_weights_against_the_datasets_classes() -> None:
    from nntrain.config import validate_config

    cfg = {"data": {"dataset": "mnist-mini"}, "model": [{"type": "flatten"}, {"type": "linear", "out_features": 10}],
           "optimizer": {"type": "sgd", "lr": 0.1}, "loss": {"class_weights": [1.0, 2.0, 3.0]}}
    with pytest.raises(ConfigError, match="3 weights, but the dataset has 10 classes") as info:
        validate_config(cfg, source="x.yaml")
    assert info.value.path == "loss.class_weights"
    cfg["loss"] = {"class_weights": "balanced", "label_smoothing": 0.1}
    assert validate_config(cfg, source="x.yaml")["loss"]["class_weights"] == "balanced"
