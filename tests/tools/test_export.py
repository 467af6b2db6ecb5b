"""`nntrain export`: a model as one ONNX graph. onnxruntime's outputs on raw pixels in [0, 1] equal
nntrain's evaluation forward on the same pixels normalised as nntrain normalises them (1e-5 relative),
for every registered layer type, residual blocks, every shipped config's model, opsets 13, 17 and 20
and batches of 1, 3 and 17; a CNN trained on mnist-mini classifies the test set image for image as
nntrain's evaluate does."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from conftest import REPO, SHIPPED_CONFIGS, run_cli, tiny_config, write_config
from nntrain.errors import NNTrainError
from nntrain.nn.layers import LAYERS, Layer
from nntrain.nn.model import Model, build_model
from nntrain.tools import export as export_mod
from nntrain.tools.export import EXPORTERS, INPUT_LAYOUT, to_onnx

BATCHES = (1, 3, 17)
OPSETS = (13, 17, 20)


@pytest.fixture(scope="module")
def rt() -> Any:
    """onnx and onnxruntime, or a skip saying how to install them."""
    hint = 'the onnx extra is not installed: pip install "nntrain[onnx]"'
    onnx = pytest.importorskip("onnx", reason=hint)
    ort = pytest.importorskip("onnxruntime", reason=hint)
    return onnx, ort


def session(rt: Any, proto: Any) -> Any:
    """A one-thread onnxruntime session on the CPU for a ModelProto."""
    ort = rt[1]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def normalised(pixels: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """(pixels - mean) / std per channel in float32, as nntrain's batches are made."""
    x = pixels.copy()
    if mean is not None:
        x -= mean.astype(np.float32).reshape(1, -1, 1, 1)
    if std is not None:
        x /= std.astype(np.float32).reshape(1, -1, 1, 1)
    return x


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """1e-5 relative, with an absolute floor of 1e-5·max|want| (float32 sums in another order)."""
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(float(np.abs(want).max()), 1e-30))


def randomise(model: Model, rng: np.random.Generator) -> None:
    """Biases, batchnorm affine parameters and running statistics away from their initial 0 / 1, so that
    every one of them is exercised (the weights keep their own random initialisation)."""
    for name, p, _ in model.parameters():
        key = name.rsplit(".", 1)[-1]
        if key in ("b", "beta"):
            p[...] = rng.normal(0.0, 0.2, p.shape)
        elif key == "gamma":
            p[...] = rng.uniform(0.5, 1.5, p.shape)
    for name, buf in model.buffers():
        if name.endswith("running_mean"):
            buf[...] = rng.normal(0.0, 0.3, buf.shape)
        elif name.endswith("running_var"):
            buf[...] = rng.uniform(0.5, 2.0, buf.shape)


