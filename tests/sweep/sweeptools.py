"""Helpers of the sweep tests: a tiny base config, sweep files, a sweep run in this process, reading a
sweep's study and trials.csv."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from conftest import tiny_config, write_config
from nntrain.sweep import launch
from nntrain.sweep.owners import WorkerId
from nntrain.sweep.spec import load_sweep
from nntrain.sweep.study import SweepStudy, open_storage
from nntrain.sweep.worker import run_worker


def write_sweep(folder: Path, parameters: dict[str, Any], base: dict[str, Any] | None = None,
                **top: Any) -> Path:
    """folder/base.yaml (the tiny MLP, 1 epoch unless `base` says otherwise) and folder/sweep.yaml."""
    write_config(folder / "base.yaml", base or tiny_config(train={"epochs": 1, "batch_size": 64}))
    sweep = {"base": "base.yaml", "name": "t", "metric": {"name": "val_acc"}, "method": "grid", **top,
             "parameters": parameters}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def open_study(folder: Path, url: str | None = None) -> SweepStudy:
    """The study of a sweep folder (journal), or the only study at `url`."""
    return SweepStudy.open(open_storage(url, None if url else folder), None, str(folder))


def run_here(sweep_file: Path, runs_root: Path) -> tuple[SweepStudy, Path]:
    """Create the sweep, then run all its trials in one worker in this process (no spawn)."""
    result = launch.start(load_sweep(sweep_file), runs_root, workers=0)
    sweep = open_study(result.folder.path)
    run_worker(sweep, result.folder.trials, WorkerId.this_process(0))
    return sweep, result.folder.path


def trials_csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def metrics_without_seconds(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
