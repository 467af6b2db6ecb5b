"""Comparing finished runs: one table of what differs between their configs and what they achieved,
and their loss/accuracy curves overlaid in one figure (the fair-comparison view).

Numbers come straight from each run folder: config.yaml (the resolved config), metrics.csv (best val
acc, epochs, median seconds per epoch), test.json (test acc) and eval/metrics.json if present
(robustness: accuracy per perturbation level).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nntrain.atomic import atomic_write_text, create_unique_dir
from nntrain.errors import NNTrainError
from nntrain.tables import column_alignment, format_table
from nntrain.training.checkpoint import printable

log = logging.getLogger("nntrain")

MISSING = "—"


@dataclass
class RunRecord:
    """What a run folder holds, read once: its config, metrics rows, test summary and robustness."""

    path: Path
    cfg: dict
    history: list[dict]
    test: dict
    robustness: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.path.name

    def best_val_acc(self) -> float | None:
        vals = [float(r["val_acc"]) for r in self.history if r.get("val_acc") not in (None, "")]
        vals = [v for v in vals if not math.isnan(v)]
        return max(vals) if vals else None

    def test_acc(self) -> float | None:
        return _number(self.test.get("test_acc"))

    def epochs(self) -> int:
        v = self.test.get("epochs_trained")
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else len(self.history)

    def median_seconds(self) -> float | None:
        secs = [float(r["seconds"]) for r in self.history if r.get("seconds") not in (None, "")]
        secs = [v for v in secs if not math.isnan(v)]
        return statistics.median(secs) if secs else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NNTrainError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise NNTrainError(f"{path} should hold a JSON object")
    return data


def read_run(folder: str | Path) -> RunRecord:
    """Read a run folder (config.yaml and metrics.csv required; test.json and eval/metrics.json optional)."""
    from nntrain.config import load_config

    folder = Path(folder)
    if not folder.is_dir():
        raise NNTrainError(f"{folder} is not a folder: give run folders made by nntrain train")
    for name in ("config.yaml", "metrics.csv"):
        if not (folder / name).is_file():
            raise NNTrainError(f"{folder} has no {name}: is it a run folder (made by nntrain train)?")
    cfg = load_config(folder / "config.yaml")
    try:
        with open(folder / "metrics.csv", newline="", encoding="utf-8") as f:
            history = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise NNTrainError(f"cannot read {folder / 'metrics.csv'}: {e}") from None
    if history and not {"epoch", "val_acc", "seconds"} <= set(history[0]):
        raise NNTrainError(f"{folder / 'metrics.csv'} lacks the columns epoch, val_acc, seconds")
    history = _numeric_rows(history, folder / "metrics.csv")
    test = _read_json(folder / "test.json") if (folder / "test.json").is_file() else {}
    robustness: dict[str, list[tuple[float, float]]] = {}
    if (folder / "eval" / "metrics.json").is_file():
        robustness = _robustness(_read_json(folder / "eval" / "metrics.json"), folder / "eval" / "metrics.json")
    return RunRecord(folder, cfg, history, test, robustness)


def _number(value: Any) -> float | None:
    """A finite or NaN float from a CSV cell or JSON value; None for anything else (text, bool, inf)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isinf(x) else x


