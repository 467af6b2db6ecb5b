"""plots/kernels.png and plots/weights.png: the tiles' numbers are the model's own weights on one scale
symmetric around 0, the figures say what they show (layer, shape) and carry a colour bar in weight units,
the PNGs have the expected pixel size, and `nntrain eval` writes whichever figure applies to the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import png_size, run_cli, tiny_config, write_config
from nntrain.tools.weight_images import image_linear_index, kernel_tiles, save_model_figures, weight_tiles
from nntrain.nn.model import build_model
from nntrain.training import plots

# the PNGs' pixel size: the grid (8 columns of 100 px, 100 px a row), a 110 px colour bar on the right,
# a 31 px title band above and a 24 px caption band below
BAR, BANDS = 110, 31 + 24


def colour_bar(fig):
    """The figure's colour-bar axes (the one labelled "weight")."""
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "weight"]
    assert len(bars) == 1, [ax.get_ylabel() for ax in fig.axes]
    return bars[0]


CNN = [{"type": "conv2d", "out_channels": 10, "kernel_size": 3}, {"type": "relu"},
       {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]


def mlp(hidden: int) -> list[dict]:
    return [{"type": "flatten"}, {"type": "dropout", "p": 0.1}, {"type": "linear", "out_features": hidden},
            {"type": "relu"}, {"type": "linear", "out_features": 10}]


def test_grey_kernels_share_one_scale_symmetric_around_zero(tmp_path, figures):
    model = build_model(CNN, (1, 28, 28), seed=0)
    w = model.layers[0].params["W"].astype(np.float64)           # (10, 1, 3, 3)
    tiles = kernel_tiles(model)
    assert tiles.images.shape == (10, 3, 3) and tiles.signed and len(tiles.titles) == 10
    m = np.abs(w).max()
    assert tiles.scale == pytest.approx(m)
    for o in range(10):
        np.testing.assert_allclose(tiles.images[o], w[o, 0] / m)   # zero stays zero, one scale for all
    assert np.abs(tiles.images).max() == pytest.approx(1.0)
    assert tiles.what == "kernels of layer 0 (conv2d), W (10, 1, 3, 3)"
    assert weight_tiles(model) is None                          # a CNN's linear layer does not see pixels
    assert [p.name for p in save_model_figures(model, tmp_path / "plots", title="cnn-run · best.npz")] \
        == ["kernels.png"]
    assert png_size(tmp_path / "plots" / "kernels.png") == (800 + BAR, 200 + BANDS)   # 8 x 2 tiles
    fig = figures["kernels.png"]
    assert fig.get_suptitle() == "cnn-run · best.npz · kernels of layer 0 (conv2d), W (10, 1, 3, 3)"
    bar = colour_bar(fig)
    assert bar.get_ylim() == pytest.approx((-m, m))             # the bar reads in weight units
    assert any("red positive, blue negative, white 0" in t.get_text() for t in fig.texts)


def test_rgb_kernels_keep_the_colour_channels_with_mid_grey_at_zero(tmp_path, figures):
    model = build_model(CNN, (3, 32, 32), seed=1)
    w = model.layers[0].params["W"].astype(np.float64)           # (10, 3, 3, 3)
    tiles = kernel_tiles(model)
    assert tiles.images.shape == (10, 3, 3, 3) and not tiles.signed
    m = np.abs(w).max()
    k = w[4].transpose(1, 2, 0)                                  # (kh, kw, RGB)
    np.testing.assert_allclose(tiles.images[4], 0.5 + k / (2 * m))
    assert tiles.images.min() >= 0.0 and tiles.images.max() <= 1.0
    assert pytest.approx(1.0) in (tiles.images.max(), 1.0 - tiles.images.min())   # the largest |w| is full colour
    save_model_figures(model, tmp_path)
    fig = figures["kernels.png"]
    assert fig.get_suptitle() == "kernels of layer 0 (conv2d), W (10, 3, 3, 3)"      # no run title given
    assert colour_bar(fig).get_ylim() == pytest.approx((-m, m))
    assert any("mid-grey = 0" in t.get_text() for t in fig.texts)


def test_kernels_of_many_input_channels_show_their_mean():
    model = build_model([{"type": "conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "flatten"},
                         {"type": "linear", "out_features": 10}], (2, 8, 8), seed=0)
    w = model.layers[0].params["W"].astype(np.float64).mean(axis=1)
    tiles = kernel_tiles(model)
    np.testing.assert_allclose(tiles.images, w / np.abs(w).max())
    assert tiles.what.endswith("W (4, 2, 3, 3), mean over the 2 input channels")


def test_mlp_weights_are_the_first_linear_layer_reshaped_to_the_image(tmp_path, figures):
    model = build_model(mlp(32), (1, 28, 28), seed=0)
    assert image_linear_index(model) == 2 and kernel_tiles(model) is None
    w = model.layers[2].params["W"].astype(np.float64)           # (784, 32)
    tiles = weight_tiles(model)
    assert tiles.signed and tiles.images.shape == (32, 28, 28) and tiles.titles[5] == "unit 5"
    m = np.abs(w).max()
    np.testing.assert_allclose(tiles.images[5], w[:, 5].reshape(28, 28) / m)
    assert [p.name for p in save_model_figures(model, tmp_path)] == ["weights.png"]
    assert png_size(tmp_path / "weights.png") == (800 + BAR, 400 + BANDS)
    fig = figures["weights.png"]
    assert fig.get_suptitle() == "weights of layer 2 (linear), W (784, 32) as 1×28×28 images"
    assert colour_bar(fig).get_ylim() == pytest.approx((-m, m))


def test_wide_layers_show_a_sample_of_64_units_spread_over_the_layer(tmp_path, figures):
    model = build_model(mlp(300), (3, 32, 32), seed=0)
    tiles = weight_tiles(model)
    assert tiles.images.shape == (64, 32, 32, 3) and not tiles.signed
    assert tiles.titles[0] == "unit 0" and tiles.titles[-1] == "unit 299"
    assert tiles.what.endswith("as 3×32×32 images, 64 of its 300 units")
    shown = [int(t.split()[1]) for t in tiles.titles]
    w = model.layers[2].params["W"].astype(np.float64)
    m = np.abs(w[:, shown]).max()                                # the scale of the units shown
    j = shown[10]
    unit = w[:, j].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_allclose(tiles.images[10], 0.5 + unit / (2 * m))
    save_model_figures(model, tmp_path)
    assert png_size(tmp_path / "weights.png") == (800 + BAR, 800 + BANDS)
    assert colour_bar(figures["weights.png"]).get_ylim() == pytest.approx((-m, m))


def test_a_tile_grid_without_title_caption_or_bar_is_exactly_the_grid(tmp_path, figures):
    tiles = np.random.default_rng(0).random((5, 12, 12))
    size = plots.tile_grid(tiles, [], tmp_path / "g.png", cols=4, tile_px=50)
    assert size == png_size(tmp_path / "g.png") == (200, 100)
    fig = figures["g.png"]
    assert fig.get_suptitle() == "" and not [t for t in fig.texts if t.get_text()] and len(fig.axes) == 1


def test_a_tile_grid_caption_explains_the_tiles(tmp_path, figures):
    caption = "each tile: true → predicted (probability of the prediction)"
    tiles = np.random.default_rng(1).random((3, 12, 12))
    size = plots.tile_grid(tiles, ["7→1 0.99", "3→5 0.97", "2→7 0.95"], tmp_path / "m.png",
                           title="run · test · best.npz · most confident mistakes", caption=caption)
    assert size == png_size(tmp_path / "m.png")
    assert size[0] == 400 and size[1] > 100                     # widened for the text; bands above and below
    fig = figures["m.png"]
    assert fig.get_suptitle() == "run · test · best.npz · most confident mistakes"
    [text] = [t for t in fig.texts if t.get_text() == caption]
    assert text.get_position()[1] < fig.axes[0].get_position().y0   # under the grid
    assert [t.get_text() for t in fig.axes[0].texts] == ["7→1 0.99", "3→5 0.97", "2→7 0.95"]


def test_models_with_neither_figure_write_nothing(tmp_path):
    pooled_first = [{"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"},
                    {"type": "linear", "out_features": 10}]                 # linear sees pooled pixels
    model = build_model(pooled_first, (1, 28, 28), seed=0)
    assert kernel_tiles(model) is None and weight_tiles(model) is None
    assert save_model_figures(model, tmp_path / "plots") == [] and not (tmp_path / "plots").exists()


def test_eval_writes_the_weights_figure_of_an_mlp_run(tmp_path):
    from nntrain.config import load_config
    from nntrain.training.runner import train

    cfg = write_config(tmp_path / "tiny.yaml", tiny_config(train={"epochs": 1, "batch_size": 64}))
    run = tmp_path / "run"
    train(load_config(cfg), run_dir=run, progress=False)
    proc = run_cli("eval", str(run))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {run / 'plots' / 'weights.png'}" in proc.stderr
    assert png_size(run / "plots" / "weights.png") == (800 + BAR, 400 + BANDS)      # 32 hidden units
    assert not (run / "plots" / "kernels.png").exists()
    from nntrain.training.run_folder import load_run
    model = load_run(run).model
    w = model.layers[1].params["W"]
    np.testing.assert_allclose(weight_tiles(model).images[0], w[:, 0].reshape(28, 28) / np.abs(w).max(), rtol=1e-6)
