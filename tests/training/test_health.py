"""Training health: health.csv and plots/health.png after every epoch, results untouched by measuring,
and the warnings each kind of broken run gets in log.txt."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from conftest import png_size, tiny_config
from nntrain.config import validate_config
from nntrain.training.callbacks import Callback
from nntrain.training.checkpoint import load_checkpoint
from nntrain.training.health import COLUMNS, ActivationStats, health_warnings, leaf_layers

# conv, batchnorm, dropout and a residual block with a nested relu, trained by Adam: everything the health
# pass could disturb (Generators, running statistics, grads, optimizer moments)
SMALL_NET = [
    {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1},
    {"type": "relu"},
    {"type": "residual", "body": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1, "bias": False},
        {"type": "batchnorm"}, {"type": "relu"},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}]},
    {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "flatten"},
    {"type": "dropout", "p": 0.2},
    {"type": "linear", "out_features": 10},
]


def _train(tmp_path: Path, name: str, **changes) -> Path:
    from nntrain.training.runner import train

    folder, _ = train(validate_config(tiny_config(**changes)), run_dir=tmp_path / name, progress=False)
    return folder


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _warnings(run: Path) -> str:
    return "\n".join(line for line in (run / "log.txt").read_text().splitlines() if " WARNING " in line)


def test_health_changes_nothing_and_writes_csv_and_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    changes = dict(model=SMALL_NET, optimizer={"type": "adam", "lr": 0.003}, train__epochs=2)
    with_health = _train(tmp_path, "with", **changes)
    import nntrain.training.runner as runner

    monkeypatch.setattr(runner, "TrainingHealth", lambda folder, seed: Callback())
    without = _train(tmp_path, "without", **changes)
    assert not (without / "health.csv").exists()

    def metrics(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(run / "metrics.csv")]

    assert metrics(with_health) == metrics(without)   # bit-identical: the same text
    a, b = (load_checkpoint(run / "checkpoints" / "last.npz") for run in (with_health, without))
    for key in a.params:
        assert np.array_equal(a.params[key], b.params[key]), key
    for key in a.optim:
        assert np.array_equal(a.optim[key], b.optim[key]), key
    assert a.meta["rng"] == b.meta["rng"]

    rows = _rows(with_health / "health.csv")
    assert list(rows[0]) == list(COLUMNS)
    epoch1 = [r for r in rows if r["epoch"] == "1"]
    assert [r["epoch"] for r in rows].count("2") == len(epoch1)
    layers = {r["layer"]: r for r in epoch1}
    # parameterised layers (nested ones by their parameter path), activations (nested too), the model row
    assert {"0", "2.body.0", "2.body.1", "2.body.3", "7", "1", "2.body.2", "3", "model"} <= set(layers)
    assert layers["2.body.1"]["type"] == "batchnorm" and layers["2.body.2"]["type"] == "relu"
    for name in ("0", "2.body.0", "7", "model"):
        r = layers[name]
        assert float(r["grad_norm"]) > 0 and float(r["weight_norm"]) > 0
        assert 0 < float(r["update_ratio"]) < 1
        assert r["mean"] == r["dead"] == ""
    for name in ("1", "2.body.2", "3"):
        r = layers[name]
        assert float(r["mean"]) > 0 and float(r["std"]) > 0 and 0 <= float(r["dead"]) <= 1
        assert r["grad_norm"] == ""
    w, h = png_size(with_health / "plots" / "health.png")
    assert w > 600 and h > 400
    # the rows travel in the checkpoint, so a resumed run keeps the earlier epochs'
    assert len(a.meta["callbacks"]["health"]["rows"]) == len(rows)


def test_dead_units_and_activation_moments() -> None:
    stats = ActivationStats()
    y = np.array([[0.0, 1.0, 0.0], [0.0, 3.0, 2.0]], np.float32)
    stats.add(y, dead_units=True)
    stats.add(np.zeros((1, 3), np.float32), dead_units=True)
    row = stats.row()
    assert row["dead"] == pytest.approx(1 / 3)      # unit 0 never fires
    assert row["mean"] == pytest.approx(6 / 9)
    assert row["std"] == pytest.approx(np.std(np.concatenate([y.ravel(), np.zeros(3)])))
    images = np.zeros((2, 3, 2, 2), np.float32)     # a unit of an image output is a channel
    images[1, 0, 1, 1] = 1.0
    conv = ActivationStats()
    conv.add(images, dead_units=True)
    assert conv.row()["dead"] == pytest.approx(2 / 3)


def test_leaf_layers_names_follow_parameter_names() -> None:
    from nntrain.nn.model import build_model

    model = build_model(SMALL_NET, (1, 28, 28))
    leaves = dict(leaf_layers(model.layers))
    param_prefixes = {name.rsplit(".", 1)[0] for name, _, _ in model.parameters()}
    assert param_prefixes == {n for n, layer in leaves.items() if layer.params}


def test_warning_rules() -> None:
    def row(epoch: int, loss: float, acc: float = 0.9) -> dict:
        return {"epoch": epoch, "lr": 0.1, "train_loss": loss, "train_acc": acc, "val_acc": acc}

    layers = [{"layer": "0", "type": "linear", "grad_norm": 1.0}, {"layer": "2", "type": "linear", "grad_norm": 2.0},
              {"layer": "model", "type": "model", "grad_norm": 2.2}]
    assert health_warnings(layers, [row(1, 0.5), row(2, 0.3)], 10, 0.1) == []
    explode = health_warnings(layers, [row(1, 0.5), row(2, 6.0)], 10, 0.1)
    assert [w[0] for w in explode] == ["model"] and "exploding" in explode[0][1] and "lower the learning rate" in \
        explode[0][1].lower()
    assert health_warnings(layers, [row(1, 7.5)], 10, 0.1)[0][1].count("exploding") == 1   # > 3 ln 10 at once
    assert health_warnings(layers, [row(1, 7.5), row(2, 7.0)], 10, 0.1) == []   # high but falling, < 10x
    assert health_warnings(layers, [row(1, 0.5), row(2, float("nan"))], 10, 0.1) == []   # NaN: the trainer's stop
    vanishing = [{**layers[0], "grad_norm": 1e-5}, layers[1]]
    assert "vanishing" in health_warnings(vanishing, [row(1, 0.5)], 10, 0.1)[0][1]
    dead = layers + [{"layer": "1", "type": "relu", "dead": 0.6}]
    (name, text), = health_warnings(dead, [row(1, 0.5)], 10, 0.1)
    assert name == "1" and "60% of the units of layer 1 (relu) are dead" in text
    chance = health_warnings(layers, [row(1, 2.3, acc=0.115)], 10, 0.1)
    assert len(chance) == 1 and "chance" in chance[0][1]


@pytest.mark.parametrize("case", ["explode", "dead", "vanish", "chance"])
def test_broken_runs_are_told_in_plain_words(tmp_path: Path, case: str) -> None:
    if case == "explode":   # lr=50: the loss reaches 1e16+ without a NaN, accuracy ~10%, exit 0
        run = _train(tmp_path, case, optimizer={"type": "sgd", "lr": 50.0}, train__epochs=1)
        expected = ["the training loss is exploding", "Lower the learning rate (this epoch's was 50)"]
    elif case == "dead":   # a very high lr kills the relus
        run = _train(tmp_path, case, optimizer={"type": "sgd", "lr": 2.0}, train__epochs=1)
        expected = ["of the units of layer 2 (relu) are dead", "leaky_relu"]
    elif case == "vanish":   # 12 sigmoid layers: the first layer's gradient is ~1e-7 of the last's
        model = [{"type": "flatten"}] + [
            layer for _ in range(12)
            for layer in ({"type": "linear", "out_features": 32, "init": "xavier_normal"}, {"type": "sigmoid"})]
        run = _train(tmp_path, case, model=model + [{"type": "linear", "out_features": 10}], train__epochs=1)
        expected = ["vanishing gradients: the first layer 1 (linear)", "batchnorm"]
    else:   # all-zero weights: the hidden relus never fire, the logits are the output bias, the same class for all
        model = [{"type": "flatten"}, {"type": "linear", "out_features": 16, "init": "zeros"}, {"type": "relu"},
                 {"type": "linear", "out_features": 10, "init": "zeros"}]
        run = _train(tmp_path, case, model=model, optimizer={"type": "sgd", "lr": 1e-9}, train__epochs=1)
        expected = ["is at chance level (1/10 = 0.100)", "the model is not learning"]
    text = _warnings(run)
    for phrase in expected:
        assert phrase in text, text
    flagged = [r for r in _rows(run / "health.csv") if r["warning"]]
    assert flagged and all(message in text for r in flagged for message in r["warning"].split(" | "))


def test_a_resumed_run_keeps_and_continues_its_health_rows(tmp_path: Path) -> None:
    from nntrain.training.runner import train
    from nntrain.training.trainer import Interrupted

    cfg = validate_config(tiny_config(optimizer={"type": "adam", "lr": 0.003}, train__epochs=2))
    whole, _ = train(cfg, run_dir=tmp_path / "whole", progress=False)

    def stop_inside_epoch_2(trainer, folder) -> None:   # type: ignore[no-untyped-def]
        step = trainer.parts.optimizer.step

        def counted() -> None:
            step()
            if trainer.state.epoch == 1 and trainer.state.batch == 2:
                trainer.stop_requested = True

        trainer.parts.optimizer.step = counted

    with pytest.raises(Interrupted):
        train(cfg, run_dir=tmp_path / "cut", progress=False, on_start=stop_inside_epoch_2)
    assert [r["epoch"] for r in _rows(tmp_path / "cut" / "health.csv")][-1] == "1"
    train(cfg, resume=tmp_path / "cut", progress=False)
    assert _rows(tmp_path / "cut" / "health.csv") == _rows(whole / "health.csv")   # every value, to the bit
