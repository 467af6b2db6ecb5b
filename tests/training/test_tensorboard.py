"""`logging: {tensorboard: true}`: per-epoch scalars written as TensorBoard events in RUN_DIR/tb/ (read
back here by parsing the TFRecord framing and tensorboardX's Event protobuf), and a clear refusal naming
the extra to install where tensorboardX is missing."""

from __future__ import annotations

import csv
import struct
import sys
from pathlib import Path

import pytest

from conftest import tiny_config, write_config
from nntrain.config import load_config
from nntrain.errors import ConfigError

pytest.importorskip("tensorboardX")


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar in the events files of `folder` (TFRecord framing: length,
    its masked CRC, the Event bytes, their masked CRC)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_epoch_scalars_are_written_as_events(tmp_path):
    from nntrain.training.runner import train

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_config(logging={"tensorboard": True})))
    folder, _ = train(cfg, run_dir=tmp_path / "run", progress=False)
    events = read_events(Path(folder) / "tb")
    assert set(events) == {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "grad_norm"}
    with open(Path(folder) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for tag, column in (("loss/train", "train_loss"), ("accuracy/val", "val_acc"), ("lr", "lr")):
        assert [step for step, _ in events[tag]] == [1, 2]
        assert [v for _, v in events[tag]] == pytest.approx([float(r[column]) for r in rows], rel=1e-6)


def test_without_tensorboardx_the_config_is_refused_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)   # import tensorboardX now raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "nntrain\[tensorboard\]"') as e:
        load_config(write_config(tmp_path / "c.yaml", tiny_config(logging={"tensorboard": True})))
    assert e.value.path == "logging.tensorboard"
    assert "logging" not in load_config(write_config(tmp_path / "d.yaml", tiny_config()))
