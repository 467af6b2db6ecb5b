"""One training run from a resolved config: the run folder, its log, the built parts, resume, Ctrl-C, and
the final test evaluation. `train()` is what `nntrain train` calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from nntrain.atomic import atomic_write_text
from nntrain.config import dump_config
from nntrain.data import num_batches
from nntrain.data.augment import build_augment
from nntrain.data.prepare import prepare
from nntrain.errors import CheckpointError, NNTrainError, NumericalError
from nntrain.nn.losses import build_loss
from nntrain.nn.model import build_model
from nntrain.nn.optim import build_optimizer
from nntrain.nn.schedulers import build_scheduler
from nntrain.rng import stream
from nntrain.training.callbacks import Callback, Checkpoints, EarlyStopping, MetricsLog
from nntrain.training.checkpoint import Checkpoint, load_checkpoint
from nntrain.training.evaluate import evaluate
from nntrain.training.run_folder import RunFolder, embedded_config
from nntrain.training.state import restore_run_state, run_state_meta
from nntrain.training.trainer import Interrupted, Parts, Trainer

log = logging.getLogger("nntrain")


def build_parts(cfg: Mapping[str, Any], input_shape: Sequence[int], train_labels: np.ndarray | None = None) -> Parts:
    """Model, loss, optimizer, schedule, augmentation and Generators of a resolved config. `train_labels`:
    the prepared training split's labels (N,), which `class_weights: balanced` is computed from and
    which give the batches per epoch of a per-batch schedule (onecycle)."""
    seed, epochs = int(cfg["seed"]), cfg["train"]["epochs"]
    per_epoch = None if train_labels is None else num_batches(len(train_labels), cfg["train"]["batch_size"])
    model = build_model(cfg["model"], input_shape, seed=seed, dtype=np.float32)
    optimizer = build_optimizer(cfg["optimizer"], list(model.parameters()))
    loss = build_loss(cfg["loss"], train_labels=train_labels, num_classes=model.output_shape[0])
    return Parts(model=model, loss=loss, optimizer=optimizer,
                 scheduler=build_scheduler(cfg["scheduler"], optimizer, epochs, per_epoch),
                 augment=build_augment(cfg["data"]["augment"]), shuffle_rng=stream(seed, "shuffle"),
                 augment_rng=stream(seed, "augment"))


def snapshot(trainer: Trainer, cfg: Mapping[str, Any]) -> Checkpoint:
    """Everything that continues the run exactly: weights, optimizer and schedule, Generators, the
    position, the callbacks' state, the config and the normalisation statistics."""
    p, data = trainer.parts, trainer.data
    opt_arrays, opt_meta = p.optimizer.state_dict()
    meta = {
        "config": cfg, **run_state_meta(trainer.state),
        "callbacks": {cb.name: cb.state_dict() for cb in trainer.callbacks if cb.name},
        "rng": {"shuffle": p.shuffle_rng.bit_generator.state, "augment": p.augment_rng.bit_generator.state,
                "model": p.model.rng.bit_generator.state},
        "optimizer": opt_meta, "scheduler": p.scheduler.state_dict(),
        "dataset": data.info.name, "input_shape": list(data.info.input_shape),
        "class_names": list(data.info.class_names),
    }
    extra = {} if data.mean is None else {"norm_mean": np.asarray(data.mean), "norm_std": np.asarray(data.std)}
    return Checkpoint(params=p.model.state_dict(), optim=opt_arrays, extra=extra, meta=meta)


