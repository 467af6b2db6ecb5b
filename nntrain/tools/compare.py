"""Comparing finished runs: one table of what differs between their configs and what they achieved,
and their loss/accuracy curves overlaid in one figure (the fair-comparison view).

Numbers come straight from each run folder: config.yaml (the resolved config), metrics.csv (best val
acc, epochs, median seconds per epoch), test.json (test acc) and the evaluations `nntrain eval` saved
(eval/<checkpoint>-<split>/metrics.json; eval/metrics.json in older run folders): robustness, the
accuracy per perturbation level, of the best checkpoint on the test split.

The table stays readable for runs that differ a lot: a section with a `type` (optimizer, scheduler,
loss) or a nested one (train.early_stopping) is one column, `adam(lr=0.003)`, listing the options that
differ between the runs, where an option at its default is left out when another run's section has no
such option (sgd's `momentum: 0` against adam); the model is one column, `2 conv + 2 fc, 52k params`.
A folder that cannot be compared (no config.yaml, no finished epoch, a file that cannot be read) is
skipped with a warning.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nntrain.atomic import atomic_write_text, create_unique_dir
from nntrain.errors import NNTrainError
from nntrain.tables import column_alignment, format_table
from nntrain.training.checkpoint import printable
from nntrain.training.run_folder import RunFolder

log = logging.getLogger("nntrain")

MISSING = "—"
MAX_LEGEND = 60   # characters: longer labels made of the differing keys fall back to the run names


@dataclass
class RunRecord:
    """What a run folder holds, read once: its config, metrics rows, test summary, the saved evaluations
    (eval folder name -> metrics.json) and the robustness results of the best checkpoint on test."""

    path: Path
    cfg: dict
    history: list[dict]
    test: dict
    robustness: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    label: str = ""
    evaluations: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.label = self.label or self.path.name

    def best_val_acc(self) -> float | None:
        vals = [float(r["val_acc"]) for r in self.history if r.get("val_acc") not in (None, "")]
        vals = [v for v in vals if not math.isnan(v)]
        return max(vals) if vals else None

    def test_acc(self) -> float | None:
        """test.json's accuracy, else that of a saved evaluation of the best checkpoint on test."""
        acc = _number(self.test.get("test_acc"))
        if acc is None:
            ev = next((self.evaluations[n] for n in _test_evaluations(self) if n in self.evaluations), {})
            acc = _number(ev.get("accuracy"))
        return acc

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
    """Read a run folder: config.yaml and metrics.csv with at least one finished epoch are required
    (else NNTrainError), test.json and the saved evaluations are optional (an evaluation that cannot
    be read is left out with a warning)."""
    from nntrain.config import load_config

    folder = Path(folder)
    if not folder.is_dir():
        raise NNTrainError(f"{folder} is not a folder: give run folders made by nntrain train")
    for name in ("config.yaml", "metrics.csv"):
        if not (folder / name).is_file():
            raise NNTrainError(f"{folder} has no {name}: is it a run folder (made by nntrain train)?")
    try:
        cfg = load_config(folder / "config.yaml")
    except OSError as e:
        raise NNTrainError(f"cannot read {folder / 'config.yaml'}: {e.strerror or e}") from None
    try:
        with open(folder / "metrics.csv", newline="", encoding="utf-8") as f:
            history = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise NNTrainError(f"cannot read {folder / 'metrics.csv'}: {e}") from None
    if history and not {"epoch", "val_acc", "seconds"} <= set(history[0]):
        raise NNTrainError(f"{folder / 'metrics.csv'} lacks the columns epoch, val_acc, seconds")
    history = _numeric_rows(history, folder / "metrics.csv")
    if not history:
        raise NNTrainError(f"{folder / 'metrics.csv'} has no finished epoch (a run that stopped before the end "
                           "of its first epoch, or is still in it)")
    test = _read_json(folder / "test.json") if (folder / "test.json").is_file() else {}
    record = RunRecord(folder, cfg, history, test, evaluations=_read_evaluations(folder))
    for name in _test_evaluations(record):   # the first evaluation of the best checkpoint on test that has them
        ev = record.evaluations.get(name)
        if ev is not None and ev.get("robustness") is not None:
            record.robustness = _robustness(ev, RunFolder(folder).eval / name / "metrics.json")
            if record.robustness:
                break
    return record


