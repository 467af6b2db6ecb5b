"""Test-time augmentation (`train.tta`): the views of an evaluation batch whose predictions are averaged.

With "hflip" a prediction is the mean of the class probabilities of the image and of its left-right
mirror image, p = (p(x) + p(flip(x)))/2, in validation, test, `nntrain eval` and `nntrain predict` alike
(an exported ONNX graph gives the plain logits). The mirror image is a view the training augmentation
(horizontal_flip) already showed the model, so the two predictions err partly independently and their
mean is right more often (the CIFAR-10 ResNet of configs/cifar_resnet.yaml: +1.1 points). Wrong for
inputs whose mirror image means something else (digits, letters).
"""

from __future__ import annotations

import numpy as np

TTA_VIEWS = ("none", "hflip")


def tta_views(x: np.ndarray, tta: str) -> list[np.ndarray]:
    """The views of a batch x (N, C, H, W): [x] for "none", [x, x mirrored left-right] (a contiguous
    copy) for "hflip". The first view is always x itself."""
    if tta == "none":
        return [x]
    if tta == "hflip":
        if x.ndim != 4:
            raise ValueError(f"tta 'hflip' needs images (N, C, H, W), got an array of shape {x.shape}")
        return [x, np.ascontiguousarray(x[..., ::-1])]
    raise ValueError(f"unknown tta {tta!r}; known: {', '.join(TTA_VIEWS)}")