def check_against_nntrain(rt: Any, model: Model, mean: np.ndarray | None, std: np.ndarray | None,
                          opset: int = 17, seed: int = 0) -> Any:
    """Export `model`, check the graph (full check), and compare onnxruntime with nntrain's evaluation
    forward on random pixels at each batch size; returns the ModelProto."""
    onnx = rt[0]
    proto = to_onnx(model, mean, std, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    sess = session(rt, proto)
    rng = np.random.default_rng(seed)
    for n in BATCHES:
        pixels = rng.random((n, *model.input_shape), dtype=np.float32)
        (got,) = sess.run(None, {"pixels": pixels})
        assert_close(got, model.forward(normalised(pixels, mean, std), train=False))
    return proto


def random_norm(channels: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std on the [0, 1] scale, as a run's statistics are (float64, as checkpoints hold them)."""
    return rng.uniform(0.3, 0.7, channels), rng.uniform(0.15, 0.35, channels)


# --- every layer type -------------------------------------------------------------------------------
def conv(out: int, k: Any = 3, **kw: Any) -> dict:
    return {"type": "conv2d", "out_channels": out, "kernel_size": k, **kw}


# case id -> (per-sample input shape, layer specs). Normalised pixels are negative as well as positive,
# so relu's kink, leaky_relu's slope and max-pool's -inf padding all matter.
LAYER_CASES: dict[str, tuple[tuple[int, int, int], list[dict]]] = {
    "linear": ((1, 6, 5), [{"type": "flatten"}, {"type": "linear", "out_features": 7}]),
    "linear-no-bias": ((2, 3, 3), [{"type": "flatten"}, {"type": "linear", "out_features": 4, "bias": False}]),
    "conv2d": ((3, 9, 8), [conv(4)]),
    "conv2d-stride-padding-rect": ((2, 11, 9), [conv(5, [3, 2], stride=[2, 1], padding=[1, 0])]),
    "conv2d-1x1-no-bias": ((3, 7, 7), [conv(6, 1, stride=2, bias=False)]),
    "maxpool2d": ((3, 8, 8), [{"type": "maxpool2d", "kernel_size": 2}]),
    "maxpool2d-padding-stride": ((2, 9, 7), [{"type": "maxpool2d", "kernel_size": 3, "stride": 2, "padding": 1}]),
    "maxpool2d-rect": ((2, 7, 9), [{"type": "maxpool2d", "kernel_size": [2, 3], "stride": [1, 2], "padding": [1, 1]}]),
    "avgpool2d": ((3, 8, 6), [{"type": "avgpool2d", "kernel_size": 2}]),
    "avgpool2d-padding": ((2, 9, 7), [{"type": "avgpool2d", "kernel_size": 3, "stride": 2, "padding": 1}]),
    "avgpool2d-rect": ((2, 7, 9), [{"type": "avgpool2d", "kernel_size": [2, 3], "stride": [1, 2], "padding": [1, 1]}]),
    "batchnorm-2d": ((3, 5, 5), [conv(4, padding=1), {"type": "batchnorm", "eps": 1e-3}]),
    "batchnorm-1d": ((1, 4, 4), [{"type": "flatten"}, {"type": "batchnorm"}]),
    "relu": ((2, 5, 5), [{"type": "relu"}]),
    "relu-maxpool": ((2, 6, 6), [conv(3, padding=1), {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}]),
    "leaky_relu": ((2, 5, 5), [{"type": "leaky_relu", "slope": 0.2}]),
    "sigmoid": ((2, 5, 5), [{"type": "sigmoid"}]),
    "tanh": ((2, 5, 5), [{"type": "tanh"}]),
    "gelu": ((2, 5, 5), [conv(3, padding=1), {"type": "gelu"}]),
    "gelu-tanh": ((2, 5, 5), [conv(3, padding=1), {"type": "gelu", "approximate": "tanh"}]),
    "softmax": ((1, 4, 4), [{"type": "flatten"}, {"type": "linear", "out_features": 6}, {"type": "softmax"}]),
    "dropout": ((1, 4, 4), [{"type": "dropout", "p": 0.5}, {"type": "flatten"},
                            {"type": "linear", "out_features": 3}, {"type": "dropout"}]),
    "dropout-only": ((1, 3, 3), [{"type": "dropout"}]),
    "flatten": ((3, 4, 5), [{"type": "flatten"}]),
    "global_avgpool": ((3, 5, 7), [conv(4, padding=1), {"type": "global_avgpool"},
                                   {"type": "linear", "out_features": 3}]),
    "residual-identity": ((4, 6, 6), [
        {"type": "residual", "body": [conv(4, padding=1), {"type": "batchnorm"}, {"type": "relu"}, conv(4, padding=1)]},
        {"type": "relu"}]),
    "residual-projection": ((3, 8, 8), [
        {"type": "residual",
         "body": [conv(8, stride=2, padding=1, bias=False), {"type": "batchnorm"}, {"type": "relu"},
                  conv(8, padding=1, bias=False), {"type": "batchnorm"}],
         "shortcut": [conv(8, 1, stride=2, bias=False), {"type": "batchnorm"}]},
        {"type": "relu"}, {"type": "flatten"}, {"type": "linear", "out_features": 5}]),
    "residual-nested-relu-maxpool": ((3, 6, 6), [
        {"type": "residual", "body": [
            {"type": "residual", "body": [conv(3, padding=1), {"type": "relu"},
                                          {"type": "maxpool2d", "kernel_size": 3, "stride": 1, "padding": 1}]},
            {"type": "dropout"}]}]),
    "residual-only-dropout": ((2, 4, 4), [{"type": "residual", "body": [{"type": "dropout"}]}]),
}


def spec_types(specs: list[dict]) -> Iterator[str]:
    """Every layer type named in `specs`, inside blocks' branches too."""
    for spec in specs:
        yield spec["type"]
        for branch in ("body", "shortcut"):
            yield from spec_types(spec.get(branch) or [])


def case_params() -> list[Any]:
    """(case id, opset) for every case; cases naming a layer type this nntrain lacks are skipped."""
    out = []
    for case, (_, specs) in LAYER_CASES.items():
        missing = sorted(set(spec_types(specs)) - set(LAYERS))
        marks = [pytest.mark.skip(reason=f"layer type {missing} not registered")] if missing else []
        out += [pytest.param(case, opset, id=f"{case}-opset{opset}", marks=marks) for opset in OPSETS]
    return out


def test_every_registered_layer_type_has_an_exporter_and_a_test_case():
    covered = {t for _, specs in LAYER_CASES.values() for t in spec_types(specs)}
    registered = set(LAYERS)
    no_exporter = sorted(registered - set(EXPORTERS))
    assert not no_exporter, f"layer types without an ONNX exporter: {no_exporter}"
    assert not registered - covered, f"layer types without an export test case: {sorted(registered - covered)}"


@pytest.mark.parametrize("case, opset", case_params())
def test_layer_case_matches_nntrain_in_onnxruntime(rt, case, opset):
    shape, specs = LAYER_CASES[case]
    rng = np.random.default_rng(len(case))
    model = build_model(specs, shape, seed=3)
    randomise(model, rng)
    check_against_nntrain(rt, model, *random_norm(shape[0], rng), opset=opset)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_is_the_gelu_operator_from_opset_20_and_its_formula_before(rt, approximate):
    model = build_model([{"type": "gelu", "approximate": approximate}], (1, 3, 3))
    ops = {opset: [n.op_type for n in to_onnx(model, opset=opset).graph.node] for opset in OPSETS}
    assert ops[20] == ["Gelu"]
    expected = "Tanh" if approximate == "tanh" else "Erf"
    for opset in (13, 17):
        assert "Gelu" not in ops[opset] and expected in ops[opset]
    gelu = next(n for n in to_onnx(model, opset=20).graph.node if n.op_type == "Gelu")
    assert [a.s.decode() for a in gelu.attribute if a.name == "approximate"] == [approximate]


def test_pools_and_batchnorm_use_the_operators_that_match_nntrain(rt):
    model = build_model([{"type": "avgpool2d", "kernel_size": 3, "padding": 1}, {"type": "maxpool2d", "kernel_size": 2},
                         {"type": "batchnorm"}, {"type": "flatten"}, {"type": "batchnorm"}, {"type": "dropout"}],
                        (2, 6, 6))
    nodes = to_onnx(model).graph.node
    avg = next(n for n in nodes if n.op_type == "AveragePool")
    assert {a.name: a.i for a in avg.attribute if a.name == "count_include_pad"} == {"count_include_pad": 1}
    assert [n.op_type for n in nodes].count("BatchNormalization") == 2   # 1-D via Unsqueeze ... Flatten
    assert "Dropout" not in [n.op_type for n in nodes]


def test_initializers_carry_the_models_parameter_names(rt):
    shape, specs = LAYER_CASES["residual-projection"] if "residual" in LAYERS else LAYER_CASES["batchnorm-2d"]
    model = build_model(specs, shape)
    names = {t.name for t in to_onnx(model).graph.initializer}
    assert {name for name, _, _ in model.parameters()} | {name for name, _ in model.buffers()} <= names


# --- whole models -----------------------------------------------------------------------------------
SHIPPED = SHIPPED_CONFIGS


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_configs_model_matches_nntrain_in_onnxruntime(rt, path):
    from nntrain.config import load_config
    from nntrain.data import data_info

    cfg = load_config(path)
    missing = sorted(set(spec_types(cfg["model"])) - set(LAYERS))
    if missing:
        pytest.skip(f"{path.name} uses layer types {missing} that are not registered")
    shape = data_info(cfg["data"]).input_shape
    model = build_model(cfg["model"], shape, seed=cfg["seed"])
    rng = np.random.default_rng(7)
    randomise(model, rng)
    check_against_nntrain(rt, model, *random_norm(shape[0], rng))


def test_without_normalisation_the_graph_takes_the_pixels_as_they_are(rt):
    model = build_model(LAYER_CASES["linear"][1], (1, 6, 5))
    proto = check_against_nntrain(rt, model, None, None)
    assert not {"Sub", "Div"} & {n.op_type for n in proto.graph.node}


def test_normalisation_is_sub_and_div_by_1c11_constants_first(rt):
    model = build_model(LAYER_CASES["conv2d"][1], (3, 9, 8))
    proto = to_onnx(model, np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3]))
    sub, div = proto.graph.node[:2]
    assert (sub.op_type, div.op_type) == ("Sub", "Div") and sub.input[0] == "pixels" and div.input[0] == sub.output[0]
    inits = {t.name: t for t in proto.graph.initializer}
    assert list(inits[sub.input[1]].dims) == list(inits[div.input[1]].dims) == [1, 3, 1, 1]