def _numeric_rows(rows: list[dict], path: Path) -> list[dict]:
    """metrics.csv rows with numbers for values: a row whose epoch is not an integer is skipped, a value
    that is not a number is left empty, each with one warning naming the file (a hand-edited or damaged
    file makes a comparison with gaps, not a traceback)."""
    clean, skipped = [], []
    for line, row in enumerate(rows, 2):
        epoch = _number(row.get("epoch"))
        if epoch is None or epoch != int(epoch) or epoch < 1:
            skipped.append(f"line {line} (epoch {printable(str(row.get('epoch')), 20)!r})")
            continue
        out: dict[str, Any] = {"epoch": int(epoch)}
        for key, value in row.items():
            if key in (None, "epoch") or not isinstance(key, str):
                continue   # cells beyond the header's columns
            x = _number(value)
            if x is None and value not in (None, ""):
                skipped.append(f"line {line} {printable(key, 20)}={printable(str(value), 20)!r}")
            out[key] = x
        clean.append(out)
    if skipped:
        log.warning("%s: skipped what is not a number: %s%s", path, ", ".join(skipped[:5]),
                    f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return clean


def _robustness(ev: dict, path: Path) -> dict[str, list[tuple[float, float]]]:
    """eval/metrics.json's robustness: kind -> [(level, accuracy)]; malformed entries are skipped with a
    warning."""
    found: dict[str, list[tuple[float, float]]] = {}
    entries = ev.get("robustness") or {}
    if not isinstance(entries, dict):
        log.warning("%s: 'robustness' is not a mapping: skipped", path)
        return found
    bad = 0
    for kind, rows in entries.items():
        if not isinstance(rows, list):
            bad += 1
            continue
        pairs = []
        for r in rows:
            level = _number(r.get("level")) if isinstance(r, dict) else None
            acc = _number(r.get("accuracy")) if isinstance(r, dict) else None
            if level is None or acc is None:
                bad += 1
                continue
            pairs.append((level, acc))
        found[printable(str(kind), 40)] = pairs
    if bad:
        log.warning("%s: skipped %d malformed robustness entr%s", path, bad, "y" if bad == 1 else "ies")
    return found


def flatten_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Key paths -> leaf values: {'optimizer.lr': 0.05, 'model[0].out_channels': 32, ...}.
    Lists of mappings (layers, augmentations) are flattened per index; other lists are leaves."""
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(cfg, list) and cfg and all(isinstance(x, dict) for x in cfg):
        out = {}
        for i, v in enumerate(cfg):
            out.update(flatten_config(v, f"{prefix}[{i}]"))
        return out
    return {prefix: cfg}


def _list_prefixes(cfgs: Sequence[dict]) -> list[str]:
    """Key paths of lists (of mappings) that differ in length or in the `type` of an entry between runs
    (an MLP against a CNN; with and without augmentation): these are compared as a whole (`model`,
    `data.augment`); lists of the same shape are compared entry by entry (`model[0].out_channels`)."""
    found: list[str] = []

    def walk(values: list[Any], path: str) -> None:
        if all(isinstance(v, dict) for v in values):
            for k in sorted(set().union(*values), key=str):
                walk([v.get(k) for v in values], f"{path}.{k}" if path else str(k))
            return
        lists = [v for v in values if isinstance(v, list)]
        if not any(isinstance(x, dict) for lst in lists for x in lst):
            return  # plain values: compared as leaves
        same_shape = len(lists) == len(values) and len({len(v) for v in lists}) == 1
        if same_shape and all(len({_type_of(v[i]) for v in lists}) == 1 for i in range(len(lists[0]))):
            for i in range(len(lists[0])):
                walk([v[i] for v in lists], f"{path}[{i}]")
        else:
            found.append(path)

    walk(list(cfgs), "")
    return found


def _type_of(item: Any) -> Any:
    return item.get("type") if isinstance(item, dict) else type(item).__name__


def _describe_list(value: Any) -> str:
    """A list of layers or augmentations in one line: `conv2d(out_channels=32, ...) - relu() - ...`."""
    if not value:
        return "none"
    if not isinstance(value, list):
        return _fmt(value)
    parts = []
    for item in value:
        try:
            from nntrain.nn.layers import LAYERS

            if isinstance(item, dict) and item.get("type") in LAYERS:
                parts.append(LAYERS.build(item).describe())
                continue
        except NNTrainError:
            pass
        if isinstance(item, dict):
            opts = ", ".join(f"{k}={_fmt(v)}" for k, v in item.items() if k != "type")
            parts.append(f"{item.get('type', '?')}({opts})")
        else:
            parts.append(_fmt(item))
    return " - ".join(parts)


def _lookup(cfg: Any, path: str) -> Any:
    """The value at a key path like `model` or `data.augment` (None where absent)."""
    node = cfg
    for step in re.findall(r"\[\d+\]|[^.\[\]]+", path):
        if step.startswith("["):
            i = int(step[1:-1])
            node = node[i] if isinstance(node, list) and i < len(node) else None
        else:
            node = node.get(step) if isinstance(node, dict) else None
    return node


def config_differences(cfgs: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """(key path, one formatted value per run) for every config key whose value differs between runs.
    The run name (`name`) is left out: the run folder names the run."""
    wholes = _list_prefixes(cfgs)
    flats = []
    for cfg in cfgs:
        flat = flatten_config(cfg)
        for w in wholes:
            flat = {k: v for k, v in flat.items() if not (k == w or k.startswith(w + ".") or k.startswith(w + "["))}
            flat[w] = ("__list__", _describe_list(_lookup(cfg, w)))
        flats.append(flat)
    keys = sorted(set().union(*flats), key=_key_order) if flats else []
    out = []
    for key in keys:
        if key == "name":
            continue
        values = [f.get(key, MISSING) for f in flats]
        if any(v != values[0] for v in values[1:]):
            out.append((key, [v[1] if isinstance(v, tuple) and v[:1] == ("__list__",) else _fmt(v) for v in values]))
    return out


def _key_order(key: str) -> tuple:
    """Config sections in the order a config file lists them, then by path."""
    order = ["seed", "data", "model", "loss", "optimizer", "scheduler", "train"]
    head = key.split(".")[0].split("[")[0]
    return (order.index(head) if head in order else len(order), key)


def _fmt(v: Any) -> str:
    if v is MISSING:
        return MISSING
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _num(v: float | None, spec: str = ".4f") -> str:
    return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


@dataclass
class Comparison:
    """The table: `columns` (header) and `rows` (one list of cells per run), all strings."""

    runs: list[RunRecord]
    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        """The table as markdown: run names left, numbers right-aligned."""
        align = "l" + column_alignment([r[1:] for r in self.rows])
        return format_table(self.columns, self.rows, align, markdown=True)


def compare_runs(folders: Sequence[str | Path]) -> Comparison:
    """Read the runs and build the table: run, differing config keys, best val acc, test acc,
    robustness accuracies (`rotate=15`), epochs, median seconds per epoch."""
    if not folders:
        raise NNTrainError("give at least one run folder to compare")
    runs = [read_run(f) for f in folders]
    names = [r.path.name for r in runs]
    for r in runs:
        if names.count(r.path.name) > 1:   # same folder name under different parents: show the path given
            r.label = str(r.path)
    diffs = config_differences([r.cfg for r in runs])
    levels: dict[str, list[float]] = {}
    for r in runs:
        for kind, rows in r.robustness.items():
            levels.setdefault(kind, [])
            levels[kind] += [lv for lv, _ in rows if lv not in levels[kind]]
    robust_cols = [(kind, lv) for kind in levels for lv in sorted(levels[kind])]
    columns = (["run"] + [k for k, _ in diffs] + ["best val acc", "test acc"]
               + [f"{kind}={lv:g}" for kind, lv in robust_cols] + ["epochs", "s/epoch (median)"])
    rows = []
    for i, r in enumerate(runs):
        robust = [_num(dict(r.robustness.get(kind, [])).get(lv)) for kind, lv in robust_cols]
        rows.append([r.label] + [vals[i] for _, vals in diffs] + [_num(r.best_val_acc()), _num(r.test_acc())]
                    + robust + [str(r.epochs()), _num(r.median_seconds(), ".3f")])
    return Comparison(runs, columns, rows)


def default_out_dir(base: str | Path = "comparisons") -> Path:
    """comparisons/compare-<YYYYmmdd-HHMMSS>[-k], never shared by two comparisons."""
    return create_unique_dir(base, "compare")


def save_comparison(comp: Comparison, out_dir: str | Path) -> list[Path]:
    """Write compare.md (the table and the run folders) and compare.png (overlaid curves) into out_dir."""
    from nntrain.training.plots import plot_compare

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["# Comparison", "", comp.markdown(), "", "Runs:", ""] + [f"- `{r.path}`" for r in comp.runs]
    md += ["", "![loss and accuracy curves: train dashed, val solid](compare.png)", ""]
    atomic_write_text(out_dir / "compare.md", "\n".join(md))
    plot_compare([(r.label, r.history) for r in comp.runs], out_dir / "compare.png")
    return [out_dir / "compare.md", out_dir / "compare.png"]
