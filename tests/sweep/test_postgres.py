"""A sweep stored in PostgreSQL: created with --workers 0, then run by two independent `nntrain sweep
--join URL` processes (two machines, as far as they know): the grid is run exactly once between them.

The test starts its own server on 127.0.0.1 (a free port) in a temporary data folder, as the `postgres`
user when run as root (the server refuses root), and stops it at the end. Skipped where the server
binaries (Debian's `postgresql` package: /usr/lib/postgresql/*/bin) or psycopg2 are missing."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO
from sweeptools import open_study, write_sweep

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    pytest.importorskip("psycopg2", reason="the PostgreSQL storage needs psycopg2 (the sweep extra)")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql")
    bin_dir = Path(found[-1]).parent
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="nntrain-pg-"))
    if os.geteuid() == 0:   # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(data)
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    os.chmod(data, 0o700)
    port = _free_port()
    pgdata = data / "db"

    def run(*args: str) -> None:
        proc = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    try:
        run(str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "nntrain", "--auth=trust", "-E", "UTF8")
        run(str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-l", str(data / "server.log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
    except AssertionError:
        shutil.rmtree(data, ignore_errors=True)
        raise
    try:
        yield f"postgresql://nntrain@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(data, ignore_errors=True)


def _nntrain(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nntrain.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_two_joined_processes_share_one_postgres_study(tmp_path: Path, postgres_url: str) -> None:
    grid = {"optimizer.lr": [0.02, 0.1], "train.batch_size": [64, 128]}
    sweep_file = write_sweep(tmp_path, {k: {"values": v} for k, v in grid.items()}, storage=postgres_url)
    create = _nntrain("sweep", str(sweep_file), "--workers", "0", "--runs-root", str(tmp_path / "a"))
    out, err = create.communicate(timeout=300)
    assert create.returncode == 0, err
    assert "nntrain sweep --join" in err

    joins = [_nntrain("sweep", "--join", postgres_url, "--workers", "1", "--runs-root", str(tmp_path / m))
             for m in ("b", "c")]
    results = [p.communicate(timeout=600) for p in joins]
    for p, (_, err) in zip(joins, results):
        assert p.returncode == 0, err
        assert "Traceback" not in err

    sweep = open_study(tmp_path, postgres_url)
    trials = sweep.trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, [t.user_attrs.get("message") for t in trials]
    drawn = sorted((t.params["optimizer.lr"], t.params["train.batch_size"]) for t in trials)
    assert drawn == sorted((lr, b) for lr in grid["optimizer.lr"] for b in grid["train.batch_size"])
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) == 2
    for machine in ("b", "c"):   # each joined process kept its own trials' run folders and outputs
        home = tmp_path / machine / "sweeps" / sweep.name
        assert (home / "trials.csv").exists() and (home / "sweep.yaml").exists()
        assert any((home / "trials").iterdir())
