"""Measuring a trained run: loss, accuracy, per-class accuracy, confusion matrix, the most confident
mistakes, and accuracy under perturbed inputs. Tables and plots are made from the same arrays.

Each evaluation is kept in its own folder, named by the checkpoint's file stem and the split:

    RUN/eval/<checkpoint>-<split>/     e.g. eval/best-test/, eval/last-val/, eval/epoch_7-test/
      metrics.json      checkpoint (stem, path, epoch, sha256), split, loss, accuracy, per-class accuracy,
                        robustness (with --perturb)
      confusion.csv     confusion.png  misclassified.png  kernels.png or weights.png
      robustness.png    only while metrics.json holds robustness results

Evaluating another checkpoint or split never touches an earlier folder. Evaluating the same
checkpoint and split again replaces that folder's results, with one exception: robustness results
of an earlier `--perturb` are kept (merged under the new ones, a kind given again replaced) while the
checkpoint file is byte for byte the one they were measured on (same sha256), and robustness.png is
redrawn from what metrics.json then holds; when the checkpoint changed (a resumed run wrote a new
best.npz), they are dropped with robustness.png, so no figure outlives its numbers.

The default evaluation (`nntrain eval RUN`: the checkpoint it picks, best.npz else last.npz, on the
test split) also copies its figures into RUN/plots/ (the run folder contract: plots/ holds the
confusion matrix, the mistakes and the weights after an eval), removing a plots/robustness.png that
its results no longer have.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from nntrain.atomic import WriteError, atomic_write_bytes, atomic_write_text, make_dir, reason
from nntrain.errors import ConfigError
from nntrain.training.evaluate import Evaluation, evaluate
from nntrain.nn.losses import build_loss
from nntrain.data.prepare import prepare
from nntrain.rng import stream
from nntrain.tables import format_table
from nntrain.training.run_folder import LoadedRun, RunFolder, RunLock, check_same_data

if TYPE_CHECKING:
    from nntrain.nn.model import Model

log = logging.getLogger("nntrain")


def split_images(run: LoadedRun, split: str, data_root: str | None,
                 allow_other_data: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and labels of `split` (test | val | train): the very split the run trained with.
    Data that are not the ones the run was trained on (another fingerprint or other normalisation
    statistics) are refused unless `allow_other_data` (then a warning)."""
    data = prepare(run.cfg["data"], int(run.cfg["seed"]), root=data_root)
    check_same_data(run.ckpt, data, run.checkpoint_path, allow=allow_other_data,
                    advice="Pass --allow-other-data to evaluate on them anyway.")
    if split == "val" and len(data.val_y) == 0:
        raise ConfigError("this run has no validation split (data.val_size is 0); use --split test", "--split")
    return data.split(split)


@dataclass(frozen=True)
class CheckpointInfo:
    """Which checkpoint an evaluation measured: its file, how far training had got when it was saved
    (`epoch` finished epochs, plus `batch` batches of the next for an interrupted last.npz; None when
    the file does not say), the sha256 of its bytes, and the run's name (for figure titles)."""

    path: Path
    epoch: int | None = None
    batch: int = 0
    sha256: str | None = None
    run_name: str = ""

    @property
    def name(self) -> str:
        """The file's stem: best, last, epoch_7 (the first half of the eval folder's name)."""
        return self.path.stem

    def describe(self) -> str:
        """`runs/x/checkpoints/best.npz (epoch 7)`."""
        if self.epoch is None:
            when = "epoch unknown"
        elif self.batch:
            when = f"epoch {self.epoch}, and {self.batch} batches of epoch {self.epoch + 1}"
        else:
            when = f"epoch {self.epoch}"
        return f"{self.path} ({when})"

    @classmethod
    def of(cls, run: LoadedRun) -> CheckpointInfo:
        meta, path = run.ckpt.meta, run.checkpoint_path
        epoch = meta.get("epoch")
        batch = meta.get("batch")
        try:
            digest: str | None = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            digest = None
        run_name = path.parent.parent.name if path.parent.name == "checkpoints" else str(run.cfg.get("name", ""))
        return cls(path, epoch if isinstance(epoch, int) else None, batch if isinstance(batch, int) else 0,
                   digest, run_name)


