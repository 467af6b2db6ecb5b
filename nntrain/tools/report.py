"""Measuring a trained run: loss, accuracy, per-class accuracy, confusion matrix, the most confident
mistakes, and accuracy under perturbed inputs. Tables and plots are made from the same arrays."""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from nntrain.atomic import WriteError, atomic_write_text, make_dir
from nntrain.errors import ConfigError
from nntrain.training.evaluate import Evaluation, evaluate
from nntrain.nn.losses import build_loss
from nntrain.data.prepare import prepare
from nntrain.rng import stream
from nntrain.tables import format_table
from nntrain.training.run_folder import LoadedRun, RunLock, check_same_data

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


@dataclass
class EvalReport:
    split: str
    class_names: list[str]
    evaluation: Evaluation
    images: np.ndarray
    robustness: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # kind -> [(level, acc)]

    @property
    def confusion(self) -> np.ndarray:
        return self.evaluation.confusion(len(self.class_names))

    def metrics(self) -> dict:
        ev = self.evaluation
        per_class = ev.per_class_accuracy(len(self.class_names))
        out = {"split": self.split, "samples": int(len(ev.labels)), "loss": ev.loss, "accuracy": ev.accuracy,
               "per_class_accuracy": {n: (None if np.isnan(a) else float(a)) for n, a in zip(self.class_names, per_class)}}
        if self.robustness:
            out["robustness"] = {k: [{"level": lv, "accuracy": acc} for lv, acc in v] for k, v in self.robustness.items()}
        return out

    def format(self) -> str:
        """The printed report: totals, per-class accuracy, confusion matrix, robustness tables."""
        ev, names, cm = self.evaluation, self.class_names, self.confusion
        k = len(names)
        per_class = [[name, f"{acc:.4f}", int(total)]
                     for name, acc, total in zip(names, ev.per_class_accuracy(k), cm.sum(axis=1))]
        confusion = [[name, *map(int, row)] for name, row in zip(names, cm)]
        blocks = [f"{self.split} set: {len(ev.labels)} samples   loss {ev.loss:.4f}   accuracy {ev.accuracy:.4f}",
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

    def save(self, out_dir: Path) -> list[Path]:
        """eval/metrics.json, eval/confusion.csv, plots/confusion.png, plots/misclassified.png (+ robustness)."""
        from nntrain.training.plots import plot_confusion, tile_grid

        eval_dir, plots_dir = make_dir(out_dir / "eval"), make_dir(out_dir / "plots")
        written = [eval_dir / "metrics.json", eval_dir / "confusion.csv", plots_dir / "confusion.png",
                   plots_dir / "misclassified.png"]
        atomic_write_text(written[0], json.dumps(self.metrics(), indent=2) + "\n")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["true \\ predicted"] + self.class_names)
        for name, row in zip(self.class_names, self.confusion):
            w.writerow([name] + [int(v) for v in row])
        atomic_write_text(written[1], buf.getvalue())
        plot_confusion(self.confusion, self.class_names, written[2])
        idx = self.most_confident_mistakes()
        ev = self.evaluation
        titles = [f"{self.class_names[ev.labels[i]]}→{self.class_names[ev.predictions[i]]} "
                  f"{ev.probs[i, ev.predictions[i]]:.2f}" for i in idx]
        x = self.images[idx].astype(np.float64) / 255.0        # uint8 (n, C, H, W) -> tiles in [0, 1]
        tile_grid(x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1), titles, written[3])
        if self.robustness:
            from nntrain.training.plots import plot_robustness

            written.append(plots_dir / "robustness.png")
            plot_robustness(self.robustness, written[-1])
        return written


def run_class_names(run: LoadedRun) -> list[str]:
    """The class names the run's checkpoint recorded, or "0".."K-1" when it recorded none."""
    return list(run.ckpt.meta.get("class_names") or [str(i) for i in range(run.model.output_shape[0])])


def evaluate_run(run: LoadedRun, split: str = "test", batch_size: int = 256, data_root: str | None = None,
                 perturbations: Sequence[tuple[str, list[float]]] = (), seed: int = 0,
                 allow_other_data: bool = False) -> EvalReport:
    """Evaluate a loaded run on a split, optionally under each perturbation level."""
    images, labels = split_images(run, split, data_root, allow_other_data)
    loss = build_loss(run.cfg["loss"])
    ev = evaluate(run.model, loss, images, labels, batch_size, run.mean, run.std)
    report = EvalReport(split, run_class_names(run), ev, images)
    for kind, levels in perturbations:
        from nntrain.data.perturb import perturbation

        rows = []
        for level in levels:
            rng = stream(seed, "perturb")
            transform = perturbation(kind, level, rng)
            acc = evaluate(run.model, loss, images, labels, batch_size, run.mean, run.std, transform).accuracy
            rows.append((float(level), acc))
        report.robustness[kind] = rows
    return report


EVAL_LOCK_WAIT = 120.0   # seconds one `eval` waits for another saving into the same folder


def write_results(report: EvalReport, run: LoadedRun, out_dir: str | Path, out_given: bool = False) -> list[Path]:
    """Save `report` and the model's weight figures into out_dir/eval and out_dir/plots, holding the
    folder's lock: never while a training writes it (refused, naming it), never at the same time as
    another `eval` (waited for). Returns the files written."""
    from nntrain.tools.weight_images import save_model_figures

    out_dir = Path(out_dir)
    try:
        make_dir(out_dir)
        with RunLock(out_dir, "nntrain eval").acquire(EVAL_LOCK_WAIT, wait_for={"nntrain eval"}):
            written = report.save(out_dir)
            written += save_model_figures(run.model, out_dir / "plots")
    except WriteError as e:
        if out_given:
            raise
        raise WriteError(f"{e}; the results printed above were not saved: give --out DIR to save them "
                         "elsewhere") from None
    return written
