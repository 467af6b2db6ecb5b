"""Softmax cross-entropy against PyTorch, its stability, and the report's `softmax: false` mode."""

from __future__ import annotations

import numpy as np
import pytest

from nntrain import build_loss, build_model
from nntrain.errors import ConfigError
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
