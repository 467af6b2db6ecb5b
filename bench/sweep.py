"""`python -m bench.sweep`: where should a sweep spend the cores, on trials or inside them?

The same grid of 8 quickstart trials (configs/quickstart.yaml: the MLP on mnist-mini, its own 8 epochs;
optimizer.lr x the hidden width) is run as a real `nntrain sweep` twice: 2 workers with 1 BLAS thread
each, and 1 worker with 2 threads. The result is the ratio of the two wall-clock times (the whole
command: creating the sweep, spawning the workers, every trial, the outputs), written as markdown to
--out (default bench/results/sweep.md) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import yaml

from bench.machine import machine_info
from bench.procs import child_env, nntrain_command, run_child

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sweep.md"
GRID = {"optimizer.lr": [0.01, 0.03, 0.1, 0.3], "model[1].out_features": [64, 128]}
LAYOUTS = ((2, 1), (1, 2))   # (workers, BLAS threads per worker)


def write_sweep(folder: Path, epochs: int | None) -> Path:
    sweep = {"base": str(REPO / "configs" / "quickstart.yaml"), "name": "bench-sweep",
             "metric": {"name": "val_acc", "goal": "maximize"}, "method": "grid", "pruner": {"type": "none"},
             "overrides": [f"train.epochs={epochs}"] if epochs else [],
             "parameters": {k: {"values": v} for k, v in GRID.items()}}
    path = folder / "bench-sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def run_layout(sweep_file: Path, workers: int, threads: int, work: Path) -> dict:
    """One `nntrain sweep` of the grid; its wall time and what trials.csv says."""
    name = f"{workers}x{threads}"
    argv = [*nntrain_command(), "sweep", str(sweep_file), "--workers", str(workers), "--threads-per-worker",
            str(threads), "--runs-root", str(work / name)]
    res = run_child(argv, child_env(threads, "nntrain"), work / f"{name}-logs", cwd=REPO).check(f"sweep {name}")
    folder = Path(res.stdout.strip().splitlines()[-1])
    with open(folder / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: float(r["value"]))
    return {"layout": name, "workers": workers, "threads": threads, "wall_s": res.wall_s, "trials": len(rows),
            "complete": len(complete), "median_trial_s": statistics.median(float(r["seconds"]) for r in rows),
            "best": best, "values": {(r["optimizer.lr"], r["model[1].out_features"]): r["value"] for r in rows}}


def markdown(results: list[dict], machine: dict, command: str, epochs: int | None) -> str:
    by = {r["layout"]: r for r in results}
    ratio = by["1x2"]["wall_s"] / by["2x1"]["wall_s"]
    blas = machine["blas_nntrain_side"]
    per_trial = f"{epochs} epochs" if epochs else "the config's own 8 epochs"
    lines = [
        f"Measured {datetime.now():%Y-%m-%d %H:%M} with `{command}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} usable cores; Python {machine['python']}, "
        f"numpy {machine['numpy']} ({blas.get('library', '?')}, kernel {blas.get('kernel', '?')}).",
        "",
        f"The same grid of {len(results[0]['values'])} quickstart trials (optimizer.lr {GRID['optimizer.lr']} x "
        f"model[1].out_features {GRID['model[1].out_features']}, "
        f"{per_trial} each, no pruning), run as one "
        "`nntrain sweep` per layout; wall time is the whole command (spawning the workers, every trial, "
        "trials.csv, best.yaml and the plots); trial seconds are the training time of a trial (trials.csv).",
        "",
        "| layout | workers x BLAS threads | wall s | median trial s | trials complete | best val_acc |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['layout']} | {r['workers']} x {r['threads']} | {r['wall_s']:.1f} | "
                     f"{r['median_trial_s']:.2f} | {r['complete']}/{r['trials']} | {float(r['best']['value']):.4f} "
                     f"(lr {r['best']['optimizer.lr']}, width {r['best']['model[1].out_features']}) |")
    same = by["1x2"]["values"] == by["2x1"]["values"]
    lines += ["", f"**Ratio: 1 worker x 2 threads takes {ratio:.2f}x the wall-clock time of 2 workers x 1 thread.**",
              "", "Every trial's value is the same in both layouts." if same else
              "Trial values differ between the layouts (a different BLAS thread count may add in a different "
              "order)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the quickstart's 8)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown results (default bench/results/sweep.md)")
    p.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (sweep folders, logs)")
    args = p.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="nntrain-bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sweep_file = write_sweep(work, args.epochs)
        results = []
        for workers, threads in LAYOUTS:
            print(f"sweep with {workers} worker(s) x {threads} thread(s) ...", file=sys.stderr, flush=True)
            results.append(run_layout(sweep_file, workers, threads, work))
            print(f"  {results[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
        command = "python -m bench.sweep" + (f" --epochs {args.epochs}" if args.epochs else "")
        text = markdown(results, machine_info(1, work / "machine"), command, args.epochs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
