"""A sweep worker: a process that takes trial tickets from the study one at a time and trains each as
an ordinary run folder, until none is left.

A trial is COMPLETE with its best epoch's metric as value, PRUNED when the pruner stopped it (its run
folder then holds pruned.json), or FAIL with the error in its `message` user attribute (a NaN loss, a
config the schema refuses, a missing file) and the worker goes on. Ctrl-C or SIGTERM stop the run at
the end of a batch with a checkpoint saved and leave the trial RUNNING: `nntrain sweep --resume`
continues it from there, bit-exactly. A trial that was taken up again after its worker died
continues from its own checkpoints/last.npz the same way.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nntrain.atomic import atomic_write_text
from nntrain.errors import NNTrainError
from nntrain.sweep.owners import WORKER_ATTR, Heartbeat, WorkerId
from nntrain.sweep.pruning import PruningCallback

log = logging.getLogger(__name__)

RUN_DIR_ATTR = "run_dir"
MESSAGE_ATTR = "message"
SECONDS_ATTR = "seconds"
BEST_ATTR = "best_value"
PRUNED_FILE = "pruned.json"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs (picklable: workers are spawned, not forked)."""

    storage_url: str | None      # None: the journal in `journal_folder`
    journal_folder: str | None
    study_name: str
    trials_dir: str
    index: int
    threads: int
    log_file: str | None


def worker_main(config: WorkerConfig) -> None:
    """Process entry point: BLAS threads, logging, signals, then the trials; exit 0, 130 when stopped
    by a signal, 1 when the worker itself failed."""
    _log_to(config.log_file)
    signal.signal(signal.SIGTERM, _interrupt)   # between trials; inside one the run's own handler saves first
    from nntrain.nn.blas import controller
    from nntrain.sweep import study as study_mod

    me = WorkerId.this_process(config.index)
    try:
        with controller().limit(limits=config.threads):
            storage = study_mod.open_storage(config.storage_url,
                                             Path(config.journal_folder) if config.journal_folder else None)
            sweep = study_mod.SweepStudy.open(storage, config.study_name, "the sweep storage")
            done = run_worker(sweep, Path(config.trials_dir), me)
    except KeyboardInterrupt:
        log.info("worker %s stopped by a signal", me)
        sys.exit(130)
    except Exception:   # noqa: BLE001  (a broken storage or a bug: logged, the other workers go on)
        log.exception("worker %s failed", me)
        sys.exit(1)
    log.info("worker %s: no trials left after running %d", me, done)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _log_to(path: str | None) -> None:
    """The sweep's events (not the epochs: those go to each trial's log.txt) appended to `path`."""
    logger = logging.getLogger("nntrain.sweep")
    logger.setLevel(logging.INFO)
    if path:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)


def run_worker(sweep: Any, trials_dir: Path, me: WorkerId) -> int:
    """Run trials until no ticket is left; returns how many this worker ran."""
    done = 0
    while (trial_id := sweep.take_ticket()) is not None:
        run_trial(sweep, trial_id, trials_dir, me)
        done += 1
    return done


