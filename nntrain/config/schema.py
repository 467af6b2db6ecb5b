"""The config schema, in one declarative place, and the validator that checks a raw config against it
and fills in every default (the "resolved config").

Sections that name a registered type (model layers, optimizer, scheduler, augmentations) are checked
against that type's declared `options`; the registries are imported lazily so that loading a config
does not pull in the whole package. Errors carry key paths (`optimizer.lr`, `model[3].kernel_size`);
the caller adds the file and line.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Callable, Mapping

import numpy as np

from nntrain.errors import ConfigError
from nntrain.options import Option, split_typed_spec, unknown_key_message, validate_options

DATASETS = ("mnist", "fashion-mnist", "cifar10", "mnist-mini")
MONITORS = ("val_loss", "val_acc", "train_loss", "train_acc")

# Used only until nntrain.data.dataset_info is available: per-sample input shape, classes, train size.
_FALLBACK_INFO = {
    "mnist": ((1, 28, 28), 10, 60000),
    "fashion-mnist": ((1, 28, 28), 10, 60000),
    "cifar10": ((3, 32, 32), 10, 50000),
    "mnist-mini": ((1, 28, 28), 10, None),
}
# val_size default per dataset: mnist-mini has only a few thousand training images.
DEFAULT_VAL_SIZE = {"mnist": 5000, "fashion-mnist": 5000, "cifar10": 5000, "mnist-mini": 500}

_UNSET = None  # default of options resolved after their section (val_size, monitors): see below

# --- the schema -----------------------------------------------------------------------------------
TOP_LEVEL = ("name", "seed", "data", "model", "loss", "optimizer", "scheduler", "train")
REQUIRED_TOP_LEVEL = ("data", "model", "optimizer")

TOP_OPTIONS = {
    "name": Option("str", doc="run name, used in the run folder name; default: the config file's stem"),
    "seed": Option("int", 0, minimum=0, doc="seed of every random draw"),
}
DATA_OPTIONS = {
    "dataset": Option("str", choices=DATASETS, doc="which dataset"),
    "root": Option("str", None, nullable=True, doc="data folder; null: $NNTRAIN_DATA, else ~/.cache/nntrain"),
    "val_size": Option("int", _UNSET, minimum=0,
                       doc="training images held out for validation; default 5000 (mnist-mini: 500)"),
    "normalize": Option("bool", True, doc="per-channel mean/std from the training split"),
    "download": Option("bool", True, doc="download missing files"),
}
LOSS_OPTIONS = {
    "type": Option("str", "softmax_cross_entropy", choices=("softmax_cross_entropy",), doc="the loss"),
    "softmax": Option("bool", True, doc="false: the model outputs probabilities, not logits"),
    "label_smoothing": Option("float", 0.0, minimum=0.0, maximum=1.0, exclusive_max=True,
                              doc="target = (1-ε)·onehot + ε/K"),
}
TRAIN_OPTIONS = {
    "epochs": Option("int", 10, minimum=1),
    "batch_size": Option("int", 64, minimum=1),
    "eval_batch_size": Option("int", 256, minimum=1, doc="batch size for validation and test; conv im2col memory grows with it"),
    "checkpoint_monitor": Option("str", _UNSET, choices=MONITORS,
                                 doc="metric that picks best.npz; default val_acc (train_acc when val_size is 0)"),
}
EARLY_STOPPING_OPTIONS = {
    "monitor": Option("str", _UNSET, choices=MONITORS, doc="default val_acc (train_acc when val_size is 0)"),
    "mode": Option("str", "auto", choices=("min", "max", "auto"), doc="auto: max for *_acc, min for *_loss"),
    "patience": Option("int", 5, minimum=1, doc="epochs without improvement before stopping"),
    "min_delta": Option("float", 0.0, minimum=0.0, doc="smallest change that counts as an improvement"),
    "restore_best": Option("bool", True, doc="put the best weights back at the end"),
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


# --- helpers --------------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """Plain YAML/JSON-able data: tuples become lists, NumPy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def normalized(options: Mapping[str, Option], values: Mapping[str, Any]) -> dict[str, Any]:
    """Values in the form their Option gives them (a pair default `1` becomes [1, 1]), as plain data.

    validate_options returns defaults as declared; normalising them makes the resolved config a fixed
    point: validating its dump gives the same dict. Values an Option would refuse (a None standing
    for "resolved later") are kept as they are.
    """
    out = {}
    for key, value in values.items():
        opt = options.get(key)
        if opt is not None:
            try:
                value = opt.validate(value, key)
            except ConfigError:
                pass
        out[key] = plain(value)
    return out


