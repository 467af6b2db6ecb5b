"""The PyTorch side of the benchmark: trains one epoch of a reference workload, in its own process.

usage: python -m bench.torch_worker WORKLOAD DATA_ROOT STATE_FILE THREADS

Each net is the workload's reference net (bench/workloads.py) in PyTorch, trained with SGD(momentum
0.9, weight_decay 1e-4 on all params) and CrossEntropyLoss; the whole (normalised) training set is one
float32 tensor in memory, indexed per batch through a shuffled permutation per epoch. Like an `nntrain train
--resume`, it continues from STATE_FILE when that exists (model, optimizer and shuffle Generator),
so the benchmark can alternate the two sides epoch by epoch. Prints one JSON line: the training
seconds (the batch loop only), train loss/accuracy, test accuracy and this process's peak RSS.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from bench.datasets import load, normalize
from bench.workloads import WORKLOADS


def conv_bn_relu(cin: int, cout: int, pool: bool = False) -> list[nn.Module]:
    """conv3x3(padding 1, no bias)-BN-ReLU, or conv3x3-maxpool2-BN-ReLU with `pool`."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), *([nn.MaxPool2d(2)] if pool else []),
            nn.BatchNorm2d(cout), nn.ReLU()]


class Residual(nn.Module):
    """y = x + body(x), body conv3x3-BN-ReLU-conv3x3-BN-ReLU: nntrain's `residual` block with an
    identity shortcut."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn_relu(c, c), *conv_bn_relu(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def cifar_resnet() -> nn.Module:
    """ResNet-9 at half width, as bench/configs/cifar-resnet.yaml: conv(32), conv(64)-pool, res(64),
    conv(128)-pool, conv(256)-pool, res(256), global max pool, BN, fc10 (each pool straight after its
    conv, before the BN-ReLU)."""
    return nn.Sequential(
        *conv_bn_relu(3, 32), *conv_bn_relu(32, 64, pool=True), Residual(64),
        *conv_bn_relu(64, 128, pool=True), *conv_bn_relu(128, 256, pool=True), Residual(256),
        nn.MaxPool2d(4), nn.Flatten(), nn.BatchNorm1d(256), nn.Linear(256, 10))


def build_net(name: str) -> nn.Module:
    """The workload's net in PyTorch (the `net` of its Workload)."""
    if name == "mnist-mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
    if name == "mnist-cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    if name == "cifar-cnn":
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 10))
    if name == "cifar-resnet":
        return cifar_resnet()
    raise ValueError(f"unknown workload {name!r}")


def peak_rss_mb() -> float | None:
    """This process's own peak resident set (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main(argv: list[str]) -> int:
    name, root, state_file, threads = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3])
    wl = WORKLOADS[name]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x_tr_u8, y_tr_np, x_te_u8, y_te_np = load(wl.dataset, root)
    x_tr_np, x_te_np = normalize(x_tr_u8, x_te_u8)
    del x_tr_u8, x_te_u8
    xtr, ytr = torch.from_numpy(x_tr_np), torch.from_numpy(y_tr_np)
    xte, yte = torch.from_numpy(x_te_np), torch.from_numpy(y_te_np)

    net = build_net(name)
    opt = torch.optim.SGD(net.parameters(), lr=wl.lr, momentum=0.9, weight_decay=1e-4)
    lossf = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    epoch = 0
    if state_file.exists():
        state = torch.load(state_file, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["gen"])
        epoch = int(state["epoch"])

    net.train()
    perm = torch.randperm(len(xtr), generator=g)
    bs = wl.batch_size
    loss_sum, correct = 0.0, 0
    t0 = time.perf_counter()
    for i in range(0, len(xtr), bs):
        b = perm[i:i + bs]
        opt.zero_grad(set_to_none=True)
        out = net(xtr[b])
        loss = lossf(out, ytr[b])
        loss.backward()
        opt.step()
        # Same bookkeeping as nntrain's loop (running loss and accuracy), so both do the same work.
        loss_sum += loss.item() * len(b)
        correct += int((out.argmax(1) == ytr[b]).sum())
    seconds = time.perf_counter() - t0

    net.eval()
    with torch.no_grad():
        hits = sum(int((net(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum()) for i in range(0, len(xte), 1000))
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "gen": g.get_state(), "epoch": epoch + 1},
               state_file)
    print(json.dumps({"epoch": epoch + 1, "seconds": seconds, "n_train": len(xtr),
                      "train_loss": loss_sum / len(xtr), "train_acc": correct / len(xtr),
                      "test_acc": hits / len(xte), "vmhwm_mb": peak_rss_mb(),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
