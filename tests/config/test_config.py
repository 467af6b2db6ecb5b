"""Config loading and validation: bad configs give a ConfigError naming the key path, line and what
is valid; good configs resolve with every default and round-trip through dump_config; overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import SHIPPED_CONFIGS
from nntrain.config import apply_overrides, dump_config, load_config, validate_config
from nntrain.errors import ConfigError, ShapeError
from nntrain.nn.layers import LAYERS

REPO = Path(__file__).resolve().parents[2]

BASE = """\
name: test
seed: 0
data:
  dataset: mnist
model:
  - {type: flatten}
  - {type: linear, out_features: 32}
  - {type: relu}
  - {type: linear, out_features: 10}
optimizer: {type: sgd, lr: 0.1}
train: {epochs: 2, batch_size: 16}
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def sub(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (id, config text, substrings the message must contain, marker: the line holding it must be named)
BAD = [
    ("unknown-top-key", sub("optimizer:", "optimiser:"), ["'optimiser'", "did you mean 'optimizer'"], "optimiser:"),
    ("missing-data", sub("data:\n  dataset: mnist\n", ""), ["data", "missing required section"], None),
    ("missing-model", BASE.split("model:")[0] + "optimizer: {type: sgd, lr: 0.1}\n", ["model", "missing"], None),
    ("missing-optimizer", sub("optimizer: {type: sgd, lr: 0.1}\n", ""), ["optimizer", "missing"], None),
    ("unknown-dataset", sub("dataset: mnist", "dataset: mnits"), ["data.dataset", "one of mnist"], "dataset:"),
    ("val-size-negative", sub("dataset: mnist", "dataset: mnist\n  val_size: -5"), ["data.val_size", ">= 0"],
     "val_size"),
    ("val-size-string", sub("dataset: mnist", "dataset: mnist\n  val_size: lots"), ["data.val_size", "integer"],
     "val_size"),
    ("val-size-too-big", sub("dataset: mnist", "dataset: mnist\n  val_size: 60000"),
     ["data.val_size", "60000 training images"], "val_size"),
    ("data-unknown-key", sub("dataset: mnist", "dataset: mnist\n  normalise: false"),
     ["data.normalise", "did you mean 'normalize'"], "normalise"),
    ("data-not-mapping", sub("data:\n  dataset: mnist", "data: [mnist]"), ["data", "expected a mapping"], "data:"),
    ("augment-not-list", sub("dataset: mnist", "dataset: mnist\n  augment: random_shift"),
     ["data.augment", "list"], "augment"),
    ("model-empty", BASE.split("model:")[0] + "model: []\noptimizer: {type: sgd, lr: 0.1}\n",
     ["model", "non-empty list"], "model:"),
    ("model-mapping", BASE.split("model:")[0] + "model: {type: linear}\noptimizer: {type: sgd, lr: 0.1}\n",
     ["model", "non-empty list"], "model:"),
    ("unknown-layer", sub("{type: relu}", "{type: rellu}"), ["model[2].type", "did you mean 'relu'"], "rellu"),
    ("layer-without-type", sub("{type: relu}", "{kind: relu}"), ["model[2]", "'type'"], "kind: relu"),
    ("layer-not-mapping", sub("{type: relu}", "relu"), ["model[2]", "mapping"], "- relu"),
    ("layer-unknown-option", sub("out_features: 32", "out_feature: 32"),
     ["model[1].out_feature", "did you mean 'out_features'"], "out_feature:"),
    ("out-features-zero", sub("out_features: 32", "out_features: 0"), ["model[1].out_features", ">= 1"],
     "out_features: 0"),
    ("out-features-string", sub("out_features: 32", "out_features: ten"), ["model[1].out_features", "integer"],
     "out_features: ten"),
    ("linear-on-images", sub("  - {type: flatten}\n", ""), ["model[0]", "flatten"], "out_features: 32"),
    ("wrong-num-classes", sub("out_features: 10", "out_features: 7"), ["model[3]", "10 classes"],
     "out_features: 7"),
    ("lr-negative", sub("lr: 0.1", "lr: -1"), ["optimizer.lr", "got -1, expected a number"], "lr: -1"),
    ("lr-zero", sub("lr: 0.1", "lr: 0"), ["optimizer.lr", "> 0"], "lr: 0"),
    ("lr-string", sub("lr: 0.1", "lr: fast"), ["optimizer.lr", "a number"], "lr: fast"),
    ("lr-nan", sub("lr: 0.1", "lr: .nan"), ["optimizer.lr", "a number"], "lr: .nan"),
    ("unknown-optimizer", sub("type: sgd", "type: adamm"), ["optimizer.type", "did you mean 'adam'"], "adamm"),
    ("optimizer-no-type", sub("{type: sgd, lr: 0.1}", "{lr: 0.1}"), ["optimizer", "'type'", "sgd"], "optimizer:"),
    ("optimizer-unknown-key", sub("lr: 0.1}", "lr: 0.1, momentun: 0.9}"),
     ["optimizer.momentun", "did you mean 'momentum'"], "momentun"),
    ("momentum-bool", sub("lr: 0.1}", "lr: 0.1, momentum: true}"), ["optimizer.momentum", "a number"],
     "momentum"),
    ("unknown-scheduler", BASE + "scheduler: {type: cosin}\n", ["scheduler.type", "did you mean 'cosine'"],
     "cosin"),
    ("multistep-no-milestones", BASE + "scheduler: {type: multistep}\n", ["scheduler.milestones", "missing"],
     "multistep"),
    ("scheduler-gamma-list", BASE + "scheduler: {type: step, step_size: 2, gamma: [0.1]}\n",
     ["scheduler.gamma", "a number"], "step_size"),
    ("epochs-zero", sub("epochs: 2", "epochs: 0"), ["train.epochs", ">= 1"], "epochs: 0"),
    ("batch-size-float", sub("batch_size: 16", "batch_size: 1.5"), ["train.batch_size", "integer"],
     "batch_size"),
    ("train-unknown-key", sub("epochs: 2", "epoch: 2"), ["train.epoch", "did you mean 'epochs'"], "epoch: 2"),
    ("es-bad-monitor", sub("batch_size: 16}", "batch_size: 16, early_stopping: {monitor: val_accuracy}}"),
     ["train.early_stopping.monitor", "val_acc"], "val_accuracy"),
    ("es-patience-zero", sub("batch_size: 16}", "batch_size: 16, early_stopping: {patience: 0}}"),
     ["train.early_stopping.patience", ">= 1"], "patience"),
    ("es-not-mapping", sub("batch_size: 16}", "batch_size: 16, early_stopping: 3}"),
     ["train.early_stopping", "mapping"], "early_stopping"),
    ("monitor-without-val", sub("dataset: mnist", "dataset: mnist\n  val_size: 0").replace(
        "batch_size: 16}", "batch_size: 16, checkpoint_monitor: val_loss}"),
     ["train.checkpoint_monitor", "val_size is 0"], "checkpoint_monitor"),
    ("label-smoothing-one", BASE + "loss: {label_smoothing: 1.0}\n", ["loss.label_smoothing", "[0.0, 1.0)"],
     "label_smoothing"),
    ("unknown-loss", BASE + "loss: {type: mse}\n", ["loss.type", "softmax_cross_entropy"], "mse"),
    ("softmax-int", BASE + "loss: {softmax: 3}\n", ["loss.softmax", "true or false"], "softmax: 3"),
    ("name-slash", sub("name: test", "name: ../../etc"), ["name", "folder name"], "name:"),
    ("name-dots", sub("name: test", "name: a..b"), ["name", "'..'"], "name:"),
    ("name-number", sub("name: test", "name: 12"), ["name", "a string"], "name:"),
    ("seed-negative", sub("seed: 0", "seed: -1"), ["seed", ">= 0"], "seed:"),
    ("seed-float", sub("seed: 0", "seed: 1.5"), ["seed", "integer"], "seed:"),
    ("duplicate-key", sub("lr: 0.1}", "lr: 0.1, lr: 0.2}"), ["optimizer.lr", "duplicate key 'lr'"], "lr: 0.2"),
    ("duplicate-section", BASE + "seed: 3\n", ["duplicate key 'seed'", "first at line 2"], "seed: 3"),
    ("python-tag", sub("name: test", "name: !!python/object/apply:os.system ['echo hi']"), ["tags"], "name:"),
    ("yaml-syntax", sub("{type: relu}", "{type: relu"), ["invalid YAML"], None),
    ("top-level-list", "- data\n- model\n", ["top level must be a mapping"], None),
    ("empty-file", "# nothing here\n", ["empty"], None),
    ("non-string-key", sub("seed: 0", "1: 0"), ["key 1 must be a string"], "1: 0"),
]


@pytest.mark.parametrize("text, expected, marker", [pytest.param(t, e, m, id=i) for i, t, e, m in BAD])
def test_bad_config_names_the_problem(tmp_path: Path, text: str, expected: list[str], marker: str | None) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in expected:
        assert fragment in message, (fragment, message)
    if marker is not None:
        line = next(n for n, row in enumerate(text.splitlines(), 1) if marker in row)
        assert info.value.line == line, message
        assert f", line {line}:" in message


@pytest.mark.parametrize("text, expected, marker", [pytest.param(t, e, m, id=i) for i, t, e, m in BAD])
def test_bad_config_through_the_cli_exits_2(tmp_path: Path, text: str, expected: list[str], marker: str | None) -> None:
    """The same bad configs given to the real `nntrain train` command: exit 2, the message, no traceback."""
    from click.testing import CliRunner

    from nntrain.cli import cli

    path = write(tmp_path, text)
    result = CliRunner().invoke(cli, ["train", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}")
    assert all(fragment in result.stderr for fragment in expected), result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # nothing was started


def test_there_are_at_least_thirty_distinct_bad_configs() -> None:
    assert len({text for _, text, _, _ in BAD}) >= 30


@pytest.mark.parametrize("p", ["1.0", "-0.1", "1.5", "half"])
def test_dropout_p_outside_unit_interval(tmp_path: Path, p: str) -> None:
    text = sub("{type: relu}", f"{{type: dropout, p: {p}}}")
    with pytest.raises(ConfigError, match=r"model\[2\]\.p"):
        load_config(write(tmp_path, text))


def test_conv_kernel_larger_than_input_is_a_shape_error(tmp_path: Path) -> None:
    text = sub("  - {type: flatten}\n", "  - {type: conv2d, out_channels: 4, kernel_size: 29}\n  - {type: flatten}\n")
    with pytest.raises(ShapeError) as info:
        load_config(write(tmp_path, text))
    assert info.value.path == "model[0].kernel_size"
    assert info.value.line == 6
    assert "larger than" in info.value.message


def test_kernel_fits_after_a_pool_only_if_small_enough(tmp_path: Path) -> None:
    """Shapes are inferred layer by layer: a 15x15 kernel fits 28x28 but not the 14x14 after pooling."""
    model = ("  - {type: conv2d, out_channels: 4, kernel_size: 15, stride: 1, padding: 0}\n"
             "  - {type: flatten}\n")
    assert load_config(write(tmp_path, sub("  - {type: flatten}\n", model)))["model"][0]["kernel_size"] == [15, 15]
    if "maxpool2d" in LAYERS:
        pooled = "  - {type: maxpool2d, kernel_size: 2}\n" + model
        with pytest.raises(ShapeError, match=r"model\[1\]\.kernel_size"):
            load_config(write(tmp_path, sub("  - {type: flatten}\n", pooled)))


def test_cifar_input_shape_is_used(tmp_path: Path) -> None:
    """The flatten output feeds linear: 3*32*32 for CIFAR-10, and the wrong-class error names the dataset."""
    cfg = load_config(write(tmp_path, sub("dataset: mnist", "dataset: cifar10")))
    assert cfg["data"]["dataset"] == "cifar10"
    with pytest.raises(ConfigError, match="cifar10 has 10 classes"):
        load_config(write(tmp_path, sub("dataset: mnist", "dataset: cifar10").replace("out_features: 10", "out_features: 3")))


# --- good configs -------------------------------------------------------------------------------
MINIMAL = """\
data: {dataset: mnist-mini}
model: [{type: flatten}, {type: linear, out_features: 10}]
optimizer: {type: sgd, lr: 0.5}
"""


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL, "my first config.yaml"))
    assert cfg["name"] == "my-first-config"  # the file stem, made usable as a folder name
    assert cfg["seed"] == 0
    assert cfg["data"] == {"dataset": "mnist-mini", "root": None, "val_size": 500, "normalize": True,
                           "download": True, "augment": []}
    assert cfg["model"] == [
        {"type": "flatten"},
        {"type": "linear", "out_features": 10, "bias": True, "weight_decay": 0.0, "init": "he_normal",
         "init_std": 0.01}]
    assert cfg["loss"] == {"type": "softmax_cross_entropy", "softmax": True, "label_smoothing": 0.0,
                           "class_weights": None}
    assert cfg["optimizer"]["type"] == "sgd" and cfg["optimizer"]["lr"] == 0.5
    assert cfg["optimizer"]["momentum"] == 0.0
    assert cfg["scheduler"] is None
    assert cfg["train"] == {"epochs": 10, "batch_size": 64, "eval_batch_size": 256, "tta": "none",
                            "checkpoint_monitor": "val_acc", "early_stopping": None}


