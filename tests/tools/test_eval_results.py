"""`nntrain eval` keeps one folder per checkpoint and split (eval/best-test/, eval/last-val/, ...): a later
evaluation never overwrites an earlier one of another checkpoint or split, robustness results stay only
beside the checkpoint they were measured on, the default evaluation also fills plots/, the first line
printed names the checkpoint and split, and the report page lists every evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import png_size, tiny_config
from nntrain.cli import cli

FIGURES = {"confusion.png", "misclassified.png", "weights.png"}   # an MLP: first-layer weights as images


def invoke(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from nntrain.config import validate_config
    from nntrain.training.runner import train

    tmp = tmp_path_factory.mktemp("evals")
    folder, _ = train(validate_config(tiny_config(train={"epochs": 2, "batch_size": 64})), run_dir=tmp / "run",
                      progress=False)
    return folder


@pytest.fixture
def run(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def test_each_checkpoint_and_split_keeps_its_own_results(run):
    from nntrain.training.checkpoint import load_checkpoint

    best_epoch = load_checkpoint(run / "checkpoints" / "best.npz").meta["epoch"]

    code, out, err = invoke("eval", run)                                        # the default: best, test
    assert code == 0, err
    assert out.splitlines()[0] == (f"evaluated {run / 'checkpoints' / 'best.npz'} (epoch {best_epoch}) "
                                   "on the test split")
    best_test = run / "eval" / "best-test"
    assert set(files(best_test)) == {"metrics.json", "confusion.csv"} | FIGURES
    metrics = json.loads((best_test / "metrics.json").read_text())
    assert metrics["checkpoint"] == "best" and metrics["split"] == "test" and metrics["epoch"] == best_epoch
    assert metrics["checkpoint_path"] == "checkpoints/best.npz" and metrics["samples"] == 1000
    for name in FIGURES:                      # the default evaluation's figures are in plots/ as well
        assert (run / "plots" / name).read_bytes() == (best_test / name).read_bytes()
    kept = files(best_test)

    code, out, err = invoke("eval", run / "checkpoints" / "last.npz")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"evaluated {run / 'checkpoints' / 'last.npz'} (epoch 2)")
    assert json.loads((run / "eval" / "last-test" / "metrics.json").read_text())["checkpoint"] == "last"

    code, out, err = invoke("eval", run, "--split", "val")
    assert code == 0, err
    assert out.splitlines()[0].endswith("on the val split")
    val = json.loads((run / "eval" / "best-val" / "metrics.json").read_text())
    assert val["split"] == "val" and val["samples"] == 500

    assert sorted(p.name for p in (run / "eval").iterdir()) == ["best-test", "best-val", "last-test"]
    assert files(best_test) == kept, "evaluating another checkpoint or split left best-test as it was"
    for name in FIGURES:                      # and plots/ still shows the default evaluation
        assert (run / "plots" / name).read_bytes() == kept[name]

    page = (run / "report.html").read_text(encoding="utf-8")  # eval rewrites the page: every evaluation on it
    for name in ("eval/best-test/", "eval/best-val/", "eval/last-test/"):
        assert page.count(f"<h3>{name}</h3>") == 1, name


def test_robustness_stays_with_the_checkpoint_it_was_measured_on(run, caplog):
    best_test, plots = run / "eval" / "best-test", run / "plots"
    code, out, err = invoke("eval", run, "--perturb", "rotate=0,30")
    assert code == 0, err
    rotate = json.loads((best_test / "metrics.json").read_text())["robustness"]["rotate"]
    assert [r["level"] for r in rotate] == [0.0, 30.0]
    assert png_size(best_test / "robustness.png")[0] > 100
    assert (plots / "robustness.png").read_bytes() == (best_test / "robustness.png").read_bytes()

    # another checkpoint or split without --perturb: no robustness results, no figure there; best-test's stay
    for args in ((run / "checkpoints" / "last.npz",), (run, "--split", "val")):
        code, out, err = invoke("eval", *args)
        assert code == 0, err
    for name in ("last-test", "best-val"):
        assert "robustness" not in json.loads((run / "eval" / name / "metrics.json").read_text())
        assert not (run / "eval" / name / "robustness.png").exists()
    assert json.loads((best_test / "metrics.json").read_text())["robustness"]["rotate"] == rotate

    # the same checkpoint again without --perturb (the file unchanged): the earlier results are kept, the
    # figure stays consistent with them; a new kind is merged beside them
    code, out, err = invoke("eval", run)
    assert code == 0, err
    assert "robustness:" not in out and "kept the robustness results" in caplog.text, caplog.text
    assert json.loads((best_test / "metrics.json").read_text())["robustness"] == {"rotate": rotate}
    assert (best_test / "robustness.png").is_file() and (plots / "robustness.png").is_file()
    code, out, err = invoke("eval", run, "--perturb", "noise=0,0.5")
    assert code == 0, err
    assert set(json.loads((best_test / "metrics.json").read_text())["robustness"]) == {"rotate", "noise"}

    # the checkpoint changed (a resumed run wrote a new best.npz): its earlier robustness results and
    # figure are gone, in the eval folder and in plots/, so no figure outlives its numbers
    from nntrain.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run / "checkpoints" / "best.npz")
    ckpt.meta["resaved"] = True                 # other bytes (the same weights: a stand-in for new ones)
    save_checkpoint(run / "checkpoints" / "best.npz", ckpt)
    code, out, err = invoke("eval", run)
    assert code == 0, err
    assert "dropped the robustness results" in caplog.text, caplog.text
    assert "robustness" not in json.loads((best_test / "metrics.json").read_text())
    assert not (best_test / "robustness.png").exists() and not (plots / "robustness.png").exists()


def test_a_checkpoint_copied_away_and_an_old_layout(run, tmp_path):
    away = tmp_path / "away"
    away.mkdir()
    shutil.copy(run / "checkpoints" / "best.npz", away / "epoch_2.npz")
    code, out, err = invoke("eval", away / "epoch_2.npz", "--split", "val")
    assert code == 0, err
    metrics = json.loads((away / "eval" / "epoch_2-val" / "metrics.json").read_text())
    assert metrics["checkpoint"] == "epoch_2" and metrics["split"] == "val"
    assert not (away / "plots").exists(), "only the default evaluation of a run folder fills plots/"

    # a run folder evaluated by an older nntrain (eval/metrics.json at the top of eval/): still on the page
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"split": "test", "samples": 1000, "accuracy": 0.5,
                                                           "per_class_accuracy": {"0": 0.5}}))
    code, out, err = invoke("eval", run, "--split", "val")
    assert code == 0, err
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "eval/best-val/" in page and "eval/metrics.json (an older nntrain" in page
