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


# --- the numbers, against a hand computation ------------------------------------------------------------------

def _hand_forward(x: np.ndarray, P: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """linear 3->4, relu, linear 4->2 in plain NumPy: (pre-activation h, relu output a, logits z)."""
    h = x @ P["W1"] + P["b1"]
    a = np.maximum(h, 0.0)
    return h, a, a @ P["W2"] + P["b2"]


def _hand_grads(x: np.ndarray, y: np.ndarray, P: dict, lam1: float, lam2: float) -> dict:
    """The gradient of the batch's mean softmax cross-entropy, backpropagated by hand, with the per-layer
    L2 terms λW of the two weight matrices (not the biases)."""
    h, a, z = _hand_forward(x, P)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    dz = (p - np.eye(z.shape[1])[y]) / len(y)
    da = dz @ P["W2"].T
    dh = da * (h > 0)
    return {"W1": x.T @ dh + lam1 * P["W1"], "b1": dh.sum(axis=0),
            "W2": a.T @ dz + lam2 * P["W2"], "b2": dz.sum(axis=0)}


def _hand_step(P: dict, G: dict, S: dict, t: int, lr: float, opt: dict) -> dict:
    """One optimizer step t (from 1) by hand, torch's rules: updates the state S in place and returns Δθ."""
    delta = {}
    for k in P:
        d = G[k] + opt["weight_decay"] * P[k]
        if opt["type"] == "sgd":
            S[k] = d.copy() if t == 1 else opt["momentum"] * S[k] + d
            delta[k] = -lr * S[k]
        else:
            b1, b2 = opt["betas"]
            m, v = S.get(k, (0.0, 0.0))
            m, v = b1 * m + (1 - b1) * d, b2 * v + (1 - b2) * d * d
            S[k] = (m, v)
            delta[k] = -lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + opt["eps"])
    return delta


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt_spec", [
    {"type": "sgd", "lr": 0.3, "momentum": 0.9, "weight_decay": 0.01},
    {"type": "adam", "lr": 0.02, "betas": [0.8, 0.9], "eps": 1e-8, "weight_decay": 0.01}], ids=["sgd", "adam"])
