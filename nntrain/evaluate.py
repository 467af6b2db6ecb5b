"""Evaluation of a model on a labelled set: loss, accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nntrain.losses import SoftmaxCrossEntropy
from nntrain.model import Model


def normalize_batch(images: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None,
                    dtype: np.dtype = np.float32, transform=None) -> np.ndarray:
    """uint8 images (n, C, H, W) -> float (n, C, H, W): x/255, optional `transform` on the [0,1] batch,
    then (x - mean) / std per channel. One batch at a time, so a dataset is never held as float."""
    dtype = np.dtype(dtype)
    x = images.astype(dtype)
    x *= dtype.type(1.0 / 255.0)
    if transform is not None:
        x = transform(x)
    if mean is not None:
        x -= np.asarray(mean, dtype=x.dtype).reshape(1, -1, 1, 1)
        x /= np.asarray(std, dtype=x.dtype).reshape(1, -1, 1, 1)
    return x


@dataclass
class Evaluation:
    """Results on one split. probs: (N, K) softmax outputs; predictions: (N,) argmax."""

    loss: float
    accuracy: float
    probs: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray

    def confusion(self, num_classes: int) -> np.ndarray:
        """(K, K) counts: row = true class, column = predicted class."""
        cm = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(cm, (self.labels, self.predictions), 1)
        return cm

    def per_class_accuracy(self, num_classes: int) -> np.ndarray:
        cm = self.confusion(num_classes)
        totals = cm.sum(axis=1)
        return np.divide(np.diag(cm), totals, out=np.full(num_classes, np.nan), where=totals > 0)


def evaluate(model: Model, loss: SoftmaxCrossEntropy, images: np.ndarray, labels: np.ndarray, batch_size: int,
             mean: np.ndarray | None, std: np.ndarray | None, transform=None) -> Evaluation:
    """Run the model in eval mode over uint8 `images` (N, C, H, W); `transform` (on [0,1] floats) perturbs inputs."""
    n = len(labels)
    probs = np.empty((n, model.output_shape[0]), dtype=model.dtype)
    total = 0.0
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        x = normalize_batch(images[sl], mean, std, model.dtype, transform)
        z = model.forward(x, train=False)
        total += loss.forward(z, labels[sl]) * len(x)
        probs[sl] = loss.probabilities()
    preds = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    acc = float((preds == labels).mean()) if n else float("nan")
    return Evaluation(total / n if n else float("nan"), acc, probs, preds, np.asarray(labels))
