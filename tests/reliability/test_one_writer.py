"""One run folder, one writer: a lock per run folder taken by training, resuming and `eval`'s saving,
refused with exit 2 naming the holder; readers (eval's evaluation, predict, compare) never disturbed; a
lock left by a killed process taken over, saying so; two trainings given the same --run-dir at the same
moment: exactly one trains; a temporary file of a live writer never removed by another writer.

Races are driven with barriers between real processes (fsfaults.Barrier, racer.py)."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config, write_config
from nntrain.atomic import atomic_write_bytes
from nntrain.training.checkpoint import load_checkpoint
from test_checkpoints import invoke, make_data_root, small_config

pytestmark = pytest.mark.reliability

HERE = Path(__file__).parent
ENV = dict(os.environ, PYTHONUNBUFFERED="1",
           PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(HERE), str(HERE.parent)])))


def popen(*args: str, wrapper: list[str] | None = None, **kw) -> subprocess.Popen:
    cmd = [sys.executable] + (wrapper or ["-m", "nntrain.cli"]) + [str(a) for a in args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kw)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def rows(run: Path) -> int:
    try:
        with open(run / "metrics.csv") as f:
            return len(list(csv.DictReader(f)))
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("one-writer")
    root = make_data_root(tmp / "data")
    cfg_path = write_config(tmp / "c.yaml", small_config(root))
    code, out = invoke("train", cfg_path, "--run-dir", tmp / "run", "--no-progress")
    assert code == 0, out
    return {"tmp": tmp, "cfg_path": cfg_path, "run": tmp / "run", "root": root}


@pytest.mark.parametrize("attempt", [1, 2])
def test_two_trainings_given_the_same_run_dir_at_the_same_moment_one_trains(tmp_path, attempt):
    """Both processes are held at a barrier right before their mkdir of the --run-dir, then let go together:
    exactly one trains; the other is refused with exit 2 and writes nothing."""
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config(train={"epochs": 1, "batch_size": 64}))
    run = tmp_path / "runs" / "same"
    procs = [popen(tmp_path / "barrier", 2, run, "train", cfg_path, "--run-dir", run, "--no-progress",
                   wrapper=[str(HERE / "racer.py")]) for _ in range(2)]
    results = [finish(p) for p in procs]
    assert len(list((tmp_path / "barrier").iterdir())) == 2, "both reached the mkdir of the run folder"
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert str(run) in refused and ("in use by pid" in refused or "not empty" in refused), refused
    assert rows(run) == 1 and len(list(run.glob("checkpoints/*.npz"))) == 2
    assert not (run / ".lock").exists(), "the lock file is removed when the run ends"


def test_a_training_run_refuses_other_writers_but_not_readers(tmp_path):
    """While `train` runs: `train --resume` and `eval`'s saving are refused naming the holder (pid, host,
    command); eval with --out elsewhere, predict and compare work. Once the training is killed (SIGKILL: no
    cleanup), its lock is taken over with a message and the run resumes."""
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config(train={"epochs": 400, "batch_size": 64}))
    run = tmp_path / "run"
    proc = popen("train", cfg_path, "--run-dir", run, "--no-progress")
    try:
        deadline = time.time() + 120
        while rows(run) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and rows(run) >= 2, "the training is running"
        holder = f"in use by pid {proc.pid} on {socket.gethostname()} (nntrain train"

        code, out = invoke("train", "--resume", run, "--no-progress")
        assert code == 2 and holder in out and str(run) in out, out

        code, out = invoke("eval", run)
        assert code == 2 and holder in out and "--out" in out, out
        assert "test set:" in out, "the evaluation (a reader) ran and printed its results"
        assert not (run / "eval").exists(), "eval wrote nothing into the folder being trained"

        code, out = invoke("eval", run, "--out", tmp_path / "elsewhere")
        assert code == 0 and (tmp_path / "elsewhere" / "eval" / "best-test" / "metrics.json").is_file(), out
        img = tmp_path / "digit.png"
        digit = np.zeros((28, 28), np.uint8)
        digit[6:22, 12:16] = 255   # a stroke of ink: predict frames the ink, and refuses an empty image
        Image.fromarray(digit).save(img)
        code, out = invoke("predict", run, img)
        assert code == 0, out
        code, out = invoke("compare", run, "--out", tmp_path / "cmp")
        assert code == 0, out
        assert proc.poll() is None, "the training was not disturbed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / ".lock").exists(), "SIGKILL left the lock file (the kernel dropped the lock itself)"
    done = load_checkpoint(run / "checkpoints" / "last.npz").meta["epoch"]
    code, out = invoke("train", "--resume", run, "-s", f"train.epochs={done}", "--force", "--no-progress")
    assert code == 0, out
    said = (run / "log.txt").read_text()
    assert f"taking over the lock of pid {proc.pid} on {socket.gethostname()} (nntrain train" in said, said
    assert "is no longer running" in said, said
    assert not (run / ".lock").exists()


LOCK_HOLDER = textwrap.dedent("""
    import sys
    from nntrain.training.run_folder import RunLock
    lock = RunLock(sys.argv[1], sys.argv[2]).acquire()
    print("locked", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
""")


def test_two_evals_of_one_run_do_not_write_at_once(finished, tmp_path):
    """An eval that finds another eval saving into the same folder waits for it (and says so); it
    writes only after the other has let go."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run), "nntrain eval"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        ev = popen("eval", run)
        first, report = ev.stdout.readline(), ev.stdout.readline()   # printed before the results are saved
        assert first.startswith("evaluated ") and report.startswith("test set:"), first + report
        time.sleep(2.0)
        assert ev.poll() is None and not (run / "eval").exists(), "the second eval waits for the first"
        released_at = time.time()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        code, out, err = finish(ev)
        assert code == 0, err
        assert f"waiting for pid {holder.pid}" in err and "(nntrain eval" in err, err
        assert (run / "eval" / "best-test" / "metrics.json").stat().st_mtime >= released_at - 0.01
    finally:
        holder.kill()
        holder.wait()


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from nntrain.atomic import atomic_open
    target, ready, go = map(Path, sys.argv[1:4])
    with atomic_open(target) as f:
        f.write(b"A" * 100_000)
        ready.touch()
        while not go.exists():
            time.sleep(0.01)
    print("done", flush=True)
""")


def test_a_live_writers_temporary_file_is_never_removed(tmp_path):
    """Process A is half-way through an atomic write of a file (held there by the files ready/go, a
    barrier between the processes) when process B writes the same file:
    B's clean-up of stale temporaries leaves A's (its process is alive), so A's write completes; a
    temporary of a dead process is removed."""
    target, ready, go = tmp_path / "metrics.csv", tmp_path / "ready", tmp_path / "go"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_tmp = tmp_path / f".metrics.csv.pid{int(dead.stdout)}.x1y2z3.tmp"
    dead_tmp.write_bytes(b"torn")
    a = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(ready), str(go)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 60
        while not ready.exists() and a.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        live = [p for p in tmp_path.glob(".metrics.csv.*.tmp") if p != dead_tmp]
        assert len(live) == 1 and f".pid{a.pid}." in live[0].name, live
        atomic_write_bytes(target, b"B")               # B: another writer of the same file
        assert live[0].exists(), "the live writer's temporary file is left alone"
        assert not dead_tmp.exists(), "the dead writer's temporary file is removed"
        go.touch()
        out, err = a.communicate(timeout=60)
    finally:
        a.kill()
    assert a.returncode == 0 and out.strip() == "done", err
    assert target.read_bytes() == b"A" * 100_000
    assert not list(tmp_path.glob("*.tmp"))
