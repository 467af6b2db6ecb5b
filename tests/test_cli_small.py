"""Small things the `nntrain` shell says: where a global option goes, each end-of-training fact once."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from conftest import run_cli, tiny_config, write_config
from nntrain.cli import cli


def test_a_global_option_after_the_command_gets_a_hint(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_config())
    result = CliRunner().invoke(cli, ["train", str(config), "--threads", "2"])
    assert result.exit_code == 2
    assert "No such option '--threads'" in result.output
    assert "give it before the command, e.g. nntrain --threads 2 train ..." in result.output
    result = CliRunner().invoke(cli, ["time", str(config), "--bogus"])   # other options: click's own message
    assert result.exit_code == 2 and "No such option '--bogus'" in result.output and "before" not in result.output


def test_train_says_the_folder_and_the_test_accuracy_once(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_config(train__epochs=1))
    proc = run_cli("train", str(config), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "run")   # for scripts (stdout is no terminal here)
    assert proc.stderr.count("test accuracy") == 1
    said = [line for line in proc.stderr.splitlines() if line.rstrip().endswith(str(tmp_path / "run"))]
    assert said == [f"run folder: {tmp_path / 'run'}"]


def test_one_epoch_is_singular(caplog) -> None:   # type: ignore[no-untyped-def]
    import logging

    from nntrain.training.callbacks import EarlyStopping

    stop = EarlyStopping("val_loss", patience=1)
    with caplog.at_level(logging.INFO, logger="nntrain"):
        assert not stop.on_epoch_end(None, 1, {"val_loss": 1.0})   # type: ignore[arg-type]
        assert stop.on_epoch_end(None, 2, {"val_loss": 2.0})   # type: ignore[arg-type]
    assert "has not improved for 1 epoch (" in caplog.text


def test_augment_preview_needs_only_the_data_section(tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "look.yaml"
    config.write_text(yaml.safe_dump({"seed": 3, "data": {"dataset": "mnist-mini", "augment": [
        {"type": "random_rotate", "degrees": 10}]}}))
    out = tmp_path / "preview.png"
    result = CliRunner().invoke(cli, ["augment-preview", str(config), "--out", str(out), "-n", "4"])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    config.write_text(yaml.safe_dump({"data": {"dataset": "mnist-mini", "augment": [{"type": "random_rotat"}]}}))
    result = CliRunner().invoke(cli, ["augment-preview", str(config)])   # the data section is still checked
    assert result.exit_code == 2 and "random_rotat" in result.output and "data.augment[0]" in result.output
