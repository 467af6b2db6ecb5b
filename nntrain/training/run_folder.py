"""The run folder: every path in it, in one place; creating one for a new run; finding and loading a
trained run from a run folder or a checkpoint file copied anywhere.

    runs/<name>-<YYYYmmdd-HHMMSS>/
      config.yaml  metrics.csv  log.txt  test.json  checkpoints/{last,best}.npz  plots/  eval/

A checkpoint carries its own resolved config, dataset name and normalisation statistics, so a model
can be rebuilt from the file alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nntrain.atomic import WriteError, create_unique_dir
from nntrain.errors import CheckpointError, NNTrainError
from nntrain.nn.model import Model, build_model
from nntrain.training.checkpoint import Checkpoint, load_checkpoint


class RunFolder:
    """The paths of one run folder (nothing is created until `create` or `new`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / "config.yaml", doc="the resolved config")
    metrics = property(lambda self: self.path / "metrics.csv", doc="one row per epoch")
    log = property(lambda self: self.path / "log.txt", doc="what training logged")
    test = property(lambda self: self.path / "test.json", doc="the final test-set result")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.checkpoints / "last.npz", doc="where training continues from")
    best = property(lambda self: self.checkpoints / "best.npz", doc="the best epoch by the checkpoint monitor")
    plots = property(lambda self: self.path / "plots")
    eval = property(lambda self: self.path / "eval", doc="results of `nntrain eval`")

    @classmethod
    def new(cls, name: str, base: str | os.PathLike = "runs") -> RunFolder:
        """A fresh `base/<name>-<timestamp>` folder, never shared by two runs started in the same second."""
        return cls(create_unique_dir(base, name))

    @classmethod
    def create(cls, path: str | os.PathLike) -> RunFolder:
        """A run folder at `path` (a --run-dir), which must not exist or be empty."""
        folder = cls(path)
        if folder.path.exists() and (not folder.path.is_dir() or any(folder.path.iterdir())):
            raise NNTrainError(f"run folder {folder.path} already exists and is not empty; choose another "
                               "--run-dir or use --resume to continue it")
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create the run folder {folder.path}: {e.strerror or e}") from e
        return folder

    @classmethod
    def existing(cls, path: str | os.PathLike) -> RunFolder:
        """The run folder at `path`, to resume: it must hold checkpoints/last.npz."""
        folder = cls(path)
        if not folder.last.exists():
            raise CheckpointError(f"cannot resume from {folder.path}: it has no checkpoints/last.npz "
                                  "(is it a run folder made by nntrain train?)")
        return folder

    def make_dirs(self) -> None:
        """checkpoints/ and plots/ (config.yaml and the rest are files written atomically)."""
        for d in (self.checkpoints, self.plots):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WriteError(f"cannot create {d}: {e.strerror or e}") from e


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
        folder = RunFolder(target)
        for path in (folder.best, folder.last):
            if path.exists():
                return path, target
        raise CheckpointError(f"{target} holds no checkpoints/best.npz or checkpoints/last.npz: "
                              "is it a run folder (made by nntrain train)?")
    if not target.exists():
        raise CheckpointError(f"{target} does not exist: give a run folder or a checkpoint .npz file")
    out_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
    return target, out_dir


def embedded_config(ckpt: Checkpoint, path: Path) -> dict:
    """The resolved config a checkpoint carries (the truth about its run), checked like any config."""
    from nntrain.config import validate_config
    from nntrain.errors import ConfigError

    try:
        return validate_config(ckpt.meta["config"], source=f"{path} (embedded config)")
    except KeyError:
        raise CheckpointError(f"checkpoint {path} holds no config") from None
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds an invalid config: {e}") from None


def load_run(target: str | Path) -> LoadedRun:
    """Rebuild the trained model (float32, eval-ready) from a run folder or checkpoint file."""
    path, out_dir = find_checkpoint(target)
    ckpt = load_checkpoint(path)
    cfg = embedded_config(ckpt, path)
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
