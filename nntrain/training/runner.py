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

from nntrain.atomic import WriteError, atomic_write_text, open_for_write, reason
from nntrain.config import dump_config
from nntrain.data import num_batches
from nntrain.data import num_batches
from nntrain.data.augment import build_augment
from nntrain.data.prepare import prepare
from nntrain.errors import CheckpointError, NNTrainError, NumericalError
from nntrain.nn.losses import build_loss
from nntrain import __version__
from nntrain.nn.blas import find_blas
from nntrain.nn.model import build_model
from nntrain.nn.optim import build_optimizer
from nntrain.nn.schedulers import ReduceLROnPlateau, build_scheduler
from nntrain.rng import stream
from nntrain.training.callbacks import Callback, Checkpoints, EarlyStopping, MetricsLog, logging_callbacks
from nntrain.training.checkpoint import Checkpoint, load_checkpoint
from nntrain.training.evaluate import evaluate
from nntrain.training.health import TrainingHealth
from nntrain.training.report_page import write_report_or_warn
from nntrain.training.run_folder import RunFolder, check_fits_data, check_same_data, embedded_config
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
        "class_names": list(data.info.class_names), "data": data.fingerprint,
        "threads": thread_counts(p.model), "nntrain_version": __version__,
    }
    extra = {} if data.mean is None else {"norm_mean": np.asarray(data.mean), "norm_std": np.asarray(data.std)}
    return Checkpoint(params=p.model.state_dict(), optim=opt_arrays, extra=extra, meta=meta)


def thread_counts(model: Any) -> dict[str, int | None]:
    """The thread counts results depend on: the BLAS's (a GEMM blocks its work differently with more
    threads, so the sums of a product come out in another order) and the model's element-wise workers."""
    blas = find_blas()
    return {"blas": blas.get_threads() if blas is not None else None, "workers": int(model.workers.threads)}


def _check_threads(ckpt: Checkpoint, model: Any, path: Path) -> None:
    """Warn when a run is resumed with other thread counts than it was saved with: it continues correctly,
    but not bit-identically to an uninterrupted run."""
    saved, now = ckpt.meta.get("threads"), thread_counts(model)
    if isinstance(saved, dict) and saved.get("blas") is not None and saved != now:
        log.warning("%s was saved with %s BLAS thread(s) and %s worker(s), resumed with %s and %s: the run "
                    "continues, but bit-exactness with an uninterrupted run holds only for the same thread "
                    "count (resume with nntrain --threads %s)", path, saved.get("blas"), saved.get("workers"),
                    now["blas"], now["workers"], saved.get("blas"))


def restore(trainer: Trainer, ckpt: Checkpoint, path: Path) -> None:
    """Put a trainer back where `snapshot` left it; CheckpointError naming `path` if anything does not fit."""
    p, m = trainer.parts, ckpt.meta
    try:
        check_fits_data(m, trainer.data.info, p.model.output_shape[0])
        p.model.load_state_dict(ckpt.params)
        p.optimizer.load_state_dict(ckpt.optim, m["optimizer"])
        p.scheduler.load_state_dict(m["scheduler"])
        for name, gen in (("shuffle", p.shuffle_rng), ("augment", p.augment_rng), ("model", p.model.rng)):
            gen.bit_generator.state = m["rng"][name]
        trainer.state = restore_run_state(m, trainer.epochs, num_batches(len(trainer.data.train_y), trainer.batch_size))
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


class RunLog(logging.Handler):
    """log.txt. Records logged before the run folder exists (data loading) are held in memory and written
    once `open` has the file; the file is opened with O_NOFOLLOW (a symlink planted as log.txt is
    refused) and written unbuffered, so nothing is left to fail at close.

    A failed write (a full disk) prints no traceback per record, as logging's FileHandler does: the first
    error is kept in `error`, later records are dropped, `on_error` is called once (training uses it to
    stop cleanly) and the caller reports the error once."""

    MAX_PENDING = 10_000

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.path: Path | None = None
        self.error: OSError | None = None
        self.on_error: Callable[[], None] | None = None
        self._fd: int | None = None
        self._pending: list[str] = []

    def open(self, path: Path) -> None:
        fd = open_for_write(path, append=True)
        with self.lock:   # type: ignore[union-attr]
            self._fd, self.path = fd, path
            pending, self._pending = self._pending, []
            for line in pending:
                self._write(line)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - a bad format string is logging's own business
            self.handleError(record)
            return
        if self._fd is None:
            if len(self._pending) < self.MAX_PENDING:
                self._pending.append(line)
            return
        self._write(line)

    def _write(self, line: str) -> None:
        if self.error is not None or self._fd is None:
            return
        data = line.encode("utf-8", "backslashreplace")
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as e:
            self.error = e
            if self.on_error is not None:
                self.on_error()

    def failure(self, what: str) -> WriteError:
        """The WriteError to raise for the kept error; `what` says what became of the run."""
        assert self.error is not None
        return WriteError(f"could not write {self.path}: {reason(self.error)}; {what}")

    def close(self) -> None:
        with self.lock:   # type: ignore[union-attr]
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
        super().close()


