"""The cost of the training-health callback: seconds of its per-epoch measurement against the epoch's
training seconds, on a real run.

    python -m bench.health configs/cnn.yaml -s train.epochs=2 --run-dir /tmp/health-bench

Times `TrainingHealth.on_epoch_end` (the sample's forward/backward, the restored optimizer step,
health.csv and plots/health.png) around a normal `nntrain.train`, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

from nntrain.config import load_config
from nntrain.tables import format_table
from nntrain.training import health
from nntrain.training.runner import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args()
    seconds: list[float] = []
    measured = health.TrainingHealth.on_epoch_end

    def timed(self, trainer, epoch, metrics):   # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return measured(self, trainer, epoch, metrics)
        finally:
            seconds.append(time.perf_counter() - t0)

    health.TrainingHealth.on_epoch_end = timed   # type: ignore[method-assign]
    folder, _ = train(load_config(args.config, args.overrides), run_dir=args.run_dir, progress=False)
    import csv

    with open(folder / "metrics.csv") as f:
        epochs = [float(r["seconds"]) for r in csv.DictReader(f)]
    rows = [(i + 1, f"{e:.1f}", f"{h:.3f}", f"{100 * h / e:.2f}%") for i, (e, h) in enumerate(zip(epochs, seconds))]
    print(format_table(("epoch", "epoch s", "health s", "overhead"), rows, markdown=True))


if __name__ == "__main__":
    main()
