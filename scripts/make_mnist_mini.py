#!/usr/bin/env python
"""Rebuild nntrain/data/mini/mnist-mini.npz from the official MNIST IDX files.

Usage: python scripts/make_mnist_mini.py DATA_ROOT [--out PATH]
DATA_ROOT holds mnist/train-images-idx3-ubyte.gz etc. (as $NNTRAIN_DATA does). The subset is the
first 500 training and the first 100 test images of each digit, in file order, so the same files
always give the same arrays (see nntrain.data.mnist.select_balanced).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from nntrain.atomic import atomic_open
from nntrain.data.mnist import MINI_PATH, build_mnist_mini, load_mnist_mini
from nntrain.errors import NNTrainError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="data root holding mnist/*.gz")
    parser.add_argument("--out", type=Path, default=MINI_PATH, help=f"output .npz (default: {MINI_PATH})")
    parser.add_argument("--download", action="store_true", help="download missing MNIST files into ROOT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        arrays = build_mnist_mini(args.root, download=args.download)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(args.out, "wb") as f:
            np.savez_compressed(f, **arrays)
        load_mnist_mini(args.out)  # the file must pass the loader's own checks
    except NNTrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 2**20:.2f} MiB): "
          f"{len(arrays['train_labels'])} train + {len(arrays['test_labels'])} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