def test_val_size_default_depends_on_dataset_and_monitors_fall_back_without_val(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL.replace("mnist-mini", "mnist")))
    assert cfg["data"]["val_size"] == 5000
    text = MINIMAL.replace("{dataset: mnist-mini}", "{dataset: mnist, val_size: 0}") + "train: {early_stopping: {}}\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg["train"]["checkpoint_monitor"] == "train_acc"
    assert cfg["train"]["early_stopping"] == {"monitor": "train_acc", "mode": "auto", "patience": 5,
                                              "min_delta": 0.0, "restore_best": True}


def test_exponent_floats_without_a_dot_are_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads `1e-4` as a string; configs read it as the number users mean."""
    cfg = load_config(write(tmp_path, MINIMAL.replace("lr: 0.5", "lr: 1e-3, weight_decay: 5E-4")))
    assert cfg["optimizer"]["lr"] == 1e-3 and cfg["optimizer"]["weight_decay"] == 5e-4


def _roundtrip(tmp_path: Path, cfg: dict) -> None:
    text = dump_config(cfg)
    assert validate_config(yaml.safe_load(text)) == cfg
    assert load_config(write(tmp_path, text, "other-name.yaml")) == cfg  # the name is kept, not the stem


def test_roundtrip_of_a_full_config(tmp_path: Path) -> None:
    text = BASE + ("scheduler: {type: multistep, milestones: [1, 2], gamma: 0.5}\n"
                   "loss: {label_smoothing: 0.1}\n").replace("epochs: 2", "epochs: 3")
    text = text.replace("type: sgd", "type: adam").replace(
        "batch_size: 16}", "batch_size: 16, early_stopping: {monitor: val_loss, patience: 2}}")
    cfg = load_config(write(tmp_path, text))
    assert cfg["optimizer"]["betas"] == [0.9, 0.999]
    assert cfg["scheduler"]["milestones"] == [1, 2]
    _roundtrip(tmp_path, cfg)


def test_roundtrip_of_a_cnn_with_pairs_dumped_as_lists(tmp_path: Path) -> None:
    model = ("  - {type: conv2d, out_channels: 8, kernel_size: 3, stride: 1, padding: [1, 1]}\n"
             "  - {type: relu}\n  - {type: maxpool2d, kernel_size: 2}\n  - {type: flatten}\n")
    cfg = load_config(write(tmp_path, sub("  - {type: flatten}\n", model)))
    conv = cfg["model"][0]
    assert conv["kernel_size"] == [3, 3] and conv["padding"] == [1, 1] and conv["stride"] == [1, 1]
    assert "tuple" not in dump_config(cfg)
    _roundtrip(tmp_path, cfg)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_roundtrip(tmp_path: Path, path: Path) -> None:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        if "not available in this version" in e.message:
            pytest.skip(e.message)
        raise
    assert cfg["name"]
    _roundtrip(tmp_path, cfg)


def test_validate_config_on_a_dict() -> None:
    raw = yaml.safe_load(BASE)
    cfg = validate_config(raw)
    assert cfg["name"] == "test" and cfg["train"]["epochs"] == 2
    del raw["name"]
    with pytest.raises(ConfigError, match="missing 'name'"):
        validate_config(raw)
    assert validate_config(raw, source="runs/x/cnn.yaml")["name"] == "cnn"
    with pytest.raises(ConfigError, match="mapping of sections"):
        validate_config([1, 2])  # type: ignore[arg-type]


# --- overrides ----------------------------------------------------------------------------------
def test_overrides_set_values_parsed_as_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    cfg = load_config(path, ["optimizer.lr=0.01", "model[1].out_features=64", "train.epochs=5",
                             "data.augment=[]", "scheduler.type=step", "scheduler.step_size=2",
                             "train.early_stopping.patience=3", "name=other"])
    assert cfg["optimizer"]["lr"] == 0.01
    assert cfg["model"][1]["out_features"] == 64
    assert cfg["train"]["epochs"] == 5
    assert cfg["scheduler"]["type"] == "step" and cfg["scheduler"]["step_size"] == 2
    assert cfg["train"]["early_stopping"]["patience"] == 3
    assert cfg["name"] == "other"
    cfg = load_config(path, ["optimizer={type: adam, lr: 1e-3}", "scheduler=null", "train.early_stopping="])
    assert cfg["optimizer"]["type"] == "adam" and cfg["optimizer"]["lr"] == 1e-3
    assert cfg["scheduler"] is None and cfg["train"]["early_stopping"] is None


def test_later_overrides_win_and_input_is_not_modified() -> None:
    raw = yaml.safe_load(BASE)
    out = apply_overrides(raw, ["optimizer.lr=0.3", "optimizer.lr=0.4", "model[1].out_features=5"])
    assert out["optimizer"]["lr"] == 0.4 and out["model"][1]["out_features"] == 5
    assert raw == yaml.safe_load(BASE)


@pytest.mark.parametrize("override, fragment", [
    ("optimizer.lr", "no '='"),
    ("=3", "not a key path"),
    ("model[x].p=0.3", "not a key path"),
    ("optimizer..lr=1", "not a key path"),
    ("model[9].p=0.3", "valid indices 0..3"),
    ("optimizer[0]=1", "not a list"),
    ("optimizer.lr.x=1", "not a mapping"),
    ("optimizer.lr=[1,", "the value is not valid"),
    ("optimizer.lr=!!python/name:os.system", "tags"),
])
def test_bad_override_syntax_or_path(tmp_path: Path, override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), [override])
    assert fragment in str(info.value)
    if "=" in override:
        assert repr(override) in str(info.value)


@pytest.mark.parametrize("override, path", [
    ("optimizer.lrr=0.1", "optimizer.lrr"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("model[2].type=relux", "model[2].type"),
    ("train.early_stopping.monitor=accuracy", "train.early_stopping.monitor"),
    ("dataa.dataset=mnist", "dataa"),
])
def test_invalid_value_from_override_names_the_override(tmp_path: Path, override: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), [override])
    assert info.value.path == path
    assert f"override '{override}'" in str(info.value)
    assert info.value.line is None  # the value is not on any line of the file


def test_docs_config_md_is_the_generated_reference() -> None:
    """docs/config.md is `nntrain print-config --explain`: every declared option is documented, and the
    file cannot drift from the code (regenerate it with that command)."""
    from nntrain.config.explain import explain
    from nntrain.nn.optim import OPTIMIZERS

    text = explain()
    assert (REPO / "docs" / "config.md").read_text(encoding="utf-8") == text
    for name, cls in [*LAYERS.items(), *OPTIMIZERS.items()]:
        assert f"### `{name}`" in text
        assert all(f"| `{key}`" in text for key in cls.options)
    assert re.search(r"\| `train.early_stopping.patience` +\| int +\| `5` +\|", text)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_takes_a_one_epoch_smoke_run(path: Path, caplog) -> None:
    """`-s train.epochs=1` is the first thing people try: it resolves for every shipped config (a warmup
    longer than the run is shortened, with a warning that says so)."""
    cfg = load_config(path, ["train.epochs=1"])
    assert cfg["train"]["epochs"] == 1
    if cfg["scheduler"] and "warmup_epochs" in cfg["scheduler"]:
        assert cfg["scheduler"]["warmup_epochs"] == 0
        if load_config(path)["scheduler"]["warmup_epochs"] > 0:
            assert "warmup shortened to 0" in caplog.text


def test_every_mistake_of_a_file_is_reported_in_one_pass(tmp_path: Path) -> None:
    """Independent sections are all checked: a typo in data, a bad lr and zero epochs come together,
    each with its own line and key path (the first names the error's path and line)."""
    text = ("name: bad\ndata: {dataset: mnist-mini, val_sise: 3}\nmodel:\n  - {type: flatten}\n"
            "  - {type: linear, out_features: 10}\noptimizer: {type: sgd, lr: -1}\ntrain: {epochs: 0}\n")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith("3 problems in the config:")
    assert f"{path}, line 2: data.val_sise: unknown key" in msg
    assert f"{path}, line 6: optimizer.lr: got -1" in msg and f"{path}, line 7: train.epochs: got 0" in msg
    assert (e.value.path, e.value.line) == ("data.val_sise", 2)
    # with a good data section the model is checked too, beside the optimizer and train sections
    path.write_text(text.replace(", val_sise: 3", "").replace("out_features: 10", "out_features: 7"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith("3 problems") and "model[1]: the last layer outputs shape (7,)" in str(e.value)


def test_best_checkpoint_follows_the_early_stopping_metric(tmp_path: Path) -> None:
    """Early stopping on val_loss keeps best.npz by val_loss too, unless checkpoint_monitor says otherwise."""
    base = ("data: {dataset: mnist-mini}\nmodel: [{type: flatten}, {type: linear, out_features: 10}]\n"
            "optimizer: {type: sgd, lr: 0.1}\n")
    path = tmp_path / "c.yaml"
    path.write_text(base + "train: {early_stopping: {monitor: val_loss}}\n")
    assert load_config(path)["train"]["checkpoint_monitor"] == "val_loss"
    path.write_text(base + "train: {checkpoint_monitor: val_acc, early_stopping: {monitor: val_loss}}\n")
    assert load_config(path)["train"]["checkpoint_monitor"] == "val_acc"
    path.write_text(base)
    assert load_config(path)["train"]["checkpoint_monitor"] == "val_acc"
