"""Forward+backward time of the mnist-cnn (or --net cifar: cifar-cnn) reference net on one float32 batch:
nntrain beside PyTorch, same process, same thread count. Not a test.

usage: python bench/fwdbwd.py [--threads 2] [--net mnist|cifar] [--repeats 30] [--rounds 3] [--batch N] [--profile]
       [--clock cpu] [--workers N] [--compare-workers]
Prints the median (and best) milliseconds per forward+backward of each side and the ratio nntrain/PyTorch.
Rounds alternate the two sides so that load from other processes hits both alike. On a busy machine
trust the best-of figures; with --threads 1, `--clock cpu` (process CPU time) is robust to other load.
"""

from __future__ import annotations

import argparse
import os
import time


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="BLAS / torch threads (default 2)")
    ap.add_argument("--repeats", type=int, default=30, help="timed forward+backward passes per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of nntrain and torch")
    ap.add_argument("--batch", type=int, default=None, help="default: the workload's (64 mnist, 128 cifar)")
    ap.add_argument("--net", choices=("mnist", "cifar"), default="mnist",
                    help="mnist-cnn (default, configs/cnn.yaml) or cifar-cnn (configs/cifar_cnn.yaml)")
    ap.add_argument("--profile", action="store_true", help="also print nntrain's per-layer times")
    ap.add_argument("--input-grad", action="store_true",
                    help="compute dL/d(input) on both sides (by default neither does, as in training)")
    ap.add_argument("--workers", type=int, default=None,
                    help="nntrain's element-wise worker threads (default: --threads)")
    ap.add_argument("--compare-workers", action="store_true",
                    help="also time nntrain with one element-wise thread (BLAS threads unchanged)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: process CPU time of all threads (use with --threads 1)")
    return ap.parse_args()


args = parse()
# Thread counts must be fixed before NumPy's BLAS starts.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402

import nntrain  # noqa: E402

CIFAR_SPEC = [
    {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "flatten"}, {"type": "linear", "out_features": 256}, {"type": "relu"},
    {"type": "linear", "out_features": 10},
]
MNIST_SPEC = [
    {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "flatten"}, {"type": "linear", "out_features": 128}, {"type": "relu"},
    {"type": "linear", "out_features": 10},
]
SPEC, INPUT = (CIFAR_SPEC, (3, 32, 32)) if args.net == "cifar" else (MNIST_SPEC, (1, 28, 28))
if args.batch is None:
    args.batch = 128 if args.net == "cifar" else 64


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

    torch.set_num_threads(args.threads)
    if args.net == "cifar":
        net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 10))
    else:
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
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
    print(f"{args.net}-cnn forward+backward, batch {args.batch}, float32, {args.threads} thread(s), {args.clock} clock")
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
