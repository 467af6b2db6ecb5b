"""`nntrain predict`: image files -> the model's input -> top-k classes. A PNG written from a test digit
(as is, or inverted to dark-on-light) gives the class the model's own forward gives that digit. A test
digit drawn small in the corner of a large white canvas is framed back into what MNIST looks like (20x20
box, centre of mass at the centre) and classified as the digit itself; `--show` saves what the model saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, tiny_config, write_config
from nntrain.errors import DataError
from nntrain.nn.losses import softmax
from nntrain.tools.predict import (FRAMINGS, Prediction, border_mean, centre_of_mass, format_predictions,
                                   frame_like_dataset, ink_box, predict_files, read_image, save_inputs,
                                   to_model_input)
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
    preds = predict_files(run, plain + inverted, top=3, mnist_style=False)
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
    (kept,) = predict_files(run, [path], invert=False, mnist_style=False)
    (flipped,) = predict_files(run, [path], invert=True, mnist_style=False)
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


# --- MNIST-style framing ------------------------------------------------------------------------------
def on_canvas(digit: np.ndarray, paper: int = 255, ink: int = 0, size: int = 40) -> np.ndarray:
    """A (28, 28) white-on-black test digit drawn small: scaled to size x size (Lanczos), dark `ink` on
    `paper`, in the top-right corner of a 400x300 canvas (300 rows, 400 columns)."""
    small = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.LANCZOS), np.float64) / 255
    canvas = np.full((300, 400), float(paper))
    canvas[10:10 + size, 340:340 + size] = paper + (ink - paper) * small
    return np.round(canvas).astype(np.uint8)


def shifted_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The best correlation of a and b over shifts of a by at most one pixel each way: MNIST's shift is
    a whole number of pixels, so two framings of one digit may sit a rounding (one pixel) apart."""
    b = b.ravel().astype(np.float64)
    return max(float(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel().astype(np.float64), b)[0, 1])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def assert_framed_like_mnist(pixels: np.ndarray) -> None:
    """Centre of mass within one pixel of (14, 14); the ink's bounding box has a longer side of 20 +- 1."""
    assert pixels.shape == (1, 28, 28) and pixels.dtype == np.uint8
    cy, cx = centre_of_mass(pixels[0])
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1, (cy, cx)
    r0, r1, c0, c1 = ink_box(pixels[0])
    assert 19 <= max(r1 - r0, c1 - c0) <= 21, (r0, r1, c0, c1)
    assert pixels.max() >= 200 and np.median(pixels) == 0                     # white ink on black


def test_a_small_digit_in_a_corner_is_framed_like_mnist_and_classified_as_the_digit(trained):
    _, run, digits, probs, tmp = trained
    paths = [write_png(tmp / f"corner{i}.png", on_canvas(d[0])) for i, d in enumerate(digits)]
    framed = predict_files(run, paths)
    plain = predict_files(run, paths, mnist_style=False)
    names = run.ckpt.meta["class_names"]
    expected = [names[int(p.argmax())] for p in probs]
    correlations = []
    for pred, digit in zip(framed, digits):
        assert pred.inverted
        assert_framed_like_mnist(pred.pixels)
        correlations.append(shifted_correlation(pred.pixels[0], digit[0]))
    assert min(correlations) > 0.85 and float(np.mean(correlations)) > 0.93, correlations
    agree = sum(pred.top[0][0] == e for pred, e in zip(framed, expected))     # 11 of 12 with this model
    assert agree >= len(digits) - 2, (agree, [p.top[0] for p in framed], expected)
    # The old way (pad and resize the whole canvas) leaves a blob of a few pixels in a corner.
    for pred in plain:
        r0, r1, c0, c1 = ink_box(pred.pixels[0])
        assert max(r1 - r0, c1 - c0) <= 5 and c0 >= 20
    assert sum(pred.top[0][0] == e for pred, e in zip(plain, expected)) <= len(digits) // 2    # none of 12


def test_a_test_digit_is_kept_as_it_is_by_the_framing(trained):
    """An MNIST digit is already framed: framing it again moves nothing (254 may become 255)."""
    _, run, digits, probs, tmp = trained
    for digit in digits:
        again = frame_like_dataset(digit[0], (1, 28, 28))
        assert np.abs(again.astype(int) - digit.astype(int)).max() <= 1
    preds = predict_files(run, [write_png(tmp / f"kept{i}.png", d[0]) for i, d in enumerate(digits)])
    for pred, p in zip(preds, probs):
        np.testing.assert_allclose(pred.probs, p, atol=2e-3)


