"""Smaller untrusted inputs: mirrors (a password in NNTRAIN_MIRROR is never printed and is sent as basic
authentication; a mirror on 127.0.0.1 that trickles a byte at a time is abandoned at a deadline; file://
and ftp:// mirrors are refused) and `compare` on damaged run folders (a non-numeric metrics value, a
malformed robustness entry: skipped with a warning, never a traceback)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import nntrain.data.download as dl
from conftest import tiny_config, write_config
from test_checkpoints import invoke, small_config
from trickle import TrickleServer

pytestmark = pytest.mark.reliability


def download_config(tmp_path: Path) -> Path:
    """A config whose MNIST files are missing and to be downloaded (from $NNTRAIN_MIRROR)."""
    cfg = small_config(tmp_path / "data")
    cfg["data"]["download"] = True
    return write_config(tmp_path / "dl.yaml", cfg)


def test_a_password_in_the_mirror_is_never_printed(tmp_path, monkeypatch):
    monkeypatch.setenv("NNTRAIN_MIRROR", "http://alice:s3cret@127.0.0.1:1/mnist")
    code, out = invoke("train", download_config(tmp_path), "--run-dir", tmp_path / "run", "--no-progress")
    assert code == 2, out
    assert "s3cret" not in out and "alice:***@127.0.0.1:1" in out, out


def test_mirror_credentials_are_sent_as_basic_authentication(tmp_path):
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            ok = self.headers.get("Authorization") == "Basic " + base64.b64encode(b"alice:s3 cr@t").decode()
            self.send_response(200 if ok else 401)
            body = b"payload" if ok else b""
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://alice:s3%20cr%40t@127.0.0.1:{httpd.server_address[1]}/blob.bin"
        dl.download(url, tmp_path / "blob.bin", progress=False, timeout=10)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (tmp_path / "blob.bin").read_bytes() == b"payload"
    assert seen == ["Basic " + base64.b64encode(b"alice:s3 cr@t").decode()]


def test_a_trickling_mirror_is_abandoned_at_the_deadline(tmp_path):
    """One byte every 0.1 s (never silent for the 5 s socket timeout): given up after the 1 s deadline,
    the next mirror is tried, no temporary file is left."""
    result: dict = {}
    with TrickleServer(length=10_000, period=0.1) as slow, TrickleServer(length=10_000, period=0.1) as slower:
        def run() -> None:
            try:
                dl.download([f"{slow.url}/f.gz", f"{slower.url}/f.gz"], tmp_path / "f.gz", progress=False,
                            timeout=5, deadline=1.0)
            except Exception as e:  # noqa: BLE001 - the test inspects it
                result["error"] = e

        t0 = time.monotonic()
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "the download is still trickling after 30 s"
    assert time.monotonic() - t0 < 10
    err = result.get("error")
    assert isinstance(err, dl.DownloadError), err
    assert str(err).count("too slow") == 2 and "the deadline for one file" in str(err), str(err)
    assert slow.requests and slower.requests
    assert not list(tmp_path.iterdir())


def test_the_deadline_is_configurable_for_the_cli(tmp_path):
    with TrickleServer(length=100_000, period=0.1) as slow:
        env = dict(os.environ, NNTRAIN_MIRROR=slow.url, NNTRAIN_DOWNLOAD_DEADLINE="1.5", PYTHONUNBUFFERED="1")
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "nntrain.cli", "train", str(download_config(tmp_path)),
                               "--run-dir", str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True,
                              timeout=120, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "too slow" in proc.stderr and "NNTRAIN_DOWNLOAD_DEADLINE" in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 60 and not (tmp_path / "run").exists()
    env["NNTRAIN_DOWNLOAD_DEADLINE"] = "soon"
    proc = subprocess.run([sys.executable, "-m", "nntrain.cli", "train", str(download_config(tmp_path)),
                           "--no-progress"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "NNTRAIN_DOWNLOAD_DEADLINE must be a number" in proc.stderr, proc.stderr


@pytest.mark.parametrize("mirror", ["file:///etc", "ftp://127.0.0.1/pub", "FILE:///etc"])
def test_mirrors_other_than_http_are_refused(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv("NNTRAIN_MIRROR", mirror)
    code, out = invoke("train", download_config(tmp_path), "--run-dir", tmp_path / "run", "--no-progress")
    assert code == 2 and "is not an http:// or https:// URL" in out and "NNTRAIN_MIRROR" in out, out
    assert not (tmp_path / "run").exists()


def fake_run(folder: Path, metrics: str, robustness: object = None) -> Path:
    """A run folder written by hand: config.yaml, metrics.csv, test.json and eval/metrics.json."""
    folder.mkdir(parents=True)
    write_config(folder / "config.yaml", tiny_config())
    (folder / "metrics.csv").write_text(metrics)
    (folder / "test.json").write_text(json.dumps({"test_acc": 0.9, "epochs_trained": 2}))
    if robustness is not None:
        (folder / "eval").mkdir()
        (folder / "eval" / "metrics.json").write_text(json.dumps({"robustness": robustness}))
    return folder


HEADER = "epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds\n"


def test_compare_skips_what_is_not_a_number(tmp_path, caplog):
    good = fake_run(tmp_path / "good", HEADER + "1,0.05,0.5,0.8,0.4,0.85,1.0\n2,0.05,0.3,0.9,0.3,0.9,1.2\n",
                    {"rotate": [{"level": 0, "accuracy": 0.9}, {"level": 10, "accuracy": 0.8}]})
    bad = fake_run(tmp_path / "bad", HEADER + "1,0.05,0.5,0.8,0.4,abc,fast\nx,0.05,0.3,0.9,0.3,0.9,1.2\n"
                   "3,0.05,0.3,0.9,0.3,0.7,1.1,extra\n",
                   {"rotate": [{"level": "ten", "accuracy": 0.5}, {"level": 0, "accuracy": [1]}, "oops",
                               {"level": 10, "accuracy": 0.75}], "noise": {"level": 0.1}})
    listed = fake_run(tmp_path / "listed", HEADER + "1,0.05,0.5,0.8,0.4,0.6,1.0\n", ["not", "a", "mapping"])
    code, out = invoke("compare", good, bad, listed, "--out", tmp_path / "cmp")
    assert code == 0, out
    table = out.splitlines()
    row = next(line for line in table if line.startswith("| bad"))
    assert "0.7000" in row and "0.7500" in row, row          # the numbers that are numbers are used
    assert "skipped what is not a number" in caplog.text and "abc" in caplog.text
    assert "malformed robustness entries" in caplog.text and "not a mapping" in caplog.text
    assert (tmp_path / "cmp" / "compare.png").is_file()
