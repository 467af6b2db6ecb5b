"""`nntrain predict`: image files -> the model's input -> top-k classes. A PNG written from a test digit
(as is, or inverted to dark-on-light) gives the class the model's own forward gives that digit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, tiny_config, write_config
from nntrain.errors import DataError
from nntrain.nn.losses import softmax
from nntrain.tools.predict import border_mean, format_predictions, predict_files, read_image, to_model_input
from nntrain.training.evaluate import class_probabilities


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch tiny MLP run on mnist-mini, its loaded model, and test digits with the model's probabilities."""
    from nntrain.config import load_config
    from nntrain.data import load_dataset
    from nntrain.training.evaluate import evaluate
    from nntrain.nn.losses import build_loss
    from nntrain.training.run_folder import load_run
    from nntrain.training.runner import train

    tmp = tmp_path_factory.mktemp("predict")
    cfg = load_config(write_config(tmp / "tiny.yaml", tiny_config(train={"epochs": 1, "batch_size": 64})))
    folder, _ = train(cfg, run_dir=tmp / "run", progress=False)
    run = load_run(folder)
    ds = load_dataset("mnist-mini")
    digits, labels = ds.test_images[:12], ds.test_labels[:12]
    ev = evaluate(run.model, build_loss(run.cfg["loss"]), digits, labels, 64, run.mean, run.std)
    return folder, run, digits, ev.probs, tmp


def write_png(path: Path, img: np.ndarray, mode: str = "L") -> Path:
    Image.fromarray(img, mode=mode).save(path)
    return path


def test_a_test_digit_as_png_gives_the_models_own_prediction_inverted_or_not(trained):
    folder, run, digits, probs, tmp = trained
    plain = [write_png(tmp / f"d{i}.png", d[0]) for i, d in enumerate(digits)]
    inverted = [write_png(tmp / f"inv{i}.png", 255 - d[0]) for i, d in enumerate(digits)]
    preds = predict_files(run, plain + inverted, top=3)
    names = run.ckpt.meta["class_names"]
    for i, pred in enumerate(preds):
        expected = probs[i % len(digits)]
        assert pred.inverted == (i >= len(digits))                 # auto: bright border -> inverted
        assert pred.top[0][0] == names[int(expected.argmax())]
        np.testing.assert_allclose(pred.probs, expected, rtol=1e-5, atol=1e-6)   # the very same pixels
        assert len(pred.top) == 3 and pred.top[0][1] >= pred.top[1][1] >= pred.top[2][1]
        assert pred.top[0][1] == pytest.approx(float(expected.max()), rel=1e-5)


def test_invert_can_be_forced_either_way(trained):
    _, run, digits, probs, tmp = trained
    path = write_png(tmp / "force.png", digits[0, 0])
    (kept,) = predict_files(run, [path], invert=False)
    (flipped,) = predict_files(run, [path], invert=True)
    assert not kept.inverted and flipped.inverted
    np.testing.assert_allclose(kept.probs, probs[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(flipped.probs, probs[0])


def test_top_is_clamped_to_the_number_of_classes(trained):
    _, run, digits, _, tmp = trained
    (pred,) = predict_files(run, [write_png(tmp / "all.png", digits[1, 0])], top=50)
    assert len(pred.top) == 10 and sum(p for _, p in pred.top) == pytest.approx(1.0, abs=1e-5)
    lines = format_predictions([pred]).splitlines()[1:]          # ranks 1..10 keep their columns aligned
    assert [line.split()[0] for line in lines] == [f"{r}." for r in range(1, 11)]
    assert lines[0].startswith("   1. ") and lines[9].startswith("  10. ") and len({len(x) for x in lines}) == 1


def test_one_softmax_for_evaluation_and_prediction():
    z = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    p = softmax(z)
    assert np.isfinite(p).all() and p[0, 0] == 1.0                  # no overflow for huge logits
    np.testing.assert_allclose(p[1], np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum(), rtol=1e-12)
    np.testing.assert_array_equal(class_probabilities(z), p)
    np.testing.assert_allclose(class_probabilities(np.array([[0.2, 0.6, -0.1]]), logits=False), [[0.25, 0.75, 0.0]])


def test_conversion_grey_rgb_size_padding_and_transparency(tmp_path):
    # A wide RGB image of a dark bar on white: grey, padded with white to a square, resized to 28 x 28.
    img = np.full((40, 80, 3), 255, np.uint8)
    img[15:25, 10:70] = 0
    arr = read_image(write_png(tmp_path / "wide.png", img, "RGB"), (1, 28, 28))
    assert arr.shape == (40, 80) and border_mean(arr) == 255.0
    x = to_model_input(arr, (1, 28, 28), invert=True)
    assert x.shape == (1, 28, 28) and x.dtype == np.uint8
    assert x[0, :5].max() <= 1 and x[0, -5:].max() <= 1 and x[0, 14].max() >= 250   # padding stays background
    # Colour models get RGB in (C, H, W) order; a 32 x 32 image is used pixel for pixel.
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x = to_model_input(read_image(write_png(tmp_path / "c.png", rgb, "RGB"), (3, 32, 32)), (3, 32, 32), False)
    np.testing.assert_array_equal(x, rgb.transpose(2, 0, 1))
    # Transparent pixels count as white paper (so a dark stroke on a transparent sheet is auto-inverted).
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[10:18, 12:16] = (0, 0, 0, 255)
    grey = read_image(write_png(tmp_path / "t.png", rgba, "RGBA"), (1, 28, 28))
    assert grey[0, 0] == 255 and grey[12, 13] == 0
    # JPEG files are read too.
    Image.fromarray(np.full((20, 20), 200, np.uint8)).save(tmp_path / "p.jpg", quality=95)
    assert read_image(tmp_path / "p.jpg", (1, 28, 28)).shape == (20, 20)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_unreadable_files_are_data_errors_naming_the_file(tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="bad.png"):
        read_image(bad, (1, 28, 28))
    with pytest.raises(DataError, match="missing.png"):
        read_image(tmp_path / "missing.png", (1, 28, 28))


def test_cli_prints_top_classes_and_refuses_bad_files(trained):
    folder, run, digits, probs, tmp = trained
    png = write_png(tmp / "cli.png", 255 - digits[2, 0])
    proc = run_cli("predict", str(folder / "checkpoints" / "best.npz"), str(png), "--top", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{png}  (inverted: dark on light)" and len(lines) == 3
    best = int(probs[2].argmax())
    assert lines[1].split() == ["1.", run.ckpt.meta["class_names"][best], f"{probs[2, best]:.4f}"]
    (tmp / "notes.txt").write_text("hello")
    proc = run_cli("predict", str(folder), str(png), str(tmp / "notes.txt"))
    assert proc.returncode == 2 and "notes.txt" in proc.stderr and "not a readable image" in proc.stderr