def restore(trainer: Trainer, ckpt: Checkpoint, path: Path) -> None:
    """Put a trainer back where `snapshot` left it; CheckpointError naming `path` if anything does not fit."""
    p, m = trainer.parts, ckpt.meta
    try:
        p.model.load_state_dict(ckpt.params)
        p.optimizer.load_state_dict(ckpt.optim, m["optimizer"])
        p.scheduler.load_state_dict(m["scheduler"])
        for name, gen in (("shuffle", p.shuffle_rng), ("augment", p.augment_rng), ("model", p.model.rng)):
            gen.bit_generator.state = m["rng"][name]
        trainer.state = restore_run_state(m, trainer.epochs)
        states = m["callbacks"]
        for cb in trainer.callbacks:
            if cb.name:
                cb.load_state_dict(states.get(cb.name, {}))
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot resume from {path}: the checkpoint is incomplete or inconsistent "
                              f"({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer) -> Iterator[list[int]]:
    """Ctrl-C (SIGINT) or SIGTERM (batch schedulers, `docker stop`): finish the batch, save, stop. A second
    Ctrl-C stops at once (atomic writes keep every file whole). Yields the signals received."""
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        trainer.stop_requested = True
        log.warning("%s received: finishing the current batch and saving a checkpoint%s",
                    signal.Signals(signum).name, " (press Ctrl-C again to stop at once)" if signum == signal.SIGINT
                    else "")

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: the caller handles signals
            pass
    try:
        yield received
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:  # library use without the CLI: log.txt still gets the epochs
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def resume_config(folder: str | os.PathLike, wanted: Mapping[str, Any] | None = None,
                  force: bool = False) -> tuple[dict, list[str]]:
    """The config to resume `folder` with: the one embedded in its last checkpoint (the truth, whatever
    config.yaml says now), or `wanted` where it differs and `force` is given. Returns (config, changed
    key paths); without force a difference is refused."""
    run = RunFolder.existing(folder)
    saved = embedded_config(load_checkpoint(run.last), run.last)
    if wanted is None:
        return saved, []
    wanted = dict(wanted, name=saved["name"])
    changed = config_differences(saved, wanted)
    if changed and not force:
        raise NNTrainError(f"cannot resume {run.path}: the config differs from the run's own config at "
                           f"{', '.join(changed[:8])}; pass --force to continue with the new values, or train "
                           "a new run")
    return (wanted if changed else saved), changed


def config_differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Key paths at which two configs differ (`optimizer.lr`, `model[2].p`)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return [d for k in sorted(set(a) | set(b))
                for d in config_differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in config_differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path or "(root)"]


def train(cfg: Mapping[str, Any], run_dir: str | os.PathLike | None = None, *,
          resume: str | os.PathLike | None = None, forced: Sequence[str] = (), init_from: str | None = None,
          progress: bool | None = None, runs_base: str | os.PathLike = "runs",
          on_start: Callable[[Trainer, RunFolder], None] | None = None,
          callbacks: Sequence[Callback] = ()) -> tuple[Path, dict]:
    """Train a resolved config; returns (run folder, test summary).

    resume: a run folder to continue from its last.npz (cfg from `resume_config`; `forced`: the key
    paths --force changed, recorded in config.yaml and the log); run_dir: the folder to create (new or
    empty); otherwise runs/<name>-<timestamp>. `callbacks` run after early stopping, before checkpoints.
    """
    if resume is not None:
        folder = RunFolder.existing(resume)
    elif run_dir is not None:
        folder = RunFolder.create(run_dir)
    else:
        folder = RunFolder.new(cfg["name"], runs_base)
    with _log_to(folder.log):
        data = prepare(cfg["data"], int(cfg["seed"]), progress=progress is not False)
        es = cfg["train"]["early_stopping"]
        stops = [EarlyStopping(es["monitor"], es["patience"], es["mode"], es["min_delta"])] if es else []
        checkpoints, metrics = Checkpoints(folder, cfg["train"]["checkpoint_monitor"]), MetricsLog(folder)
        trainer = Trainer(build_parts(cfg, data.info.input_shape, data.train_y), data, epochs=cfg["train"]["epochs"],
                          batch_size=cfg["train"]["batch_size"], eval_batch_size=cfg["train"]["eval_batch_size"],
                          callbacks=[*stops, *callbacks, checkpoints, metrics], progress=progress,
                          snapshot=lambda t: snapshot(t, cfg))
        if resume is not None:
            restore(trainer, load_checkpoint(folder.last), folder.last)
            _write_config(folder, cfg, forced)
            s = trainer.state
            if s.history:  # a run killed between last.npz and metrics.csv: the file catches up here
                metrics.write(s.history)
            done = s.epoch >= trainer.epochs or s.stopped_early
            log.info("run %s is complete (%d epochs): evaluating the test set again" if done else
                     "resumed at epoch %d, batch %d", *((folder.path, s.epoch) if done else (s.epoch + 1, s.batch)))
        else:
            folder.make_dirs()
            atomic_write_text(folder.config, dump_config(cfg))
            if init_from:
                _init_weights(trainer, init_from)
        if on_start:
            on_start(trainer, folder)
        _run(trainer, folder)
        return folder.path, _finish(trainer, folder, cfg, checkpoints)


