"""Forward+backward time of a reference workload's net (bench/workloads.py; default mnist-cnn) on one
float32 batch: nntrain beside PyTorch, same process, same thread count. Not a test.

usage: python -m bench.fwdbwd [--threads 2] [--net mnist-cnn|cifar-cnn|cifar-resnet|mnist-mlp] [--repeats 30] [--rounds 3] [--batch N] [--profile]
       [--clock cpu] [--workers N] [--compare-workers] [--keep-freed-memory]
Prints the median (and best) milliseconds per forward+backward of each side and the ratio nntrain/PyTorch.
Rounds alternate the two sides so that load from other processes hits both alike. On a busy machine
trust the best-of figures; with --threads 1, `--clock cpu` (process CPU time) is robust to other load.
"""

from __future__ import annotations

import argparse
import os
import time


WORKLOAD_NAMES = ("mnist-mlp", "mnist-cnn", "cifar-cnn", "cifar-resnet")
ALIASES = {"mnist": "mnist-cnn", "cifar": "cifar-cnn", "resnet": "cifar-resnet"}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="BLAS / torch threads (default 2)")
    ap.add_argument("--repeats", type=int, default=30, help="timed forward+backward passes per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of nntrain and torch")
    ap.add_argument("--batch", type=int, default=None, help="default: the workload's (64 mnist, 128 cifar)")
    ap.add_argument("--net", choices=(*WORKLOAD_NAMES, *ALIASES), default="mnist-cnn",
                    help="a reference workload of bench/workloads.py (mnist: mnist-cnn, cifar: cifar-cnn)")
    ap.add_argument("--profile", action="store_true", help="also print nntrain's per-layer times")
    ap.add_argument("--input-grad", action="store_true",
                    help="compute dL/d(input) on both sides (by default neither does, as in training)")
    ap.add_argument("--workers", type=int, default=None,
                    help="nntrain's element-wise worker threads (default: --threads)")
    ap.add_argument("--compare-workers", action="store_true",
                    help="also time nntrain with one element-wise thread (BLAS threads unchanged)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: process CPU time of all threads (use with --threads 1)")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="keep freed memory in glibc's heap, as the `nntrain` command does (nn/allocator.py); "
                         "in this one process it acts on both sides")
    return ap.parse_args()


args = parse()
# Thread counts must be fixed before NumPy's BLAS starts.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402

import nntrain  # noqa: E402
from nntrain.nn.allocator import keep_freed_memory  # noqa: E402

import yaml  # noqa: E402

from bench.workloads import WORKLOADS  # noqa: E402

# The workload's net: the model of its bench config, and bench/torch_worker.py's build_net on the torch side.
WORKLOAD = WORKLOADS[ALIASES.get(args.net, args.net)]
SPEC = yaml.safe_load(WORKLOAD.config.read_text())["model"]
INPUT = (1, 28, 28) if WORKLOAD.dataset == "mnist" else (3, 32, 32)
if args.batch is None:
    args.batch = WORKLOAD.batch_size


clock = time.perf_counter if args.clock == "wall" else time.process_time


def timed(step, repeats: int) -> list[float]:
    step()  # warm-up: buffers, page faults
    out = []
    for _ in range(repeats):
        t0 = clock()
        step()
        out.append(clock() - t0)
    return out


def nntrain_step(x: np.ndarray, labels: np.ndarray, workers: int | None = None):
    model = nntrain.build_model(SPEC, input_shape=INPUT, seed=0, threads=workers)
    loss = nntrain.SoftmaxCrossEntropy()

    def step():
        loss.forward(model.forward(x, train=True), labels)
        # PyTorch computes no gradient for an input that does not require one; the same here.
        model.backward(loss.backward(), need_input_grad=args.input_grad)

    return model, loss, step


def torch_step(x: np.ndarray, labels: np.ndarray):
    import torch
    from torch import nn

    from bench.torch_worker import build_net

    torch.set_num_threads(args.threads)
    net = build_net(WORKLOAD.name).train()
    tx, ty = torch.from_numpy(x).requires_grad_(args.input_grad), torch.from_numpy(labels.astype(np.int64))
    lossf = nn.CrossEntropyLoss()

    def step():
        net.zero_grad(set_to_none=True)
        tx.grad = None
        lossf(net(tx), ty).backward()

    return step


def profile(model, loss, x: np.ndarray, labels: np.ndarray, repeats: int = 20) -> None:
    """Per-layer forward/backward milliseconds (best of `repeats`: robust to load from other processes),
    the layers run in the model's plan as in the timed step."""
    fwd = {i: [] for i in range(len(model.layers))}
    bwd = {i: [] for i in range(len(model.layers))}
    for _ in range(repeats):
        h = x
        for step in model.plan:
            for i in step.layers:
                t0 = clock()
                h = model.layers[i].forward(h, True)
                fwd[i].append(clock() - t0)
        loss.forward(h, labels)
        g = loss.backward()
        for i, need in model.backward_calls(args.input_grad):
            t0 = clock()
            g = model.layers[i].backward(g, need)
            bwd[i].append(clock() - t0)
    for i, layer in enumerate(model.layers):
        bwd[i] = bwd[i] or [0.0]
        print(f"  {i:2d} {layer.describe():55s} fwd {1e3 * min(fwd[i]):6.2f} ms  "
              f"bwd {1e3 * min(bwd[i]):6.2f} ms")


def main() -> None:
    if args.keep_freed_memory:
        keep_freed_memory()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *INPUT)).astype(np.float32)
    labels = rng.integers(0, 10, size=args.batch)
    model, loss, ours = nntrain_step(x, labels, args.workers)
    single = nntrain_step(x, labels, 1)[2] if args.compare_workers else None
    try:
        theirs = torch_step(x, labels)
    except ImportError:
        theirs = None
        print("torch is not installed: timing nntrain only")
    times: dict[str, list[float]] = {"nntrain": [], "torch": []}
    if single is not None:
        times["nntrain-1w"] = []
    for _ in range(args.rounds):
        times["nntrain"] += timed(ours, args.repeats)
        if single is not None:
            times["nntrain-1w"] += timed(single, args.repeats)
        if theirs is not None:
            times["torch"] += timed(theirs, args.repeats)
    print(f"{WORKLOAD.name} forward+backward, batch {args.batch}, float32, {args.threads} thread(s), {args.clock} clock")
    for side, ts in times.items():
        if ts:
            print(f"  {side:10s} median {1e3 * np.median(ts):7.2f} ms   best {1e3 * min(ts):7.2f} ms")
    if times["torch"]:
        print(f"  ratio nntrain/torch: median {np.median(times['nntrain']) / np.median(times['torch']):.2f}x  "
              f"best {min(times['nntrain']) / min(times['torch']):.2f}x")
    if args.profile:
        profile(model, loss, x, labels)


if __name__ == "__main__":
    main()