def _located(path: str, fn: Callable[[], Any]) -> Any:
    """Run fn, putting `path` before the key path of any ConfigError it raises."""
    try:
        return fn()
    except ConfigError as e:
        raise e.located(prefix=path) from None


def _mapping(value: Any, path: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping ({what}), got {_kind(value)}", path)
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"{type(value).__name__} {value!r}"[:80]


def _section(given: Any, path: str, options: Mapping[str, Option], nested: Mapping[str, Any],
             what: str) -> dict[str, Any]:
    """Validate a flat section plus its nested keys (validated by the caller): unknown keys are
    reported against both. Returns the declared options resolved, nested keys left as given."""
    given = _mapping(given, path, what)
    for key in given:
        if key not in options and key not in nested:
            raise ConfigError(unknown_key_message(key, [*options, *nested], path), f"{path}.{key}")
    flat = {k: v for k, v in given.items() if k in options}
    return _located(path, lambda: validate_options(options, flat, path))


def _registry(module: str, attr: str, feature: str, path: str) -> Mapping[str, type]:
    """A registry imported on first use; a ConfigError if this build of nntrain does not have it."""
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
    except AttributeError:
        pass
    raise ConfigError(f"{feature} are not available in this version of nntrain ({module}.{attr} is missing)", path)


def _registered(spec: Any, registry: Mapping[str, type], what: str, path: str,
                context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`{type: name, ...options}` checked against registry[name].options, or by the class's own
    `validate` classmethod where it has one (for checks that span options, like lr > 0); `context`
    values (epochs=...) are passed to that classmethod where its signature names them."""
    spec = _mapping(spec, path, f"{what} with a 'type' key")
    cls, opts = split_typed_spec(spec, registry, path, what)
    name = spec["type"]
    where = f"{what} '{name}'"
    if isinstance(inspect.getattr_static(cls, "validate", None), classmethod):
        accepted = inspect.signature(cls.validate).parameters
        extra = {k: v for k, v in (context or {}).items() if k in accepted}
        values = _located(path, lambda: cls.validate(opts, **extra))
    else:
        values = _located(path, lambda: validate_options(cls.options, opts, where))
    return {"type": name, **normalized(cls.options, values)}


def dataset_shape(dataset: str) -> tuple[tuple[int, ...], int, int | None]:
    """(per-sample input shape, number of classes, training images or None) of a dataset."""
    try:
        from nntrain.data import dataset_info
    except ImportError:
        try:
            from nntrain.data.registry import dataset_info
        except ImportError:  # nntrain.data without dataset_info yet: the known shapes
            return _FALLBACK_INFO[dataset]
    info = dataset_info(dataset)
    shape, classes, n_train = _FALLBACK_INFO[dataset]
    n_train = getattr(info, "num_train", getattr(info, "train_size", n_train))
    return tuple(int(s) for s in info.input_shape), int(getattr(info, "num_classes", classes)), n_train


# --- sections -------------------------------------------------------------------------------------
def _name(raw: Mapping[str, Any], default: str | None) -> str:
    if "name" not in raw:
        if default is None:
            raise ConfigError("missing 'name' (a short run name such as mnist-cnn)", "name")
        return default
    name = TOP_OPTIONS["name"].validate(raw["name"], "name")
    if not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"got {name!r}, expected a run name usable in a folder name: 1-100 letters, "
                          "digits, '.', '_', '+' or '-', starting with a letter or digit, without '..'", "name")
    return name


def default_name(stem: str) -> str:
    """A valid run name made from a file stem ('my config' -> 'my-config')."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-._+")[:100].replace("..", ".")
    return name or "run"


def _data(raw: Any) -> dict[str, Any]:
    data = _section(raw, "data", DATA_OPTIONS, {"augment": None}, "the data section")
    if data["val_size"] is _UNSET:
        data["val_size"] = DEFAULT_VAL_SIZE[data["dataset"]]
    n_train = dataset_shape(data["dataset"])[2]
    if n_train is not None and data["val_size"] >= n_train:
        raise ConfigError(f"got {data['val_size']}, but {data['dataset']} has {n_train} training images; "
                          f"expected an integer in [0, {n_train - 1}]", "data.val_size")
    augment = raw.get("augment", [])
    if augment is None:
        augment = []
    if not isinstance(augment, (list, tuple)):
        raise ConfigError(f"expected a list of {{type: ..., options}} augmentations, got {_kind(augment)}",
                          "data.augment")
    if augment:
        registry = _registry("nntrain.data.augment", "AUGMENTATIONS", "augmentations", "data.augment")
        augment = [_registered(a, registry, "augmentation", f"data.augment[{i}]") for i, a in enumerate(augment)]
    data["augment"] = list(augment)
    return data


def _model(raw: Any, dataset: str) -> list[dict[str, Any]]:
    """Each layer created from its spec and its output shape inferred from the dataset's input shape.

    Shape inference finds every impossible shape without allocating weights, so a hostile config
    (`out_features: 1e12`) cannot exhaust memory while being validated.
    """
    from nntrain.nn.layers import REGISTRY, layer_from_spec

    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"expected a non-empty list of layers ({{type: linear, out_features: 10}}, ...), "
                          f"got {_kind(raw) if raw is not None and raw != [] else 'nothing'}", "model")
    shape, classes, _ = dataset_shape(dataset)
    layers = []
    for i, spec in enumerate(raw):
        path = f"model[{i}]"
        if isinstance(spec, Mapping) and not isinstance(spec.get("type", ""), str):
            raise ConfigError(f"got {_kind(spec['type'])}, expected a layer type name: one of "
                              f"{', '.join(sorted(REGISTRY))}", f"{path}.type")
        layer = layer_from_spec(spec, path)
        try:
            shape = tuple(int(s) for s in layer.output_shape(shape))
        except ConfigError as e:
            raise e.located(prefix=path) from None
        layers.append({"type": layer.type_name, **normalized(layer.options, layer.config)})
    if shape != (classes,):
        raise ConfigError(f"the last layer outputs shape {shape}, but {dataset} has {classes} classes: the "
                          f"model must end with an output of shape ({classes},), e.g. "
                          f"{{type: linear, out_features: {classes}}}", f"model[{len(raw) - 1}]")
    return layers


