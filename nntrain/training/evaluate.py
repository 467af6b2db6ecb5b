"""Evaluation of a model on a labelled set: loss, accuracy, per-class accuracy, confusion matrix; with
test-time augmentation (`train.tta`, nntrain.data.tta) the mean prediction over the views."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nntrain.data import iterate_batches
from nntrain.data.tta import tta_views
from nntrain.nn.losses import SoftmaxCrossEntropy, softmax
from nntrain.nn.model import Model


@dataclass
class Evaluation:
    """Results on one split. probs: (N, K) class probabilities (`class_probabilities`); predictions: (N,) argmax."""

    loss: float
    accuracy: float
    probs: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    tta: str = "none"
    single_view_accuracy: float | None = None   # with TTA: the accuracy of the plain images alone

    def confusion(self, num_classes: int) -> np.ndarray:
        """(K, K) counts: row = true class, column = predicted class."""
        cm = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(cm, (self.labels, self.predictions), 1)
        return cm

    def per_class_accuracy(self, num_classes: int) -> np.ndarray:
        cm = self.confusion(num_classes)
        totals = cm.sum(axis=1)
        return np.divide(np.diag(cm), totals, out=np.full(num_classes, np.nan), where=totals > 0)


def class_probabilities(z: np.ndarray, logits: bool = True) -> np.ndarray:
    """A model's outputs (N, K) as class probabilities, the same for evaluation and prediction: the softmax
    of logits, or for a model ending in its own softmax (`loss.softmax: false`) its outputs clipped at 0
    and renormalised, so each row sums to 1 either way."""
    if logits:
        return softmax(z)
    p = np.maximum(z, 0.0)
    return p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)


def evaluate(model: Model, loss: SoftmaxCrossEntropy, images: np.ndarray, labels: np.ndarray, batch_size: int,
             mean: np.ndarray | None, std: np.ndarray | None, transform=None, tta: str = "none") -> Evaluation:
    """Run the model in eval mode over uint8 `images` (N, C, H, W); `transform` (on [0,1] floats) perturbs
    inputs. With `tta` (see the module) the probabilities are the mean over the views and the loss is the
    mean of each view's loss."""
    n = len(labels)
    probs = np.empty((n, model.output_shape[0]), dtype=model.dtype)
    first = np.empty(n if tta != "none" else 0, dtype=np.int64)   # with TTA: the plain view's predictions
    total = 0.0
    start = 0
    for x, y in iterate_batches(images, labels, batch_size, mean=mean, std=std, transform=transform,
                                dtype=model.dtype):
        views = tta_views(x, tta)
        p = probs[start:start + len(y)]
        for i, v in enumerate(views):
            z = model.forward(v, train=False)
            total += loss.forward(z, y) * len(y) / len(views)
            pv = class_probabilities(z, loss.softmax)
            if i == 0:
                p[...] = pv
                if len(views) > 1:
                    first[start:start + len(y)] = pv.argmax(axis=1)
            else:
                p += pv
        if len(views) > 1:
            p /= len(views)
        start += len(y)
    preds = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    acc = float((preds == labels).mean()) if n else float("nan")
    single = (float((first == labels).mean()) if n else float("nan")) if tta != "none" else None
    return Evaluation(total / n if n else float("nan"), acc, probs, preds, np.asarray(labels), tta, single)