def is_default_evaluation(checkpoint: Path, split: str) -> bool:
    """True for what `nntrain eval RUN` evaluates: the checkpoint it picks in its run folder (best.npz,
    else last.npz) on the test split. Its figures are also copied into plots/."""
    if split != "test" or checkpoint.parent.name != "checkpoints":
        return False
    folder = RunFolder(checkpoint.parent.parent)
    picked = folder.best if folder.best.exists() else folder.last
    return checkpoint.name == picked.name


EVAL_FIGURES = ("confusion.png", "misclassified.png", "robustness.png", "kernels.png", "weights.png")


def _read_robustness(entries: object) -> dict[str, list[tuple[float, float]]]:
    """metrics.json's `robustness` (kind -> [{level, accuracy}]) as kind -> [(level, accuracy)]; what is
    not a number pair is left out (the file may have been edited by hand)."""
    found: dict[str, list[tuple[float, float]]] = {}
    if not isinstance(entries, dict):
        return found
    for kind, rows in entries.items():
        pairs = [(float(r["level"]), float(r["accuracy"])) for r in rows if isinstance(r, dict)
                 and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                         for k in ("level", "accuracy"))] if isinstance(rows, list) else []
        if pairs and isinstance(kind, str):
            found[kind] = pairs
    return found


@dataclass
class EvalReport:
    split: str
    class_names: list[str]
    evaluation: Evaluation
    images: np.ndarray
    checkpoint: CheckpointInfo
    robustness: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # kind -> [(level, acc)]

    @property
    def confusion(self) -> np.ndarray:
        return self.evaluation.confusion(len(self.class_names))

    @property
    def title(self) -> str:
        """What every figure of this evaluation is titled with: run · split · checkpoint."""
        return " · ".join(t for t in (self.checkpoint.run_name, self.split, self.checkpoint.name) if t)

    def metrics(self) -> dict:
        ev, ck = self.evaluation, self.checkpoint
        per_class = ev.per_class_accuracy(len(self.class_names))
        out: dict = {"checkpoint": ck.name, "checkpoint_path": str(ck.path)}
        if ck.epoch is not None:
            out["epoch"] = ck.epoch
            if ck.batch:
                out["batch"] = ck.batch
        out.update({"checkpoint_sha256": ck.sha256, "split": self.split, "samples": int(len(ev.labels)),
                    "loss": ev.loss, "accuracy": ev.accuracy, "tta": ev.tta,
                    **({} if ev.single_view_accuracy is None else {"single_view_accuracy": ev.single_view_accuracy}),
                    "per_class_accuracy": {n: (None if np.isnan(a) else float(a))
                                           for n, a in zip(self.class_names, per_class)}})
        if self.robustness:
            out["robustness"] = _robustness_json(self.robustness)
        return out

    def format(self) -> str:
        """The printed report: which checkpoint and split (first line), totals, per-class accuracy,
        confusion matrix, robustness tables."""
        ev, names, cm = self.evaluation, self.class_names, self.confusion
        k = len(names)
        per_class = [[name, f"{acc:.4f}", int(total)]
                     for name, acc, total in zip(names, ev.per_class_accuracy(k), cm.sum(axis=1))]
        confusion = [[name, *map(int, row)] for name, row in zip(names, cm)]
        blocks = [f"evaluated {self.checkpoint.describe()} on the {self.split} split\n"
                  f"{self.split} set: {len(ev.labels)} samples   loss {ev.loss:.4f}   accuracy {ev.accuracy:.4f}"
                  + ("" if ev.single_view_accuracy is None else
                     f" ({ev.tta} test-time augmentation; {ev.single_view_accuracy:.4f} without)"),
                  format_table(["class", "accuracy", "samples"], per_class, align="lrr"),
                  "confusion matrix (rows: true class, columns: predicted)\n"
                  + format_table([""] + [str(i) for i in range(k)], confusion, align="l" + "r" * k)]
        for kind, rows in self.robustness.items():
            blocks.append(f"robustness: {kind}\n"
                          + format_table(["level", "accuracy"], [[f"{lv:g}", f"{acc:.4f}"] for lv, acc in rows]))
        return "\n\n".join(blocks)

    def most_confident_mistakes(self, k: int = 32) -> np.ndarray:
        """Indices of misclassified samples, most confident (highest predicted probability) first."""
        ev = self.evaluation
        wrong = np.flatnonzero(ev.predictions != ev.labels)
        conf = ev.probs[wrong, ev.predictions[wrong]]
        return wrong[np.argsort(-conf, kind="stable")[:k]]

    def _kept_robustness(self, previous_path: Path) -> dict[str, list[tuple[float, float]]]:
        """The robustness results of the previous evaluation saved in this folder that stay valid: those
        of kinds not measured now, when it measured the very same checkpoint file (same sha256) with the
        same test-time augmentation."""
        try:
            previous = json.loads(previous_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        if not isinstance(previous, dict):
            return {}
        earlier = _read_robustness(previous.get("robustness"))
        if not earlier:
            return {}
        same = self.checkpoint.sha256 is not None and previous.get("checkpoint_sha256") == self.checkpoint.sha256
        if not same or previous.get("tta", "none") != self.evaluation.tta:
            log.info("%s: dropped the robustness results of an earlier eval (%s): %s", previous_path.parent,
                     ", ".join(earlier), "the checkpoint changed since" if not same else
                     "it used another test-time augmentation")
            return {}
        kept = {kind: rows for kind, rows in earlier.items() if kind not in self.robustness}
        if kept:
            log.info("%s: kept the robustness results of an earlier eval of the same checkpoint (%s)",
                     previous_path.parent, ", ".join(kept))
        return kept

    def save(self, out_dir: Path, model: Model | None = None) -> list[Path]:
        """Write out_dir/eval/<checkpoint>-<split>/: metrics.json, confusion.csv, confusion.png,
        misclassified.png, robustness.png (while there are robustness results, see the module
        docstring), and the model's weight figures (kernels.png or weights.png) when `model` is given.
        The default evaluation (`is_default_evaluation`) copies its figures into out_dir/plots too."""
        from nntrain.training.plots import plot_confusion, tile_grid

        run = RunFolder(out_dir)
        make_dir(run.eval)
        folder = make_dir(run.eval_dir(self.checkpoint.name, self.split))
        robustness = {**self._kept_robustness(folder / "metrics.json"), **self.robustness}
        metrics = self.metrics()
        metrics["checkpoint_path"] = _shown_path(self.checkpoint.path, out_dir)
        if robustness:
            metrics["robustness"] = _robustness_json(robustness)
        written = [folder / "metrics.json", folder / "confusion.csv", folder / "confusion.png",
                   folder / "misclassified.png"]
        atomic_write_text(written[0], json.dumps(metrics, indent=2) + "\n")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["true \\ predicted"] + self.class_names)
        for name, row in zip(self.class_names, self.confusion):
            w.writerow([name] + [int(v) for v in row])
        atomic_write_text(written[1], buf.getvalue())
        plot_confusion(self.confusion, self.class_names, written[2], title=self.title)
        idx = self.most_confident_mistakes()
        ev = self.evaluation
        titles = [f"{self.class_names[ev.labels[i]]} → {self.class_names[ev.predictions[i]]} "
                  f"({ev.probs[i, ev.predictions[i]]:.2f})" for i in idx]
        x = self.images[idx].astype(np.float64) / 255.0        # uint8 (n, C, H, W) -> tiles in [0, 1]
        tile_grid(x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1), titles, written[3],
                  title=f"{self.title} · most confident mistakes ({len(idx)} of "
                        f"{int(np.sum(ev.predictions != ev.labels))})",
                  caption="true → predicted (probability of the prediction)")
        if robustness:
            from nntrain.training.plots import plot_robustness

            written.append(folder / "robustness.png")
            plot_robustness(robustness, written[-1], title=self.title)
        else:
            _remove(folder / "robustness.png")   # an earlier --perturb's figure, its numbers gone
        if model is not None:
            from nntrain.tools.weight_images import save_model_figures

            written += save_model_figures(model, folder, title=f"{self.checkpoint.run_name} · {self.checkpoint.name}"
                                          if self.checkpoint.run_name else self.checkpoint.name)
        if is_default_evaluation(self.checkpoint.path, self.split):
            written += _copy_figures(folder, make_dir(run.plots))
        return written


