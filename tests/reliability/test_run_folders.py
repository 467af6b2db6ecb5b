"""Run folders: runs started in the same second never share a folder (threads and processes), a run never
writes into another's folder, and --resume refuses a folder whose config differs unless --force."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

import nntrain.atomic as atomic_mod
from conftest import write_config
from nntrain.training.checkpoint import load_checkpoint
from nntrain.training.run_folder import RunFolder
from test_checkpoints import invoke, make_data_root, small_config

pytestmark = pytest.mark.reliability


class FrozenClock(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime(2026, 1, 2, 3, 4, 5)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in folder.rglob("*")}


def test_same_second_in_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_mod, "datetime", FrozenClock)
    n = 24
    barrier = threading.Barrier(n)
    made: list[Path] = []
    lock = threading.Lock()

    def start():
        barrier.wait()
        path = RunFolder.new("exp", tmp_path / "runs").path
        with lock:
            made.append(path)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == n and len(set(made)) == n
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(p.name for p in made)
    assert "exp-20260102-030405" in {p.name for p in made}


def test_same_second_in_processes(tmp_path):
    code = ("import sys, datetime as d, nntrain.training.run_folder as t, nntrain.atomic as a\n"
            "class C(d.datetime):\n"
            "    @classmethod\n"
            "    def now(cls, tz=None): return d.datetime(2026, 1, 2, 3, 4, 5)\n"
            "a.datetime = C\n"
            "print(t.RunFolder.new('exp', sys.argv[1]))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "runs")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    made = [o.strip() for o, _ in outs]
    assert len(set(made)) == 6 and len(list((tmp_path / "runs").iterdir())) == 6


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("runs")
    root = make_data_root(tmp / "data")
    cfg = small_config(root, train={"epochs": 2, "batch_size": 50})
    cfg_path = write_config(tmp / "c.yaml", cfg)
    code, out = invoke("train", cfg_path, "--run-dir", tmp / "run", "--no-progress")
    assert code == 0, out
    return {"tmp": tmp, "cfg": cfg, "cfg_path": cfg_path, "run": tmp / "run", "root": root}


def test_run_dir_that_is_not_empty_is_refused_untouched(tmp_path, finished):
    for target in (finished["run"], tmp_path / "mine"):
        if not target.exists():
            target.mkdir()
            (target / "notes.txt").write_text("precious")
            (target / "sub").mkdir()
        before = snapshot(target)
        code, out = invoke("train", finished["cfg_path"], "--run-dir", target, "--no-progress")
        assert code == 2, out
        assert "not empty" in out and str(target) in out, out
        assert snapshot(target) == before                 # nothing written, nothing touched


def test_run_dir_that_is_a_file_is_refused(tmp_path, finished):
    f = tmp_path / "file"
    f.write_text("x")
    code, out = invoke("train", finished["cfg_path"], "--run-dir", f, "--no-progress")
    assert code == 2 and "file" in out.lower(), out
    assert f.read_text() == "x"


@pytest.mark.parametrize("changes, keys", [
    ({"optimizer.lr": 0.5}, ["optimizer.lr"]),
    ({"train.epochs": 3, "model[1].out_features": 16}, ["model[1].out_features", "train.epochs"]),
    ({"seed": 7}, ["seed"]),
    ({"data.val_size": 30}, ["data.val_size"]),
])
def test_resume_with_a_different_config_is_refused(tmp_path, finished, changes, keys):
    run = finished["run"]
    args = [a for k, v in changes.items() for a in ("-s", f"{k}={v}")]
    before = snapshot(run)
    code, out = invoke("train", run / "config.yaml", *args, "--resume", run, "--no-progress")
    assert code == 2, out
    assert "config differs" in out and "--force" in out and all(k in out for k in keys), out
    assert snapshot(run) == before


def test_resume_with_force_continues(tmp_path, finished):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    code, out = invoke("train", run / "config.yaml", "-s", "train.epochs=3", "--resume", run, "--force",
                       "--no-progress")
    assert code == 0, out
    assert load_checkpoint(run / "checkpoints" / "last.npz").meta["epoch"] == 3
    assert len((run / "metrics.csv").read_text().splitlines()) == 4
    # the forced change is the run's config now: in config.yaml, the checkpoint and the log
    assert "epochs: 3" in (run / "config.yaml").read_text()
    assert load_checkpoint(run / "checkpoints" / "last.npz").meta["config"]["train"]["epochs"] == 3
    assert "--force: continuing with the changed train.epochs" in (run / "log.txt").read_text()


def test_resume_needs_only_the_run_folder(tmp_path, finished):
    """`train --resume RUN` without CONFIG; -s with --force changes the run, without it is refused."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    code, out = invoke("train", "--resume", run, "-s", "train.epochs=3", "--no-progress")
    assert code == 2 and "train.epochs" in out and "--force" in out, out
    code, out = invoke("train", "--resume", run, "-s", "train.epochs=3", "--force", "--no-progress")
    assert code == 0, out
    assert load_checkpoint(run / "checkpoints" / "last.npz").meta["epoch"] == 3
    assert "resumed at epoch 3, batch 0" in (run / "log.txt").read_text()
    code, out = invoke("train", "--resume", run, "--no-progress")
    assert code == 0, out
    assert "is complete (3 epochs)" in (run / "log.txt").read_text()
    code, out = invoke("train", "--no-progress")
    assert code == 2 and "--resume" in out, out


@pytest.mark.parametrize("damage", ["deleted", "edited"])
def test_resume_trusts_the_checkpoint_config_and_restores_config_yaml(tmp_path, finished, damage):
    """The checkpoint's embedded config is the truth: a deleted or edited config.yaml neither blocks nor
    steers a resume; it is written back as the run has it, with a warning."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    original = (run / "config.yaml").read_text()
    if damage == "deleted":
        (run / "config.yaml").unlink()
    else:
        (run / "config.yaml").write_text(original.replace("epochs: 2", "epochs: 50"))
    code, out = invoke("train", "--resume", run, "--no-progress")
    assert code == 0, out
    assert (run / "config.yaml").read_text() == original
    assert f"was {'missing' if damage == 'deleted' else 'edited'}; rewritten" in (run / "log.txt").read_text()
    assert load_checkpoint(run / "checkpoints" / "last.npz").meta["epoch"] == 2


def test_resume_without_a_checkpoint_is_refused(tmp_path, finished):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    (run / "checkpoints" / "last.npz").unlink()
    code, out = invoke("train", "--resume", run, "--no-progress")
    assert code == 2 and "no checkpoints/last.npz" in out, out


def test_resuming_a_finished_run_is_harmless(tmp_path, finished):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    ckpts = {n: load_checkpoint(run / "checkpoints" / n) for n in ("last.npz", "best.npz")}
    metrics = (run / "metrics.csv").read_text()
    test = yaml.safe_load((run / "test.json").read_text())
    code, out = invoke("train", run / "config.yaml", "--resume", run, "--no-progress")
    assert code == 0, out
    assert (run / "metrics.csv").read_text() == metrics            # no epoch trained again
    for n, old in ckpts.items():
        new = load_checkpoint(run / "checkpoints" / n)
        assert new.meta["epoch"] == old.meta["epoch"] == (2 if n == "last.npz" else new.meta["epoch"])
        assert all(np.array_equal(old.params[k], new.params[k]) for k in old.params)
    again = yaml.safe_load((run / "test.json").read_text())
    assert again["test_acc"] == test["test_acc"] and again["test_loss"] == test["test_loss"]