def run_trial(sweep: Any, trial_id: int, trials_dir: Path, me: WorkerId) -> str:
    """Train one taken trial and tell the study how it went; returns its state's name."""
    from optuna.trial import TrialState

    from nntrain.training.runner import resume_config, train
    from nntrain.training.trainer import Interrupted

    spec = sweep.spec
    trial = sweep.trial(trial_id)
    storage = sweep.storage
    storage.set_trial_user_attr(trial_id, WORKER_ATTR, me.to_attr())
    attrs = storage.get_trial(trial_id).user_attrs
    callback = PruningCallback(trial, spec.metric)
    t0 = time.monotonic()
    try:
        with Heartbeat(storage, trial_id):
            params = sweep.suggest(trial)
            previous = attrs.get(RUN_DIR_ATTR)
            if previous and (Path(previous) / "checkpoints" / "last.npz").exists():
                log.info("trial %d (%s): taken up by %s from %s", trial.number, _fmt(params), me, previous)
                cfg = resume_config(previous)[0]
                folder, _ = train(cfg, resume=previous, callbacks=[callback], progress=False)
            else:
                cfg = spec.trial_config(params)
                run_dir = _new_run_dir(trials_dir, trial.number)
                storage.set_trial_user_attr(trial_id, RUN_DIR_ATTR, str(run_dir.resolve()))
                log.info("trial %d (%s): started by %s in %s", trial.number, _fmt(params), me, run_dir)
                folder, _ = train(cfg, run_dir=run_dir, callbacks=[callback], progress=False)
    except Interrupted:
        _add_seconds(storage, trial_id, attrs, t0)
        log.info("trial %d: stopped with a checkpoint; left RUNNING for --resume", trial.number)
        raise KeyboardInterrupt from None
    except NNTrainError as e:
        return _fail(sweep, trial, trial_id, attrs, t0, str(e))
    except Exception as e:   # noqa: BLE001  (a bug in one trial must not end the sweep)
        log.exception("trial %d failed", trial.number)
        return _fail(sweep, trial, trial_id, attrs, t0, f"{type(e).__name__}: {e}")
    _add_seconds(storage, trial_id, attrs, t0)
    best = best_value(Path(folder) / "metrics.csv", spec.metric, spec.goal)
    if best is not None:
        storage.set_trial_user_attr(trial_id, BEST_ATTR, best)
    if callback.pruned_epoch is not None:
        atomic_write_text(Path(folder) / PRUNED_FILE, json.dumps(
            {"trial": trial.number, "epoch": callback.pruned_epoch, "metric": spec.metric, "best": best},
            indent=2) + "\n")
        sweep.study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d: pruned at epoch %d", trial.number, callback.pruned_epoch)
        return "PRUNED"
    if best is None:
        return _fail(sweep, trial, trial_id, attrs, None, f"the run recorded no {spec.metric}")
    sweep.study.tell(trial, best)
    log.info("trial %d: complete, %s %.6g", trial.number, spec.metric, best)
    return "COMPLETE"


def _fail(sweep: Any, trial: Any, trial_id: int, attrs: Mapping[str, Any], t0: float | None, message: str
          ) -> str:
    from optuna.trial import TrialState

    if t0 is not None:
        _add_seconds(sweep.storage, trial_id, attrs, t0)
    sweep.storage.set_trial_user_attr(trial_id, MESSAGE_ATTR, message)
    sweep.study.tell(trial, state=TrialState.FAIL)
    log.warning("trial %d failed: %s", trial.number, message)
    return "FAIL"


def _add_seconds(storage: Any, trial_id: int, attrs: Mapping[str, Any], t0: float) -> None:
    """Training seconds of the trial, summed over the workers that ran it."""
    storage.set_trial_user_attr(trial_id, SECONDS_ATTR,
                                round(float(attrs.get(SECONDS_ATTR, 0.0)) + time.monotonic() - t0, 3))


def _new_run_dir(trials_dir: Path, number: int) -> Path:
    """trials/<number>, or trials/<number>-<k> where an earlier attempt left a folder without a checkpoint."""
    path, k = trials_dir / str(number), 1
    while path.exists() and any(path.iterdir()):
        k += 1
        path = trials_dir / f"{number}-{k}"
    return path


def best_value(metrics_csv: Path, metric: str, goal: str) -> float | None:
    """The best `metric` over a run's epochs (max or min by `goal`), None if it has none."""
    try:
        with open(metrics_csv, newline="", encoding="utf-8") as f:
            values = [float(r[metric]) for r in csv.DictReader(f) if r.get(metric) not in (None, "")]
    except (OSError, ValueError, KeyError):
        return None
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    return max(values) if goal == "maximize" else min(values)


def _fmt(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
