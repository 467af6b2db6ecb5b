"""Finding and loading trained runs: a run folder or a checkpoint file copied anywhere.

A checkpoint carries its own resolved config, dataset name and normalisation statistics, so a model
can be rebuilt from the file alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nntrain.training.checkpoint import Checkpoint, load_checkpoint
from nntrain.errors import CheckpointError
from nntrain.nn.model import Model, build_model


@dataclass
class LoadedRun:
    """A model rebuilt from a checkpoint, with what is needed to feed it."""

    checkpoint_path: Path
    out_dir: Path              # where eval results go: the run folder, or the checkpoint's folder
    cfg: dict
    model: Model
    mean: np.ndarray | None
    std: np.ndarray | None
    ckpt: Checkpoint


def find_checkpoint(target: str | Path) -> tuple[Path, Path]:
    """RUN_DIR -> its checkpoints/best.npz (else last.npz); a file -> itself. Returns (checkpoint, out_dir)."""
    target = Path(target)
    if target.is_dir():
        for name in ("best.npz", "last.npz"):
            path = target / "checkpoints" / name
            if path.exists():
                return path, target
        raise CheckpointError(f"{target} holds no checkpoints/best.npz or checkpoints/last.npz: "
                              "is it a run folder (made by nntrain train)?")
    if not target.exists():
        raise CheckpointError(f"{target} does not exist: give a run folder or a checkpoint .npz file")
    out_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
    return target, out_dir


def load_run(target: str | Path) -> LoadedRun:
    """Rebuild the trained model (float32, eval-ready) from a run folder or checkpoint file."""
    from nntrain.config import validate_config
    from nntrain.errors import ConfigError

    path, out_dir = find_checkpoint(target)
    ckpt = load_checkpoint(path)
    try:
        cfg = validate_config(ckpt.meta["config"], source=f"{path} (embedded config)")
    except KeyError:
        raise CheckpointError(f"checkpoint {path} holds no config") from None
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds an invalid config: {e}") from None
    from nntrain.data import dataset_info

    info = dataset_info(cfg["data"]["dataset"])
    model = build_model(cfg["model"], info.input_shape, seed=cfg["seed"], dtype=np.float32)
    try:
        model.load_state_dict(ckpt.params)
    except CheckpointError as e:  # weights that do not fit the embedded config: name the file
        raise CheckpointError(f"checkpoint {path} does not fit its own config: {e}") from None
    mean = ckpt.extra.get("norm_mean")
    std = ckpt.extra.get("norm_std")
    if (mean is None) != (std is None) or (mean is not None and (mean.shape != (info.input_shape[0],)
                                                                  or std.shape != mean.shape or np.any(std <= 0))):
        raise CheckpointError(f"checkpoint {path} has invalid normalisation statistics")
    return LoadedRun(path, out_dir, cfg, model, mean, std, ckpt)
