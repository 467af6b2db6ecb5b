"""`nntrain lr-find`: the range test's plot, a suggestion inside the tested range, the same result for a seed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import png_size, tiny_config, write_config
from nntrain.cli import cli
from nntrain.config import validate_config
from nntrain.tools.lr_find import MIN_OVER_10, STEEPEST, lr_find, lr_schedule, smooth, suggest


def test_cli_writes_the_plot_and_a_suggestion_in_range(tmp_path: Path, figures: dict) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_config(name="tiny-lr"))
    out = tmp_path / "figs" / "lr.png"
    result = CliRunner().invoke(cli, ["lr-find", str(config), "--start", "1e-4", "--end", "5", "--steps", "60",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("suggested learning rate: "))
    suggested = float(line.split()[3])
    assert 1e-4 <= suggested <= 5
    assert "steepest descent" in line or "minimum / 10" in line
    assert png_size(out)[0] > 300
    title = figures["lr.png"].axes[0].get_title()
    assert title.startswith("tiny-lr"), title   # the plot names the config it measured


def test_same_seed_same_curve_and_the_divergence_stop() -> None:
    cfg = validate_config(tiny_config())
    a, b = (lr_find(cfg, start=1e-4, end=100.0, steps=80) for _ in range(2))
    assert a.losses == b.losses and a.suggestion == b.suggestion
    assert a.lrs == pytest.approx(list(lr_schedule(1e-4, 100.0, 80)[:len(a.lrs)]))
    assert len(a.lrs) < 80 and "exceeded 4x its best" in a.stop_reason or "not finite" in a.stop_reason
    assert a.lrs[0] <= a.suggestion < a.min_lr   # the steepest fall comes before the lowest loss
    other = lr_find(validate_config(tiny_config(seed=1)), start=1e-4, end=100.0, steps=20)
    assert other.losses != a.losses[:20]


def test_smoothing_is_bias_corrected() -> None:
    assert smooth([2.0] * 5) == pytest.approx([2.0] * 5)   # no pull towards the zero start
    assert smooth([1.0, 3.0], beta=0.5) == pytest.approx([1.0, (0.5 * 0.5 + 0.5 * 3.0) / (1 - 0.5 ** 2)])


def test_suggestion_rules() -> None:
    lrs = list(np.geomspace(1e-5, 1.0, 50))
    loss = [2.0 - math.tanh(3 * (math.log10(lr) + 3)) for lr in lrs]   # falls fastest at lr 1e-3
    loss[-5:] = [4.0] * 5                                            # then diverges
    lr, method = suggest(lrs, loss)
    assert method == STEEPEST and lr == pytest.approx(1e-3, rel=0.3)
    lr, method = suggest(lrs[:8], [1.0, 0.9, 3, 4, 5, 6, 7, 8])       # the minimum too early for a slope
    assert method == MIN_OVER_10 and lr == lrs[0]                     # lrs[1] / 10 clamped to the range