def _run(trainer: Trainer, folder: RunFolder) -> None:
    """trainer.run(), with signals turned into a saved stop and errors naming the run's files."""
    resume = f"nntrain train --resume {shlex.quote(str(folder.path))}"
    with _stop_on_signals(trainer) as received:
        try:
            trainer.run()
        except Interrupted as e:
            err = Interrupted(f"{e}; the run was saved to {folder.last}. Resume with: {resume}")
            if signal.SIGTERM in received:
                err.exit_code = 143
            raise err from None
        except NumericalError as e:
            where = (f" The last good checkpoint is {folder.last} (resume with: {resume})."
                     if folder.last.exists() else " No epoch finished, so there is no checkpoint.")
            raise NumericalError(f"{e}{where}") from None


def _write_config(folder: RunFolder, cfg: Mapping[str, Any], forced: Sequence[str]) -> None:
    """config.yaml as the run's checkpoint has it (the truth): rewritten where it is missing, was edited,
    or --force changed keys, saying so."""
    text = dump_config(cfg)
    try:
        current = folder.config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        current = None
    if current == text:
        return
    atomic_write_text(folder.config, text)
    if forced:
        log.warning("--force: continuing with the changed %s (written to %s)", ", ".join(forced), folder.config)
    else:
        log.warning("%s was %s; rewritten from the run's checkpoint, whose config the run continues with",
                    folder.config, "missing" if current is None else "edited")


def _init_weights(trainer: Trainer, path: str) -> None:
    ckpt = load_checkpoint(path)
    try:
        trainer.parts.model.load_state_dict(ckpt.params)
    except CheckpointError as e:  # a checkpoint of another architecture: name the file
        raise CheckpointError(f"cannot initialise from {path}: {e}") from None
    log.info("initialised weights from %s (fresh optimizer state)", path)


def _finish(trainer: Trainer, folder: RunFolder, cfg: Mapping[str, Any], checkpoints: Checkpoints) -> dict:
    """Test-set loss and accuracy from the best checkpoint (or the final weights), saved as test.json."""
    p, data, best = trainer.parts, trainer.data, checkpoints.best
    es = cfg["train"]["early_stopping"]
    source = "last"
    if folder.best.exists() and (es is None or es["restore_best"]):
        p.model.load_state_dict(load_checkpoint(folder.best).params)
        source = "best"
    ev = evaluate(p.model, p.loss, data.test_x, data.test_y, trainer.eval_batch_size, data.mean, data.std)
    summary = {"test_loss": ev.loss, "test_acc": ev.accuracy, "checkpoint": f"{source}.npz",
               "best_epoch": best.best_epoch, f"best_{best.metric}": best.best,
               "epochs_trained": trainer.state.epoch, "stopped_early": trainer.state.stopped_early}
    atomic_write_text(folder.test, json.dumps(summary, indent=2) + "\n")
    log.info("test loss %.4f  test accuracy %.4f  (%s checkpoint, epoch %s)", ev.loss, ev.accuracy, source,
             best.best_epoch if source == "best" else trainer.state.epoch)
    return summary