def test_health_rows_match_a_hand_computation(opt_spec: dict, dtype: type) -> None:
    """Two epochs of a real Trainer with the TrainingHealth callback on a tiny net (linear 3->4, relu,
    linear 4->2; per-layer weight decay on both weights, optimizer weight decay, a step schedule that halves
    the lr after each epoch): every number of every health row equals the plain-NumPy computation of the
    README's definitions: ‖g‖ over W and b together of the mean gradient of the sample's batches, ‖w‖, and
    ‖Δw‖/‖w‖ of one optimizer step from that gradient with the epoch's lr and the optimizer's current state;
    relu mean/std over every output value and the fraction of its units never positive on the sample; the
    model row's global norms."""
    from nntrain.data.prepare import PreparedData
    from nntrain.data.registry import DatasetInfo
    from nntrain.nn.losses import build_loss
    from nntrain.nn.model import build_model
    from nntrain.nn.optim import build_optimizer
    from nntrain.nn.schedulers import build_scheduler
    from nntrain.training.health import TrainingHealth
    from nntrain.training.trainer import Parts, Trainer

    seed, batch, epochs, lam1, lam2, gamma = 5, 4, 2, 0.05, 0.02, 0.5
    gen = np.random.default_rng(1)
    images = gen.integers(0, 256, size=(10, 3, 1, 1), dtype=np.uint8)   # 10 images: 3 training batches (4, 4, 2)
    labels = gen.integers(0, 2, size=10).astype(np.int64)
    mean, std = np.array([0.4, 0.5, 0.6], np.float32), np.array([0.3, 0.25, 0.2], np.float32)
    empty = np.zeros((0, 3, 1, 1), np.uint8), np.zeros(0, np.int64)
    info = DatasetInfo(name="tiny", input_shape=(3, 1, 1), num_classes=2, class_names=("a", "b"), num_train=10,
                       num_test=0)
    data = PreparedData(info, images, labels, *empty, *empty, mean, std)
    model = build_model([{"type": "flatten"}, {"type": "linear", "out_features": 4, "weight_decay": lam1},
                         {"type": "relu"}, {"type": "linear", "out_features": 2, "weight_decay": lam2}],
                        (3, 1, 1), seed=seed, dtype=dtype)
    model.layers[1].params["b"][3] = -20.0   # hidden unit 3 never fires: dead 1/4 at least
    model.layers[1].params["b"][:3] = 0.1
    optimizer = build_optimizer(opt_spec, list(model.parameters()))
    parts = Parts(model=model, loss=build_loss(), optimizer=optimizer,
                  scheduler=build_scheduler({"type": "step", "step_size": 1, "gamma": gamma}, optimizer, epochs),
                  augment=None, shuffle_rng=np.random.default_rng(seed + 100), augment_rng=np.random.default_rng(0))
    P = {"W1": model.layers[1].params["W"], "b1": model.layers[1].params["b"],
         "W2": model.layers[3].params["W"], "b2": model.layers[3].params["b"]}
    P = {k: v.astype(np.float64) for k, v in P.items()}   # the initial weights; from here on all by hand
    health = TrainingHealth(None, seed)   # as the runner adds it: 2 sample batches
    trainer = Trainer(parts, data, epochs=epochs, batch_size=batch, eval_batch_size=batch, callbacks=[health],
                      progress=False)
    trainer.run()

    def normalised(idx: np.ndarray) -> np.ndarray:   # as the loader converts: float32 x/255, − mean, / std
        x = np.divide(images[idx], np.float32(255), dtype=np.float32)
        return ((x - mean[:, None, None]) / std[:, None, None]).reshape(len(idx), 3).astype(np.float64)

    # the sample: 2 batches (8 of the 10 images), drawn once from the seed's `health` stream (number 103), sorted
    pick = np.sort(np.random.default_rng([seed, 103]).choice(10, size=8, replace=False))
    sample = [(normalised(pick[:4]), labels[pick[:4]]), (normalised(pick[4:]), labels[pick[4:]])]
    assert len(health.sample) == 2
    for (x, y), (xs, ys) in zip(sample, health.sample):
        np.testing.assert_array_equal(ys, y)
        np.testing.assert_allclose(xs.reshape(len(ys), 3), x, rtol=1e-6)

    rtol = 1e-6 if dtype == np.float64 else 1e-5
    shuffle, S, t, lr = np.random.default_rng(seed + 100), {}, 0, opt_spec["lr"]
    for epoch in range(1, epochs + 1):
        order = shuffle.permutation(10)   # the epoch's training batches, one step each
        for start in range(0, 10, batch):
            idx = order[start:start + batch]
            t += 1
            G = _hand_grads(normalised(idx), labels[idx], P, lam1, lam2)
            for k, d in _hand_step(P, G, S, t, lr, opt_spec).items():
                P[k] = P[k] + d
        # the health measurement after the epoch: the mean of the sample batches' gradients, one step of
        # the optimizer from its state now (copied: the real step is undone) at the epoch's lr
        Gs = [_hand_grads(x, y, P, lam1, lam2) for x, y in sample]
        g = {k: (Gs[0][k] + Gs[1][k]) / 2 for k in P}
        delta = _hand_step(P, g, {k: v for k, v in S.items()}, t + 1, lr, opt_spec)
        relu = np.concatenate([_hand_forward(x, P)[1] for x, _ in sample])   # (8, 4)

        def norm(d: dict, keys: tuple) -> float:
            return float(np.sqrt(sum(np.sum(d[k] ** 2) for k in keys)))

        expected = {}
        for layer, keys in (("1", ("W1", "b1")), ("3", ("W2", "b2")), ("model", tuple(P))):
            expected[layer] = {"grad_norm": norm(g, keys), "weight_norm": norm(P, keys),
                               "update_ratio": norm(delta, keys) / norm(P, keys)}
        expected["2"] = {"mean": relu.mean(), "std": relu.std(), "dead": float(np.mean(~(relu > 0).any(axis=0)))}
        assert expected["2"]["dead"] >= 0.25 and expected["2"]["std"] > 0

        rows = {r["layer"]: r for r in health.rows if r["epoch"] == epoch}
        assert list(rows) == ["1", "3", "2", "model"]
        assert [rows[n]["type"] for n in ("1", "3", "2", "model")] == ["linear", "linear", "relu", "model"]
        for layer, values in expected.items():
            for key, value in values.items():
                assert rows[layer][key] == pytest.approx(value, rel=rtol, abs=1e-12), (epoch, layer, key)
            others = set(COLUMNS) - set(values) - {"epoch", "layer", "type", "warning"}
            assert all(rows[layer][k] is None for k in others), (layer, rows[layer])
        lr *= gamma   # the step schedule, after the epoch
    # the measurement left training alone: the model's weights are the hand-trained ones
    for k, (i, name) in {"W1": (1, "W"), "b1": (1, "b"), "W2": (3, "W"), "b2": (3, "b")}.items():
        assert model.layers[i].params[name].dtype == dtype
        np.testing.assert_allclose(model.layers[i].params[name], P[k], rtol=rtol, atol=1e-12, err_msg=k)
    assert optimizer.lr == pytest.approx(opt_spec["lr"] * gamma ** epochs)
