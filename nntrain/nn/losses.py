r"""Losses. A loss returns its value from `forward` and dL/d(logits) from `backward`; the caller passes
that gradient to `model.backward` (the loss never drives the model)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from nntrain.errors import ConfigError, DataError
from nntrain.options import Option
from nntrain.registry import Configurable, Registry

log = logging.getLogger(__name__)

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


class _ClassWeightsOption(Option):
    """A list of positive numbers, or the word "balanced" (or null): what `class_weights` accepts."""

    def describe(self) -> str:
        return 'a list of numbers > 0, or "balanced" (or null)'

    def validate(self, value: Any, path: str) -> Any:
        if isinstance(value, str) and value == "balanced":
            return value
        return super().validate(value, path)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's 'balanced' weights of training labels (N,): w_k = N / (K·count_k), float64 (K,).
    A class without a training example has no such weight: DataError."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (
            labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"training labels must be class indices in [0, {num_classes}), got {labels.dtype} "
                         f"array of shape {labels.shape}")
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = ", ".join(str(k) for k in np.flatnonzero(counts == 0)[:10])
        raise DataError(f"class_weights: balanced needs an example of every class in the training split, but "
                        f"class {missing} has none; give the weights as a list instead")
    return len(labels) / (num_classes * counts.astype(np.float64))


@LOSSES.register("softmax_cross_entropy")
class SoftmaxCrossEntropy(Configurable):
    r"""Cross-entropy of logits, the mean over the batch (weighted as torch's F.cross_entropy).

    Targets t = (1-ε)·onehot(y) + ε/K (label smoothing ε), weighted per class: T_nk = w_k·t_nk (w = 1
    without class_weights). With W = Σ_n w_{y_n} (= N unweighted), as torch's weighted mean:
    softmax=True (default): input z are logits (N, K); L = -1/W Σ_n Σ_k T_nk log softmax(z_n)_k and
    dL/dz_n = (softmax(z_n)·Σ_k T_nk - T_n) / W  (= (softmax(z) - t) / N unweighted).
    softmax=False: input p are probabilities (cancel_softmax); L = -1/W Σ T log p and
    dL/dp = -T / (W p), with p clipped at 1e-12 so both stay finite at p = 0.
    class_weights "balanced" is w_k = N_train / (K·count_k) from the training labels given at build
    time; validation losses are weighted the same way.
    """

    options = {
        "softmax": Option("bool", True, doc="false: the model outputs probabilities, not logits"),
        "label_smoothing": Option("float", 0.0, minimum=0.0, maximum=1.0, exclusive_max=True,
                                  doc="target = (1-ε)·onehot + ε/K"),
        "class_weights": _ClassWeightsOption(
            "floats", None, minimum=0.0, exclusive_min=True, nullable=True,
            doc="per-class weights w_k of the loss (one per class; mean divides by Σ w of the batch's labels, as "
                "torch); balanced: N/(K·count_k) from the training labels; null: all 1"),
    }

    @classmethod
    def check(cls, values: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """A list of class weights has one entry per class (`context["num_classes"]`, when known)."""
        weights, k = values.get("class_weights"), context.get("num_classes")
        if isinstance(weights, list) and k is not None and len(weights) != k:
            raise ConfigError(f"got {len(weights)} weights, but the dataset has {k} classes: give one weight per "
                              "class, or balanced", "class_weights")
        return values

    def __init__(self, train_labels: np.ndarray | None = None, num_classes: int | None = None, **options: Any):
        """`train_labels` (N,) and `num_classes` resolve `class_weights: balanced`; without labels it falls
        back to equal weights, with a warning."""
        self._set_options(options)   # resolved by LOSSES: checked and complete
        self.weights: np.ndarray | None = None   # float64 (K,), or None: every class weighs 1
        weights = self.config.get("class_weights")
        if weights == "balanced":
            if train_labels is None:
                log.warning("class_weights: balanced needs the training labels, which this loss was built "
                            "without; every class weighs 1 here")
            else:
                labels = np.asarray(train_labels)
                k = num_classes if num_classes is not None else int(labels.max()) + 1
                self.weights = balanced_class_weights(labels, k)
        elif weights is not None:
            self.weights = np.asarray(weights, dtype=np.float64)
            if num_classes is not None and len(self.weights) != num_classes:
                raise ValueError(f"class_weights has {len(self.weights)} entries for {num_classes} classes")

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
        """z: (N, K) logits (or probabilities); labels: (N,) ints in [0, K). Returns the (weighted) mean loss."""
        n, k = z.shape
        self.t = self._targets(labels, n, k, z.dtype)
        self.n = max(n, 1)
        if self.weights is not None:
            if len(self.weights) != k:
                raise ValueError(f"class_weights has {len(self.weights)} entries, the input {k} classes")
            w = self.weights.astype(z.dtype)
            self.t *= w                                   # T = w ⊙ t, row by row
            total = float(w[np.asarray(labels)].sum(dtype=np.float64))
            self.n = total if total > 0 else 1.0          # W = Σ_n w_{y_n}
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
            if self.weights is None:
                return (self.p - self.t) / self.n
            return (self.p * self.t.sum(axis=1, keepdims=True) - self.t) / self.n
        return -self.t / (self.p * self.n)

    def probabilities(self) -> np.ndarray:
        """Class probabilities of the last forward (softmax of the logits, or the given p)."""
        return self.p


def build_loss(spec: Mapping[str, Any] | None = None, train_labels: np.ndarray | None = None,
               num_classes: int | None = None) -> SoftmaxCrossEntropy:
    """`{type: softmax_cross_entropy, softmax: true, label_smoothing: 0.0, class_weights: null}` -> loss object
    (None: the default). `train_labels` (N,) and `num_classes` resolve `class_weights: balanced`."""
    return LOSSES.build(spec if spec is not None else {"type": "softmax_cross_entropy"}, path="loss",
                        train_labels=train_labels, num_classes=num_classes)