def test_the_batch_axis_is_dynamic(rt):
    model = build_model(LAYER_CASES["softmax"][1], (1, 4, 4))
    proto = to_onnx(model)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]   # noqa: E731
    assert (inp.name, dims(inp)) == ("pixels", ["N", 1, 4, 4])
    assert (out.name, dims(out)) == ("logits", ["N", 6])
    sess = session(rt, proto)
    for n in (1, 2, 64):
        assert sess.run(None, {"pixels": np.zeros((n, 1, 4, 4), np.float32)})[0].shape == (n, 6)


def test_probabilities_appends_one_softmax_unless_the_model_ends_in_its_own(rt):
    model = build_model(LAYER_CASES["linear"][1], (1, 6, 5))
    proto = to_onnx(model, probabilities=True)
    assert proto.graph.output[0].name == "probabilities" and proto.graph.node[-1].op_type == "Softmax"
    pixels = np.random.default_rng(0).random((5, 1, 6, 5), dtype=np.float32)
    (p,) = session(rt, proto).run(None, {"pixels": pixels})
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    own = build_model(LAYER_CASES["softmax"][1], (1, 4, 4))
    proto = to_onnx(own, probabilities=True, ends_in_softmax=True)
    assert proto.graph.output[0].name == "probabilities"
    assert [n.op_type for n in proto.graph.node].count("Softmax") == 1


