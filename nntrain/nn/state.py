"""Strict loading of named arrays into a model's or optimizer's own arrays (Chainer's npz rule)."""

from __future__ import annotations

import numpy as np

from nntrain.errors import CheckpointError


def load_arrays_into(targets: dict[str, np.ndarray], given: dict[str, np.ndarray], what: str, owner: str) -> None:
    """Strict load (as Chainer's npz serializer): every target name present in `given` with the same
    shape and a floating dtype, nothing extra; all checked before anything is copied, so a refused
    load leaves the targets untouched. `what` names one entry ("weight"), `owner` the whole ("the model")."""
    missing = sorted(set(targets) - set(given))
    extra = sorted(set(given) - set(targets))
    if missing or extra:
        raise CheckpointError(f"the {what}s do not match {owner}: missing {missing or 'none'}, "
                              f"unexpected {extra or 'none'}")
    for name, target in targets.items():
        value = np.asarray(given[name])
        if value.shape != target.shape:
            raise CheckpointError(f"{what} '{name}' has shape {value.shape}, {owner} expects {target.shape}")
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"{what} '{name}' has dtype {value.dtype}, expected floating point")
    for name, target in targets.items():
        target[...] = given[name]