def _robustness_json(robustness: dict[str, list[tuple[float, float]]]) -> dict:
    return {k: [{"level": lv, "accuracy": acc} for lv, acc in v] for k, v in robustness.items()}


def _shown_path(path: Path, out_dir: Path) -> str:
    """`path` relative to `out_dir` when inside it (checkpoints/best.npz: still true when the run folder
    moves), else absolute."""
    try:
        return str(path.resolve().relative_to(out_dir.resolve()))
    except (ValueError, OSError):
        return str(path.resolve())


def _remove(path: Path) -> None:
    """Delete a figure whose results are gone (nothing when there is none)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise WriteError(f"cannot remove {path}, a figure of results no longer there: {reason(e)}") from None


def _copy_figures(folder: Path, plots: Path) -> list[Path]:
    """The default evaluation's figures copied from its eval folder into plots/ (atomically); a figure it
    no longer has (robustness.png after an eval without --perturb) is removed from plots/ too."""
    written = []
    for name in EVAL_FIGURES:
        if (folder / name).is_file():
            atomic_write_bytes(plots / name, (folder / name).read_bytes())
            written.append(plots / name)
        elif name == "robustness.png":
            _remove(plots / name)
    return written


def run_class_names(run: LoadedRun) -> list[str]:
    """The class names the run's checkpoint recorded, or "0".."K-1" when it recorded none."""
    return list(run.ckpt.meta.get("class_names") or [str(i) for i in range(run.model.output_shape[0])])