def test_an_unsupported_opset_is_refused_naming_the_range(rt):
    model = build_model(LAYER_CASES["relu"][1], (2, 5, 5))
    with pytest.raises(NNTrainError, match=r"--opset 12 is not supported: nntrain exports opsets 13 to \d+"):
        to_onnx(model, opset=12)


class Double(Layer):
    """A layer type with no exporter (never registered): y = 2x."""

    type_name = "double_for_export_test"

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        return 2 * x


def test_a_layer_type_without_an_exporter_is_refused_naming_it(rt):
    from nntrain.nn.layers.shape import Flatten

    layers = [Flatten(), Double()]
    shape = (1, 3, 3)
    for layer in layers:
        shape = layer.build(shape, np.dtype(np.float32), np.random.default_rng(0), np.random.default_rng(1))
    model = Model(layers, (1, 3, 3), np.float32, np.random.default_rng(0), threads=1)
    with pytest.raises(NNTrainError, match=r"layer type 'double_for_export_test' \(layer 1\) cannot be exported "
                                           r"to ONNX: it has no exporter; exportable layer types: .*linear") as e:
        to_onnx(model)
    assert e.value.exit_code == 2


# --- a trained run through the command --------------------------------------------------------------
def tiny_cnn_config() -> dict:
    """A small CNN on mnist-mini, with batchnorm and dropout, that trains one epoch in a few seconds."""
    model = [conv(4, padding=1), {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
             conv(8, stride=2, padding=1), {"type": "relu"}, {"type": "flatten"}, {"type": "dropout", "p": 0.2},
             {"type": "linear", "out_features": 10}]
    return tiny_config(name="tiny-cnn", model=model, train={"epochs": 1, "batch_size": 64})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, rt):
    """A tiny CNN trained for one epoch on mnist-mini, exported by the real `nntrain export` command."""
    from nntrain.config import load_config
    from nntrain.training.runner import train

    tmp = tmp_path_factory.mktemp("export")
    folder, _ = train(load_config(write_config(tmp / "tiny-cnn.yaml", tiny_cnn_config())), run_dir=tmp / "run",
                      progress=False)
    proc = run_cli("export", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(folder / "model.onnx") and "output logits, opset 17" in proc.stderr
    return folder, tmp


def test_exported_mnist_cnn_classifies_the_test_set_as_nntrain_evaluate_does(rt, trained):
    from nntrain.data import load_dataset
    from nntrain.nn.losses import build_loss
    from nntrain.training.evaluate import evaluate
    from nntrain.training.run_folder import load_run

    folder, _ = trained
    run = load_run(folder)
    ds = load_dataset("mnist-mini")
    ev = evaluate(run.model, build_loss(run.cfg["loss"]), ds.test_images, ds.test_labels, 256, run.mean, run.std)
    onnx = rt[0]
    sess = session(rt, onnx.load(str(folder / "model.onnx")))
    pixels = np.divide(ds.test_images, np.float32(255), dtype=np.float32)   # the [0, 1] pixels nntrain reads
    (logits,) = sess.run(None, {"pixels": pixels})
    assert ev.accuracy > 0.8
    assert np.array_equal(logits.argmax(axis=1), ev.predictions)            # image for image
    assert_close(logits, run.model.forward(normalised(pixels, run.mean, run.std), train=False))


def test_metadata_holds_class_names_dataset_layout_and_version(rt, trained):
    import nntrain

    folder, _ = trained
    proto = rt[0].load(str(folder / "model.onnx"))
    rt[0].checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == [str(d) for d in range(10)]
    assert meta["dataset"] == "mnist-mini" and meta["input_layout"] == INPUT_LAYOUT == "NCHW, float32 in [0, 1]"
    assert meta["nntrain_version"] == nntrain.__version__ and meta["output"] == "logits"
    assert json.loads(meta["input_shape"]) == [1, 28, 28] and meta["test_time_augmentation"] == "none"
    assert len(json.loads(meta["normalisation_in_graph"])["mean"]) == 1   # one channel
    assert proto.producer_name == "nntrain" and proto.opset_import[0].version == 17


def test_probabilities_from_a_checkpoint_next_to_it_sum_to_one(rt, trained):
    from click.testing import CliRunner

    from nntrain.cli import cli

    folder, _ = trained
    ckpt = folder / "checkpoints" / "best.npz"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "--probabilities", "--opset", "20"])
    assert result.exit_code == 0, result.output
    out = ckpt.with_suffix(".onnx")
    assert result.stdout.strip() == str(out)
    proto = rt[0].load(str(out))
    assert proto.graph.output[0].name == "probabilities" and proto.opset_import[0].version == 20
    pixels = np.random.default_rng(1).random((17, 1, 28, 28), dtype=np.float32)
    (p,) = session(rt, proto).run(None, {"pixels": pixels})
    (z,) = session(rt, rt[0].load(str(folder / "model.onnx"))).run(None, {"pixels": pixels})
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert not list(out.parent.glob(".*.tmp"))                      # written atomically: no temporary left


