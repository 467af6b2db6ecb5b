"""`nntrain augment-preview CONFIG` and `nntrain train CONFIG --show-augment`: a PNG grid of the config's
training images and augmented versions; a config without augmentation is a clear error (exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import png_size, run_cli, tiny_config, write_config
from nntrain.errors import ConfigError
from nntrain.tools.preview import augment_preview

AUGMENT = [{"type": "random_shift", "max_pixels": 2}, {"type": "random_rotate", "degrees": 10}]


def augmented_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "aug.yaml", tiny_config(data={"dataset": "mnist-mini", "val_size": 500,
                                                                 "augment": AUGMENT}))


def test_augment_preview_writes_the_grid(tmp_path):
    cfg = augmented_config(tmp_path)
    out = tmp_path / "sub" / "preview.png"
    proc = run_cli("augment-preview", str(cfg), "--out", str(out), "-n", "5", "--variants", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert png_size(out) == (500, 300)      # n columns x (1 + variants) rows of 100 px


def test_show_augment_writes_the_default_preview_and_trains_nothing(tmp_path):
    cfg = augmented_config(tmp_path)
    proc = run_cli("train", str(cfg), "--show-augment", "-s", "name=shown", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "shown-augment.png"
    assert png_size(tmp_path / "shown-augment.png") == (800, 400)   # defaults: 8 images, 3 variants
    assert not (tmp_path / "runs").exists()


def test_a_config_without_augmentation_is_a_clear_error(tmp_path):
    cfg = write_config(tmp_path / "plain.yaml", tiny_config())
    proc = run_cli("augment-preview", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.augment" in proc.stderr and "no augmentation" in proc.stderr
    assert list(tmp_path.glob("*.png")) == []


def test_library_picks_images_with_the_seed(tmp_path):
    from nntrain.config import validate_config
    from nntrain.tools.preview import write_augment_preview

    cfg = validate_config(tiny_config(data={"dataset": "mnist-mini", "val_size": 500, "augment": AUGMENT}))
    first = write_augment_preview(cfg, tmp_path / "a.png", n=3, variants=1)
    again = write_augment_preview(cfg, tmp_path / "b.png", n=3, variants=1)
    assert png_size(first) == (300, 200)
    assert np.array_equal(np.frombuffer(first.read_bytes(), np.uint8), np.frombuffer(again.read_bytes(), np.uint8))
    with pytest.raises(ConfigError, match="data.augment"):
        write_augment_preview(validate_config(tiny_config()), tmp_path / "c.png")


def test_new_commands_show_examples_in_their_help():
    from click.testing import CliRunner

    from nntrain.cli import cli

    runner = CliRunner()
    top = runner.invoke(cli, ["--help"]).output
    for cmd in ("augment-preview", "compare", "predict"):
        assert cmd in top
        result = runner.invoke(cli, [cmd, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, cmd
    assert "--show-augment" in runner.invoke(cli, ["train", "--help"]).output


def test_augment_preview_writes_a_png_grid(tmp_path):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    path = augment_preview(colour, [{"type": "random_shift", "max_pixels": 2}, {"type": "random_rotate", "degrees": 15}, {"type": "horizontal_flip"}], rng, tmp_path / "preview.png", n=6, variants=2)
    assert path == tmp_path / "preview.png" and png_size(path) == (600, 300)
    from PIL import Image
    with Image.open(path) as im:
        im.verify()
    grey = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)          # (N, H, W), fewer than n images
    assert png_size(augment_preview(grey, [], rng, tmp_path / "g.png")) == (300, 400)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "preview.png"]   # no temporary files left
