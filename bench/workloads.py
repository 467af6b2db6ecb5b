"""The reference workloads: name, dataset, batch size, learning rate, net and bench config.

All train with SGD (momentum 0.9, weight decay 1e-4 on all parameters), no scheduler, no validation
split, on the full training set (or the `--quick` fraction of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Workload:
    """One reference workload; `config` is the nntrain YAML file in bench/configs/."""

    name: str
    dataset: str          # "mnist" or "cifar10" (nntrain's dataset names)
    batch_size: int
    lr: float
    net: str

    @property
    def config(self) -> Path:
        return CONFIG_DIR / f"{self.name}.yaml"


WORKLOADS: dict[str, Workload] = {
    w.name: w for w in (
        Workload("mnist-mlp", "mnist", 128, 0.1, "784-512-ReLU-10"),
        Workload("mnist-cnn", "mnist", 64, 0.05,
                 "conv3x3(32,p1)-ReLU-maxpool2 - conv3x3(64,p1)-ReLU-maxpool2 - fc128-ReLU-fc10"),
        Workload("cifar-cnn", "cifar10", 128, 0.05,
                 "[conv3x3(32)-ReLU]x2-pool - [conv3x3(64)-ReLU]x2-pool - fc256-ReLU-fc10"),
        Workload("cifar-resnet", "cifar10", 256, 0.05,
                 "ResNet-9 at half width: conv3x3(32)-BN-ReLU - conv3x3(64)-pool - res(64) - conv3x3(128)-pool "
                 "- conv3x3(256)-pool - res(256) - global maxpool - BN - fc10 (each conv followed by BN-ReLU)"),
    )
}