def test_output_path_option_and_a_bad_opset_exit_2(rt, trained):
    folder, tmp = trained
    out = tmp / "mnist.onnx"
    proc = run_cli("export", str(folder), "-o", str(out), "--opset", "13")
    assert proc.returncode == 0 and proc.stdout.strip() == str(out) and out.stat().st_size > 10_000
    proc = run_cli("export", str(folder), "--opset", "99")
    assert proc.returncode == 2 and "--opset 99 is not supported" in proc.stderr


def test_a_layer_without_exporter_exits_2_naming_its_type(rt, trained, monkeypatch):
    from click.testing import CliRunner

    from nntrain.cli import cli

    folder, tmp = trained
    monkeypatch.setattr(export_mod, "EXPORTERS", {k: v for k, v in EXPORTERS.items() if k != "batchnorm"})
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(tmp / "never.onnx")])
    assert result.exit_code == 2
    assert "layer type 'batchnorm' (layer 1) cannot be exported to ONNX" in result.output
    assert not (tmp / "never.onnx").exists()


def test_without_onnx_installed_the_command_says_how_to_install_it(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from nntrain.cli import cli

    monkeypatch.setitem(sys.modules, "onnx", None)   # `import onnx` raises ImportError
    result = CliRunner().invoke(cli, ["export", str(tmp_path)])
    assert result.exit_code == 2
    assert 'pip install "nntrain[onnx]"' in result.output and "Traceback" not in result.output
    with pytest.raises(NNTrainError, match=r'pip install "nntrain\[onnx\]"'):
        to_onnx(build_model(LAYER_CASES["relu"][1], (2, 5, 5)))


def test_help_shows_an_example(rt):
    proc = run_cli("export", "--help")
    assert proc.returncode == 0 and "Example" in proc.stdout and "--probabilities" in proc.stdout


def test_the_readme_example_runs_on_an_export(rt, trained):
    """The README's Python lines, run as they are on the exported model."""
    import re

    text = (REPO / "README.md").read_text()
    section = text.split("## Using a trained model elsewhere", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    folder, _ = trained
    digits = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    scope: dict[str, Any] = {"images": digits}
    exec(code.replace("runs/mnist-cnn-20261125-101500/model.onnx", str(folder / "model.onnx")), scope)
    assert scope["logits"].shape == (4, 10)
