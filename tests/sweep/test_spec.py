"""The sweep file is validated before any trial starts: every mistake is a ConfigError (exit 2) naming the
sweep file, the line and the key path; a valid file resolves with its defaults and round-trips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from nntrain.errors import ConfigError
from nntrain.sweep.spec import load_sweep, parse_sweep

BASE = """\
name: base
data: {dataset: mnist-mini, val_size: 500}
model:
  - {type: flatten}
  - {type: linear, out_features: 32}
  - {type: relu}
  - {type: linear, out_features: 10}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 1, batch_size: 64}
"""

GOOD = """\
base: base.yaml
name: lr
metric: {name: val_acc, goal: maximize}
method: tpe
trials: 4
pruner: {type: median, warmup_epochs: 1}
parameters:
  optimizer.lr: {distribution: log_uniform_values, min: 1.0e-3, max: 0.3}
  optimizer.momentum: {distribution: uniform, min: 0.5, max: 0.95}
  train.batch_size: {values: [32, 64]}
  "model[1].out_features": {distribution: int_uniform, min: 8, max: 64}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


def test_a_good_file_resolves_and_round_trips(folder: Path) -> None:
    spec = load_sweep(write(folder, GOOD), ["train.epochs=2"])
    assert (spec.name, spec.metric, spec.goal, spec.method, spec.trials) == ("lr", "val_acc", "maximize", "tpe", 4)
    assert spec.pruner == {"type": "median", "warmup_epochs": 1, "startup_trials": 5}
    assert [p.key for p in spec.parameters] == ["optimizer.lr", "optimizer.momentum", "train.batch_size",
                                                "model[1].out_features"]
    assert spec.overrides == ("train.epochs=2",)
    cfg = spec.trial_config({"optimizer.lr": 0.01, "model[1].out_features": 16})
    assert cfg["optimizer"]["lr"] == 0.01 and cfg["model"][1]["out_features"] == 16 and cfg["train"]["epochs"] == 2
    again = parse_sweep(spec.to_yaml("base.yaml"), str(folder / "resolved.yaml"))
    assert again.to_yaml("base.yaml") == spec.to_yaml("base.yaml")


def test_defaults_and_the_grid_size(folder: Path) -> None:
    spec = load_sweep(write(folder, """\
base: base.yaml
metric: {name: val_loss}
method: grid
parameters:
  optimizer.lr: {values: [0.01, 0.1]}
  train.batch_size: {values: [16, 32, 64]}
  optimizer.momentum: {value: 0.5}
"""))
    assert (spec.name, spec.goal, spec.trials, spec.pruner, spec.storage) == ("sweep", "minimize", 6,
                                                                             {"type": "none"}, None)


