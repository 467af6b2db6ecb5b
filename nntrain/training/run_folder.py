"""The run folder: every path in it, in one place; creating one for a new run; finding and loading a
trained run from a run folder or a checkpoint file copied anywhere.

    runs/<name>-<YYYYmmdd-HHMMSS>/
      config.yaml  metrics.csv  log.txt  test.json  checkpoints/{last,best}.npz  plots/
      eval/<checkpoint>-<split>/   (one per evaluation: eval/best-test/, eval/last-val/, ...)

A checkpoint carries its own resolved config, dataset name and normalisation statistics, so a model
can be rebuilt from the file alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection

import numpy as np

from nntrain.atomic import WriteError, create_unique_dir, make_dir, process_alive, reason
from nntrain.errors import CheckpointError, DataError, NNTrainError
from nntrain.nn.model import Model, build_model
from nntrain.training.checkpoint import Checkpoint, load_checkpoint, printable

if TYPE_CHECKING:
    from nntrain.data.prepare import PreparedData

log = logging.getLogger("nntrain")

LOCK_NAME = ".lock"


class RunInUse(NNTrainError):
    """Another process is writing the run folder (training, resuming, or `eval` saving its results)."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a run folder's lock, as its `.lock` file says (untrusted text, sanitised)."""

    pid: int | None
    host: str
    command: str
    started: str

    def __str__(self) -> str:
        return f"pid {self.pid if self.pid is not None else '?'} on {self.host} ({self.command}, since {self.started})"

    @classmethod
    def read(cls, fd: int) -> LockHolder | None:
        """The holder recorded in an open lock file; None when it is empty (released cleanly or new)."""
        try:
            raw = os.pread(fd, 4096, 0)
        except OSError:
            return None
        if not raw.strip():
            return None
        try:
            info = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            info = None
        if not isinstance(info, dict):
            return cls(None, "?", "unreadable lock file", "?")
        pid = info.get("pid")
        return cls(pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
                   *(printable(str(info.get(k, "?")), 120) for k in ("host", "command", "started")))


