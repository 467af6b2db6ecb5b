r"""Losses. A loss returns its value from `forward` and dL/d(logits) from `backward`; the caller passes
that gradient to `model.backward` (the loss never drives the model)."""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrain.options import Option
from nntrain.registry import Configurable, Registry

_TINY = 1e-12  # probabilities are clipped here in softmax: false mode so log and 1/p stay finite


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax via log-sum-exp: z - max - log Σ exp(z - max). Stable for |z| ~ 1e4."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, exp(z - max) / Σ exp(z - max): the class probabilities of logits (N, K), stable
    for large |z| (the max is subtracted first, so nothing overflows)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# YAML type name -> loss class: `@LOSSES.register("name")` makes it `type: name` in the loss section.
LOSSES = Registry("loss")


@LOSSES.register("softmax_cross_entropy")
class SoftmaxCrossEntropy(Configurable):
    r"""Mean cross-entropy over the batch.

    softmax=True (default): input z are logits (N, K); L = -1/N Σ_n Σ_k t_nk log softmax(z_n)_k,
    with targets t = (1-ε)·onehot + ε/K (label smoothing ε); dL/dz = (softmax(z) - t) / N.
    softmax=False (cancel_softmax): input p are probabilities; L = -1/N Σ t log p and
    dL/dp = -t / (N p), with p clipped at 1e-12 so both stay finite at p = 0.
    """

    options = {
        "softmax": Option("bool", True, doc="false: the model outputs probabilities, not logits"),
        "label_smoothing": Option("float", 0.0, minimum=0.0, maximum=1.0, exclusive_max=True,
                                  doc="target = (1-ε)·onehot + ε/K"),
    }

    def __init__(self, **options: Any):
        self._set_options(options)   # resolved by LOSSES: checked and complete

    def _targets(self, labels: np.ndarray, n: int, k: int, dtype: np.dtype) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be {n} class indices, got array of shape {labels.shape}, dtype {labels.dtype}")
        if n and (labels.min() < 0 or labels.max() >= k):
            bad = labels[(labels < 0) | (labels >= k)][0]
            raise ValueError(f"label {bad} is out of range for {k} classes (valid: 0..{k - 1})")
        t = np.full((n, k), self.label_smoothing / k, dtype=dtype)
        t[np.arange(n), labels] += 1.0 - self.label_smoothing
        return t

    def forward(self, z: np.ndarray, labels: np.ndarray) -> float:
        """z: (N, K) logits (or probabilities); labels: (N,) ints in [0, K). Returns the mean loss."""
        n, k = z.shape
        self.t = self._targets(labels, n, k, z.dtype)
        self.n = max(n, 1)
        if self.softmax:
            logp = log_softmax(z)
            self.p = np.exp(logp)
        else:
            self.p = np.maximum(z, _TINY)
            logp = np.log(self.p)
        return float(-(self.t * logp).sum(dtype=np.float64) / self.n)

    def backward(self) -> np.ndarray:
        """dL/dz, same dtype and shape as the z given to forward."""
        if self.softmax:
            return (self.p - self.t) / self.n
        return -self.t / (self.p * self.n)

    def probabilities(self) -> np.ndarray:
        """Class probabilities of the last forward (softmax of the logits, or the given p)."""
        return self.p


def build_loss(spec: dict[str, Any] | None = None) -> SoftmaxCrossEntropy:
    """`{type: softmax_cross_entropy, softmax: true, label_smoothing: 0.0}` -> loss object (None: the default)."""
    return LOSSES.build(spec if spec is not None else {"type": "softmax_cross_entropy"}, path="loss")