@contextlib.contextmanager
def _run_log() -> Iterator[RunLog]:
    """A RunLog attached to the `nntrain` logger for the duration of a run."""
    handler = RunLog()
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:  # library use without the CLI: log.txt still gets the epochs
        log.setLevel(logging.INFO)
    try:
        yield handler
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

    The run folder is locked for the whole run (one writer per folder). A new run folder is created only
    once everything it needs is ready (data loaded, parts built, --init-from read), so a start that fails
    leaves nothing behind; a failure after it was created but before training began removes it again.
    """
    folder: RunFolder | None = None
    started = ok = False
    with _run_log() as runlog:
        try:
            if resume is not None:
                folder = RunFolder.existing(resume).acquire("nntrain train --resume")
                runlog.open(folder.log)
            elif run_dir is not None:
                RunFolder.check_new(run_dir)   # refused before any work
            data = prepare(cfg["data"], int(cfg["seed"]), progress=progress is not False)
            parts = build_parts(cfg, data.info.input_shape, data.train_y)
            if resume is None and init_from:
                _init_weights(parts, init_from)
            if folder is None:
                folder = (RunFolder.create(run_dir) if run_dir is not None
                          else RunFolder.new(cfg["name"], runs_base))
                runlog.open(folder.log)
                folder.make_dirs()
                atomic_write_text(folder.config, dump_config(cfg))
            es = cfg["train"]["early_stopping"]
            stops = [EarlyStopping(es["monitor"], es["patience"], es["mode"], es["min_delta"])] if es else []
            monitor = cfg["train"]["checkpoint_monitor"]
            checkpoints, metrics = Checkpoints(folder, monitor), MetricsLog(folder, monitor)
            trainer = Trainer(parts, data, epochs=cfg["train"]["epochs"], batch_size=cfg["train"]["batch_size"],
                              eval_batch_size=cfg["train"]["eval_batch_size"], tta=cfg["train"]["tta"],
                              callbacks=[*stops, *callbacks, TrainingHealth(folder, cfg["seed"]), checkpoints,
                                         metrics, *logging_callbacks(cfg, folder)], progress=progress,
                              snapshot=lambda t: snapshot(t, cfg))
            runlog.on_error = lambda: setattr(trainer, "stop_requested", True)
            if runlog.error is not None:
                runlog.on_error()
            if resume is not None:
                ckpt = load_checkpoint(folder.last)
                content_keys = [k for k in forced if k.startswith("data.") and k not in ("data.root", "data.download")]
                check_same_data(ckpt, data, folder.last, allow=bool(content_keys),
                                advice="Resuming would continue on other data than the run started with: "
                                       "train a new run (--init-from its checkpoint starts from its weights)")
                restore(trainer, ckpt, folder.last)
                _check_threads(ckpt, parts.model, folder.last)
                _rebase_lr(trainer, cfg, forced)
                _write_config(folder, cfg, forced)
                s = trainer.state
                if s.history:  # a run killed between last.npz and metrics.csv: the file catches up here
                    metrics.write(s.history)
                done = s.epoch >= trainer.epochs or s.stopped_early
                log.info("run %s is complete (%s): evaluating the test set again" if done else
                         "resumed at epoch %d, batch %d",
                         *((folder.path, f"{s.epoch} epoch{'' if s.epoch == 1 else 's'}") if done
                           else (s.epoch + 1, s.batch)))
            elif init_from:
                log.info("initialised weights from %s (fresh optimizer state)", init_from)
            if on_start:
                on_start(trainer, folder)
            started = True
            _run(trainer, folder, runlog)
            summary = _finish(trainer, folder, cfg, checkpoints)
            if runlog.error is not None:
                raise runlog.failure("the run finished and its other files (checkpoints, metrics.csv, "
                                     "test.json) are complete")
            ok = True
            return folder.path, summary
        except WriteError as e:   # a full disk hits the log first: one message says both
            if runlog.error is not None and runlog.path is not None and str(runlog.path) not in str(e):
                raise WriteError(f"{e}; {runlog.path} could not be written either ({reason(runlog.error)})") from None
            raise
        finally:
            if not ok and folder is not None and folder.lock is not None and resume is None and not started:
                folder.remove_start()
            if folder is not None:
                folder.release()


def _run(trainer: Trainer, folder: RunFolder, runlog: RunLog) -> None:
    """trainer.run(), with signals turned into a saved stop and errors naming the run's files. A failed
    write of log.txt stops the run like a signal (the batch finished, last.npz saved), then is reported."""
    resume = f"nntrain train --resume {shlex.quote(str(folder.path))}"
    with _stop_on_signals(trainer) as received:
        try:
            trainer.run()
        except Interrupted as e:
            if runlog.error is not None and not received:
                raise runlog.failure(f"training stopped at epoch {trainer.state.epoch + 1}, batch "
                                     f"{trainer.state.batch} after saving {folder.last}; make room, then resume "
                                     f"with: {resume}") from None
            err = Interrupted(f"{e}; the run was saved to {folder.last}. Resume with: {resume}")
            if signal.SIGTERM in received:
                err.exit_code = 143
            raise err from None
        except NumericalError as e:
            where = (f" The last good checkpoint is {folder.last} (resume with: {resume})."
                     if folder.last.exists() else " No epoch finished, so there is no checkpoint.")
            raise NumericalError(f"{e}{where}") from None


def _rebase_lr(trainer: Trainer, cfg: Mapping[str, Any], forced: Sequence[str]) -> None:
    """--force changed optimizer.lr or the schedule: restoring the optimizer and scheduler state put the
    checkpoint's learning rate back (its base lr, its current lr). Re-base the schedule on the forced
    optimizer.lr at the position it has reached, so that the new value is the one that trains (and that
    metrics.csv records); said in the log."""
    if not any(k == "optimizer.lr" or k == "scheduler" or k.startswith("scheduler.") for k in forced):
        return
    sched, opt = trainer.parts.scheduler, trainer.parts.optimizer
    old_base, old_lr, new_base = sched.base_lr, opt.lr, float(cfg["optimizer"]["lr"])
    sched.base_lr = new_base
    if isinstance(sched, ReduceLROnPlateau):   # its state is the lr itself: keep the reductions made so far
        opt.lr = max(old_lr * new_base / old_base, sched.min_lr) if old_base > 0 else new_base
    else:
        opt.lr = sched.lr_at(sched.epoch, sched.steps)
    if opt.lr != old_lr or new_base != old_base:
        log.warning("--force: the learning rate is re-based on optimizer.lr %g (the checkpoint's was %g): "
                    "lr now %g (restored: %g)", new_base, old_base, opt.lr, old_lr)


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


def _init_weights(parts: Parts, path: str) -> None:
    """Load the weights of checkpoint `path` into the model (before any run folder exists, so a refused
    checkpoint leaves nothing behind)."""
    ckpt = load_checkpoint(path)
    try:
        parts.model.load_state_dict(ckpt.params)
    except CheckpointError as e:  # a checkpoint of another architecture: name the file
        raise CheckpointError(f"cannot initialise from {path}: {e}") from None


def _finish(trainer: Trainer, folder: RunFolder, cfg: Mapping[str, Any], checkpoints: Checkpoints) -> dict:
    """Test-set loss and accuracy from the best checkpoint (or the final weights), saved as test.json."""
    p, data, best = trainer.parts, trainer.data, checkpoints.best
    es = cfg["train"]["early_stopping"]
    source = "last"
    if folder.best.exists() and (es is None or es["restore_best"]):
        p.model.load_state_dict(load_checkpoint(folder.best).params)
        source = "best"
    ev = evaluate(p.model, p.loss, data.test_x, data.test_y, trainer.eval_batch_size, data.mean, data.std,
                  tta=trainer.tta)
    summary = {"test_loss": ev.loss, "test_acc": ev.accuracy, "checkpoint": f"{source}.npz",
               "best_epoch": best.best_epoch, f"best_{best.metric}": best.best,
               "epochs_trained": trainer.state.epoch, "stopped_early": trainer.state.stopped_early}
    if ev.single_view_accuracy is not None:
        summary.update({"tta": ev.tta, "test_acc_single_view": ev.single_view_accuracy})
    atomic_write_text(folder.test, json.dumps(summary, indent=2) + "\n")
    log.info("test loss %.4f  test accuracy %.4f%s  (%s checkpoint, epoch %s)", ev.loss, ev.accuracy,
             "" if ev.single_view_accuracy is None else
             f" with {ev.tta} test-time augmentation, {ev.single_view_accuracy:.4f} without",
             source, best.best_epoch if source == "best" else trainer.state.epoch)
    write_report_or_warn(folder.path)   # every run has its page: CLI, library and sweep trials alike
    return summary