# (what to change in GOOD, the key path the error names, its line, words in the message)
BAD = [
    ("trials: 4", "trial: 4", "trial", 5, "unknown key 'trial'"),
    ("metric: {name: val_acc, goal: maximize}", "metric: {name: val_accuracy}", "metric.name", 3, "val_acc"),
    ("method: tpe", "method: bayes", "method", 4, "grid, random, tpe"),
    ("  optimizer.lr: {distribution: log_uniform_values, min: 1.0e-3, max: 0.3}",
     "  optimizer.lrate: {values: [0.1]}", "parameters[optimizer.lrate]", 8, "did you mean 'optimizer.lr'"),
    ("  optimizer.lr: {distribution: log_uniform_values, min: 1.0e-3, max: 0.3}",
     "  optimizer.lr: {distribution: log_uniform_values, min: 0, max: 0.3}", "parameters[optimizer.lr].min", 8,
     "min > 0"),
    ("  optimizer.lr: {distribution: log_uniform_values, min: 1.0e-3, max: 0.3}",
     "  optimizer.lr:\n    distribution: uniform\n    min: -0.1\n    max: 0.3",
     "parameters[optimizer.lr].min", 10, "optimizer.lr=-0.1 is refused by the config schema"),
    ("  train.batch_size: {values: [32, 64]}", "  train.batch_size: {values: [32, 0]}",
     "parameters[train.batch_size].values[1]", 10, "train.batch_size=0 is refused"),
    ('  "model[1].out_features": {distribution: int_uniform, min: 8, max: 64}',
     '  "model[2].p": {distribution: uniform, min: 0.1, max: 0.5}', "parameters[model[2].p]", 11, "no key"),
    ("  optimizer.momentum: {distribution: uniform, min: 0.5, max: 0.95}",
     "  optimizer.momentum: {distribution: normal, mu: 0.9, sigma: 0.01}", "parameters[optimizer.momentum].mu",
     9, "unknown key 'mu'"),
    ("  optimizer.momentum: {distribution: uniform, min: 0.5, max: 0.95}",
     "  optimizer.momentum: {distribution: normal}", "parameters[optimizer.momentum].distribution", 9,
     "no Optuna counterpart"),
    ("  optimizer.momentum: {distribution: uniform, min: 0.5, max: 0.95}",
     "  optimizer.momentum: {distribution: uniform, min: 0.95, max: 0.5}", "parameters[optimizer.momentum].max",
     9, "must be below"),
    ("pruner: {type: median, warmup_epochs: 1}", "pruner: {type: median, warmup: 1}", "pruner.warmup", 6,
     "did you mean 'warmup_epochs'"),
    ("pruner: {type: median, warmup_epochs: 1}", "pruner: {type: percentile}", "pruner.type", 6, "hyperband"),
    ("trials: 4", "trials: 4\nstorage: sqlite:///x.db", "storage", 6, "postgresql://"),
    ("method: tpe\ntrials: 4", "method: grid\ntrials: 4", "parameters[optimizer.lr].distribution", 8,
     "a grid sweep needs a list of values"),
]


@pytest.mark.parametrize("old, new, path, line, words", BAD, ids=[b[2] + ":" + b[4][:12] for b in BAD])
def test_mistakes_name_file_line_and_key_path(folder: Path, old: str, new: str, path: str, line: int,
                                              words: str) -> None:
    assert old in GOOD
    sweep = write(folder, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_sweep(sweep)
    e = info.value
    assert (e.source, e.path, e.line) == (str(sweep), path, line), str(e)
    assert words in e.message, str(e)


def test_a_grid_with_trials_other_than_its_size_is_refused(folder: Path) -> None:
    text = "base: base.yaml\nmetric: {name: val_acc}\nmethod: grid\ntrials: 3\nparameters:\n" \
           "  train.batch_size: {values: [16, 32]}\n"
    with pytest.raises(ConfigError, match="runs the whole grid: 2 trials") as info:
        load_sweep(write(folder, text))
    assert (info.value.path, info.value.line) == ("trials", 4)


def test_a_missing_base_names_the_base_key(folder: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as info:
        load_sweep(write(folder, GOOD.replace("base: base.yaml", "base: nowhere.yaml")))
    assert (info.value.path, info.value.line) == ("base", 1)


def test_a_key_both_fixed_and_searched_is_refused(folder: Path) -> None:
    with pytest.raises(ConfigError, match="either fixed or searched"):
        load_sweep(write(folder, GOOD), ["optimizer.lr=0.1"])


def test_the_cli_exits_2_with_the_location(folder: Path) -> None:
    sweep = write(folder, GOOD.replace("trials: 4", "trails: 4"))
    proc = run_cli("sweep", str(sweep), "--workers", "0", "--runs-root", str(folder / "runs"))
    assert proc.returncode == 2
    assert f"{sweep}, line 5: trails: unknown key 'trails'" in proc.stderr
    assert not (folder / "runs").exists()


def test_without_optuna_the_cli_says_how_to_install_it(folder: Path) -> None:
    code = ("import sys; sys.modules['optuna'] = None; from nntrain.cli import main; "
            f"sys.argv = ['nntrain', 'sweep', {str(write(folder, GOOD))!r}]; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert 'pip install "nntrain[sweep]"' in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_sweeps_are_valid(path: Path) -> None:
    spec = load_sweep(path)
    assert spec.trials >= 1 and spec.parameters
