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
        raise CheckpointError(f"'{key}' must be an integer in [{low}, {high}], got {_show(v)}")
    return v


def _show(v: Any) -> str:
    """A forged value, short and safe to print."""
    text = repr(v)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


MAX_HISTORY_COLUMNS = 64


def check_history(history: Any, epoch: int | None = None) -> list[dict]:
    """The metrics rows of finished epochs: a list of mappings whose `epoch` counts 1, 2, ... and whose
    other values are finite numbers or null (`lr` and `seconds` not negative); `epoch` rows if given."""
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history) or (
            epoch is not None and len(history) != epoch):
        raise CheckpointError(f"'history' must be a list of {'' if epoch is None else epoch} metric rows, "
                              f"got {_show(history)}")
    for i, row in enumerate(history, 1):
        if row.get("epoch") != i or isinstance(row.get("epoch"), bool):
            raise CheckpointError(f"'history' row {i} must have epoch {i}, got {_show(row.get('epoch'))}")
        if len(row) > MAX_HISTORY_COLUMNS:
            raise CheckpointError(f"'history' row {i} has {len(row)} columns (at most {MAX_HISTORY_COLUMNS})")
        for key, v in row.items():
            if not isinstance(key, str) or not key.isidentifier() or len(key) > 40:
                raise CheckpointError(f"'history' row {i} has an invalid column name {_show(key)}")
            if v is not None and (not _number(v) or (key in ("lr", "seconds") and v < 0)):
                raise CheckpointError(f"'history' row {i}: '{key}' must be a finite number or null, got {_show(v)}")
    return history


def check_position(meta: Mapping[str, Any]) -> None:
    """Type and range of each position field present in checkpoint metadata, without knowing the run
    (what `load_checkpoint` checks of every checkpoint); `restore_run_state` checks them against the run."""
    from nntrain.training.checkpoint import check_generator_state

    if "epoch" in meta:
        _int(meta, "epoch", 0, MAX_EPOCH)
    if "batch" in meta:
        _int(meta, "batch", 0, MAX_BATCH)
    if "history" in meta:
        check_history(meta["history"])
    if "sums" in meta:
        sums = meta["sums"]
        if (not isinstance(sums, dict) or set(sums) != set(empty_sums())
                or not all(_number(v) and v >= 0 for v in sums.values())):
            raise CheckpointError(f"'sums' must hold the numbers {', '.join(empty_sums())}, got {_show(sums)}")
    if meta.get("epoch_shuffle_state") is not None:
        check_generator_state(meta["epoch_shuffle_state"], "epoch_shuffle_state")
    if "stopped_early" in meta and not isinstance(meta["stopped_early"], bool):
        raise CheckpointError(f"'stopped_early' must be true or false, got {_show(meta['stopped_early'])}")


MAX_EPOCH = 10**7
MAX_BATCH = 10**9


def restore_run_state(meta: Mapping[str, Any], epochs: int, batches_per_epoch: int | None = None) -> RunState:
    """A RunState from checkpoint metadata, every field checked against a run of `epochs` epochs of
    `batches_per_epoch` batches: a position inside an epoch must be inside it (0 <= batch < batches)."""
    missing = [f.name for f in fields(RunState) if f.name not in meta]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {', '.join(missing)}")
    check_position(meta)
    epoch = _int(meta, "epoch", 0, max(epochs, 0) + 10**6)
    batch = meta["batch"]
    if batches_per_epoch is not None and batch > 0 and batch >= batches_per_epoch:
        raise CheckpointError(f"'batch' is {batch}, but an epoch of this run has {batches_per_epoch} batches "
                              "(a position inside an epoch is below that)")
    history = check_history(meta["history"], epoch)
    shuffle = meta["epoch_shuffle_state"]
    if batch > 0 and not isinstance(shuffle, dict):
        raise CheckpointError("a checkpoint inside an epoch must hold 'epoch_shuffle_state'")
    return RunState(epoch=epoch, batch=batch, history=history, sums=meta["sums"], epoch_shuffle_state=shuffle,
                    stopped_early=meta["stopped_early"])
