"""Starting a sweep, joining one and resuming one: the sweep folder and study, the worker processes
(spawned: a fresh interpreter each, nothing inherited from this process's threads), the progress while
they run, and the outputs when they are done.

    start(spec, runs_root, workers, threads)       a new sweep folder and study, then its workers
    join(target, runs_root, workers, threads)      more workers on an existing study (folder or URL)
    resume(folder, workers, threads)               trials whose worker died taken up again, then join
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from optuna.trial import TrialState

from nntrain.atomic import atomic_write_text, create_unique_dir
from nntrain.config.yamlsafe import parse_yaml, read_text
from nntrain.errors import NNTrainError
from nntrain.sweep.folder import SweepFolder
from nntrain.sweep.outputs import best_trial, write_outputs, write_trials_csv
from nntrain.sweep.owners import is_orphan
from nntrain.sweep.spec import SweepSpec
from nntrain.sweep.study import SweepStudy, open_storage, study_names
from nntrain.sweep.worker import MESSAGE_ATTR, WorkerConfig, worker_main
from nntrain.training.trainer import Interrupted

log = logging.getLogger(__name__)

POLL_S = 1.0


@dataclass(frozen=True)
class Progress:
    """Where a sweep stands: trial counts by state and the best value so far."""

    metric: str
    total: int
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best_value: float | None
    best_number: int | None

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    def line(self) -> str:
        best = (f"best {self.metric} {self.best_value:.4f} (trial {self.best_number})" if self.best_value is not None
                else "no best yet")
        return (f"trials {self.done}/{self.total} done: {self.complete} complete, {self.pruned} pruned, "
                f"{self.failed} failed; {self.running} running; {best}")


@dataclass
class SweepResult:
    """What a start, join or resume leaves: the folder, the final progress and what went wrong."""

    folder: SweepFolder
    progress: Progress
    dead_workers: list[str] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)      # RUNNING trials whose worker died
    outputs: list[Path] = field(default_factory=list)


def progress(sweep: SweepStudy) -> Progress:
    """The sweep's counts and best trial, read from the storage now."""
    trials = sweep.trials()
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    best = best_trial(sweep)
    return Progress(sweep.spec.metric, len(trials), count[TrialState.COMPLETE], count[TrialState.PRUNED],
                    count[TrialState.FAIL], count[TrialState.RUNNING], count[TrialState.WAITING],
                    None if best is None else best.value, None if best is None else best.number)


def start(spec: SweepSpec, runs_root: str | os.PathLike[str] = "runs", workers: int = 1, threads: int = 1,
          on_progress: Callable[[Progress], None] | None = None) -> SweepResult:
    """A new sweep folder under runs_root/sweeps/ and its study, then `workers` processes on it
    (0: only create it, for --join from elsewhere)."""
    storage = open_storage(spec.storage, None) if spec.storage else None
    folder = SweepFolder(create_unique_dir(Path(runs_root) / "sweeps", spec.name))
    folder.make_dirs()
    base_copy = folder.base_copy(spec.base_source)
    atomic_write_text(base_copy, spec.base_text)
    atomic_write_text(folder.sweep_file, spec.to_yaml(base_copy.name))
    storage = storage or open_storage(None, folder.path)
    sweep = SweepStudy.create(storage, folder.name, spec, base_copy.name,
                              {"workers": workers, "threads_per_worker": threads})
    log.info("sweep %s: %d trials (%s), metric %s (%s)", folder.path, spec.trials, spec.method, spec.metric, spec.goal)
    return _run(sweep, folder, folder, workers, threads, on_progress)


def join(target: str, runs_root: str | os.PathLike[str] | None = None, workers: int = 1, threads: int = 1,
         study: str | None = None, on_progress: Callable[[Progress], None] | None = None) -> SweepResult:
    """More workers on the study of a sweep folder or a storage URL. Trial run folders go under
    runs_root/sweeps/<study>/trials/ (default: the sweep folder's trials/; for a URL, runs/...)."""
    sweep, folder = open_sweep(target, study, runs_root)
    log.info("joining sweep %s: %d of its %d trials not taken yet", sweep.name,
             len(sweep.trials((TrialState.WAITING,))), sweep.spec.trials)
    trials_home = folder if runs_root is None else SweepFolder(Path(runs_root) / "sweeps" / sweep.name)
    return _run(sweep, folder, trials_home, workers, threads, on_progress)


def resume(target: str, workers: int | None = None, threads: int | None = None, runs_root: str | None = None,
           on_progress: Callable[[Progress], None] | None = None) -> SweepResult:
    """Take up the trials whose worker died (from their own last checkpoint), then run the trials left,
    with the first start's worker and thread counts unless given."""
    sweep, folder = open_sweep(target, None, runs_root)
    requeued = requeue_orphans(sweep)
    if requeued:
        log.info("taking up trial%s %s again (their workers are gone)", "s" if len(requeued) > 1 else "",
                 ", ".join(map(str, requeued)))
    launch = sweep.launch
    workers = workers or int(launch.get("workers") or 1)
    threads = threads or int(launch.get("threads_per_worker") or 1)
    trials_home = folder if runs_root is None else SweepFolder(Path(runs_root) / "sweeps" / sweep.name)
    return _run(sweep, folder, trials_home, workers, threads, on_progress)