class RunLock:
    """An advisory lock (`flock`) on `<folder>/.lock`, held by the one process writing the folder.

    The file names the holder (pid, host, command, start time) for the message a refused process
    prints. The kernel drops a flock when its process dies, however it dies, so a lock left by a
    killed process is free: the next writer takes it over and says whose it was. A clean release
    deletes the file while still holding the lock; an acquirer checks that the file it locked is still
    the one at the path, so a release racing with an acquire never lets two processes in.
    """

    def __init__(self, folder: str | os.PathLike, command: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0, wait_for: Collection[str] = ()) -> RunLock:
        """Take the lock, or raise RunInUse naming the holder. While the holder's command is one of
        `wait_for` (two `eval`s saving results), wait up to `wait` seconds for it instead."""
        deadline = time.monotonic() + wait
        waiting = False
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = LockHolder.read(fd)
                for _ in range(40):   # the holder writes its label just after taking the lock
                    if holder is not None:
                        break
                    time.sleep(0.025)
                    holder = LockHolder.read(fd)
                os.close(fd)
                if holder is not None and holder.command in wait_for and time.monotonic() < deadline:
                    if not waiting:
                        log.info("waiting for %s to finish writing %s", holder, self.folder)
                        waiting = True
                    time.sleep(0.1)
                    continue
                raise RunInUse(f"run folder {self.folder} is in use by {holder or 'another process'}: one "
                               "process at a time writes a run folder; wait until it has finished"
                               + ("" if self.command.startswith("nntrain train") else
                                  ", or write the results elsewhere with --out")) from None
            except OSError as e:  # a file system without locks (some network and FUSE mounts)
                log.warning("cannot lock %s (%s): nothing stops another nntrain process from writing the "
                            "run folder at the same time", self.path, reason(e))
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except OSError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its holder deleted on release: lock the one at the path now
        previous = LockHolder.read(fd)
        if previous is not None:
            alive = previous.pid is not None and previous.host == socket.gethostname() and process_alive(previous.pid)
            log.warning("run folder %s: taking over the lock of %s, which %s", self.folder, previous,
                        "does not hold it (a reused pid)" if alive else "is no longer running")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": datetime.now().isoformat(timespec="seconds")}
        with contextlib.suppress(OSError):   # a full disk: the lock holds even without its label
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self.fd = fd
        return self

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.path, flags, 0o644)
        except OSError as e:
            raise WriteError(f"cannot write in {self.folder}: {reason(e)} (taking its lock {self.path} "
                             "failed)") from None

    def release(self) -> None:
        """Delete the lock file, then let go of the lock (closing the descriptor drops the flock)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunFolder:
    """The paths of one run folder (nothing is created until `create` or `new`).

    `create` and `new` make the folder and take its lock (`RunLock`) in one step; `acquire` takes the
    lock of an existing folder (resume). The writer holds it until `release`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock: RunLock | None = None
        self.created = False     # this process made the folder (so a failed start may remove it)

    def __str__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / "config.yaml", doc="the resolved config")
    metrics = property(lambda self: self.path / "metrics.csv", doc="one row per epoch")
    health = property(lambda self: self.path / "health.csv", doc="per-layer training health, one row per layer per epoch")
    log = property(lambda self: self.path / "log.txt", doc="what training logged")
    test = property(lambda self: self.path / "test.json", doc="the final test-set result")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.checkpoints / "last.npz", doc="where training continues from")
    best = property(lambda self: self.checkpoints / "best.npz", doc="the best epoch by the checkpoint monitor")
    plots = property(lambda self: self.path / "plots")
    eval = property(lambda self: self.path / "eval", doc="results of `nntrain eval`, one folder per evaluation")

    def eval_dir(self, checkpoint: str, split: str) -> Path:
        """Where `nntrain eval` saves the evaluation of checkpoint `checkpoint` (its file's stem: best,
        last, epoch_7) on `split`: eval/<checkpoint>-<split>/."""
        return self.eval / f"{checkpoint}-{split}"

    def evaluations(self) -> list[Path]:
        """The folders holding a saved evaluation: eval/<checkpoint>-<split>/ with a metrics.json (the
        default one, eval/best-test, first, then by name), and eval/ itself last when it holds a
        metrics.json of its own (the layout of nntrain before results were kept per checkpoint)."""
        try:
            found = sorted((d for d in self.eval.iterdir() if d.is_dir() and (d / "metrics.json").is_file()),
                           key=lambda d: (d.name != "best-test", d.name))
        except OSError:
            return []
        return found + ([self.eval] if (self.eval / "metrics.json").is_file() else [])

    @classmethod
    def new(cls, name: str, base: str | os.PathLike = "runs", command: str = "nntrain train") -> RunFolder:
        """A fresh `base/<name>-<timestamp>` folder, never shared by two runs started in the same second."""
        folder = cls(create_unique_dir(base, name))
        folder.created = True
        folder.acquire(command)
        return folder

    @classmethod
    def check_new(cls, path: str | os.PathLike) -> RunFolder:
        """Refuse at once, before any work, a --run-dir that cannot become a new run folder: one that exists
        and is not an empty folder (a file, a dangling symlink, a finished run), or a path the file system
        rejects (a name over 255 bytes, a path through a file). Nothing is created."""
        folder = cls(path)
        try:
            st = os.lstat(folder.path)
        except FileNotFoundError:
            return folder
        except OSError as e:
            raise WriteError(f"cannot use {folder.path} as a run folder: {reason(e)}") from None
        if stat.S_ISLNK(st.st_mode) and not folder.path.exists():
            raise WriteError(f"cannot use {folder.path} as a run folder: it is a symbolic link to "
                             f"{os.readlink(folder.path)}, which does not exist")
        if not folder.path.is_dir():
            raise NNTrainError(f"cannot use {folder.path} as a run folder: it is a file, not a folder")
        if folder._has_files():
            raise NNTrainError(f"run folder {folder.path} already exists and is not empty; choose another "
                               "--run-dir or use --resume to continue it")
        return folder

    def _has_files(self) -> bool:
        try:
            return any(p.name != LOCK_NAME for p in self.path.iterdir())
        except OSError as e:
            raise WriteError(f"cannot use {self.path} as a run folder: {reason(e)}") from None

    @classmethod
    def create(cls, path: str | os.PathLike, command: str = "nntrain train") -> RunFolder:
        """A run folder at `path` (a --run-dir), which must not exist or be empty; made and locked so that of
        two runs given the same --run-dir at the same moment exactly one gets it."""
        folder = cls.check_new(path)
        make_dir(folder.path.parent)
        try:
            os.mkdir(folder.path)
            folder.created = True
        except FileExistsError:
            pass   # an empty folder (checked above), or another run's folder made just now: the lock decides
        except OSError as e:
            raise WriteError(f"cannot create the run folder {folder.path}: {reason(e)}") from None
        folder.acquire(command)
        if not folder.created:
            try:   # under the lock: no other run started in it since the check above
                cls.check_new(path)
            except BaseException:
                folder.release()
                raise
        return folder

    @classmethod
    def existing(cls, path: str | os.PathLike) -> RunFolder:
        """The run folder at `path`, to resume: it must hold checkpoints/last.npz."""
        folder = cls(path)
        if not folder.last.exists():
            raise CheckpointError(f"cannot resume from {folder.path}: it has no checkpoints/last.npz "
                                  "(is it a run folder made by nntrain train?)")
        return folder

    def acquire(self, command: str, wait: float = 0.0, wait_for: Collection[str] = ()) -> RunFolder:
        """Take the folder's lock as its one writer (RunInUse naming the holder when another process has it)."""
        self.lock = RunLock(self.path, command).acquire(wait, wait_for)
        return self

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def make_dirs(self) -> None:
        """checkpoints/ and plots/ (config.yaml and the rest are files written atomically)."""
        for d in (self.checkpoints, self.plots):
            make_dir(d)

    def remove_start(self) -> None:
        """Undo a start that failed before training began: the files a start writes, the empty subfolders,
        the lock, and the folder itself when this process made it and it is empty now. Nothing else is
        touched (rmdir, never a recursive delete)."""
        for f in (self.config, self.log):
            with contextlib.suppress(OSError):
                f.unlink()
        for d in (self.checkpoints, self.plots):
            with contextlib.suppress(OSError):
                d.rmdir()
        self.release()
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()


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


