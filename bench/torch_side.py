"""The PyTorch side of the benchmark: `python -m bench.torch_worker` for one epoch per process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.procs import child_env, run_child
from bench.workloads import Workload

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_epoch(wl: Workload, data_root: Path, state_file: Path, epoch: int, threads: int, workdir: Path) -> dict:
    """Train epoch `epoch` of the PyTorch run whose state is kept in `state_file`."""
    argv = [sys.executable, "-m", "bench.torch_worker", wl.name, str(data_root), str(state_file), str(threads)]
    res = run_child(argv, child_env(threads, "torch"), workdir, cwd=REPO_ROOT).check(f"torch {wl.name} epoch {epoch}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["epoch"] != epoch:
        raise RuntimeError(f"torch worker trained epoch {out['epoch']}, expected {epoch}")
    return {"epoch": epoch, "seconds": out["seconds"], "train_loss": out["train_loss"], "train_acc": out["train_acc"],
            "test_acc": out["test_acc"], "peak_rss_mb": res.peak_rss_mb, "vmhwm_mb": out["vmhwm_mb"],
            "wall_s": res.wall_s, "torch_threads": out["threads"]}
