"""The sweep file: its schema, and its validation against the base config before any trial starts.

    base: ../quickstart.yaml                  # relative to the sweep file
    name: quickstart-lr
    metric: {name: val_acc, goal: maximize}   # a metrics.csv column; a trial's value is its best epoch
    method: tpe                               # grid | random | tpe
    trials: 12
    parameters:                               # -s key paths, values in W&B's vocabulary
      optimizer.lr: {distribution: log_uniform_values, min: 1.0e-3, max: 0.3}
      train.batch_size: {values: [32, 64, 128]}

Every mistake is a ConfigError naming the sweep file, the line and the key path
(`parameters[optimizer.lr].min`): unknown keys, a parameter that is no key of the base config, a value
the config schema refuses (each `values` entry and each distribution's min and max are checked with the
base config), a log distribution reaching down to 0. Nothing here needs Optuna.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from nntrain.config import parse_config_text
from nntrain.config.overrides import parse_override
from nntrain.config.schema import default_name
from nntrain.config.yamlsafe import join_key, parse_yaml, read_text
from nntrain.errors import ConfigError
from nntrain.options import Option, closest, unknown_key_message, validate_options
from nntrain.registry import _kind
from nntrain.training.callbacks import METRIC_COLUMNS

METHODS = ("grid", "random", "tpe")
METRICS = tuple(c for c in METRIC_COLUMNS if c != "epoch")
GOALS = ("maximize", "minimize")
MAX_TRIALS = 100_000

TOP_OPTIONS = {
    "base": Option("str", doc="the base config, relative to the sweep file"),
    "name": Option("str", None, nullable=True, doc="sweep name (folder and study name); null: the file's stem"),
    "method": Option("str", "tpe", choices=METHODS, doc="how parameters are chosen"),
    "trials": Option("int", None, minimum=1, maximum=MAX_TRIALS, nullable=True,
                     doc="trials in all, across every worker; grid: the whole grid (may be left out)"),
    "seed": Option("int", 0, minimum=0, doc="seeds the sampler (trial n draws from a seed mixed from seed and n)"),
    "startup_trials": Option("int", 10, minimum=0, doc="tpe: random trials before TPE models the results"),
    "storage": Option("str", None, nullable=True,
                      doc="null: a journal file in the sweep folder; or a postgresql:// URL"),
}
SECTIONS = ("metric", "pruner", "overrides", "parameters")
METRIC_OPTIONS = {
    "name": Option("str", choices=METRICS, doc="the metrics.csv column to optimise"),
    "goal": Option("str", None, choices=GOALS, nullable=True, doc="null: maximize *_acc, minimize the rest"),
}
PRUNERS: dict[str, dict[str, Option]] = {
    "none": {},
    "median": {
        "warmup_epochs": Option("int", 0, minimum=0, doc="epochs never pruned"),
        "startup_trials": Option("int", 5, minimum=0, doc="trials finished before any is pruned"),
    },
    "hyperband": {
        "min_epochs": Option("int", 1, minimum=1, doc="epochs every trial gets"),
        "max_epochs": Option("int", None, minimum=1, nullable=True, doc="null: the base config's train.epochs (when searched: the most a trial reports)"),
        "reduction_factor": Option("int", 3, minimum=2, doc="1/reduction_factor of the trials go on at each rung"),
    },
    "threshold": {
        "lower": Option("float", None, nullable=True, doc="prune when the metric is below"),
        "upper": Option("float", None, nullable=True, doc="prune when the metric is above"),
        "warmup_epochs": Option("int", 0, minimum=0, doc="epochs never pruned"),
    },
}
PARAMETER_KEYS = ("distribution", "values", "value", "min", "max", "q")
DISTRIBUTIONS = ("categorical", "constant", "uniform", "int_uniform", "q_uniform", "log_uniform_values",
                 "log_uniform")
# W&B names Optuna has no counterpart for: said so instead of "unknown".
UNSUPPORTED = ("q_log_uniform_values", "q_log_uniform", "inv_log_uniform", "inv_log_uniform_values", "normal",
               "q_normal", "log_normal", "q_log_normal", "beta", "q_beta")
_STORAGE_SCHEMES = ("postgresql://", "postgresql+")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Parameter:
    """One searched key path and where its values come from.

    kind: one of DISTRIBUTIONS. `values` for categorical, `low`/`high` (and `q`) for the ranges,
    `values[0]` for a constant. log_uniform's low and high are natural-log exponents (W&B's meaning).
    """

    key: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    q: float | None = None

    def samples(self) -> Iterator[tuple[str, Any]]:
        """(field, value) pairs that must each make a valid config: every listed value, both ends."""
        if self.kind in ("categorical", "constant"):
            field_ = "values" if self.kind == "categorical" else "value"
            for i, v in enumerate(self.values):
                yield (f"{field_}[{i}]" if self.kind == "categorical" else field_), v
            return
        low, high = self.low, self.high
        if self.kind == "log_uniform":
            low, high = math.exp(low), math.exp(high)
        if self.kind == "int_uniform":
            low, high = int(low), int(high)
        yield "min", low
        yield "max", high

    def to_dict(self) -> dict[str, Any]:
        """The W&B-style mapping written to the resolved sweep file."""
        if self.kind == "categorical":
            return {"values": list(self.values)}
        if self.kind == "constant":
            return {"value": self.values[0]}
        out: dict[str, Any] = {"distribution": self.kind, "min": self.low, "max": self.high}
        if self.q is not None:
            out["q"] = self.q
        return out


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file, its base config text and everything a worker needs to run a trial."""

    source: str
    base_source: str
    base_text: str
    name: str
    metric: str
    goal: str
    method: str
    trials: int
    seed: int
    startup_trials: int
    pruner: dict[str, Any]
    storage: str | None
    overrides: tuple[str, ...]
    parameters: tuple[Parameter, ...]
    base_config: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def override_texts(self, values: Mapping[str, Any]) -> list[str]:
        """The -s overrides of one trial: the fixed ones, then each parameter's value (JSON is YAML)."""
        return [*self.overrides, *(f"{k}={json.dumps(v)}" for k, v in values.items())]

    def trial_config(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The resolved config of one trial: base + overrides + these parameter values (ConfigError)."""
        return parse_config_text(self.base_text, self.base_source, self.override_texts(values),
                                 default_name(Path(self.base_source).stem))

    def grid(self) -> dict[str, list[Any]]:
        """method grid: each parameter's values (a constant is a one-value list)."""
        return {p.key: list(p.values) for p in self.parameters}

    def to_yaml(self, base: str) -> str:
        """The resolved sweep file (every default filled in), with `base` as its base path."""
        data = {
            "base": base, "name": self.name, "metric": {"name": self.metric, "goal": self.goal},
            "method": self.method, "trials": self.trials, "seed": self.seed, "startup_trials": self.startup_trials,
            "pruner": self.pruner, "storage": self.storage, "overrides": list(self.overrides),
            "parameters": {p.key: p.to_dict() for p in self.parameters},
        }
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)


