"""A start that fails leaves nothing behind: a refused --init-from, missing data, Ctrl-C while the data
download trickles in. The run folder is created only once what it needs is ready, so a retry with the
same --run-dir works and `compare runs/*` never trips over a half-made folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import write_config
from test_checkpoints import invoke, make_data_root, small_config
from trickle import TrickleServer

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("starts")
    root = make_data_root(tmp / "data")
    good = write_config(tmp / "good.yaml", small_config(root))
    code, out = invoke("train", write_config(tmp / "other.yaml", small_config(root)), "-s",
                       "model[1].out_features=16", "--run-dir", tmp / "other", "--no-progress")
    assert code == 0, out
    return {"root": root, "good": good, "other_ckpt": tmp / "other" / "checkpoints" / "last.npz"}


def test_refused_init_from_leaves_no_folder(tmp_path, setup):
    run = tmp_path / "run"
    code, out = invoke("train", setup["good"], "--run-dir", run, "--init-from", setup["other_ckpt"], "--no-progress")
    assert code == 2 and "cannot initialise from" in out, out
    assert not run.exists()
    code, out = invoke("train", setup["good"], "--run-dir", run, "--no-progress")
    assert code == 0, out


def test_missing_data_leaves_no_folder_and_compare_still_works(tmp_path, setup, monkeypatch):
    """Without --run-dir (runs/<name>-<timestamp>): a run whose data is missing makes no folder, so
    `compare runs/*` afterwards sees only real runs."""
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty-data"
    empty.mkdir()
    missing = write_config(tmp_path / "missing.yaml", small_config(empty))
    code, out = invoke("train", missing, "--no-progress")
    assert code == 2 and str(empty) in out, out
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []
    code, out = invoke("train", setup["good"], "--no-progress")
    assert code == 0, out
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    code, out = invoke("compare", *runs, "--out", tmp_path / "cmp")
    assert code == 0, out


def ctrl_c_as_in_a_terminal() -> None:
    """In the child before it starts: SIGINT at its default disposition, as in a terminal. A suite started
    in the background of a non-interactive shell inherits SIGINT *ignored*, and Python then installs no
    KeyboardInterrupt handler, so the child would never hear the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_the_data_downloads_leaves_no_folder(tmp_path, setup):
    """SIGINT while a mirror on 127.0.0.1 trickles the first data file: exit 130, no run folder, no temporary
    file in the data folder; a retry with the same --run-dir trains."""
    data = tmp_path / "data"
    cfg = small_config(data)
    cfg["data"]["download"] = True
    cfg_path = write_config(tmp_path / "dl.yaml", cfg)
    run = tmp_path / "run"
    with TrickleServer(length=100_000, period=0.05) as server:
        proc = subprocess.Popen([sys.executable, "-m", "nntrain.cli", "train", str(cfg_path), "--run-dir", str(run),
                                 "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", NNTRAIN_MIRROR=server.url),
                                preexec_fn=ctrl_c_as_in_a_terminal)
        try:
            assert server.connected.wait(120), "the download started"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert not run.exists()
    assert not [p for p in data.rglob("*") if p.name.endswith(".tmp")]
    code, out = invoke("train", setup["good"], "--run-dir", run, "--no-progress")
    assert code == 0, out
