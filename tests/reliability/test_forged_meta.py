"""Nothing trusted that a checkpoint says: each of the 18 position and metadata fields forged in turn (a
valid zip with valid checksums, so only the values lie) is refused by `train --resume` and, where eval
reads it, by `eval`: exit 2, a message naming the field, no traceback, no escape sequence reaching the
terminal. NaN/infinite weights and a NaN or non-positive normalisation std are refused too."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config
from test_checkpoints import invoke, make_data_root, meta_of, rewrite, set_meta, small_config

pytestmark = pytest.mark.reliability

BAD_PCG64 = {"bit_generator": "PCG64", "state": {"state": 2**200, "inc": -1}, "has_uint32": 0, "uinteger": 0}

# field -> (forged value or a function of the original meta, words the message holds, eval refuses too)
FORGED = {
    "epoch": (-1_000_000, "'epoch'", True),
    "batch": (10**9, "'batch'", False),                # structurally an int: refused against the epoch size
    "history": ([{"epoch": 1, "train_loss": "0.5"}], "'history'", True),
    "sums": ({"loss": -1.0, "correct": 0, "count": 0, "seconds": 0.0}, "'sums'", True),
    "epoch_shuffle_state": (BAD_PCG64, "epoch_shuffle_state", True),
    "stopped_early": ("no", "'stopped_early'", True),
    "config": (["not", "a", "mapping"], "config", True),
    "callbacks": ([1, 2], "'callbacks'", True),
    "rng": (lambda m: dict(m["rng"], shuffle=BAD_PCG64), "rng.shuffle", True),
    "optimizer": (lambda m: dict(m["optimizer"], steps=-5), "steps", False),
    "scheduler": (lambda m: dict(m["scheduler"], epoch="one"), "epoch", False),
    "dataset": ("cifar10", "'dataset'", True),
    "input_shape": ([3, 32, 32], "'input_shape'", True),
    "class_names": (["\x1b[2Jzero"] + [str(i) for i in range(1, 10)], "'class_names'", True),
    "format_version": (True, "format version", True),
    "data": ({"dataset": "mnist", "sizes": {"train": "many"}, "hash": "x"}, "'data'", True),
    "nntrain_version": ("\x1b]0;pwned\x07", "'nntrain_version'", True),
    "threads": ({"blas": 0, "workers": -1}, "threads", True),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("forged")
    root = make_data_root(tmp / "data")
    cfg_path = write_config(tmp / "c.yaml", small_config(root, train={"epochs": 2, "batch_size": 50}))
    code, out = invoke("train", cfg_path, "-s", "train.epochs=1", "--run-dir", tmp / "run", "--no-progress")
    assert code == 0, out
    return tmp / "run"


def forge(run: Path, dst: Path, change) -> Path:
    shutil.copytree(run, dst)
    for name in ("best.npz", "last.npz"):
        path = dst / "checkpoints" / name
        rewrite(path, path, change)
    return dst


def assert_refused(code: int, out: str, words: str) -> None:
    assert code == 2, out
    assert words in out, out
    assert "Traceback" not in out and "\x1b" not in out and "\x07" not in out, repr(out)


def test_eighteen_fields_are_covered():
    assert len(FORGED) == 18


@pytest.mark.parametrize("field", list(FORGED))
def test_forged_field_is_refused(tmp_path, run, field):
    value, words, eval_refuses = FORGED[field]

    def change(entries):
        meta = meta_of(entries)
        meta[field] = value(meta) if callable(value) else value
        set_meta(entries, meta)

    forged = forge(run, tmp_path / "run", change)
    code, out = invoke("train", "--resume", forged, "-s", "train.epochs=2", "--force", "--no-progress")
    assert_refused(code, out, words)
    if eval_refuses:
        code, out = invoke("eval", forged)
        assert_refused(code, out, words)
        assert not (forged / "eval").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused(tmp_path, run, value):
    def change(entries):
        key = next(k for k in entries if k.startswith("param/"))
        entries[key] = entries[key].copy()
        entries[key].flat[3] = value

    forged = forge(run, tmp_path / "run", change)
    for args in (("eval", forged), ("train", "--resume", forged, "--no-progress")):
        code, out = invoke(*args)
        assert_refused(code, out, "NaN or infinite")


@pytest.mark.parametrize("std", [np.nan, 0.0, -0.3])
def test_bad_normalisation_std_is_refused(tmp_path, run, std):
    def change(entries):
        entries["extra/norm_std"] = np.array([std], np.float32)

    forged = forge(run, tmp_path / "run", change)
    code, out = invoke("eval", forged)
    assert_refused(code, out, "NaN or infinite" if np.isnan(std) else "normalisation statistics")
