"""`python -m bench.inference`: inference throughput, nntrain's evaluation forward beside onnxruntime on
the same model exported by `nntrain export`'s exporter (random weights), and beside PyTorch's
`torch.no_grad()` forward of the same net with the same weights, images per second.

For each workload (bench/configs/<name>.yaml) one model is built with random weights and exported with
normalisation statistics inside the graph; both sides get the same random [0, 1] pixel batches
(`--batch-size`, default 256) and the same thread count (`--threads`, default 2): nntrain normalises
the batch and runs `Model.forward(x, train=False)` (the `nntrain eval` path), onnxruntime runs the
graph (CPU provider, default graph optimisations, intra-op threads = --threads), PyTorch (when it is
installed; `torch.set_num_threads(--threads)`) the workload's net of bench/torch_worker.py with nntrain's
weights copied in, under `torch.no_grad()` in eval mode. Each side runs one warm-up batch, then the
sides take turns in blocks of `--batches` batches (nntrain, onnxruntime, torch, nntrain, ...
`--rounds` times); the figure is the median batch time. The outputs of the sides are compared as a
sanity check.

The GEMM floor: the model's forward FLOPs for the batch (Σ layer.flops) divided by the BLAS's measured
float32 GEMM peak (nntrain.tools.timing.gemm_peak, same threads): the time nntrain's arithmetic alone
would take if every product ran at the peak of a large square product. Beside onnxruntime's time it
says how close an im2col + BLAS design can come at all. The markdown report goes to --out.

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

    sides = {"nntrain": nntrain_batch, "onnxruntime": ort_batch}
    torch_batch = torch_forward(name, model, pixels, m4, s4, args.threads)
    if torch_batch is not None:
        sides["torch"] = torch_batch
    want = nntrain_batch()   # warm-up, and the sanity check
    diff = {side: float(np.abs(fn() - want).max() / np.abs(want).max()) for side, fn in sides.items() if side != "nntrain"}
    times: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, fn in sides.items():
            times[side] += time_batches(fn, args.batches)
    model.close()
    ips = {side: args.batch_size / statistics.median(t) for side, t in times.items()}
    return {"workload": name, "ips": ips, "fastest": {s: args.batch_size / min(t) for s, t in times.items()},
            "max_rel_diff": diff, "params": model.num_params(), "gflop": forward_flops(model) * args.batch_size / 1e9}


def forward_flops(model) -> int:
    """Forward FLOPs per sample of the model's layers (multiply-adds x2, where a layer counts them)."""
    total, shape = 0, tuple(model.input_shape)
    for layer, out in zip(model.layers, model.shapes):
        total += layer.flops(shape)
        shape = out
    return total


def torch_forward(name: str, model, pixels, m4, s4, threads: int) -> Callable[[], Any] | None:
    """PyTorch's eval forward of the workload's net (bench/torch_worker.py) with the nntrain model's
    weights, under torch.no_grad(); None when PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    import numpy as np

    from bench.torch_worker import build_net

    torch.set_num_threads(threads)
    net = build_net(name).eval()
    ours = [p for _, p, _ in model.parameters()]
    theirs = list(net.parameters())
    if len(ours) != len(theirs):
        raise RuntimeError(f"{name}: {len(ours)} nntrain parameters, {len(theirs)} in PyTorch")
    with torch.no_grad():
        for p, t in zip(ours, theirs):   # nntrain's Linear W is (in, out), PyTorch's (out, in)
            t.copy_(torch.from_numpy(np.ascontiguousarray(p if p.shape == tuple(t.shape) else p.T)))
    x = torch.from_numpy(np.ascontiguousarray((pixels - m4) / s4))

    def batch():
        with torch.no_grad():
            return net(x).numpy()

    return batch


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or '?' where the OS has none."""
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def report(rows: list[dict], args: argparse.Namespace, argv: list[str], load: tuple[str, str],
           peak: Any) -> str:
    """The markdown report: command, machine, one row per workload."""
    torch_version = _version("torch")
    lines = [
        "# Inference throughput: nntrain beside onnxruntime and PyTorch",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} with `python -m bench.inference {' '.join(argv)}`".rstrip() + ".",
        "",
        f"Machine: {cpu_model()}, {usable_cores()} cores; threads {args.threads} on both sides; Python "
        f"{platform.python_version()}, numpy {_version('numpy')}, onnxruntime {_version('onnxruntime')}, "
        f"onnx {_version('onnx')}, torch {torch_version}. GEMM peak {peak.gflops:.1f} GFLOP/s (float32 "
        f"{peak.size}x{peak.size} product, {peak.threads} BLAS threads). "
        f"Load average (1, 5, 15 min) before: {load[0]}; after: {load[1]}.",
        "",
        f"Batch {args.batch_size} of random [0, 1] pixels, random weights, evaluation forward with the "
        f"normalisation (nntrain: `Model.forward(x, train=False)` on the normalised batch; onnxruntime: the "
        f"graph `nntrain export` writes, Sub/Div inside). Median of {args.rounds} x {args.batches} batches per "
        f"side after a warm-up batch, the sides taking turns in blocks.",
        "",
        "Ratios are nntrain's time over the other side's (lower is better for nntrain; fastest batches in "
        "brackets). GEMM floor: the batch's forward FLOPs at the GEMM peak, over onnxruntime's time.",
        "",
        "| workload | params | GFLOP per batch | nntrain images/s | onnxruntime images/s | nntrain / onnxruntime "
        "| torch.no_grad images/s | nntrain / torch | GEMM floor / onnxruntime | max rel. output difference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ips, fast = r["ips"], r["fastest"]

        def ratio(side: str) -> str:
            if side not in ips:
                return "-"
            return f"**{ips[side] / ips['nntrain']:.2f}** ({fast[side] / fast['nntrain']:.2f})"

        floor_s = r["gflop"] / peak.gflops
        ort_s = args.batch_size / ips["onnxruntime"]
        diffs = ", ".join(f"{side} {d:.1e}" for side, d in r["max_rel_diff"].items())
        lines.append(f"| {r['workload']} | {r['params']:,} | {r['gflop']:.2f} | {ips['nntrain']:.0f} | "
                     f"{ips['onnxruntime']:.0f} | {ratio('onnxruntime')} | "
                     f"{ips['torch']:.0f} | {ratio('torch')} | " if "torch" in ips else
                     f"| {r['workload']} | {r['params']:,} | {r['gflop']:.2f} | {ips['nntrain']:.0f} | "
                     f"{ips['onnxruntime']:.0f} | {ratio('onnxruntime')} | - | - | ")
        lines[-1] += f"{floor_s / ort_s:.2f} | {diffs} |"
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    pin_threads(args.threads)
    from nntrain.nn.allocator import keep_freed_memory
    from nntrain.tools.timing import gemm_peak

    keep_freed_memory()   # as the `nntrain` command (and so `nntrain eval`) sets it at start

    before = load_average()
    peak = gemm_peak(threads=args.threads)
    rows = [measure(name, args) for name in args.workload_list]
    text = report(rows, args, argv, (before, load_average()), peak)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
