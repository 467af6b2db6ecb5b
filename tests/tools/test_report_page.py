"""report.html: one self-contained page per run (no scripts, no links out, every figure an embedded
PNG), valid HTML, written by `nntrain train` and `eval` and rebuilt by `nntrain report`, and rendered
by a headless Chromium where one is installed."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import png_size, run_cli, tiny_config, write_config


class PageCheck(HTMLParser):
    """Collects tags, image sources and links; records unbalanced closing tags."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        self.urls += [v for k, v in attrs.items() if k in ("href", "src") and v and not v.startswith("data:")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    cfg = write_config(tmp / "tiny.yaml", tiny_config(train={"epochs": 2, "batch_size": 64}))
    proc = run_cli("train", str(cfg), "--run-dir", str(tmp / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (tmp / "run" / "report.html").is_file()   # written after training
    for args in (["--split", "val"], []):   # two evaluations: both on the page, each with its figures
        ev = run_cli("eval", str(tmp / "run"), *args)
        assert ev.returncode == 0, ev.stderr
    return tmp / "run"


def test_the_page_is_self_contained_valid_html_with_the_runs_contents(run_dir):
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    page = PageCheck()
    page.feed(text)
    page.close()
    assert not page.problems and not page.stack, page.problems or page.stack
    assert "script" not in page.tags and "iframe" not in page.tags and not page.urls
    assert "http://" not in text and "https://" not in text
    assert len(page.images) >= 4   # loss, accuracy, confusion, misclassified (eval), ...
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    for expected in ("Test result", "Evaluations (nntrain eval)", "<h3>eval/best-test/</h3>", "<h3>eval/best-val/</h3>",
                     "<th>class</th>",
                     "<th>checkpoint</th>", "Metrics per epoch", "train_loss", "total parameters", "optimizer:",
                     "confusion.png", "misclassified.png"):
        assert expected in text, expected
    # the default evaluation's figures are shown with it, not again from plots/ (which holds copies of them)
    for name in ("confusion.png", "misclassified.png"):
        assert (run_dir / "plots" / name).read_bytes() == (run_dir / "eval" / "best-test" / name).read_bytes()
        assert text.count(f"<figcaption>{name}</figcaption>") == 2, name   # best-test's and best-val's


def test_nntrain_report_rebuilds_it(run_dir):
    (run_dir / "report.html").unlink()
    proc = run_cli("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run_dir / "report.html") and (run_dir / "report.html").is_file()
    bad = run_cli("report", str(run_dir / "missing"))
    assert bad.returncode == 2


def _chromium() -> str | None:
    return next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium installed (apt-get install chromium)")
def test_headless_chromium_renders_the_page(run_dir, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2400",
           (run_dir / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)))
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert png_size(shot) == (1200, 2400)
    from PIL import Image

    with Image.open(shot) as im:   # something was drawn: not one flat colour
        lo, hi = im.convert("L").getextrema()
    assert hi - lo > 100


def test_the_library_train_writes_the_page_too(tmp_path):
    """Every run has its page: nntrain.train (library use, sweep trials) writes report.html as the CLI does."""
    from nntrain.config import validate_config
    from nntrain.training.runner import train

    cfg = validate_config(tiny_config(train={"epochs": 1, "batch_size": 64}))
    folder, _ = train(cfg, run_dir=tmp_path / "run", progress=False)
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "test_acc" in page
    assert f"wrote {folder / 'report.html'}" in (folder / "log.txt").read_text()
