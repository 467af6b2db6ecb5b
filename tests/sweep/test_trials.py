"""Trials run by a worker in this process: seeded samplers draw the same parameters twice; a trial whose
parameters the config schema refuses only in combination is FAIL with its message and the sweep goes
on; which RUNNING trials count as orphaned."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_config
from nntrain.errors import CheckpointError
from nntrain.sweep.owners import HEARTBEAT_ATTR, STALE_S, WORKER_ATTR, WorkerId, is_orphan
from nntrain.sweep.pruning import PruningCallback
from sweeptools import run_here, trials_csv, write_sweep

SPACE = {"optimizer.lr": {"distribution": "log_uniform_values", "min": 0.005, "max": 0.2},
         "optimizer.momentum": {"distribution": "uniform", "min": 0.5, "max": 0.95},
         "model[1].out_features": {"values": [16, 32, 48]}}


@pytest.mark.parametrize("method, trials", [("random", 2), ("tpe", 3)])
def test_a_seeded_sampler_draws_the_same_parameters_twice(tmp_path: Path, method: str, trials: int) -> None:
    drawn = []
    for attempt in ("a", "b"):
        folder = tmp_path / attempt
        folder.mkdir()
        sweep_file = write_sweep(folder, SPACE, method=method, trials=trials, seed=7, startup_trials=1)
        sweep, _ = run_here(sweep_file, folder / "runs")
        assert [t.state.name for t in sweep.trials()] == ["COMPLETE"] * trials
        drawn.append([t.params for t in sweep.trials()])
    assert drawn[0] == drawn[1]
    lrs = [p["optimizer.lr"] for p in drawn[0]]
    assert len(set(lrs)) == trials   # each trial draws its own values


def test_a_trial_the_schema_refuses_fails_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # Each value is valid alone on the base config (so the file passes validation), but together they
    # ask early stopping to watch val_acc without a validation split: refused when the trial starts.
    base = tiny_config(train={"epochs": 1, "batch_size": 64, "early_stopping": {"monitor": "train_acc"}})
    sweep_file = write_sweep(tmp_path, {"data.val_size": {"values": [0]},
                                        "train.early_stopping.monitor": {"values": ["val_acc"]}},
                             base=base, metric={"name": "train_acc"})
    sweep, folder = run_here(sweep_file, tmp_path / "runs")
    (trial,) = sweep.trials()
    assert trial.state.name == "FAIL"
    assert "val_acc needs a validation split" in trial.user_attrs["message"]
    from nntrain.sweep.outputs import write_outputs
    from nntrain.sweep.folder import SweepFolder

    written = write_outputs(sweep, SweepFolder(folder))
    assert [p.name for p in written] == ["trials.csv"]   # no best.yaml, no plots: nothing is complete
    (row,) = trials_csv(folder)
    assert row["state"] == "FAIL" and "validation split" in row["message"]


def test_orphans_are_trials_whose_worker_is_gone() -> None:
    host, now = socket.gethostname(), time.time()
    me = WorkerId.this_process(0).to_attr()
    assert not is_orphan({WORKER_ATTR: me}, now - 1000)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = dict(me, pid=child.pid)
    assert is_orphan({WORKER_ATTR: dead}, now)
    reused = dict(me, started="1")   # our pid, but another process start time: a reused pid
    assert is_orphan({WORKER_ATTR: reused}, now)
    elsewhere = dict(me, host=host + "-elsewhere")
    assert not is_orphan({WORKER_ATTR: elsewhere, HEARTBEAT_ATTR: now - 5}, now - 1000)
    assert is_orphan({WORKER_ATTR: elsewhere, HEARTBEAT_ATTR: now - STALE_S - 1}, now - 1000)
    assert not is_orphan({}, now - 1) and is_orphan({}, now - 60)
    assert os.getpid() == me["pid"]


def test_the_pruning_state_in_a_checkpoint_is_checked() -> None:
    cb = PruningCallback(trial=None, metric="val_acc")   # type: ignore[arg-type]
    cb.load_state_dict({"pruned_epoch": 3})
    assert cb.state_dict() == {"pruned_epoch": 3}
    with pytest.raises(CheckpointError):
        cb.load_state_dict({"pruned_epoch": "3"})