def evaluate_run(run: LoadedRun, split: str = "test", batch_size: int = 256, data_root: str | None = None,
                 perturbations: Sequence[tuple[str, list[float]]] = (), seed: int = 0,
                 allow_other_data: bool = False, tta: str | None = None) -> EvalReport:
    """Evaluate a loaded run on a split, optionally under each perturbation level; `tta` overrides the
    run's test-time augmentation (train.tta)."""
    images, labels = split_images(run, split, data_root, allow_other_data)
    loss = build_loss(run.cfg["loss"])
    tta = run.cfg["train"]["tta"] if tta is None else tta
    ev = evaluate(run.model, loss, images, labels, batch_size, run.mean, run.std, tta=tta)
    report = EvalReport(split, run_class_names(run), ev, images, CheckpointInfo.of(run))
    for kind, levels in perturbations:
        from nntrain.data.perturb import perturbation

        rows = []
        for level in levels:
            rng = stream(seed, "perturb")
            transform = perturbation(kind, level, rng)
            acc = evaluate(run.model, loss, images, labels, batch_size, run.mean, run.std, transform, tta).accuracy
            rows.append((float(level), acc))
        report.robustness[kind] = rows
    return report


EVAL_LOCK_WAIT = 120.0   # seconds one `eval` waits for another saving into the same folder


def write_results(report: EvalReport, run: LoadedRun, out_dir: str | Path, out_given: bool = False) -> list[Path]:
    """Save `report` and the model's weight figures into out_dir/eval/<checkpoint>-<split>/ (the default
    evaluation's figures into out_dir/plots too), holding the folder's lock: never while a training
    writes it (refused, naming it), never at the same time as another `eval` (waited for). Returns the
    files written."""
    out_dir = Path(out_dir)
    try:
        make_dir(out_dir)
        with RunLock(out_dir, "nntrain eval").acquire(EVAL_LOCK_WAIT, wait_for={"nntrain eval"}):
            written = report.save(out_dir, run.model)
    except WriteError as e:
        if out_given:
            raise
        raise WriteError(f"{e}; the results printed above were not saved: give --out DIR to save them "
                         "elsewhere") from None
    return written
