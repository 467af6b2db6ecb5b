"""The position of a run (`RunState`), and its round trip through checkpoint metadata.

Serialised field by field with `dataclasses`; read back with every field checked, because a
checkpoint file is not trusted: a forged `batch: -3` or `history: "xyz"` is a CheckpointError, not a
traceback or a silently skipped epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from nntrain.errors import CheckpointError


def empty_sums() -> dict[str, float]:
    """Running totals of an epoch in progress."""
    return {"loss": 0.0, "correct": 0, "count": 0, "seconds": 0.0}


@dataclass
class RunState:
    """The position of a run, saved in every checkpoint's metadata."""

    epoch: int = 0                       # the epoch in progress (0-based); == epochs when finished
    batch: int = 0                       # batches of `epoch` already trained
    history: list[dict] = field(default_factory=list)   # one metrics row per finished epoch
    sums: dict = field(default_factory=empty_sums)      # running totals of the epoch in progress
    epoch_shuffle_state: dict | None = None   # shuffle Generator state before this epoch's permutation
    stopped_early: bool = False          # a callback asked to stop


def run_state_meta(state: RunState) -> dict[str, Any]:
    """The checkpoint metadata fields of `state` (JSON-able)."""
    return asdict(state)


def _int(meta: Mapping[str, Any], key: str, low: int, high: int) -> int:
    v = meta.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise CheckpointError(f"'{key}' must be an integer in [{low}, {high}], got {v!r}")
    return v


def restore_run_state(meta: Mapping[str, Any], epochs: int) -> RunState:
    """A RunState from checkpoint metadata, every field checked against a run of `epochs` epochs."""
    missing = [f.name for f in fields(RunState) if f.name not in meta]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {', '.join(missing)}")
    epoch = _int(meta, "epoch", 0, max(epochs, 0) + 10**6)
    batch = _int(meta, "batch", 0, 10**9)
    history, sums = meta["history"], meta["sums"]
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history) or len(history) != epoch:
        raise CheckpointError(f"'history' must be a list of {epoch} metric rows, got {str(history)[:60]!r}")
    if (not isinstance(sums, dict) or set(sums) != set(empty_sums())
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                       for v in sums.values())):
        raise CheckpointError(f"'sums' must hold the numbers {', '.join(empty_sums())}, got {str(sums)[:60]!r}")
    shuffle = meta["epoch_shuffle_state"]
    if batch > 0 and not isinstance(shuffle, dict):
        raise CheckpointError("a checkpoint inside an epoch must hold 'epoch_shuffle_state'")
    if not isinstance(meta["stopped_early"], bool):
        raise CheckpointError(f"'stopped_early' must be true or false, got {meta['stopped_early']!r}")
    return RunState(epoch=epoch, batch=batch, history=history, sums=sums, epoch_shuffle_state=shuffle,
                    stopped_early=meta["stopped_early"])