def _monitor(value: Any, val_size: int, path: str) -> str:
    if value is _UNSET:
        return "val_acc" if val_size > 0 else "train_acc"
    if value.startswith("val_") and val_size == 0:
        raise ConfigError(f"{value} needs a validation split, but data.val_size is 0: monitor one of "
                          "train_loss, train_acc, or set data.val_size > 0", path)
    return value


def _train(raw: Any, val_size: int) -> dict[str, Any]:
    train = _section(raw if raw is not None else {}, "train", TRAIN_OPTIONS, {"early_stopping": None},
                     "the train section")
    train["checkpoint_monitor"] = _monitor(train["checkpoint_monitor"], val_size, "train.checkpoint_monitor")
    es = (raw or {}).get("early_stopping")
    if es is not None:
        es = _section(es, "train.early_stopping", EARLY_STOPPING_OPTIONS, {}, "early stopping options, or null")
        es["monitor"] = _monitor(es["monitor"], val_size, "train.early_stopping.monitor")
    train["early_stopping"] = es
    return train


def validate(raw: Any, default_name_: str | None = None) -> dict[str, Any]:
    """The resolved config of `raw`, or a ConfigError with the key path (no file or line)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"the config must be a mapping of sections ({', '.join(TOP_LEVEL)}), got {_kind(raw)}")
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(unknown_key_message(key, TOP_LEVEL, "the config"), str(key))
    for key in REQUIRED_TOP_LEVEL:
        if key not in raw:
            raise ConfigError(f"missing required section '{key}'; a config needs {', '.join(REQUIRED_TOP_LEVEL)}",
                              key)
    cfg: dict[str, Any] = {"name": _name(raw, default_name_)}
    cfg["seed"] = TOP_OPTIONS["seed"].validate(raw.get("seed", 0), "seed")
    cfg["data"] = _data(raw["data"])
    cfg["model"] = _model(raw["model"], cfg["data"]["dataset"])
    loss = raw.get("loss")
    cfg["loss"] = _section(loss if loss is not None else {}, "loss", LOSS_OPTIONS, {}, "the loss")
    from_optim = _registry("nntrain.nn.optim", "OPTIMIZERS", "optimizers", "optimizer")
    cfg["optimizer"] = _registered(raw["optimizer"], from_optim, "optimizer", "optimizer")
    train = _train(raw.get("train"), cfg["data"]["val_size"])  # before the scheduler: it needs epochs
    scheduler = raw.get("scheduler")
    if scheduler is not None:
        schedulers = _registry("nntrain.nn.schedulers", "SCHEDULERS", "learning-rate schedulers", "scheduler")
        scheduler = _registered(scheduler, schedulers, "scheduler", "scheduler", {"epochs": train["epochs"]})
    cfg["scheduler"] = scheduler
    cfg["train"] = train
    return cfg