def check_fits_data(meta: dict[str, Any], info: Any, num_outputs: int) -> None:
    """The dataset, input shape and class names a checkpoint records must be those of the dataset its
    config names (`info`, a DatasetInfo) and of the model's outputs (CheckpointError otherwise)."""
    dataset, shape, names = meta.get("dataset"), meta.get("input_shape"), meta.get("class_names")
    if dataset is not None and dataset != info.name:
        raise CheckpointError(f"'dataset' is {printable(repr(dataset), 60)}, but its config trains on '{info.name}'")
    if shape is not None and tuple(shape) != tuple(info.input_shape):
        raise CheckpointError(f"'input_shape' is {shape}, but {info.name} images are {list(info.input_shape)}")
    if names is not None and len(names) != num_outputs:
        raise CheckpointError(f"'class_names' holds {len(names)} names, but the model has {num_outputs} outputs")


def load_run(target: str | Path) -> LoadedRun:
    """Rebuild the trained model (float32, eval-ready) from a run folder or checkpoint file."""
    path, out_dir = find_checkpoint(target)
    ckpt = load_checkpoint(path)
    cfg = embedded_config(ckpt, path)
    from nntrain.data.registry import data_info

    info = data_info(cfg["data"])
    model = build_model(cfg["model"], info.input_shape, seed=cfg["seed"], dtype=np.float32)
    try:
        check_fits_data(ckpt.meta, info, model.output_shape[0])
        model.load_state_dict(ckpt.params)
    except CheckpointError as e:  # weights or metadata that do not fit the embedded config: name the file
        raise CheckpointError(f"checkpoint {path} does not fit its own config: {e}") from None
    mean = ckpt.extra.get("norm_mean")
    std = ckpt.extra.get("norm_std")
    if (mean is None) != (std is None) or (mean is not None and (
            mean.shape != (info.input_shape[0],) or std.shape != mean.shape
            or not np.all(np.isfinite(mean)) or not np.all(np.isfinite(std)) or np.any(std <= 0))):
        raise CheckpointError(f"checkpoint {path} has invalid normalisation statistics (a mean and a positive "
                              f"finite std per channel expected)")
    return LoadedRun(path, out_dir, cfg, model, mean, std, ckpt)


def _show(value: Any) -> str:
    return printable(json.dumps(value, sort_keys=True) if not isinstance(value, str) else value, 80)


def check_same_data(ckpt: Checkpoint, data: PreparedData, path: Path, *, allow: bool = False,
                    advice: str = "") -> None:
    """Refuse (DataError) data that are not the data checkpoint `path` was trained on: its recorded
    fingerprint (dataset, split sizes, hash of the images and labels) or its normalisation statistics
    differ from those of `data`. allow: warn instead. A checkpoint written before fingerprints existed
    is checked on its statistics alone, with a warning."""
    problems = []
    saved = ckpt.meta.get("data")
    if saved is None:
        log.warning("%s holds no data fingerprint (written by an older nntrain): the data cannot be checked "
                    "to be the ones it was trained on, beyond their normalisation statistics", path)
    else:
        now = data.fingerprint
        problems += [f"{key} {_show(saved.get(key))} when trained, {_show(now[key])} now"
                     for key in ("dataset", "sizes", "hash") if saved.get(key) != now[key]]
    mean, std = ckpt.extra.get("norm_mean"), ckpt.extra.get("norm_std")
    if (mean is None) != (data.mean is None):
        problems.append("normalisation statistics " + ("absent when trained, present now" if mean is None
                                                        else "present when trained, absent now"))
    elif mean is not None and (mean.shape != data.mean.shape or std.shape != data.std.shape
                               or not np.allclose(mean, data.mean, rtol=1e-5, atol=1e-7)
                               or not np.allclose(std, data.std, rtol=1e-5, atol=1e-7)):
        def show(a: np.ndarray) -> str:
            return "[" + ", ".join(f"{float(v):.6g}" for v in np.ravel(a)[:8]) + "]"

        problems.append(f"normalisation mean/std {show(mean)}/{show(std)} when trained, "
                        f"{show(data.mean)}/{show(data.std)} now")
    if not problems:
        return
    message = f"the data are not the ones {path} was trained on: " + "; ".join(problems)
    if allow:
        log.warning("%s; going on as asked", message)
        return
    raise DataError(f"{message}. {advice}".rstrip())
