"""The named random streams of a run, all derived from the config's one `seed`.

Each stream is its own `numpy.random.Generator` seeded with `[seed, number]`, so adding a use of one
stream (dropout noise, say) never shifts another (the weight init, the validation split). The numbers
are part of the checkpoint contract: changing one changes every run's results.
"""

from __future__ import annotations

import numpy as np

STREAMS: dict[str, int] = {
    "init": 0,      # weight initialisation
    "model": 1,     # run-time noise inside the model (dropout)
    "split": 2,     # which training images are held out for validation
    "shuffle": 3,   # the order of training batches
    "augment": 4,   # data augmentation
    "preview": 5,   # the images and augmentations `augment-preview` shows
    "perturb": 7,   # noise of `eval --perturb`
    "test_split": 8,    # the test images held out of an image folder or CSV that brings no test split
    "gradcheck": 101,   # the inputs and entries `gradcheck` draws
    "timing": 102,  # the random batches `nntrain time` feeds
    "health": 103,  # the fixed sample of training images the training-health callback measures on
    "lr_find": 104,  # the batches and noise of `nntrain lr-find`
}


def stream(seed: int, name: str) -> np.random.Generator:
    """The Generator of stream `name` for `seed` (a fresh one each call: same seed, same draws)."""
    return np.random.default_rng([int(seed), STREAMS[name]])
