"""The nntrain side of the benchmark: the real `nntrain train` CLI on a bench config, one epoch per
process (`--resume` continues the same run folder for the next epoch), timed by metrics.csv.

The `seconds` column of metrics.csv times only the training batches of an epoch, as the PyTorch
side's timer does; loading data, checkpoints, plots and the test evaluation are outside it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from bench.procs import ChildResult, child_env, nntrain_command, run_child
from bench.workloads import Workload


def train_command(wl: Workload, data_root: Path, run_dir: Path, epoch: int, threads: int) -> list[str]:
    """argv of `nntrain --threads T train <config> ...` training epoch `epoch` (1-based) of the run."""
    argv = [*nntrain_command(), "--threads", str(threads), "train", str(wl.config),
            "-s", f"data.root={data_root}", "-s", f"train.epochs={epoch}", "--no-progress"]
    if epoch == 1:
        return argv + ["--run-dir", str(run_dir)]
    # train.epochs differs from the run's saved config, hence --force.
    return argv + ["--resume", str(run_dir), "--force"]


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of the run's metrics.csv (numbers as floats)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def run_epoch(wl: Workload, data_root: Path, run_dir: Path, epoch: int, threads: int, workdir: Path) -> dict:
    """Train epoch `epoch` of the nntrain run in `run_dir`; returns its figures and peak RSS."""
    res: ChildResult = run_child(train_command(wl, data_root, run_dir, epoch, threads),
                                 child_env(threads, "nntrain"), workdir).check(f"nntrain {wl.name} epoch {epoch}")
    row = read_metrics(run_dir)[-1]
    if int(row["epoch"]) != epoch:
        raise RuntimeError(f"{run_dir}/metrics.csv ends at epoch {row['epoch']}, expected {epoch}")
    test = json.loads((run_dir / "test.json").read_text())
    return {"epoch": epoch, "seconds": row["seconds"], "train_loss": row["train_loss"],
            "train_acc": row["train_acc"], "test_acc": test.get("test_acc"),
            "test_checkpoint": test.get("checkpoint"), "peak_rss_mb": res.peak_rss_mb, "wall_s": res.wall_s}
