"""Read-only, full and unusual paths, made real (read-only and small tmpfs mounts, bind mounts remounted
read-only; see fsfaults.py): every case exits 2 with one message naming the path, never a traceback, and
leaves the files that were there intact.

Also log.txt: a full disk that hits it (one message, exit 2, not a traceback per record), a failed log
write that stops the run cleanly so it can be resumed, and a symlink planted as log.txt (refused)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nntrain.training.runner as runner
from conftest import tiny_config, write_config
from fsfaults import fill, read_only_view, tmpfs
from nntrain.training.checkpoint import load_checkpoint
from test_checkpoints import invoke, make_data_root, small_config

pytestmark = pytest.mark.reliability


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def one_error(out: str, *names: object) -> None:
    """Exactly one error message, naming each of `names`, and no traceback."""
    assert out.count("error:") == 1 and "Traceback" not in out and "Logging error" not in out, out
    for name in names:
        assert str(name) in out, out


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("paths")
    root = make_data_root(tmp / "data")
    cfg_path = write_config(tmp / "c.yaml", small_config(root))
    code, out = invoke("train", cfg_path, "--run-dir", tmp / "run", "--no-progress")
    assert code == 0, out
    return {"tmp": tmp, "cfg_path": cfg_path, "run": tmp / "run", "root": root}


def test_run_dir_on_a_read_only_file_system(tmp_path, finished):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        code, out = invoke("train", finished["cfg_path"], "--run-dir", ro / "run", "--no-progress")
        assert code == 2, out
        one_error(out, ro / "run", "read-only")
        assert list(ro.iterdir()) == []


def test_resume_on_a_read_only_file_system(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    before = snapshot(run)
    with read_only_view(run, tmp_path / "ro") as ro:
        code, out = invoke("train", "--resume", ro, "-s", "train.epochs=2", "--force", "--no-progress")
        assert code == 2, out
        one_error(out, ro, "read-only")
    assert snapshot(run) == before


def test_eval_of_a_read_only_run_prints_the_results_then_refuses_to_save(tmp_path, finished):
    with read_only_view(finished["run"], tmp_path / "ro") as ro:
        code, out = invoke("eval", ro)
        assert code == 2, out
        assert "test set:" in out, "the results are printed before saving is tried"
        one_error(out, ro, "read-only", "--out")
        code, out = invoke("eval", ro, "--out", tmp_path / "out")
        assert code == 0 and (tmp_path / "out" / "eval" / "best-test" / "metrics.json").is_file(), out


def test_eval_out_on_a_read_only_file_system(tmp_path, finished):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        for out_dir in (ro, ro / "results"):
            code, out = invoke("eval", finished["run"], "--out", out_dir)
            assert code == 2, out
            one_error(out, out_dir, "read-only")


def _unusable(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A --run-dir that cannot be a run folder, and the words the message must hold."""
    if kind == "dangling-symlink":
        (tmp_path / "link").symlink_to(tmp_path / "nowhere")
        return tmp_path / "link", "symbolic link"
    if kind == "through-a-file":
        (tmp_path / "notes.txt").write_text("x")
        return tmp_path / "notes.txt" / "run", "a part of the path is a file"
    if kind == "name-of-300-characters":
        return tmp_path / ("r" * 300), "longer than the file system allows"
    if kind == "deep-name-of-300-characters":
        return tmp_path / ("r" * 300) / "run", "longer than the file system allows"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["dangling-symlink", "through-a-file", "name-of-300-characters",
                                  "deep-name-of-300-characters"])
def test_unusable_run_dir(tmp_path, finished, kind):
    target, words = _unusable(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out = invoke("train", finished["cfg_path"], "--run-dir", target, "--no-progress")
    assert code == 2, out
    one_error(out, words)
    assert str(target)[:60] in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_eval_where_plots_is_a_file(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    shutil.rmtree(run / "plots")
    (run / "plots").write_text("not a folder")
    code, out = invoke("eval", run)
    assert code == 2, out
    one_error(out, run / "plots", "not a folder")
    assert (run / "plots").read_text() == "not a folder"


def test_log_txt_that_is_a_symlink_is_refused(tmp_path, finished):
    """A symlink planted as log.txt would redirect the run's log writes to any file: refused (O_NOFOLLOW)."""
    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / "log.txt").unlink()
    (run / "log.txt").symlink_to(victim)
    code, out = invoke("train", "--resume", run, "-s", "train.epochs=2", "--force", "--no-progress")
    assert code == 2, out
    one_error(out, run / "log.txt", "symbolic link")
    assert victim.read_text() == "precious\n"


def test_full_disk_that_hits_log_txt(tmp_path):
    """A real full disk (a 6 MB tmpfs filled up while training runs), arranged so that the next write is a
    log line (log.txt padded to a page boundary, then the disk filled right after an epoch's files were
    written): exit 2, one message, no traceback per record, the files of the last epoch intact."""
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config(train={"epochs": 50, "batch_size": 8}))
    with tmpfs(tmp_path / "disk", size="6m") as disk:
        run = disk / "run"
        proc = subprocess.Popen([sys.executable, "-m", "nntrain.cli", "train", str(cfg_path), "--run-dir", str(run),
                                 "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            deadline = time.time() + 120
            while not (run / "plots" / "accuracy.png").exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, proc.communicate()
            with open(run / "log.txt", "ab") as f:   # the next line needs a new page of the tmpfs
                pad = -f.tell() % 4096
                f.write(b"#" * (pad - 1) + b"\n" if pad else b"")
            filler = fill(disk)
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 2, err
        one_error(err, "the disk is full")
        assert str(run / "log.txt") in err or str(run / "checkpoints") in err, err
        filler.unlink()
        ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
        assert ckpt.meta["epoch"] >= 1
        assert (run / "config.yaml").read_text().startswith("name: tiny")
        assert not list(run.rglob("*.tmp"))


def test_failed_log_write_stops_the_run_cleanly_then_it_resumes(tmp_path, monkeypatch):
    """log.txt alone cannot be written (it is opened on /dev/full): the run stops at the next batch, saves
    last.npz, exits 2 with one message naming log.txt and the resume command; the resume completes."""
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config(train={"epochs": 3, "batch_size": 64}))
    run = tmp_path / "run"
    monkeypatch.setattr(runner, "open_for_write", lambda path, append=True: os.open("/dev/full", os.O_WRONLY))
    code, out = invoke("train", cfg_path, "--run-dir", run, "--no-progress")
    assert code == 2, out
    one_error(out, run / "log.txt", "the disk is full", f"nntrain train --resume {run}")
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
    assert ckpt.meta["epoch"] == 1 and ckpt.meta["batch"] == 1, "stopped one batch into epoch 2, saved"
    monkeypatch.undo()
    code, out = invoke("train", "--resume", run, "--no-progress")
    assert code == 0, out
    assert load_checkpoint(run / "checkpoints" / "last.npz").meta["epoch"] == 3
    assert "resumed at epoch 2, batch 1" in (run / "log.txt").read_text()
