"""Robustness evaluation: the perturbations themselves, and `nntrain eval --perturb` end to end."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, tiny_config, write_config
from nntrain.errors import ConfigError
from nntrain.data.perturb import perturbation


def test_level_zero_is_the_clean_input() -> None:
    for kind in ("rotate", "shift", "noise"):
        assert perturbation(kind, 0, np.random.default_rng(0)) is None


def test_shift_moves_every_image_by_exactly_k_pixels() -> None:
    x = np.zeros((64, 1, 9, 9), np.float32)
    x[:, 0, 4, 4] = 1.0
    out = perturbation("shift", 2, np.random.default_rng(0))(x)
    rows, cols = np.nonzero(out[:, 0].reshape(64, -1) > 0.5)[1] // 9, np.nonzero(out[:, 0].reshape(64, -1))[1] % 9
    assert out.sum() == 64.0  # one pixel each, moved whole
    moves = {(r - 4, c - 4) for r, c in zip(rows, cols)}
    assert moves <= {(2, 0), (-2, 0), (0, 2), (0, -2)} and len(moves) > 1


def test_rotate_turns_each_image_by_plus_or_minus_the_level() -> None:
    x = np.zeros((32, 1, 15, 15), np.float32)
    x[:, 0, 7, 7:] = 1.0  # a bar from the centre to the right edge
    out = perturbation("rotate", 90, np.random.default_rng(1))(x)
    up = out[:, 0, :7, 7].sum(axis=1) > 3
    down = out[:, 0, 8:, 7].sum(axis=1) > 3
    assert np.all(up ^ down) and up.any() and down.any()


def test_noise_has_the_requested_std_and_stays_in_range() -> None:
    x = np.full((16, 1, 28, 28), 0.5, np.float32)
    out = perturbation("noise", 0.1, np.random.default_rng(2))(x)
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    assert np.std(out - x) == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize("kind, level", [("blur", 1.0), ("rotate", -5.0), ("shift", 1.5), ("noise", float("nan"))])
def test_bad_perturbations_are_config_errors(kind: str, level: float) -> None:
    with pytest.raises(ConfigError):
        perturbation(kind, level, np.random.default_rng(0))


def test_eval_perturb_table_json_and_plot_agree(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config(train={"epochs": 1, "batch_size": 64}))
    assert run_cli("train", str(cfg_path), "--run-dir", str(tmp_path / "run")).returncode == 0
    proc = run_cli("eval", str(tmp_path / "run"), "--perturb", "rotate=0,30,60", "--perturb", "noise=0,0.5")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "eval" / "best-test" / "metrics.json").read_text())
    rob = metrics["robustness"]
    assert [r["level"] for r in rob["rotate"]] == [0.0, 30.0, 60.0]
    assert rob["rotate"][0]["accuracy"] == pytest.approx(metrics["accuracy"])  # level 0 is the clean test set
    assert rob["rotate"][2]["accuracy"] < rob["rotate"][0]["accuracy"]          # 60 degrees hurts a digit MLP
    for kind, rows in rob.items():                                              # the table prints the same numbers
        for r in rows:
            assert [f"{r['level']:g}", f"{r['accuracy']:.4f}"] in [line.split() for line in proc.stdout.splitlines()]
    png = (tmp_path / "run" / "plots" / "robustness.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 1.6 * height  # two panels side by side
    # the same command gives the same table: the perturbations are seeded
    again = run_cli("eval", str(tmp_path / "run"), "--perturb", "rotate=0,30,60", "--perturb", "noise=0,0.5")
    assert json.loads((tmp_path / "run" / "eval" / "best-test" / "metrics.json").read_text()) == metrics
    assert again.stdout == proc.stdout


def test_eval_perturb_bad_syntax_exits_2(tmp_path: Path) -> None:
    proc = run_cli("eval", str(tmp_path), "--perturb", "rotate")
    assert proc.returncode == 2 and "--perturb" in proc.stderr
