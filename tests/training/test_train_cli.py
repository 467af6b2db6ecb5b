"""The product a newcomer meets: `nntrain train` then `nntrain eval`, through the real CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import png_size, run_cli, tiny_config, write_config
from nntrain.cli import cli


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_train_then_eval_cycle(tmp_path: Path, config_file: Path) -> None:
    proc = run_cli("train", str(config_file), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert run == tmp_path / "run"
    for rel in ("config.yaml", "metrics.csv", "log.txt", "test.json", "checkpoints/last.npz", "checkpoints/best.npz",
                "plots/loss.png", "plots/accuracy.png"):
        assert (run / rel).is_file(), rel
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "grad_norm", "seconds"]
    assert float(rows[-1]["val_acc"]) > 0.8  # an MLP learns mnist-mini quickly
    w, h = png_size(run / "plots" / "loss.png")
    assert w > 200 and h > 150
    summary = json.loads((run / "test.json").read_text())
    assert 0.8 < summary["test_acc"] <= 1.0
    assert "epoch 2/2" in (run / "log.txt").read_text()
    assert "total parameters" in proc.stderr  # the model summary is shown

    proc = run_cli("eval", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "eval" / "best-test" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["test_acc"])  # eval of best.npz == the run's test figure
    assert f"accuracy {metrics['accuracy']:.4f}" in proc.stdout
    matrix = proc.stdout.split("confusion matrix")[1].split("\n\n")[0].splitlines()[1:]
    assert len(matrix) == 11 and len({len(line) for line in matrix}) == 1  # header + 10 rows, columns aligned
    cm = np.loadtxt(run / "eval" / "best-test" / "confusion.csv", delimiter=",", skiprows=1, usecols=range(1, 11), dtype=int)
    assert cm.sum() == metrics["samples"] == 1000
    assert np.trace(cm) / cm.sum() == pytest.approx(metrics["accuracy"])
    for name in ("confusion.png", "misclassified.png"):
        assert png_size(run / "plots" / name)[0] > 100

    # a checkpoint copied away from its run folder still evaluates (config and normalisation travel inside it)
    away = tmp_path / "elsewhere"
    away.mkdir()
    shutil.copy(run / "checkpoints" / "best.npz", away / "model.npz")
    proc = run_cli("eval", str(away / "model.npz"), "--split", "val", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((away / "eval" / "model-val" / "metrics.json").read_text())["samples"] == 500


def test_default_run_folder_is_unique(tmp_path: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folders = []
    for _ in range(2):  # two runs in the same second
        result = CliRunner().invoke(cli, ["train", str(config_file), "-s", "train.epochs=1", "--no-progress"])
        assert result.exit_code == 0, result.output
        folders.append(result.stdout.strip().splitlines()[-1])
    assert folders[0] != folders[1]
    assert all(Path(f).parent.name == "runs" and Path(f).name.startswith("tiny-") for f in folders)


def test_overrides_and_print_config(config_file: Path) -> None:
    result = CliRunner().invoke(cli, ["print-config", str(config_file), "-s", "optimizer.lr=0.01",
                                      "-s", "model[3].p=0.3"])
    assert result.exit_code == 0, result.output
    import yaml

    cfg = yaml.safe_load(result.stdout)
    assert cfg["optimizer"]["lr"] == 0.01 and cfg["model"][3]["p"] == 0.3
    assert cfg["optimizer"]["momentum"] == 0.9 and "nesterov" in cfg["optimizer"]  # defaults filled in


def test_early_stopping(tmp_path: Path) -> None:
    # min_delta larger than any possible change: the first epoch sets the reference, then patience runs out
    cfg = tiny_config(train={"epochs": 10, "batch_size": 64,
                             "early_stopping": {"monitor": "val_loss", "patience": 2, "min_delta": 100.0}})
    proc = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert len(read_metrics(tmp_path / "r")) == 3
    summary = json.loads((tmp_path / "r" / "test.json").read_text())
    assert summary["stopped_early"] is True and summary["checkpoint"] == "best.npz"
    assert "early stopping" in proc.stderr


def test_nan_loss_stops_with_exit_1(tmp_path: Path) -> None:
    cfg = tiny_config(optimizer={"type": "sgd", "lr": 1.0e6, "momentum": 0.9}, train={"epochs": 3, "batch_size": 64})
    proc = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stderr
    assert "loss became" in proc.stderr and "learning rate" in proc.stderr


def test_init_from_checkpoint(tmp_path: Path, config_file: Path) -> None:
    assert run_cli("train", str(config_file), "--run-dir", str(tmp_path / "a")).returncode == 0
    proc = run_cli("train", str(config_file), "-s", "train.epochs=1", "--run-dir", str(tmp_path / "b"),
                   "--init-from", str(tmp_path / "a" / "checkpoints" / "best.npz"))
    assert proc.returncode == 0, proc.stderr
    first = float(read_metrics(tmp_path / "a")[0]["train_acc"])
    tuned = float(read_metrics(tmp_path / "b")[0]["train_acc"])
    assert tuned > first  # starting from trained weights beats starting from scratch


@pytest.mark.parametrize("args, needle", [
    (["train", "missing.yaml"], "missing.yaml"),
    (["train", "{cfg}", "-s", "optimizer.lr=-1"], "optimizer.lr"),
    (["train", "{cfg}", "-s", "model[1].out_feature=3"], "did you mean"),
    (["train", "{cfg}", "-s", "data.dataset=imagenet"], "data.dataset"),
    (["train", "{cfg}", "--resume", "{tmp}/nowhere"], "nowhere"),
    (["train", "{cfg}", "--init-from", "{tmp}/nothing.npz"], "nothing.npz"),
    (["eval", "{tmp}/nothing"], "nothing"),
    (["eval", "{cfg}"], "checkpoint"),
    (["gradcheck", "{cfg}", "-s", "model[0].type=conv2"], "conv2"),
    (["print-config", "{cfg}", "-s", "nonsense"], "nonsense"),
])
def test_bad_usage_exits_2_with_a_message(tmp_path: Path, config_file: Path, args: list[str], needle: str) -> None:
    args = [a.format(cfg=config_file, tmp=tmp_path) for a in args]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert needle in proc.stderr
    assert proc.stderr.startswith("error:") or "Error" in proc.stderr


def test_help_shows_examples() -> None:
    runner = CliRunner()
    for cmd in ([], ["train"], ["eval"], ["gradcheck"], ["print-config"], ["time"]):
        result = runner.invoke(cli, [*cmd, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.output, cmd


def test_training_from_the_library(tmp_path: Path) -> None:
    import nntrain
    from nntrain.training.runner import train

    cfg = nntrain.load_config(write_config(tmp_path / "c.yaml", tiny_config()), overrides=["train.epochs=1"])
    folder, summary = train(cfg, run_dir=tmp_path / "lib-run", progress=False)
    assert folder == tmp_path / "lib-run"
    assert 0.5 < summary["test_acc"] <= 1.0
    assert "epoch 1/1" in (folder / "log.txt").read_text()
    assert len(read_metrics(folder)) == 1


def test_epoch_seconds_have_two_significant_digits():
    """A fast epoch is not printed as 0.0s; a slow one not in exponent form."""
    from nntrain.training.trainer import format_seconds

    assert [format_seconds(s) for s in (0.0042, 0.049, 0.85, 17.36, 63.65, 640.2)] == [
        "0.0042", "0.049", "0.85", "17", "64", "640"]
