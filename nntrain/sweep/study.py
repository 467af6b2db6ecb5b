"""The Optuna study of a sweep: its storage, sampler and pruner, the trial tickets, and the spec and base
config it carries so that a worker on another machine needs nothing but the storage.

Tickets: when a sweep is created, every trial it will run is made at once as a WAITING trial (grid:
one per grid point, carrying its grid id for the GridSampler; random/TPE: empty ones, sampled when
taken). A worker takes a ticket by the storage's atomic WAITING -> RUNNING step and stops when none is
left, so `trials` holds across any number of workers and a grid is run exactly once. A trial whose
worker died is put back to WAITING (resume) and taken up like any ticket.

Seeds: a trial's sampler is seeded from (seed, trial number), so workers never draw the same values,
and a sweep run again (one worker; with several, TPE sees other trials as they happen to finish)
draws the same parameters. Imports Optuna: load it through `nntrain.sweep.require_optuna` first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from nntrain.errors import NNTrainError
from nntrain.sweep.spec import Parameter, SweepSpec, parse_sweep

log = logging.getLogger(__name__)

SPEC_ATTR = "nntrain.sweep"            # the resolved sweep file (YAML text)
BASE_ATTR = "nntrain.base"             # {"name": the base config's file name, "text": its text}
LAUNCH_ATTR = "nntrain.launch"         # {"workers": N, "threads_per_worker": K} of the first start
JOURNAL_NAME = "journal.log"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna's experimental-feature warnings (constant_liar, the matplotlib plots) are not the user's
    business; nor is its INFO log of each trial (the sweep prints its own progress)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_storage(url: str | None, folder: Path | None) -> BaseStorage:
    """RDBStorage for a postgresql:// URL, else the JournalStorage file in `folder`."""
    if url is not None:
        try:
            return RDBStorage(sqlalchemy_url(url), engine_kwargs={"pool_pre_ping": True})
        except ImportError as e:
            raise NNTrainError(f"the PostgreSQL storage needs SQLAlchemy and psycopg2 ({e}): "
                               'pip install "nntrain[sweep]"') from None
        except Exception as e:  # noqa: BLE001  (SQLAlchemy's OperationalError and the like)
            raise NNTrainError(f"cannot open the storage {_redact(url)}: {str(e).splitlines()[0]}") from None
    assert folder is not None
    return JournalStorage(JournalFileBackend(str(folder / JOURNAL_NAME)))


def sqlalchemy_url(url: str) -> str:
    """A plain postgresql:// URL with the driver the `sweep` extra installs (psycopg2) named: SQLAlchemy
    2.1 would otherwise pick psycopg 3. A URL that names its driver (postgresql+psycopg://) is kept."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _redact(url: str) -> str:
    """The URL without its password."""
    head, sep, tail = url.partition("@")
    if not sep:
        return url
    scheme, _, user = head.partition("://")
    return f"{scheme}://{user.partition(':')[0]}:***@{tail}"


def study_names(storage: BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def sampler_for(spec: SweepSpec, trial_number: int) -> optuna.samplers.BaseSampler:
    """The sampler that draws trial `trial_number` (seeded from seed and number; grid: one fixed order)."""
    if spec.method == "grid":
        return _TicketGridSampler(spec.grid(), seed=spec.seed)
    seed = trial_seed(spec.seed, trial_number)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with quiet():
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials, constant_liar=True)


def trial_seed(seed: int, trial_number: int) -> int:
    """The sampler seed of one trial, mixed from (seed, number): Optuna's samplers seed NumPy's legacy
    Mersenne Twister, whose first draws for seeds 0 and 3 (say) are nearly equal."""
    return int(np.random.SeedSequence([int(seed), int(trial_number)]).generate_state(1)[0])


class _TicketGridSampler(optuna.samplers.GridSampler):
    """GridSampler whose grid ids are handed out as tickets: after_trial's `study.stop()` (which ends an
    `optimize()` loop when the grid is done, and raises outside one) has nothing to do, tickets end."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: Any) -> None:
        return None


