"""Test-time augmentation (`train.tta`): the views, the averaged evaluation (probabilities, loss, the
single-view accuracy beside it), and one setting for validation, test, `nntrain eval` and `predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import tiny_config
from nntrain.data.tta import TTA_VIEWS, tta_views


def test_views_are_the_batch_and_its_mirror_image():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    (only,) = tta_views(x, "none")
    assert only is x
    plain, mirror = tta_views(x, "hflip")
    assert plain is x and mirror.flags.c_contiguous
    np.testing.assert_array_equal(mirror, x[:, :, :, ::-1])
    with pytest.raises(ValueError, match="hflip.*images"):
        tta_views(x.reshape(2, -1), "hflip")
    with pytest.raises(ValueError, match="unknown tta 'vflip'; known: none, hflip"):
        tta_views(x, "vflip")


def test_the_command_line_offers_the_same_views():
    from nntrain.cli import cli

    eval_cmd = cli.get_command(None, "eval")
    (tta,) = [p for p in eval_cmd.params if p.name == "tta"]
    assert tuple(tta.type.choices) == TTA_VIEWS


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CNN trained two epochs on mnist-mini with train.tta: hflip."""
    from nntrain.config import validate_config
    from nntrain.training.runner import train

    model = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "relu"},
             {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]
    cfg = validate_config(tiny_config(model=model, train={"epochs": 2, "batch_size": 64, "tta": "hflip"}))
    folder, _ = train(cfg, run_dir=tmp_path_factory.mktemp("tta") / "run", progress=False)
    return folder


def test_evaluation_averages_the_probabilities_and_the_losses_of_both_views(trained):
    from nntrain.data import iterate_batches, load_dataset
    from nntrain.nn.losses import build_loss
    from nntrain.training.evaluate import class_probabilities, evaluate
    from nntrain.training.run_folder import load_run

    run = load_run(trained)
    loss = build_loss(run.cfg["loss"])
    ds = load_dataset("mnist-mini")
    images, labels = ds.test_images[:300], ds.test_labels[:300]
    ev = evaluate(run.model, loss, images, labels, 128, run.mean, run.std, tta="hflip")
    plain = evaluate(run.model, loss, images, labels, 128, run.mean, run.std)

    x = next(iterate_batches(images, labels, 300, mean=run.mean, std=run.std, dtype=np.float32))[0]
    z0 = run.model.forward(x, train=False)
    z1 = run.model.forward(np.ascontiguousarray(x[..., ::-1]), train=False)
    expected = (class_probabilities(z0) + class_probabilities(z1)) / 2
    np.testing.assert_allclose(ev.probs, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ev.predictions, ev.probs.argmax(axis=1))
    assert ev.accuracy == pytest.approx(float((expected.argmax(axis=1) == labels).mean()))
    assert ev.loss == pytest.approx((loss.forward(z0, labels) + loss.forward(z1, labels)) / 2, rel=1e-5)
    assert ev.tta == "hflip" and ev.single_view_accuracy == plain.accuracy
    assert plain.tta == "none" and plain.single_view_accuracy is None
    assert ev.accuracy != plain.accuracy            # digits mirrored are other digits: the views disagree


def test_test_json_eval_and_predict_use_the_runs_setting(trained, tmp_path):
    from PIL import Image

    from nntrain.cli import cli
    from nntrain.data import load_dataset
    from nntrain.nn.losses import build_loss
    from nntrain.tools.predict import predict_files
    from nntrain.training.evaluate import evaluate
    from nntrain.training.run_folder import load_run

    run = load_run(trained)
    ds = load_dataset("mnist-mini")
    loss = build_loss(run.cfg["loss"])
    with_tta = evaluate(run.model, loss, ds.test_images, ds.test_labels, 256, run.mean, run.std, tta="hflip")
    summary = json.loads((trained / "test.json").read_text())
    assert summary["tta"] == "hflip"
    assert summary["test_acc"] == pytest.approx(with_tta.accuracy)
    assert summary["test_acc_single_view"] == pytest.approx(with_tta.single_view_accuracy)
    log = (trained / "log.txt").read_text()
    assert (f"test accuracy {with_tta.accuracy:.4f} with hflip test-time augmentation, "
            f"{with_tta.single_view_accuracy:.4f} without") in log

    runner = CliRunner()
    for args, acc, tta in ((["eval", str(trained)], with_tta.accuracy, "hflip"),
                           (["eval", str(trained), "--tta", "none"], with_tta.single_view_accuracy, "none")):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert f"accuracy {acc:.4f}" in result.stdout
        assert ("hflip test-time augmentation" in result.stdout) == (tta == "hflip")
        metrics = json.loads((trained / "eval" / "best-test" / "metrics.json").read_text())
        assert metrics["tta"] == tta and metrics["accuracy"] == pytest.approx(acc)
        assert metrics.get("single_view_accuracy") == (with_tta.single_view_accuracy if tta == "hflip" else None)
        page = (trained / "report.html").read_text()
        assert ("single_view_accuracy" in page) == (tta == "hflip")

    paths = []
    for i in range(5):
        Image.fromarray(ds.test_images[i, 0]).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    preds = predict_files(run, paths, mnist_style=False, invert=False)
    for pred, p in zip(preds, with_tta.probs[:5]):
        np.testing.assert_allclose(pred.probs, p, rtol=1e-5, atol=1e-6)


def test_an_unknown_view_is_a_config_error_at_its_key():
    from nntrain.config import validate_config
    from nntrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.tta.*hflip"):
        validate_config(tiny_config(train={"epochs": 1, "tta": "rotate"}))


def test_an_export_says_the_graph_gives_one_view_and_its_mirror_average_matches(trained, tmp_path, caplog):
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install -e \".[onnx]\"")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime has no wheel for this Python")
    from nntrain.data import load_dataset
    from nntrain.nn.losses import build_loss, softmax
    from nntrain.tools.export import export_run
    from nntrain.training.evaluate import evaluate
    from nntrain.training.run_folder import load_run

    run = load_run(trained)
    with caplog.at_level("WARNING"):
        export_run(run, tmp_path / "m.onnx")
    assert "train.tta: hflip" in caplog.text and "mirror image" in caplog.text
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert {p.key: p.value for p in proto.metadata_props}["test_time_augmentation"] == "hflip"
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ds = load_dataset("mnist-mini")
    pixels = np.divide(ds.test_images, np.float32(255), dtype=np.float32)
    (plain,) = sess.run(None, {"pixels": pixels})
    (mirror,) = sess.run(None, {"pixels": np.ascontiguousarray(pixels[..., ::-1])})
    ev = evaluate(run.model, build_loss(run.cfg["loss"]), ds.test_images, ds.test_labels, 256, run.mean, run.std,
                  tta="hflip")
    averaged = (softmax(plain.astype(np.float64)) + softmax(mirror.astype(np.float64))) / 2
    np.testing.assert_allclose(averaged, ev.probs, rtol=1e-4, atol=1e-6)
