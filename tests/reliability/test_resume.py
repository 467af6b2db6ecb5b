"""Exact resume: a run killed (SIGKILL at random moments and mid-checkpoint-write, or Ctrl-C) and
continued with --resume ends bit-identical to a run that was never interrupted."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config, write_config
from nntrain.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.reliability

HERE = Path(__file__).parent


def resume_config() -> dict:
    # dropout (model Generator), augmentation (augment Generator), shuffling, momentum and a schedule:
    # every piece of state that must be restored for the continuation to be exact
    return tiny_config(
        data={"dataset": "mnist-mini", "val_size": 500, "augment": [{"type": "random_shift", "max_pixels": 2}]},
        optimizer={"type": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
        scheduler={"type": "step", "step_size": 2, "gamma": 0.5},
        train={"epochs": 4, "batch_size": 32})


def cli(*args: str, wrapper: list[str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable] + (wrapper or ["-m", "nntrain.cli"]) + list(args)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def fingerprint(run: Path) -> dict:
    """What must be identical: every saved array, metrics.csv without wall-clock seconds, test results."""
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
    with open(run / "metrics.csv") as f:
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    test = json.loads((run / "test.json").read_text())
    return {"params": ckpt.params, "optim": ckpt.optim, "rows": rows, "test": (test["test_loss"], test["test_acc"])}


def assert_identical(a: dict, b: dict) -> None:
    assert a["rows"] == b["rows"]
    assert a["test"] == b["test"]
    for group in ("params", "optim"):
        assert a[group].keys() == b[group].keys()
        for k in a[group]:
            assert np.array_equal(a[group][k], b[group][k]), f"{group}/{k} differs"


def resume_until_done(cfg_path: Path, run: Path, max_tries: int = 10) -> None:
    for _ in range(max_tries):
        code, out, err = finish(cli("train", str(cfg_path), "--resume", str(run), "--no-progress"))
        if code == 0:
            return
        raise AssertionError(f"resume failed ({code}): {err}")
    raise AssertionError("never finished")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("ref")
    cfg_path = write_config(tmp / "c.yaml", resume_config())
    code, out, err = finish(cli("train", str(cfg_path), "--run-dir", str(tmp / "run"), "--no-progress"))
    assert code == 0, err
    return cfg_path, fingerprint(tmp / "run")


# The N-th atomic rename of a run (1-3 are config.yaml and the first epoch's best/last checkpoint...),
# or the K-th rename onto a named file: the last epoch's metrics.csv, written after its last.npz
@pytest.mark.parametrize("kill_at", ["2", "3", "5", "9", "14", "metrics.csv:4", "last.npz:4"])
def test_sigkill_during_checkpoint_write_then_resume(tmp_path: Path, reference, kill_at: str) -> None:
    cfg_path, ref = reference
    run = tmp_path / "run"
    code, _, _ = finish(cli(kill_at, "train", str(cfg_path), "--run-dir", str(run), "--no-progress",
                            wrapper=[str(HERE / "killer.py")]))
    assert code == -signal.SIGKILL
    # whatever was being written is intact: the previous version or nothing, never a torn file
    assert list(run.rglob("*.tmp")), "the kill came between writing a temporary file and renaming it"
    for ckpt in run.glob("checkpoints/*.npz"):
        load_checkpoint(ckpt)
    last = run / "checkpoints" / "last.npz"
    if not last.exists():  # killed before the first checkpoint: nothing to resume, a fresh start is the answer
        return
    resume_until_done(cfg_path, run)
    assert_identical(fingerprint(run), ref)
    assert not list(run.rglob("*.tmp")), "temporary files left by the killed writer are cleaned up"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_moments_then_resume(tmp_path: Path, reference, seed: int) -> None:
    cfg_path, ref = reference
    run = tmp_path / "run"
    rng = np.random.default_rng(seed)
    proc = cli("train", str(cfg_path), "--run-dir", str(run), "--no-progress")
    kills = 0
    while True:
        # wait for the first checkpoint, then kill at a random moment of the training that follows
        deadline = time.time() + 120
        while not (run / "checkpoints" / "last.npz").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 1.5)))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if kills >= 2:
            break
        proc = cli("train", str(cfg_path), "--resume", str(run), "--no-progress")
    if proc.returncode != 0:
        resume_until_done(cfg_path, run)
    assert_identical(fingerprint(run), ref)


@pytest.mark.parametrize("sig, code, words", [(signal.SIGINT, 130, "SIGINT received"),
                                              (signal.SIGTERM, 143, "SIGTERM received")], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_saves_and_resumes_exactly(tmp_path: Path, reference, sig, code, words) -> None:
    """Ctrl-C, or SIGTERM (a batch scheduler, `docker stop`), mid-epoch: the batch finishes, last.npz holds
    the position inside the epoch, the exit code and the resume command are printed; the resumed run is
    bit-identical to an uninterrupted one."""
    cfg_path, ref = reference
    run = tmp_path / "run"
    proc = cli("train", str(cfg_path), "--run-dir", str(run), "--no-progress")
    while not (run / "metrics.csv").exists() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(sig)
    got, out, err = finish(proc)
    if got == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast)")
    assert got == code, err
    assert words in err and f"nntrain train --resume {run}" in err, err
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
    assert ckpt.meta["batch"] > 0, "a stop mid-epoch saves the position inside the epoch"
    resume_until_done(cfg_path, run)
    assert_identical(fingerprint(run), ref)


def test_second_ctrl_c_exits_at_once_without_corruption(tmp_path: Path) -> None:
    cfg = resume_config()
    cfg["train"]["epochs"] = 50
    cfg_path = write_config(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    proc = cli("train", str(cfg_path), "--run-dir", str(run), "--no-progress")
    while not (run / "metrics.csv").exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc, timeout=60)
    assert code == 130
    load_checkpoint(run / "checkpoints" / "last.npz")  # still a valid checkpoint


def test_forced_learning_rate_is_the_one_that_trains(tmp_path: Path) -> None:
    """`--resume --force -s optimizer.lr=...`: the restored optimizer/scheduler state does not put the old lr
    back; the schedule (step, gamma 0.5 each epoch) continues from the new base: 0.4 * 0.5**2 in epoch 3."""
    cfg = tiny_config(optimizer={"type": "sgd", "lr": 0.05, "momentum": 0.9},
                      scheduler={"type": "step", "step_size": 1, "gamma": 0.5}, train={"epochs": 2, "batch_size": 64})
    cfg_path = write_config(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    code, _, err = finish(cli("train", str(cfg_path), "--run-dir", str(run), "--no-progress"))
    assert code == 0, err
    code, _, err = finish(cli("train", "--resume", str(run), "-s", "optimizer.lr=0.4", "-s", "train.epochs=3",
                              "--force", "--no-progress"))
    assert code == 0, err
    with open(run / "metrics.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs == [0.05, 0.025, 0.1], lrs
    assert "re-based on optimizer.lr 0.4" in (run / "log.txt").read_text()
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
    assert ckpt.meta["scheduler"]["base_lr"] == 0.4
