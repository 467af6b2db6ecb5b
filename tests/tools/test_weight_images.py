"""plots/kernels.png and plots/weights.png: the tiles' numbers are the model's own weights, the PNGs have
the expected pixel size, and `nntrain eval` writes whichever figure applies to the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import png_size, run_cli, tiny_config, write_config
from nntrain.tools.weight_images import image_linear_index, kernel_tiles, save_model_figures, weight_tiles
from nntrain.nn.model import build_model


CNN = [{"type": "conv2d", "out_channels": 10, "kernel_size": 3}, {"type": "relu"},
       {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]


def mlp(hidden: int) -> list[dict]:
    return [{"type": "flatten"}, {"type": "dropout", "p": 0.1}, {"type": "linear", "out_features": hidden},
            {"type": "relu"}, {"type": "linear", "out_features": 10}]


def test_grey_kernels_are_each_kernel_scaled_to_unit_range(tmp_path):
    model = build_model(CNN, (1, 28, 28), seed=0)
    w = model.layers[0].params["W"].astype(np.float64)           # (10, 1, 3, 3)
    tiles = kernel_tiles(model)
    assert tiles.images.shape == (10, 3, 3) and not tiles.signed and len(tiles.titles) == 10
    for o in range(10):
        k = w[o, 0]
        np.testing.assert_allclose(tiles.images[o], (k - k.min()) / (k.max() - k.min()))
    assert weight_tiles(model) is None                          # a CNN's linear layer does not see pixels
    assert [p.name for p in save_model_figures(model, tmp_path / "plots")] == ["kernels.png"]
    assert png_size(tmp_path / "plots" / "kernels.png") == (800, 200)   # 8 columns x 2 rows of 100 px


def test_rgb_kernels_keep_the_colour_channels():
    model = build_model(CNN, (3, 32, 32), seed=1)
    w = model.layers[0].params["W"].astype(np.float64)           # (10, 3, 3, 3)
    tiles = kernel_tiles(model)
    assert tiles.images.shape == (10, 3, 3, 3)
    k = w[4].transpose(1, 2, 0)                                  # (kh, kw, RGB)
    np.testing.assert_allclose(tiles.images[4], (k - k.min()) / (k.max() - k.min()))
    assert tiles.images.min() == 0.0 and tiles.images.max() == 1.0


def test_mlp_weights_are_the_first_linear_layer_reshaped_to_the_image(tmp_path):
    model = build_model(mlp(32), (1, 28, 28), seed=0)
    assert image_linear_index(model) == 2 and kernel_tiles(model) is None
    w = model.layers[2].params["W"].astype(np.float64)           # (784, 32)
    tiles = weight_tiles(model)
    assert tiles.signed and tiles.images.shape == (32, 28, 28) and tiles.titles[5] == "unit 5"
    unit = w[:, 5].reshape(28, 28)
    np.testing.assert_allclose(tiles.images[5], unit / np.abs(unit).max())
    assert [p.name for p in save_model_figures(model, tmp_path)] == ["weights.png"]
    assert png_size(tmp_path / "weights.png") == (800, 400)


def test_wide_layers_show_a_sample_of_64_units_spread_over_the_layer(tmp_path):
    model = build_model(mlp(300), (3, 32, 32), seed=0)
    tiles = weight_tiles(model)
    assert tiles.images.shape == (64, 32, 32, 3) and not tiles.signed
    assert tiles.titles[0] == "unit 0" and tiles.titles[-1] == "unit 299"
    j = int(tiles.titles[10].split()[1])
    unit = model.layers[2].params["W"].astype(np.float64)[:, j].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_allclose(tiles.images[10], (unit - unit.min()) / (unit.max() - unit.min()))
    save_model_figures(model, tmp_path)
    assert png_size(tmp_path / "weights.png") == (800, 800)


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
    assert png_size(run / "plots" / "weights.png") == (800, 400)      # 32 hidden units
    assert not (run / "plots" / "kernels.png").exists()
    from nntrain.training.run_folder import load_run
    model = load_run(run).model
    np.testing.assert_allclose(weight_tiles(model).images[0],
                               model.layers[1].params["W"][:, 0].reshape(28, 28)
                               / np.abs(model.layers[1].params["W"][:, 0]).max(), rtol=1e-6)
