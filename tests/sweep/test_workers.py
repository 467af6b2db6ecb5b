"""`nntrain sweep` with real worker processes: a grid run exactly once by two workers; pruned and failed
trials recorded as such while the sweep finishes; a worker SIGKILLed mid-trial, then `--resume`: the
trial continues from its own checkpoint to the very numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli, tiny_config
from nntrain.config import load_config
from sweeptools import metrics_without_seconds, open_study, trials_csv, write_sweep


def sweep_folder(runs: Path) -> Path:
    (folder,) = (runs / "sweeps").iterdir()
    return folder


def test_a_grid_is_run_exactly_once_by_two_workers(tmp_path: Path) -> None:
    grid = {"optimizer.lr": [0.02, 0.05, 0.1], "train.batch_size": [64, 128]}
    sweep_file = write_sweep(tmp_path, {k: {"values": v} for k, v in grid.items()}, name="grid")
    proc = run_cli("sweep", str(sweep_file), "--workers", "2", "--runs-root", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    folder = sweep_folder(tmp_path / "runs")
    assert proc.stdout.strip() == str(folder)
    assert "trials 6/6 done: 6 complete, 0 pruned, 0 failed" in proc.stderr
    trials = open_study(folder).trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    drawn = sorted((t.params["optimizer.lr"], t.params["train.batch_size"]) for t in trials)
    assert drawn == sorted((lr, b) for lr in grid["optimizer.lr"] for b in grid["train.batch_size"])
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) == 2
    rows = trials_csv(folder)
    assert [r["number"] for r in rows] == [str(i) for i in range(6)]
    for row, t in zip(rows, trials):
        run = Path(row["run_dir"])
        assert run == folder / "trials" / str(t.number)
        assert (run / "config.yaml").exists() and (run / "test.json").exists()
        assert float(row["value"]) == pytest.approx(t.value)
    best = max(trials, key=lambda t: t.value)
    cfg = load_config(folder / "best.yaml")   # trainable as is
    assert cfg["optimizer"]["lr"] == best.params["optimizer.lr"]
    assert cfg["train"]["batch_size"] == best.params["train.batch_size"]
    assert {p.name for p in (folder / "plots").iterdir()} == {"history.png", "parallel_coordinates.png",
                                                             "importances.png"}
    assert (folder / "sweep.yaml").exists() and (folder / "base.yaml").exists()


def test_pruned_and_failed_trials_are_recorded_and_the_sweep_finishes(tmp_path: Path) -> None:
    # lr 0.05 trains fine but never reaches val_acc 0.999: pruned after epoch 1; lr 1e6 makes the loss NaN.
    sweep_file = write_sweep(tmp_path, {"optimizer.lr": {"values": [0.05, 1.0e6]}},
                             base=tiny_config(train={"epochs": 3, "batch_size": 128}),
                             pruner={"type": "threshold", "lower": 0.999})
    proc = run_cli("sweep", str(sweep_file), "--workers", "1", "--runs-root", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    folder = sweep_folder(tmp_path / "runs")
    assert "trials 2/2 done: 0 complete, 1 pruned, 1 failed" in proc.stderr
    pruned, failed = sorted(open_study(folder).trials(), key=lambda t: t.params["optimizer.lr"])
    assert pruned.state.name == "PRUNED" and failed.state.name == "FAIL"
    run = Path(pruned.user_attrs["run_dir"])
    assert json.loads((run / "pruned.json").read_text())["epoch"] == 1
    assert len(metrics_without_seconds(run)) == 1
    assert "pruned at epoch 1" in (run / "log.txt").read_text()
    assert "the training loss became nan" in failed.user_attrs["message"]
    assert f"trial {failed.number} failed: " in proc.stderr
    assert {r["state"] for r in trials_csv(folder)} == {"PRUNED", "FAIL"}
    assert not (folder / "best.yaml").exists()
    assert "skipped history.png: it needs 1 complete trial" in proc.stderr


def _worker_of(folder: Path, deadline: float) -> tuple[int, Path]:
    """Wait until trial 0 has finished its first epoch (metrics.csv exists); its worker's pid and run
    folder, as sweep.log says (cheap to poll: the kill must land before the trial ends)."""
    started = re.compile(r"trial 0 \(.*\): started by \S+:(\d+) in (.+)$", re.M)
    while time.monotonic() < deadline:
        try:
            m = started.search((folder / "sweep.log").read_text())
        except OSError:
            m = None
        if m and (folder / "trials" / "0" / "metrics.csv").exists():
            return int(m.group(1)), folder / "trials" / "0"
        time.sleep(0.01)
    raise AssertionError("trial 0 did not finish an epoch in time")


@pytest.mark.slow
def test_a_killed_worker_s_trial_resumes_bit_exactly(tmp_path: Path) -> None:
    sweep_file = write_sweep(tmp_path, {"optimizer.lr": {"values": [0.05]}},
                             base=tiny_config(train={"epochs": 5, "batch_size": 64}))
    runs = tmp_path / "runs"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    parent = subprocess.Popen([sys.executable, "-m", "nntrain.cli", "sweep", str(sweep_file), "--workers", "1",
                               "--runs-root", str(runs)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (runs / "sweeps").exists() or not any((runs / "sweeps").iterdir()):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        folder = sweep_folder(runs)
        pid, run = _worker_of(folder, deadline)
        os.kill(pid, signal.SIGKILL)
        out, err = parent.communicate(timeout=240)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 1, err
    assert f"pid {pid}) was killed by SIGKILL" in err and "nntrain sweep --resume" in err
    (trial,) = open_study(folder).trials()
    assert trial.state.name == "RUNNING" and not (run / "test.json").exists()

    proc = run_cli("sweep", "--resume", str(folder))
    assert proc.returncode == 0, proc.stderr
    (trial,) = open_study(folder).trials()
    assert trial.state.name == "COMPLETE" and Path(trial.user_attrs["run_dir"]) == run
    assert trial.user_attrs["worker"]["pid"] != pid
    assert "resumed at epoch" in (run / "log.txt").read_text()

    reference = tmp_path / "reference"
    ref = run_cli("--threads", "1", "train", str(run / "config.yaml"), "--run-dir", str(reference))
    assert ref.returncode == 0, ref.stderr
    assert metrics_without_seconds(run) == metrics_without_seconds(reference)
    assert len(metrics_without_seconds(run)) == 5
    assert json.loads((run / "test.json").read_text()) == json.loads((reference / "test.json").read_text())