def test_grey_paper_grey_pencil_and_jpeg_noise(trained):
    """Pencil (grey 90) on grey paper (190) with a soft shadow, saved as a JPEG of quality 60: the paper
    becomes black, the pencil white, and the digit is framed as on white paper."""
    _, run, digits, _, tmp = trained
    digit = digits[0, 0]
    canvas = on_canvas(digit, paper=190, ink=90, size=60).astype(np.float64)
    canvas -= np.linspace(0, 12, canvas.shape[1])[None, :]       # the light falls off across the sheet
    jpeg = tmp / "pencil.jpg"
    Image.fromarray(np.round(canvas).astype(np.uint8)).save(jpeg, quality=60)
    (pred,) = predict_files(run, [jpeg])
    assert pred.inverted
    assert_framed_like_mnist(pred.pixels)
    assert shifted_correlation(pred.pixels[0], digit) > 0.9
    r0, r1, c0, c1 = ink_box(pred.pixels[0])
    veil = pred.pixels[0].copy()
    veil[r0 - 1:r1 + 1, c0 - 1:c1 + 1] = 0
    assert veil.max() <= 16                                      # no grey paper or shadow around the digit
    clean = frame_like_dataset(255 - on_canvas(digit), (1, 28, 28))
    assert shifted_correlation(pred.pixels[0], clean[0]) > 0.93


def test_fashion_items_fill_the_frame_with_their_box_centred():
    """Fashion-MNIST scaled an item's longer side to 28 and centred its box (not its mass)."""
    img = np.zeros((300, 400), np.uint8)
    img[50:250, 30:130] = 255                                    # a 200 x 100 item far to the left
    img[50:70, 30:130] = 120                                     # lighter at the top: mass below the centre
    x = frame_like_dataset(img, (1, 28, 28), FRAMINGS["fashion-mnist"])[0]
    r0, r1, c0, c1 = ink_box(x)
    assert (r0, r1) == (0, 28) and c1 - c0 in (14, 15) and abs((c0 + c1) / 2 - 14) <= 0.5


def test_an_image_without_ink_is_refused_naming_the_file(trained, tmp_path):
    folder, run, _, _, _ = trained
    blank = tmp_path / "blank.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray((235 + rng.integers(-8, 9, (300, 400))).astype(np.uint8)).save(blank, quality=80)
    with pytest.raises(DataError, match=r"blank\.jpg has no ink.*--no-mnist-style"):
        predict_files(run, [blank])
    (pred,) = predict_files(run, [blank], mnist_style=False)         # as it is, when asked
    assert pred.pixels.shape == (1, 28, 28)
    proc = run_cli("predict", str(folder), str(blank))
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "blank.jpg has no ink" in proc.stderr
    with pytest.raises(DataError, match="grey models"):
        frame_like_dataset(np.zeros((32, 32, 3), np.uint8), (3, 32, 32))


def test_cli_show_saves_what_the_model_saw_and_no_mnist_style_keeps_the_old_way(trained, tmp_path):
    folder, run, digits, _, _ = trained
    canvas = on_canvas(digits[3, 0])
    png = write_png(tmp_path / "seven.png", canvas)
    (tmp_path / "other").mkdir()
    again = write_png(tmp_path / "other" / "seven.png", canvas)              # the same name twice
    show = tmp_path / "seen"
    proc = run_cli("predict", str(folder), str(png), str(again), "--show", str(show))
    assert proc.returncode == 0, proc.stderr
    first, second = show / "seven-input.png", show / "seven-input-2.png"
    assert f"wrote {first}" in proc.stderr and f"wrote {second}" in proc.stderr
    (pred,) = predict_files(run, [png])
    for path in (first, second):
        with Image.open(path) as im:
            assert im.size == (224, 224) and im.mode == "L"
            big = np.asarray(im)
        np.testing.assert_array_equal(big[::8, ::8], pred.pixels[0])             # 8x, nearest neighbour
        np.testing.assert_array_equal(big, pred.pixels[0].repeat(8, 0).repeat(8, 1))
    assert_framed_like_mnist(pred.pixels)
    assert proc.stdout.splitlines()[1].split()[1] == pred.top[0][0]
    # --no-mnist-style: the canvas padded to a square and resized, as before.
    proc = run_cli("predict", str(folder), str(png), "--no-mnist-style", "--show", str(show))
    assert proc.returncode == 0, proc.stderr
    old = to_model_input(read_image(png, (1, 28, 28)), (1, 28, 28), invert=True)
    with Image.open(first) as im:
        np.testing.assert_array_equal(np.asarray(im)[::8, ::8], old[0])
    (plain,) = predict_files(run, [png], mnist_style=False)
    np.testing.assert_array_equal(plain.pixels, old)
    assert proc.stdout.splitlines()[1].split()[1:] == [plain.top[0][0], f"{plain.top[0][1]:.4f}"]


def test_show_writes_colour_inputs_in_rgb(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    pred = Prediction(tmp_path / "cat.jpg", [("cat", 1.0)], False, np.ones(1), pixels=rgb)
    (path,) = save_inputs([pred], tmp_path / "seen", scale=4)
    assert path == tmp_path / "seen" / "cat-input.png"
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (128, 128)
        np.testing.assert_array_equal(np.asarray(im)[::4, ::4], rgb.transpose(1, 2, 0))