def _read_evaluations(folder: Path) -> dict[str, dict]:
    """Eval folder name -> its metrics.json ('' for eval/metrics.json of the older layout); one that
    cannot be read is left out with a warning."""
    run = RunFolder(folder)
    found = {}
    for where in run.evaluations():
        try:
            found["" if where == run.eval else where.name] = _read_json(where / "metrics.json")
        except NNTrainError as e:
            log.warning("%s: left out", e)
    return found


def _test_evaluations(run: RunRecord) -> list[str]:
    """The saved evaluations of the run's best checkpoint on the test split, in order of preference:
    eval/best-test (eval/last-test when the run has no best.npz), then an older run's eval/metrics.json
    of the test split."""
    names = ["best-test"]
    if not RunFolder(run.path).best.exists():
        names.append("last-test")
    legacy = run.evaluations.get("")
    if legacy is not None and legacy.get("split", "test") == "test":
        names.append("")
    return names


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
    """An evaluation's metrics.json's robustness: kind -> [(level, accuracy)]; malformed entries are skipped with a
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


# --- what differs between configs ------------------------------------------------------------------
SECTION_ORDER = ("seed", "data", "model", "loss", "optimizer", "scheduler", "train", "logging")


def _registry(path: str) -> Any:
    """The registry of the typed specs found at key path `path` (None for a plain section)."""
    if path == "optimizer":
        from nntrain.nn.optim import OPTIMIZERS as registry
    elif path == "scheduler":
        from nntrain.nn.schedulers import SCHEDULERS as registry
    elif path == "loss":
        from nntrain.nn.losses import LOSSES as registry
    elif path == "model":
        from nntrain.nn.layers import LAYERS as registry
    elif path == "data.augment":
        from nntrain.data.augment import AUGMENTATIONS as registry
    else:
        return None
    return registry


def _defaults(path: str, spec: dict) -> dict[str, Any]:
    """Option -> default value (resolved form) of the spec `spec` found at `path`: of its type for a typed
    spec, of the plain section otherwise; {} when unknown."""
    from nntrain.config.schema import SECTIONS
    from nntrain.options import plain

    options: dict = {}
    registry = _registry(path)
    if "type" in spec:
        if registry is not None and spec["type"] in registry:
            options = registry[spec["type"]].options
    elif path in SECTIONS:
        options = SECTIONS[path][0]
    out = {}
    for key, opt in options.items():
        if not opt.required:
            try:
                out[key] = plain(opt.default if opt.default is None else opt.validate(opt.default, key))
            except NNTrainError:
                continue
    return out


def _same(values: Sequence[Any]) -> bool:
    return all(v == values[0] for v in values[1:])


def _keys(dicts: Sequence[Any]) -> list[str]:
    """The keys of the mappings among `dicts`, in the order they first appear."""
    keys: dict[str, None] = {}
    for d in dicts:
        if isinstance(d, dict):
            keys.update(dict.fromkeys(d))
    return list(keys)


def _is_leaf(value: Any) -> bool:
    return not isinstance(value, dict) and not (isinstance(value, list) and any(isinstance(x, (dict, list))
                                                                               for x in value))


def _spec_text(spec: Any, path: str, shown: Sequence[str]) -> str:
    if spec is MISSING:
        return MISSING
    if not isinstance(spec, dict):
        return "none" if spec is None else _fmt(spec)
    if "type" in spec:
        return f"{spec['type']}({', '.join(shown)})" if shown else str(spec["type"])
    return ", ".join(shown) if shown else "(defaults)"


def collapse(path: str, values: Sequence[Any]) -> list[str]:
    """One cell per run for the section at `path` whose value differs between runs: `type(k=v, ...)`
    with the options that differ between the runs; an option at its type's default is left out where
    another run's section has no such option (another type, or no section). Lists of specs (layers,
    augmentations) are described whole, each entry with its options that are not at their defaults."""
    if any(isinstance(v, list) for v in values):
        return [describe_list(path, v) if isinstance(v, list) else _spec_text(v, path, []) for v in values]
    keys = [k for k in _keys(values) if k != "type"]
    out = []
    for v in values:
        if not isinstance(v, dict):
            out.append(_spec_text(v, path, []))
            continue
        defaults = _defaults(path, v)
        shown = []
        for k in keys:
            if k not in v:
                continue
            column = [d.get(k, MISSING) if isinstance(d, dict) else MISSING for d in values]
            if _same(column):
                continue
            if any(c is MISSING for c in column) and k in defaults and v[k] == defaults[k]:
                continue
            shown.append(f"{k}={_fmt(v[k])}")
        out.append(_spec_text(v, path, shown))
    return out


def describe_list(path: str, value: Any) -> str:
    """A list of layers or augmentations in one line, each entry with the options not at their
    defaults: `random_shift(max_pixels=3) - random_rotate`; `none` for an empty list."""
    if not value:
        return "none"
    if not isinstance(value, list):
        return _fmt(value)
    parts = []
    for item in value:
        if isinstance(item, dict):
            defaults = _defaults(path, item)
            shown = [f"{k}={_fmt(v)}" for k, v in item.items()
                     if k != "type" and not (k in defaults and v == defaults[k])]
            parts.append(_spec_text(item, path, shown))
        else:
            parts.append(_fmt(item))
    return " - ".join(parts)


MODEL_KINDS = {"conv2d": "conv", "residual": "residual", "linear": "fc"}   # counted, in this order


def count_params(layers: list, cfg: dict) -> int | None:
    """The number of trainable parameters of the model `layers` on the data of `cfg` (the model built
    from the config, as training built it); None when it cannot be built here."""
    import numpy as np

    from nntrain.data.registry import data_info
    from nntrain.nn.model import build_model

    try:
        model = build_model(layers, data_info(cfg["data"]).input_shape, seed=0, dtype=np.float32, threads=1)
    except Exception as e:  # noqa: BLE001 - a model that cannot be rebuilt here is described without its size
        log.debug("cannot count the parameters of %s: %s", layers, e)
        return None
    try:
        return model.num_params()
    finally:
        model.close()


def _count(n: int) -> str:
    """52k, 1.2M, 850."""
    if n < 1000:
        return str(n)
    if n < 10_000:
        return f"{n / 1e3:.1f}k"
    if n < 1_000_000:
        return f"{n / 1e3:.0f}k"
    return f"{n / 1e6:.1f}M" if n < 100_000_000 else f"{n / 1e6:.0f}M"


def describe_model(layers: Any, cfg: dict) -> str:
    """`2 conv + 2 fc, 52k params`: the conv, residual and fully connected layers at the top level (a
    residual block counts once, whatever it holds) and the parameter count."""
    if not isinstance(layers, list):
        return _spec_text(layers, "model", [])
    counts = dict.fromkeys(MODEL_KINDS.values(), 0)
    for layer in layers:
        kind = MODEL_KINDS.get(layer.get("type")) if isinstance(layer, dict) else None
        if kind:
            counts[kind] += 1
    text = " + ".join(f"{n} {kind}" for kind, n in counts.items() if n) or f"{len(layers)} layers"
    n = count_params(layers, cfg)
    return text if n is None else f"{text}, {_count(n)} params"


def _model_cells(models: Sequence[Any], cfgs: Sequence[dict]) -> list[str]:
    """The model column: each model's short description; where two different models read the same,
    what tells them apart is added (the differing layers, or the whole stack in one line)."""
    cells = [describe_model(m, c) for m, c in zip(models, cfgs)]
    clash = [i for i in range(len(models)) if any(cells[i] == cells[j] and models[i] != models[j]
                                                   for j in range(len(models)))]
    if not clash:
        return cells
    lists = [m for m in models if isinstance(m, list)]
    if len(lists) == len(models) and len({len(m) for m in lists}) == 1:   # as many layers: the ones that differ
        details = [[] for _ in models]
        for j in range(len(lists[0])):
            entries = [m[j] for m in lists]
            if not _same(entries):
                for i, text in enumerate(collapse("model", entries)):
                    details[i].append(f"[{j}] {text}")
        extra = [", ".join(d) for d in details]
    else:
        extra = [describe_list("model", m) for m in models]
    return [f"{cell}; {extra[i]}" if i in clash else cell for i, cell in enumerate(cells)]


def config_differences(cfgs: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """(column, one cell per run) for every part of the configs that differs between runs, sections in
    the order a config lists them: a plain section (data, train) gives a column per differing key
    (`train.epochs`), a typed or nested section one collapsed column (`optimizer`: `adam(lr=0.003)`,
    `train.early_stopping`), the model one column of short descriptions. The run name (`name`) is left
    out: the run folder names the run."""
    keys = _keys(cfgs)
    keys = sorted((k for k in keys if k != "name"),
                  key=lambda k: (SECTION_ORDER.index(k) if k in SECTION_ORDER else len(SECTION_ORDER), keys.index(k)))
    out: list[tuple[str, list[str]]] = []
    for key in keys:
        values = [c.get(key, MISSING) for c in cfgs]
        if _same(values):
            continue
        if key == "model":
            out.append((key, _model_cells(values, cfgs)))
        elif all(isinstance(v, dict) and "type" not in v for v in values):   # data, train: key by key
            for sub in _keys(values):
                column = [v.get(sub, MISSING) for v in values]
                if _same(column):
                    continue
                path = f"{key}.{sub}"
                out.append((path, [_fmt(v) for v in column] if all(_is_leaf(v) for v in column)
                            else collapse(path, column)))
        else:
            out.append((key, collapse(key, values)))
    return out


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
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def _num(v: float | None, spec: str = ".4f") -> str:
    return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


@dataclass
class Comparison:
    """The table: `columns` (header) and `rows` (one list of cells per run), all strings; and the label
    of each run's curves in compare.png (see `curve_labels`)."""

    runs: list[RunRecord]
    columns: list[str]
    rows: list[list[str]]
    curve_labels: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The table as markdown: run names left, numbers right-aligned."""
        align = "l" + column_alignment([r[1:] for r in self.rows])
        return format_table(self.columns, self.rows, align, markdown=True)


def curve_labels(runs: Sequence[RunRecord], diffs: Sequence[tuple[str, list[str]]]) -> list[str]:
    """Each run's label in the overlaid curves: what sets it apart, `optimizer=adam(lr=0.003)` (the
    differing columns as key=value; when that is longer than MAX_LEGEND characters, the fewest columns,
    taken in table order, that still tell every run apart). The runs' names when nothing else tells
    them apart in MAX_LEGEND characters."""
    def labels(columns: Sequence[tuple[str, list[str]]]) -> list[str]:
        return [", ".join(f"{key}={cells[i]}" for key, cells in columns) for i in range(len(runs))]

    def usable(found: list[str]) -> bool:
        return len(set(found)) == len(found) and max(len(x) for x in found) <= MAX_LEGEND

    if diffs and usable(every := labels(diffs)):
        return every
    chosen: list[tuple[str, list[str]]] = []
    groups = len(set(labels(chosen)))
    for column in diffs:
        if len(set(labels([*chosen, column]))) > groups:   # this column tells more runs apart
            chosen.append(column)
            groups = len(set(labels(chosen)))
    if chosen and usable(found := labels(chosen)):
        return found
    return [r.label for r in runs]


def read_runs(folders: Sequence[str | Path]) -> list[RunRecord]:
    """The run folders that can be compared; each other one is skipped with a warning naming it and
    why. NNTrainError when none is left."""
    if not folders:
        raise NNTrainError("give at least one run folder to compare")
    runs = []
    for folder in folders:
        try:
            runs.append(read_run(folder))
        except NNTrainError as e:
            log.warning("skipped %s: %s", folder, e)
    if not runs:
        raise NNTrainError("nothing to compare: " + ("the folder given is" if len(folders) == 1 else
                                                      f"none of the {len(folders)} folders given is")
                           + " a finished run folder (see the warnings above)")
    return runs


def compare_runs(folders: Sequence[str | Path]) -> Comparison:
    """Read the runs (skipping, with a warning, those that cannot be compared) and build the table: run,
    differing config keys, best val acc, test acc, robustness accuracies (`rotate=15`), epochs, median
    seconds per epoch."""
    runs = read_runs(folders)
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
    return Comparison(runs, columns, rows, curve_labels(runs, diffs))


def default_out_dir(base: str | Path = "comparisons") -> Path:
    """comparisons/compare-<YYYYmmdd-HHMMSS>[-k], never shared by two comparisons."""
    return create_unique_dir(base, "compare")


def save_comparison(comp: Comparison, out_dir: str | Path) -> list[Path]:
    """Write compare.md (the table and the run folders) and compare.png (overlaid curves) into out_dir."""
    from nntrain.training.plots import plot_compare

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = comp.curve_labels or [r.label for r in comp.runs]
    md = ["# Comparison", "", comp.markdown(), "", "Runs:", ""]
    md += [f"- `{r.path}`" + (f" (curves: {label})" if label != r.label else "") for r, label in zip(comp.runs, labels)]
    md += ["", "![loss and accuracy curves: train dashed, val solid](compare.png)", ""]
    atomic_write_text(out_dir / "compare.md", "\n".join(md))
    plot_compare([(label, r.history) for r, label in zip(comp.runs, labels)], out_dir / "compare.png")
    return [out_dir / "compare.md", out_dir / "compare.png"]
