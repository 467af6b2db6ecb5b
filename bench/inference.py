"""`python -m bench.inference`: inference throughput, nntrain's evaluation forward beside onnxruntime on
the same model exported by `nntrain export`'s exporter (random weights), images per second.

For each workload (bench/configs/<name>.yaml) one model is built with random weights and exported with
normalisation statistics inside the graph; both sides get the same random [0, 1] pixel batches
(`--batch-size`, default 256) and the same thread count (`--threads`, default 2): nntrain normalises
the batch and runs `Model.forward(x, train=False)` (the `nntrain eval` path), onnxruntime runs the
graph (CPU provider, default graph optimisations, intra-op threads = --threads). Each side runs one
warm-up batch, then the two sides take turns in blocks of `--batches` batches (nntrain, onnxruntime,
nntrain, onnxruntime, ...`--rounds` times); the figure is the median batch time. The outputs of the
two sides are compared as a sanity check. The markdown report goes to --out.

    python -m bench.inference --batches 5 --rounds 2 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench.machine import _version, cpu_model, usable_cores
from bench.procs import OPENBLAS_OVERRIDES, THREAD_VARS

CONFIGS = Path(__file__).resolve().parent / "configs"
WORKLOADS = ("mnist-cnn", "cifar-cnn")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "inference.md"
# Per-channel statistics on the [0, 1] scale, as a run of each dataset records them (their exact values
# do not change the cost; the graph applies them as one Sub and one Div).
NORM = {"mnist": ([0.1307], [0.3081]), "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__.split("\n\n")[0],
                                epilog="example:\n  python -m bench.inference --batches 5 --rounds 2 --threads 2",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from {', '.join(WORKLOADS)}")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=5, help="timed batches per side and round (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="turns each side takes (default 2)")
    p.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report")
    args = p.parse_args(argv)
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in args.workload_list if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if min(args.batch_size, args.batches, args.rounds, args.threads) < 1:
        p.error("--batch-size, --batches, --rounds and --threads must be at least 1")
    return args


def pin_threads(threads: int) -> None:
    """Thread counts for the BLAS and OpenMP, set before NumPy loads (as the main bench's children get
    them); OpenBLAS's idle threads sleep after 4 ms, as under the `nntrain` command."""
    if "numpy" in sys.modules:
        raise RuntimeError("pin_threads must run before NumPy is imported")
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    for var in OPENBLAS_OVERRIDES:
        os.environ.pop(var, None)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def time_batches(fn: Callable[[], Any], batches: int) -> list[float]:
    """Seconds of each of `batches` calls of fn."""
    out = []
    for _ in range(batches):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(name: str, args: argparse.Namespace) -> dict:
    """Images per second of both sides on one workload, and the largest output difference."""
    import numpy as np
    import onnxruntime as ort

    from nntrain.config import load_config
    from nntrain.data import dataset_info
    from nntrain.nn.model import build_model
    from nntrain.tools.export import to_onnx

    cfg = load_config(CONFIGS / f"{name}.yaml")
    info = dataset_info(cfg["data"]["dataset"])
    model = build_model(cfg["model"], info.input_shape, seed=cfg["seed"], threads=args.threads)
    mean, std = (np.asarray(v, np.float32) for v in NORM[info.name])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    sess = ort.InferenceSession(to_onnx(model, mean, std).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).random((args.batch_size, *info.input_shape), dtype=np.float32)
    m4, s4 = mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)

    def nntrain_batch() -> np.ndarray:
        return model.forward((pixels - m4) / s4, train=False)

    def ort_batch() -> np.ndarray:
        return sess.run(None, {"pixels": pixels})[0]

    want, got = nntrain_batch(), ort_batch()   # warm-up, and the sanity check
    diff = float(np.abs(got - want).max() / np.abs(want).max())
    times: dict[str, list[float]] = {"nntrain": [], "onnxruntime": []}
    for _ in range(args.rounds):
        times["nntrain"] += time_batches(nntrain_batch, args.batches)
        times["onnxruntime"] += time_batches(ort_batch, args.batches)
    model.close()
    ips = {side: args.batch_size / statistics.median(t) for side, t in times.items()}
    return {"workload": name, "ips": ips, "fastest": {s: args.batch_size / min(t) for s, t in times.items()},
            "max_rel_diff": diff, "params": model.num_params()}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or '?' where the OS has none."""
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def report(rows: list[dict], args: argparse.Namespace, argv: list[str], load: tuple[str, str]) -> str:
    """The markdown report: command, machine, one row per workload."""
    lines = [
        "# Inference throughput: nntrain beside onnxruntime",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} with `python -m bench.inference {' '.join(argv)}`".rstrip() + ".",
        "",
        f"Machine: {cpu_model()}, {usable_cores()} cores; threads {args.threads} on both sides; Python "
        f"{platform.python_version()}, numpy {_version('numpy')}, onnxruntime {_version('onnxruntime')}, "
        f"onnx {_version('onnx')}. Load average (1, 5, 15 min) before: {load[0]}; after: {load[1]}.",
        "",
        f"Batch {args.batch_size} of random [0, 1] pixels, random weights, evaluation forward with the "
        f"normalisation (nntrain: `Model.forward(x, train=False)` on the normalised batch; onnxruntime: the "
        f"graph `nntrain export` writes, Sub/Div inside). Median of {args.rounds} x {args.batches} batches per "
        f"side after a warm-up batch, the sides taking turns in blocks.",
        "",
        "| workload | params | nntrain images/s | onnxruntime images/s | onnxruntime / nntrain "
        "| fastest batches: ratio | max rel. output difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ips, fast = r["ips"], r["fastest"]
        lines.append(f"| {r['workload']} | {r['params']:,} | {ips['nntrain']:.0f} | {ips['onnxruntime']:.0f} | "
                     f"**{ips['onnxruntime'] / ips['nntrain']:.2f}** | {fast['onnxruntime'] / fast['nntrain']:.2f} | "
                     f"{r['max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    pin_threads(args.threads)
    before = load_average()
    rows = [measure(name, args) for name in args.workload_list]
    text = report(rows, args, argv, (before, load_average()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
