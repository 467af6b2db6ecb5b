"""Shared test helpers: running the real CLI and writing small configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Every shipped training config: configs/*.yaml and the ports of published setups in configs/ports/.
SHIPPED_CONFIGS = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "ports").glob("*.yaml"))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None,
            check_no_traceback: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m nntrain.cli ARGS` as a real subprocess; asserts no traceback leaks on errors."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "nntrain.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check_no_traceback:
        assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a valid, non-empty PNG (signature, IHDR chunk, Pillow's verify)."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 1000, f"{path} is no PNG"
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def tiny_config(**changes) -> dict:
    """A fast config: an MLP on mnist-mini (trains an epoch in well under a second)."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "data": {"dataset": "mnist-mini", "val_size": 500},
        "model": [{"type": "flatten"}, {"type": "linear", "out_features": 32}, {"type": "relu"},
                  {"type": "dropout", "p": 0.1}, {"type": "linear", "out_features": 10}],
        "loss": {"type": "softmax_cross_entropy"},
        "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 2, "batch_size": 64},
    }
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            cfg[section][sub] = value
        else:
            cfg[section] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path / "tiny.yaml", tiny_config())


# --- comparing with the PyTorch oracle --------------------------------------------------------------
DTYPES = [np.float64, np.float32]
RTOL = {np.float64: 1e-5, np.float32: 1e-4}


def readonly(a) -> np.ndarray:
    """A copy that cannot be written to: a layer that modifies its input or gradient raises."""
    a = np.array(a)
    a.flags.writeable = False
    return a


def close(ours: np.ndarray, ref, dtype) -> None:
    """allclose with the dtype's rtol and an atol scaled to the reference's magnitude (sums of many
    float32 terms lose relative accuracy on the entries that cancel to near zero)."""
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    assert ours.shape == ref.shape
    assert ours.dtype == np.dtype(dtype), f"dtype {ours.dtype}, expected {np.dtype(dtype)}"
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    atol = (1e-10 if dtype == np.float64 else 1e-5) * scale
    np.testing.assert_allclose(ours, ref, rtol=RTOL[dtype], atol=atol)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The matplotlib Figure objects nntrain writes during a test, by file name (still saved through the
    real `save_figure`), for tests that read titles, labels and colour bars off them."""
    from nntrain.training import plots

    seen: dict = {}
    real = plots.save_figure

    def save(fig, path, *args, **kwargs):
        seen[Path(path).name] = fig
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots, "save_figure", save)
    return seen