def pruner_for(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """Steps are 1-based epochs; `warmup_epochs: w` keeps epochs 1..w from being pruned."""
    p = spec.pruner
    kind = p["type"]
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p["startup_trials"], n_warmup_steps=p["warmup_epochs"] + 1)
    if kind == "hyperband":
        searched = any(q.key == "train.epochs" for q in spec.parameters)   # then Optuna finds it out
        max_epochs = p["max_epochs"] or ("auto" if searched else spec.base_config["train"]["epochs"])
        return optuna.pruners.HyperbandPruner(min_resource=p["min_epochs"], max_resource=max_epochs,
                                              reduction_factor=p["reduction_factor"])
    if kind == "threshold":
        return optuna.pruners.ThresholdPruner(lower=p["lower"], upper=p["upper"],
                                              n_warmup_steps=p["warmup_epochs"] + 1)
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, p: Parameter) -> Any:
    """Draw (or, for a resumed trial, read back) the value of one parameter."""
    if p.kind in ("categorical", "constant"):
        return trial.suggest_categorical(p.key, list(p.values))
    if p.kind == "int_uniform":
        return trial.suggest_int(p.key, int(p.low), int(p.high))
    if p.kind == "log_uniform_values":
        return trial.suggest_float(p.key, float(p.low), float(p.high), log=True)
    if p.kind == "log_uniform":
        return trial.suggest_float(p.key, math.exp(p.low), math.exp(p.high), log=True)
    return trial.suggest_float(p.key, float(p.low), float(p.high), step=p.q)


def grid_space(spec: SweepSpec) -> dict[str, list[Any]]:
    """The search space as GridSampler records it on its trials (sorted by name)."""
    return {k: list(v) for k, v in sorted(spec.grid().items())}


class SweepStudy:
    """A sweep's study, opened in this process: its spec, the optuna Study and the ticket operations."""

    def __init__(self, storage: BaseStorage, name: str, spec: SweepSpec):
        # The wrapper load_study would put around an RDBStorage (a per-process trial cache), made here so
        # that the study and the ticket operations share it: trials taken through the bare storage would
        # be unknown to the study's cache.
        storage = optuna.storages.get_storage(storage)
        self.storage, self.name, self.spec = storage, name, spec
        self.id = storage.get_study_id_from_name(name)
        self.study = optuna.load_study(study_name=name, storage=storage, sampler=sampler_for(spec, 0),
                                       pruner=pruner_for(spec))

    @classmethod
    def create(cls, storage: BaseStorage, name: str, spec: SweepSpec, base_name: str,
               launch: dict[str, int]) -> SweepStudy:
        """A new study holding the spec, the base config and one ticket per trial."""
        with quiet():
            study = optuna.create_study(study_name=name, storage=storage,
                                        direction="maximize" if spec.goal == "maximize" else "minimize")
        study.set_user_attr(SPEC_ATTR, spec.to_yaml(base_name))
        study.set_user_attr(BASE_ATTR, {"name": base_name, "text": spec.base_text})
        study.set_user_attr(LAUNCH_ATTR, dict(launch))
        tickets = []
        for k in range(spec.trials):
            attrs: dict[str, Any] = {"fixed_params": {}}
            if spec.method == "grid":
                attrs = {"grid_id": k, "search_space": grid_space(spec)}
            tickets.append(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=attrs))
        study.add_trials(tickets)
        return cls(storage, name, spec)

    @classmethod
    def open(cls, storage: BaseStorage, name: str | None, where: str) -> SweepStudy:
        """The sweep study `name` in `storage` (None: its only study); its spec is validated again."""
        names = study_names(storage)
        if name is None:
            if len(names) != 1:
                raise NNTrainError(f"{where} holds {len(names)} studies" + (f" ({', '.join(names)})" if names else "")
                                   + ": name one with --study" if names else f"{where} holds no sweep study")
            name = names[0]
        elif name not in names:
            raise NNTrainError(f"{where} holds no study {name!r}" + (f"; it holds {', '.join(names)}" if names else ""))
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
        if SPEC_ATTR not in attrs or BASE_ATTR not in attrs:
            raise NNTrainError(f"study {name!r} in {where} was not made by nntrain sweep")
        base = attrs[BASE_ATTR]
        spec = parse_sweep(attrs[SPEC_ATTR], f"{where} (study {name}, sweep file)", base_text=base["text"],
                           base_source=base["name"])
        return cls(storage, name, spec)

    @property
    def launch(self) -> dict[str, int]:
        return dict(self.study.user_attrs.get(LAUNCH_ATTR, {}))

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
        return self.storage.get_all_trials(self.id, deepcopy=False, states=states)

    def take_ticket(self) -> int | None:
        """Atomically move one WAITING trial to RUNNING; its trial id, or None when none is left."""
        for t in self.trials((TrialState.WAITING,)):
            try:
                if self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                    return t._trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def requeue(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Put a RUNNING trial whose worker died back to WAITING (its parameters and run folder kept)."""
        try:
            self.storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def trial(self, trial_id: int) -> optuna.Trial:
        """The Trial to run for a taken ticket, its sampler seeded by its number."""
        number = self.storage.get_trial_number_from_id(trial_id)
        self.study.sampler = sampler_for(self.spec, number)
        with quiet():
            return optuna.Trial(self.study, trial_id)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Every parameter's value for `trial` (already drawn ones are kept: a resumed trial)."""
        with quiet():
            return {p.key: suggest(trial, p) for p in self.spec.parameters}