class _Located:
    """Raises ConfigErrors at a key path of the sweep file, with the line it is on."""

    def __init__(self, source: str, lines: Mapping[str, int]):
        self.source, self.lines = source, lines

    def error(self, message: str, path: str, line_key: str | None = None) -> ConfigError:
        key = line_key if line_key is not None else path
        while key and key not in self.lines:
            key = key.rpartition(".")[0]
        return ConfigError(message, path, self.source, self.lines.get(key))

    def section(self, raw: Any, options: Mapping[str, Option], path: str, ignore: Iterable[str] = ()
                ) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.error(f"expected a mapping, got {_kind(raw)}", path)
        given = {k: v for k, v in raw.items() if k not in ignore}
        try:
            return validate_options(options, given, path)
        except ConfigError as e:
            raise self.error(e.message, join_key(path, e.path) if e.path else path) from None


def load_sweep(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> SweepSpec:
    """Read and validate a sweep file; `overrides` (-s) apply to every trial after the file's own."""
    return parse_sweep(read_text(path), str(path), overrides)


def parse_sweep(text: str, source: str, overrides: Iterable[str] = (), base_text: str | None = None,
                base_source: str | None = None) -> SweepSpec:
    """Validate sweep YAML `text`. The base config is read from the file `base` names (relative to
    `source`'s folder) unless its text is given (a study that carries its own copy)."""
    raw, lines = parse_yaml(text, source)
    at = _Located(source, lines)
    if not isinstance(raw, Mapping):
        raise at.error(f"a sweep file is a mapping with base, metric, parameters (and name, method, trials, "
                       f"seed, pruner, storage), got {_kind(raw)}", "")
    for key in raw:
        if key not in TOP_OPTIONS and key not in SECTIONS:
            raise at.error(unknown_key_message(key, [*TOP_OPTIONS, *SECTIONS], "the sweep file"), str(key))
    for key in ("base", "metric", "parameters"):
        if key not in raw:
            raise at.error(f"missing '{key}'; a sweep file needs base, metric and parameters", "")
    top = at.section({k: v for k, v in raw.items() if k in TOP_OPTIONS}, TOP_OPTIONS, "")
    if base_text is None:
        base_source = os.path.normpath(Path(source).parent / top["base"])
        try:
            base_text = read_text(base_source)
        except ConfigError as e:
            raise at.error(f"{base_source}: {e.message}", "base") from None
    base_source = base_source or top["base"]
    fixed = [*_overrides(raw.get("overrides"), at), *overrides]
    base = parse_config_text(base_text, base_source, fixed, default_name(Path(base_source).stem))
    metric, goal = _metric(raw["metric"], base, at)
    parameters = _parameters(raw["parameters"], top["method"], base, fixed, at)
    spec = SweepSpec(
        source=source, base_source=base_source, base_text=base_text,
        name=_name(top["name"], source, at), metric=metric, goal=goal, method=top["method"],
        trials=_trials(top, parameters, at), seed=top["seed"], startup_trials=top["startup_trials"],
        pruner=_pruner(raw.get("pruner"), at), storage=_storage(top["storage"], at), overrides=tuple(fixed),
        parameters=parameters, base_config=base)
    _check_samples(spec, at)
    return spec


def _name(name: str | None, source: str, at: _Located) -> str:
    if name is None:
        return default_name(Path(source).stem)
    if default_name(name) != name:
        raise at.error(f"got {name!r}, expected a name usable in a folder name: letters, digits, '.', '_', "
                       f"'+' or '-', starting with a letter or digit (e.g. {default_name(name)!r})", "name")
    return name


def _overrides(raw: Any, at: _Located) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise at.error(f"expected a list of key.path=value strings, e.g. [train.epochs=3], got {_kind(raw)}",
                       "overrides")
    for i, text in enumerate(raw):
        if not isinstance(text, str):
            raise at.error(f"expected a key.path=value string, got {_kind(text)} (quote an item that holds "
                           "': ', e.g. \"scheduler={type: cosine}\")", f"overrides[{i}]")
        try:
            parse_override(text)
        except ConfigError as e:
            raise at.error(e.message, f"overrides[{i}]") from None
    return list(raw)


def _metric(raw: Any, base: Mapping[str, Any], at: _Located) -> tuple[str, str]:
    metric = at.section(raw, METRIC_OPTIONS, "metric")
    name, goal = metric["name"], metric["goal"]
    if goal is None:
        goal = "maximize" if name.endswith("_acc") else "minimize"
    if name.startswith("val_") and base["data"]["val_size"] == 0:
        raise at.error(f"{name} needs a validation split, but the base config's data.val_size is 0: use "
                       "train_loss or train_acc, or set data.val_size > 0", "metric.name")
    return name, goal


def _pruner(raw: Any, at: _Located) -> dict[str, Any]:
    if raw is None:
        return {"type": "none"}
    if not isinstance(raw, Mapping) or "type" not in raw:
        raise at.error(f"expected a mapping with a type ({', '.join(PRUNERS)}), got "
                       f"{_kind(raw) if not isinstance(raw, Mapping) else 'no type'}", "pruner")
    kind = raw["type"]
    if kind not in PRUNERS:
        raise at.error(f"got {kind!r}, expected one of {', '.join(PRUNERS)}{closest(kind, PRUNERS)}", "pruner.type")
    options = at.section(raw, PRUNERS[kind], "pruner", ignore=("type",))
    if kind == "threshold" and options["lower"] is None and options["upper"] is None:
        raise at.error("a threshold pruner needs lower, upper or both", "pruner")
    return {"type": kind, **options}


def _storage(url: str | None, at: _Located) -> str | None:
    if url is not None and not url.startswith(_STORAGE_SCHEMES):
        raise at.error(f"got {url!r}, expected null (a journal file in the sweep folder) or a "
                       "postgresql://user:password@host:port/database URL", "storage")
    return url


def _trials(top: Mapping[str, Any], parameters: tuple[Parameter, ...], at: _Located) -> int:
    trials = top["trials"]
    if top["method"] == "grid":
        size = math.prod(len(p.values) for p in parameters)
        if size > MAX_TRIALS:
            raise at.error(f"the grid has {size:,} points; at most {MAX_TRIALS:,} trials", "parameters")
        if trials is not None and trials != size:
            raise at.error(f"got {trials}, but a grid sweep runs the whole grid: {size} trials (leave trials "
                           "out, or use method random to run a part)", "trials")
        return size
    if trials is None:
        raise at.error(f"missing: how many trials in all (method {top['method']})", "trials")
    return trials


def _parameters(raw: Any, method: str, base: Mapping[str, Any], fixed: list[str], at: _Located
                ) -> tuple[Parameter, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise at.error("expected a mapping of key paths to what to search, e.g. "
                       "{optimizer.lr: {distribution: log_uniform_values, min: 1.0e-4, max: 0.3}}", "parameters")
    fixed_keys = {parse_override(o)[1] for o in fixed}
    out, keys = [], []
    for key, spec in raw.items():
        path = f"parameters[{key}]"
        line_key = join_key("parameters", key)
        try:
            steps, parsed_key, _ = parse_override(f"{key}=0")
        except ConfigError as e:
            raise at.error(e.message.replace("override '" + f"{key}=0" + "': ", ""), path, line_key) from None
        _check_exists(steps, parsed_key, base, path, line_key, at)
        if parsed_key in fixed_keys:
            raise at.error(f"{parsed_key} is also set by an override (overrides or -s); a key is either "
                           "fixed or searched", path, line_key)
        for other in keys:
            if parsed_key.startswith((other + ".", other + "[")) or other.startswith((parsed_key + ".",
                                                                                     parsed_key + "[")):
                raise at.error(f"{parsed_key} and {other} overlap: search one or the other", path, line_key)
        keys.append(parsed_key)
        out.append(_parameter(parsed_key, spec, method, path, line_key, at))
    return tuple(out)


def _check_exists(steps: list[str | int], key: str, base: Any, path: str, line_key: str, at: _Located) -> None:
    node = base
    for step in steps:
        ok = (isinstance(step, int) and isinstance(node, list) and step < len(node)) or (
            isinstance(step, str) and isinstance(node, Mapping) and step in node)
        if not ok:
            hint = closest(key, list(_leaf_paths(base)))
            raise at.error(f"{key} is no key of the base config{hint}; a parameter searches a value the "
                           "base config has (see nntrain print-config BASE)", path, line_key)
        node = node[step]


def _leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _leaf_paths(v, join_key(prefix, k))
    elif isinstance(node, list) and node and all(isinstance(v, Mapping) for v in node):
        for i, v in enumerate(node):
            yield from _leaf_paths(v, join_key(prefix, i))
    else:
        yield prefix


def _parameter(key: str, spec: Any, method: str, path: str, line_key: str, at: _Located) -> Parameter:
    def err(message: str, sub: str = "") -> ConfigError:
        return at.error(message, f"{path}.{sub}" if sub else path, f"{line_key}.{sub}" if sub else line_key)

    if not isinstance(spec, Mapping):
        raise err(f"expected a mapping such as {{values: [...]}} or {{distribution: uniform, min: ..., max: ...}}, "
                  f"got {_kind(spec)}")
    for k in spec:
        if k not in PARAMETER_KEYS:
            raise err(unknown_key_message(k, PARAMETER_KEYS, f"parameter {key}"), str(k))
    kind = spec.get("distribution")
    if kind is None:
        kind = ("categorical" if "values" in spec else "constant" if "value" in spec else
                "int_uniform" if _is_int(spec.get("min")) and _is_int(spec.get("max")) else "uniform")
    if kind in UNSUPPORTED:
        raise err(f"{kind} has no Optuna counterpart; use one of {', '.join(DISTRIBUTIONS)}", "distribution")
    if kind not in DISTRIBUTIONS:
        raise err(f"got {kind!r}, expected one of {', '.join(DISTRIBUTIONS)}{closest(kind, DISTRIBUTIONS)}",
                  "distribution")
    wanted = {"categorical": ("values",), "constant": ("value",), "q_uniform": ("min", "max", "q")}.get(
        kind, ("min", "max"))
    for k in PARAMETER_KEYS[1:]:
        if k in spec and k not in wanted:
            raise err(f"{kind} takes {', '.join(wanted)}, not {k}", k)
        if k not in spec and k in wanted:
            raise err(f"missing '{k}' ({kind} takes {', '.join(wanted)})")
    if method == "grid" and kind not in ("categorical", "constant"):
        raise err("a grid sweep needs a list of values for each parameter ({values: [...]}), "
                  f"not the {kind} distribution", "distribution" if "distribution" in spec else "")
    if kind in ("categorical", "constant"):
        values = spec["values"] if kind == "categorical" else [spec["value"]]
        sub = "values" if kind == "categorical" else "value"
        if not isinstance(values, list) or not values:
            raise err(f"expected a non-empty list, got {_kind(values)}", sub)
        for i, v in enumerate(values):
            if v is not None and not isinstance(v, (str, bool, int, float)):
                raise err(f"got {_kind(v)}; a searched value is a single number, string, true/false or null "
                          "(search a list-valued key through its items, e.g. model[0].kernel_size)",
                          f"{sub}[{i}]" if kind == "categorical" else sub)
        if len({json.dumps(v) for v in values}) != len(values):
            raise err("lists a value twice", sub)
        return Parameter(key, kind, tuple(values))
    low, high = spec["min"], spec["max"]
    for k, v in (("min", low), ("max", high)):
        if not _is_number(v) or (kind == "int_uniform" and not _is_int(v)):
            raise err(f"got {v!r}, expected {'an integer' if kind == 'int_uniform' else 'a number'}", k)
    if not low < high:
        raise err(f"min ({low}) must be below max ({high}); for a single value use {{value: {low}}}", "max")
    if kind == "log_uniform_values" and low <= 0:
        raise err(f"got {low}: a log distribution needs min > 0 (log_uniform_values takes the values "
                  "themselves, e.g. min: 1.0e-4)", "min")
    q = None
    if kind == "q_uniform":
        q = spec["q"]
        if not _is_number(q) or q <= 0:
            raise err(f"got {q!r}, expected a number > 0", "q")
        steps = (high - low) / q
        if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):
            raise err(f"max - min ({high - low:g}) must be a multiple of q ({q:g})", "q")
    return Parameter(key, kind, (), low, high, q)


def _check_samples(spec: SweepSpec, at: _Located) -> None:
    """Each parameter's listed values and range ends, one at a time on the base config."""
    for p in spec.parameters:
        for sub, value in p.samples():
            try:
                spec.trial_config({p.key: value})
            except ConfigError as e:
                where = f" at {e.path}" if e.path and e.path != p.key else ""
                message = e.message.replace(f" (set by the override '{p.key}={json.dumps(value)}')", "")
                raise at.error(f"{p.key}={json.dumps(value)} is refused by the config schema{where}: {message}",
                               f"parameters[{p.key}].{sub}",
                               f"{join_key('parameters', p.key)}.{sub}") from None
