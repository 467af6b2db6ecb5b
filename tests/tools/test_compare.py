"""`nntrain compare`: only the config parts that differ, collapsed per section (`sgd(lr=0.05)`), the model as
a short description, numbers equal to those in each run's files, robustness from the evaluation of the
best checkpoint on test, curves labelled by what differs, compare.md and compare.png (exact pixel size),
and run folders that cannot be compared skipped with a warning."""

from __future__ import annotations

import csv
import json
import logging
import statistics
from pathlib import Path

import pytest

from conftest import png_size, run_cli, tiny_config, write_config
from nntrain.tools.compare import compare_runs, config_differences, curve_labels, read_run, save_comparison

CNN = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "relu"},
       {"type": "maxpool2d", "kernel_size": 2},
       {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "relu"},
       {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"},
       {"type": "linear", "out_features": 16}, {"type": "relu"}, {"type": "linear", "out_features": 10}]


def rotate(*accs: float) -> dict:
    return {"rotate": [{"level": lv, "accuracy": a} for lv, a in zip((0.0, 15.0), accs)]}


def write_eval(folder: Path, metrics: dict, name: str | None) -> None:
    """An evaluation as `nntrain eval` saves it: eval/<name>/metrics.json (name None: the older eval/metrics.json)."""
    where = folder / "eval" / name if name else folder / "eval"
    where.mkdir(parents=True, exist_ok=True)
    (where / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two one-epoch tiny runs that differ only in optimizer.lr, with saved evaluations: the first has
    robustness results in eval/best-test (and other ones elsewhere, which must not be used), the second
    only in the older layout's eval/metrics.json."""
    from nntrain.config import load_config
    from nntrain.training.runner import train

    tmp = tmp_path_factory.mktemp("compare")
    folders = []
    for lr in (0.05, 0.02):
        cfg = tiny_config(train={"epochs": 1, "batch_size": 64}, optimizer={"type": "sgd", "lr": lr, "momentum": 0.9})
        folder, _ = train(load_config(write_config(tmp / f"lr{lr}.yaml", cfg)), run_dir=tmp / f"run-lr{lr}",
                          progress=False)
        folders.append(folder)
    a, b = folders
    write_eval(a, {"checkpoint": "best", "split": "test", "accuracy": 0.8, "robustness": rotate(0.8125, 0.6875)},
               "best-test")
    write_eval(a, {"checkpoint": "last", "split": "test", "robustness": rotate(0.1, 0.1)}, "last-test")
    write_eval(a, {"checkpoint": "best", "split": "val", "robustness": rotate(0.2, 0.2)}, "best-val")
    write_eval(a, {"split": "test", "robustness": rotate(0.3, 0.3)}, None)
    write_eval(b, {"checkpoint": "best", "split": "val", "robustness": rotate(0.2, 0.2)}, "best-val")
    write_eval(b, {"split": "test", "robustness": rotate(0.75, 0.5)}, None)
    return a, b


def metrics_rows(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_table_shows_the_optimizer_only_and_numbers_from_the_run_files(two_runs):
    a, b = two_runs
    comp = compare_runs([a, b])
    assert comp.columns == ["run", "optimizer", "best val acc", "test acc", "rotate=0", "rotate=15", "epochs",
                            "s/epoch (median)"]
    for folder, row, lr in zip((a, b), comp.rows, ("0.05", "0.02")):
        hist = metrics_rows(folder)
        test = json.loads((folder / "test.json").read_text())
        assert row[0] == folder.name and row[1] == f"sgd(lr={lr})"
        assert row[2] == f"{max(float(r['val_acc']) for r in hist):.4f}"
        assert row[3] == f"{test['test_acc']:.4f}"
        assert row[6] == str(test["epochs_trained"]) == "1"
        assert row[7] == f"{statistics.median(float(r['seconds']) for r in hist):.3f}"
    # robustness of the best checkpoint on test: eval/best-test, else an older run's eval/metrics.json
    assert comp.rows[0][4:6] == ["0.8125", "0.6875"] and comp.rows[1][4:6] == ["0.7500", "0.5000"]
    assert comp.curve_labels == ["optimizer=sgd(lr=0.05)", "optimizer=sgd(lr=0.02)"]
    twice = compare_runs([a, a])                      # same folder name twice: labelled by the path given
    assert [r[0] for r in twice.rows] == [str(a), str(a)] and twice.columns[1] == "best val acc"
    assert twice.curve_labels == [str(a), str(a)]     # nothing else tells them apart
    rec = read_run(a)
    assert rec.robustness == {"rotate": [(0.0, 0.8125), (15.0, 0.6875)]}
    assert set(rec.evaluations) == {"best-test", "last-test", "best-val", ""}


def test_cli_prints_and_saves_markdown_and_curves(two_runs, tmp_path):
    a, b = two_runs
    proc = run_cli("compare", str(a), str(b), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = list((tmp_path / "comparisons").glob("compare-*"))          # default: ./comparisons/compare-<timestamp>
    assert len(out) == 1
    md = (out[0] / "compare.md").read_text()
    table = proc.stdout.strip()
    assert table in md and table == compare_runs([a, b]).markdown()
    assert f"- `{a}` (curves: optimizer=sgd(lr=0.05))" in md
    header, rule = table.splitlines()[:2]
    assert "optimizer" in header
    assert [c.endswith(":") for c in rule.strip("|").split("|")] == [False, False] + [True] * 6   # numbers right
    assert len({len(line) for line in table.splitlines()}) == 1
    for unchanged in ("seed", "train.epochs", "optimizer.", "momentum", "model", "data.", "loss", "name"):
        assert unchanged not in header
    assert png_size(out[0] / "compare.png") == (1300, 500)


def resolved(**changes) -> dict:
    from nntrain.config import validate_config

    return validate_config(tiny_config(**changes))


def params(cfg: dict) -> int:
    from nntrain.nn.model import build_model

    return build_model(cfg["model"], (1, 28, 28)).num_params()


def test_unlike_configs_collapse_per_section_with_short_model_descriptions():
    sgd_mlp = resolved()                                                    # sgd, momentum 0.9; an MLP
    adam_cnn = resolved(model=CNN, optimizer={"type": "adam", "lr": 0.003},
                        data={"dataset": "mnist-mini", "val_size": 500,
                              "augment": [{"type": "random_shift", "max_pixels": 3}]},
                        train={"epochs": 2, "batch_size": 64, "early_stopping": {"patience": 3}})
    assert params(sgd_mlp) == 25_450 and params(adam_cnn) == 6_794
    diffs = dict(config_differences([sgd_mlp, adam_cnn]))
    assert list(diffs) == ["data.augment", "model", "optimizer", "train.early_stopping"]
    assert diffs["model"] == ["2 fc, 25k params", "2 conv + 2 fc, 6.8k params"]
    # adam's betas and eps are not set against sgd's missing ones, nor sgd's dampening 0 against adam's
    assert diffs["optimizer"] == ["sgd(lr=0.05, momentum=0.9)", "adam(lr=0.003)"]
    assert diffs["data.augment"] == ["none", "random_shift(max_pixels=3)"]
    assert diffs["train.early_stopping"] == ["none", "monitor=val_acc, patience=3"]

    # residual blocks count as one each; a scheduler against none
    block = {"type": "residual", "body": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                                          {"type": "relu"}]}
    resnet = resolved(model=[CNN[0], block, block, block, block, {"type": "global_avgpool"},
                             {"type": "linear", "out_features": 10}],
                      scheduler={"type": "step", "step_size": 1})
    diffs = dict(config_differences([sgd_mlp, resnet]))
    assert diffs["model"][1].startswith("1 conv + 4 residual + 1 fc, ") and diffs["model"][1].endswith(" params")
    assert diffs["scheduler"] == ["none", "step(step_size=1)"]

    # the same architecture and size, one activation changed: the description says where they differ
    gelu = resolved(model=[{"type": "flatten"}, {"type": "linear", "out_features": 32}, {"type": "gelu"},
                           {"type": "dropout", "p": 0.1}, {"type": "linear", "out_features": 10}])
    assert dict(config_differences([sgd_mlp, gelu]))["model"] == ["2 fc, 25k params; [2] relu",
                                                                 "2 fc, 25k params; [2] gelu"]
    # same type, two options changed: one column, both options, nothing else
    other = resolved(optimizer={"type": "sgd", "lr": 0.1, "momentum": 0.5})
    assert config_differences([sgd_mlp, other]) == [("optimizer", ["sgd(lr=0.05, momentum=0.9)",
                                                                   "sgd(lr=0.1, momentum=0.5)"])]
    assert config_differences([sgd_mlp, resolved(train={"epochs": 3, "batch_size": 32})]) == [
        ("train.epochs", ["2", "3"]), ("train.batch_size", ["64", "32"])]


def test_an_sgd_mlp_run_against_an_adam_cnn_run(tmp_path):
    from nntrain.training.runner import train

    sgd, _ = train(resolved(train={"epochs": 1, "batch_size": 64}), run_dir=tmp_path / "sgd", progress=False)
    adam, _ = train(resolved(model=CNN, optimizer={"type": "adam", "lr": 0.003},
                             train={"epochs": 1, "batch_size": 64}), run_dir=tmp_path / "adam", progress=False)
    comp = compare_runs([sgd, adam])
    assert comp.columns[:3] == ["run", "model", "optimizer"]
    assert [r[1:3] for r in comp.rows] == [["2 fc, 25k params", "sgd(lr=0.05, momentum=0.9)"],
                                           ["2 conv + 2 fc, 6.8k params", "adam(lr=0.003)"]]
    labels = [f"model={m}, optimizer={o}" for m, o in (r[1:3] for r in comp.rows)]
    assert comp.curve_labels == labels
    save_comparison(comp, tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert f"- `{adam}` (curves: {labels[1]})" in md
    assert len({len(line) for line in comp.markdown().splitlines()}) == 1   # aligned


def test_curve_labels_fall_back_to_what_tells_runs_apart_then_to_names():
    class Run:
        def __init__(self, label):
            self.label = label

    runs = [Run("a-20261129-101500"), Run("b-20261129-101501")]
    long = [("model", ["1 conv + 4 residual + 1 fc, 175k params", "2 conv + 2 fc, 52k params"]),
            ("optimizer", ["sgd(lr=0.05, momentum=0.9, nesterov=true)", "adam(lr=0.003)"])]
    assert curve_labels(runs, long) == ["model=1 conv + 4 residual + 1 fc, 175k params",
                                        "model=2 conv + 2 fc, 52k params"]
    assert curve_labels(runs, []) == [r.label for r in runs]
    too_long = [("data.augment", ["none", "random_shift(max_pixels=3) - random_rotate(degrees=15) - cutout(size=4)"])]
    assert curve_labels(runs, too_long) == [r.label for r in runs]


def fake_run(folder: Path, metrics: str | None, config: bool = True, test: str | None = None) -> Path:
    folder.mkdir(parents=True)
    if config:
        write_config(folder / "config.yaml", tiny_config())
    if metrics is not None:
        (folder / "metrics.csv").write_text(metrics)
    if test is not None:
        (folder / "test.json").write_text(test)
    return folder


HEADER = "epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds\n"


def test_runs_that_cannot_be_compared_are_skipped_with_a_warning(tmp_path, caplog):
    good = fake_run(tmp_path / "good", HEADER + "1,0.05,0.5,0.8,0.4,0.85,1.0\n", test='{"test_acc": 0.9}')
    broken = [fake_run(tmp_path / "no-epoch", HEADER),                                 # started, no epoch done
              fake_run(tmp_path / "no-config", HEADER + "1,0.05,0.5,0.8,0.4,0.85,1.0\n", config=False),
              fake_run(tmp_path / "bad-test", HEADER + "1,0.05,0.5,0.8,0.4,0.85,1.0\n", test="{not json"),
              fake_run(tmp_path / "no-metrics", None), tmp_path / "missing"]
    write_eval(good, {"split": "test"}, "best-test")
    (good / "eval" / "best-val").mkdir()
    (good / "eval" / "best-val" / "metrics.json").write_text("[oops")          # a damaged eval: left out
    with caplog.at_level(logging.WARNING, logger="nntrain"):
        comp = compare_runs([good, *broken])
    assert [r.path for r in comp.runs] == [good] and comp.rows[0][0] == "good"
    for folder, why in zip(broken, ("no finished epoch", "no config.yaml", "test.json", "no metrics.csv",
                                    "is not a folder")):
        assert f"skipped {folder}: " in caplog.text and why in caplog.text, (folder, caplog.text)
    assert "best-val" in caplog.text and "left out" in caplog.text

    proc = run_cli("compare", str(good), str(broken[0]), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0 and f"skipped {broken[0]}" in proc.stderr, proc.stderr
    proc = run_cli("compare", *map(str, broken), "--out", str(tmp_path / "none"))
    assert proc.returncode == 2 and "nothing to compare" in proc.stderr and "none of the 5" in proc.stderr
    assert proc.stderr.count("skipped ") == 5, proc.stderr