def open_sweep(target: str, study: str | None, runs_root: str | os.PathLike[str] | None
               ) -> tuple[SweepStudy, SweepFolder]:
    """The study of a sweep folder or storage URL, and the local sweep folder for its outputs (for a
    URL: runs_root/sweeps/<study>/, made with the sweep file and base copy if missing)."""
    if "://" in target:
        storage = open_storage(target, None)
        sweep = SweepStudy.open(storage, study, "the storage")
        folder = SweepFolder(Path(runs_root or "runs") / "sweeps" / sweep.name)
        folder.make_dirs()
        base_copy = folder.base_copy(sweep.spec.base_source)
        if not folder.sweep_file.exists():
            atomic_write_text(base_copy, sweep.spec.base_text)
            atomic_write_text(folder.sweep_file, sweep.spec.to_yaml(base_copy.name))
        return sweep, folder
    folder = SweepFolder(target)
    if not folder.sweep_file.is_file():
        raise NNTrainError(f"{target} is no sweep folder (it has no sweep.yaml); give the folder nntrain sweep "
                           "made, or a postgresql:// storage URL")
    raw, _ = parse_yaml(read_text(folder.sweep_file), str(folder.sweep_file))
    url = raw.get("storage") if isinstance(raw, dict) else None
    storage = open_storage(url, folder.path)
    if study is None and folder.name in study_names(storage):
        study = folder.name
    sweep = SweepStudy.open(storage, study, str(folder.path))
    folder.make_dirs()
    return sweep, folder


def requeue_orphans(sweep: SweepStudy) -> list[int]:
    """Put RUNNING trials whose worker is gone back in the queue; their numbers."""
    numbers = []
    for t in sweep.trials((TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else None
        if is_orphan(t.user_attrs, started) and sweep.requeue(t):
            numbers.append(t.number)
    return numbers


def _run(sweep: SweepStudy, folder: SweepFolder, trials_home: SweepFolder, workers: int, threads: int,
         on_progress: Callable[[Progress], None] | None) -> SweepResult:
    """Run `workers` processes on the study until no ticket is left, then write the outputs."""
    dead: list[str] = []
    stopped: Interrupted | None = None
    if workers > 0:
        trials_home.make_dirs()
        configs = [WorkerConfig(sweep.spec.storage, None if sweep.spec.storage else str(folder.path), sweep.name,
                                str(trials_home.trials), i, threads, str(folder.log)) for i in range(workers)]
        try:
            dead = _run_processes(sweep, folder, configs, on_progress)
        except Interrupted as e:
            stopped = e
    final = progress(sweep)
    orphans = [t.number for t in sweep.trials((TrialState.RUNNING,))
               if is_orphan(t.user_attrs, t.datetime_start.timestamp() if t.datetime_start else None)]
    outputs = write_outputs(sweep, folder, plots=stopped is None)
    if stopped is not None:
        raise stopped
    return SweepResult(folder, final, dead, orphans, outputs)


def _run_processes(sweep: SweepStudy, folder: SweepFolder, configs: list[WorkerConfig],
                   on_progress: Callable[[Progress], None] | None) -> list[str]:
    """Spawn the workers and report progress until they have all exited; the ones that died."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(c,), name=f"nntrain-sweep-worker-{c.index}") for c in configs]
    for p in procs:
        p.start()
    last: Progress | None = None
    seen_failed: set[int] = set()
    try:
        while True:
            alive = [p for p in procs if p.is_alive()]
            now = progress(sweep)
            if now != last:
                _report_failures(sweep, seen_failed)
                if on_progress:
                    on_progress(now)
                if last is None or now.done != last.done:
                    write_trials_csv(sweep, folder.trials_csv)
                last = now
            if not alive:
                break
            multiprocessing.connection.wait([p.sentinel for p in alive], timeout=POLL_S)
    except KeyboardInterrupt:
        _stop(procs)
        raise Interrupted(f"interrupted: the running trials saved a checkpoint; continue with: "
                          f"nntrain sweep --resume {folder.path}") from None
    if any(p.exitcode == 130 for p in procs):   # Ctrl-C or SIGTERM reached the workers but not this process
        raise Interrupted(f"the workers were stopped by a signal; continue with: nntrain sweep --resume {folder.path}")
    return [f"worker {c.index} (pid {p.pid}) {_how(p.exitcode)}" for c, p in zip(configs, procs)
            if p.exitcode not in (0, 130)]


def _stop(procs: list[multiprocessing.process.BaseProcess]) -> None:
    """SIGTERM (a saved stop, as Ctrl-C) to each live worker, then wait for them."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 120
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))


def _how(exitcode: int | None) -> str:
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"failed (exit {exitcode}; see sweep.log)"


def _report_failures(sweep: SweepStudy, seen: set[int]) -> None:
    for t in sweep.trials((TrialState.FAIL,)):
        if t.number not in seen:
            seen.add(t.number)
            log.warning("trial %d failed: %s", t.number, t.user_attrs.get(MESSAGE_ATTR, "(no message)"))
