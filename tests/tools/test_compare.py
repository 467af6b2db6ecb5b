"""`nntrain compare`: only the config keys that differ, numbers equal to those in each run's files,
compare.md and compare.png (exact pixel size), and the key-path rules for layer and augmentation lists."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from conftest import png_size, run_cli, tiny_config, write_config
from nntrain.tools.compare import compare_runs, config_differences, flatten_config, read_run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two one-epoch tiny runs that differ only in optimizer.lr; the first also has eval robustness figures."""
    from nntrain.config import load_config
    from nntrain.training.runner import train

    tmp = tmp_path_factory.mktemp("compare")
    folders = []
    for lr in (0.05, 0.02):
        cfg = tiny_config(train={"epochs": 1, "batch_size": 64}, optimizer={"type": "sgd", "lr": lr, "momentum": 0.9})
        folder, _ = train(load_config(write_config(tmp / f"lr{lr}.yaml", cfg)), run_dir=tmp / f"run-lr{lr}",
                          progress=False)
        folders.append(folder)
    (folders[0] / "eval").mkdir()
    (folders[0] / "eval" / "metrics.json").write_text(json.dumps(
        {"split": "test", "accuracy": 0.8, "robustness": {"rotate": [{"level": 0.0, "accuracy": 0.8125},
                                                                     {"level": 15.0, "accuracy": 0.6875}]}}))
    return folders[0], folders[1]


def metrics_rows(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_table_shows_lr_only_and_numbers_from_the_run_files(two_runs):
    a, b = two_runs
    comp = compare_runs([a, b])
    assert comp.columns == ["run", "optimizer.lr", "best val acc", "test acc", "rotate=0", "rotate=15", "epochs",
                            "s/epoch (median)"]
    for folder, row, lr in zip((a, b), comp.rows, ("0.05", "0.02")):
        hist = metrics_rows(folder)
        test = json.loads((folder / "test.json").read_text())
        assert row[0] == folder.name and row[1] == lr
        assert row[2] == f"{max(float(r['val_acc']) for r in hist):.4f}"
        assert row[3] == f"{test['test_acc']:.4f}"
        assert row[6] == str(test["epochs_trained"]) == "1"
        assert row[7] == f"{statistics.median(float(r['seconds']) for r in hist):.3f}"
    assert comp.rows[0][4:6] == ["0.8125", "0.6875"] and comp.rows[1][4:6] == ["—", "—"]
    twice = compare_runs([a, a])                      # same folder name twice: labelled by the path given
    assert [r[0] for r in twice.rows] == [str(a), str(a)] and twice.columns[1] == "best val acc"
    rec = read_run(a)
    assert rec.robustness == {"rotate": [(0.0, 0.8125), (15.0, 0.6875)]}


def test_cli_prints_and_saves_markdown_and_curves(two_runs, tmp_path):
    a, b = two_runs
    proc = run_cli("compare", str(a), str(b), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = list((tmp_path / "comparisons").glob("compare-*"))          # default: ./comparisons/compare-<timestamp>
    assert len(out) == 1
    md = (out[0] / "compare.md").read_text()
    table = proc.stdout.strip()
    assert table in md and table == compare_runs([a, b]).markdown()
    header, rule = table.splitlines()[:2]
    assert "optimizer.lr" in header
    assert [c.endswith(":") for c in rule.strip("|").split("|")] == [False] + [True] * 7   # numbers right-aligned
    assert len({len(line) for line in table.splitlines()}) == 1
    for unchanged in ("seed", "train.epochs", "optimizer.momentum", "model", "data.", "loss.", "name"):
        assert unchanged not in header
    assert png_size(out[0] / "compare.png") == (1300, 500)
    proc = run_cli("compare", str(a), str(tmp_path), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "config.yaml" in proc.stderr and str(tmp_path) in proc.stderr


def test_key_paths_for_layers_and_augmentation():
    mlp = [{"type": "flatten"}, {"type": "linear", "out_features": 10}]
    cnn = lambda ch: [{"type": "conv2d", "out_channels": ch, "kernel_size": 3}, {"type": "flatten"},  # noqa: E731
                      {"type": "linear", "out_features": 10}]
    base = {"seed": 0, "name": "x", "data": {"dataset": "mnist", "augment": []}, "optimizer": {"lr": 0.1}}
    assert flatten_config({"model": cnn(8), "optimizer": {"lr": 0.1}}) == {
        "model[0].type": "conv2d", "model[0].out_channels": 8, "model[0].kernel_size": 3, "model[1].type": "flatten",
        "model[2].type": "linear", "model[2].out_features": 10, "optimizer.lr": 0.1}
    # Same architecture, different width: entry by entry.
    diffs = config_differences([dict(base, model=cnn(8)), dict(base, model=cnn(16), name="y")])
    assert diffs == [("model[0].out_channels", ["8", "16"])]
    # MLP against CNN, with and without augmentation: whole lists, described in one line each.
    aug = {"dataset": "mnist", "augment": [{"type": "random_shift", "max_pixels": 2}]}
    diffs = dict(config_differences([dict(base, model=mlp), dict(base, model=cnn(8), data=aug)]))
    assert set(diffs) == {"data.augment", "model"}
    assert diffs["data.augment"] == ["none", "random_shift(max_pixels=2)"]
    assert diffs["model"][0].startswith("flatten()") and "conv2d(out_channels=8" in diffs["model"][1]
