"""The config schema, in one declarative place, and the validator that checks a raw config against it
and fills in every default (the "resolved config").

Plain sections (data, train, early stopping) are declared here as `Option`s; sections that name a
registered type (model layers, loss, optimizer, scheduler, augmentations) are resolved by their
registry, once: the builders take the resolved specs as they are. Errors carry key paths
(`optimizer.lr`, `model[3].kernel_size`); the caller adds the file and line.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping

from nntrain.data.augment import AUGMENTATIONS
from nntrain.data.registry import CONFIGURED, DATASETS, DatasetInfo, data_info
from nntrain.data.tta import TTA_VIEWS
from nntrain.errors import ConfigError, ConfigErrors, DataError
from nntrain.nn.layers import LAYERS
from nntrain.nn.layers.blocks import leaves
from nntrain.nn.losses import LOSSES
from nntrain.nn.optim import OPTIMIZERS
from nntrain.nn.schedulers import SCHEDULERS
from nntrain.options import Option, plain, unknown_key_message, validate_options
from nntrain.registry import _kind

log = logging.getLogger(__name__)

MONITORS = ("val_loss", "val_acc", "train_loss", "train_acc")

# --- the schema -----------------------------------------------------------------------------------
TOP_LEVEL = ("name", "seed", "data", "model", "loss", "optimizer", "scheduler", "train", "logging")
REQUIRED_TOP_LEVEL = ("data", "model", "optimizer")

TOP_OPTIONS = {
    "name": Option("str", doc="run name, used in the run folder name; when absent: the config file's stem"),
    "seed": Option("int", 0, minimum=0, doc="seed of every random draw"),
}
DATA_OPTIONS = {
    "dataset": Option("str", choices=(*DATASETS, *CONFIGURED),
                      doc="which dataset; folder: an image folder (root), csv: a CSV file (path). Both take "
                          "data.classes, a list of class names in label order (null: every class found, "
                          "sorted; the resolved config records them, so a run reloads without its data)"),
    "root": Option("str", None, nullable=True,
                   doc="data folder; null: $NNTRAIN_DATA, else ~/.cache/nntrain. dataset: folder: the image "
                       "folder, ROOT/<class>/*.png|jpg|jpeg|bmp|gif|webp or ROOT/train/<class>/... + "
                       "ROOT/test/<class>/..."),
    "val_size": Option("int", None, minimum=0, nullable=True,
                       doc="training images held out for validation; null: the dataset's default "
                           "(5000; mnist-mini: 500; folder, csv: a tenth of the training images)"),
    "normalize": Option("bool", True, doc="per-channel mean/std from the training split"),
    "download": Option("bool", True, doc="download missing files"),
    "path": Option("str", None, nullable=True,
                   doc="dataset: csv: the CSV file, label,pixel0,pixel1,... (with image_shape) or path,label "
                       "(image files relative to it, with image_size and color); a header row is required"),
    "test_path": Option("str", None, nullable=True,
                        doc="dataset: csv: a CSV of test images in the same form; null: a test split of test_size"),
    "image_size": Option("ints", None, minimum=1, maximum=4096, length=2, nullable=True,
                         doc="folder, csv of paths: [H, W] every image is resized to"),
    "image_shape": Option("ints", None, minimum=1, maximum=4096, length=3, nullable=True,
                          doc="csv of pixel values: [C, H, W] of each row's pixels"),
    "color": Option("str", "rgb", choices=("grey", "rgb"), doc="folder, csv of paths: images converted to "
                                                                  "grey (1 channel) or rgb (3)"),
    "test_size": Option("float", 0.2, minimum=0.0, maximum=1.0, exclusive_min=True, exclusive_max=True,
                        doc="folder, csv without a test part: the share of each class held out for testing "
                            "(drawn with the seed)"),
    "strict": Option("bool", False, doc="folder, csv: refuse unreadable images instead of skipping them "
                                        "(a warning names them; more than a tenth unreadable is refused anyway)"),
}
TRAIN_OPTIONS = {
    "epochs": Option("int", 10, minimum=1, doc="passes over the training split"),
    "batch_size": Option("int", 64, minimum=1, doc="training images per gradient step"),
    "eval_batch_size": Option("int", 256, minimum=1,
                              doc="batch size for validation and test; conv im2col memory grows with it"),
    "tta": Option("str", "none", choices=TTA_VIEWS,
                  doc="test-time augmentation in validation, test, eval and predict: hflip averages the class "
                      "probabilities of each image and its left-right mirror image (not for digits or text)"),
    "checkpoint_monitor": Option("str", None, choices=MONITORS, nullable=True,
                                 doc="metric that picks best.npz; null: early stopping's monitor if there is one, else "
                                     "val_acc (train_acc when val_size is 0)"),
}
EARLY_STOPPING_OPTIONS = {
    "monitor": Option("str", None, choices=MONITORS, nullable=True,
                      doc="null: val_acc (train_acc when val_size is 0)"),
    "mode": Option("str", "auto", choices=("min", "max", "auto"), doc="auto: max for *_acc, min for *_loss"),
    "patience": Option("int", 5, minimum=1, doc="epochs without improvement before stopping"),
    "min_delta": Option("float", 0.0, minimum=0.0, doc="smallest change that counts as an improvement"),
    "restore_best": Option("bool", True, doc="put the best weights back at the end"),
}
LOGGING_OPTIONS = {
    "tensorboard": Option("bool", False, doc="also write per-epoch loss, accuracy, lr and grad_norm as TensorBoard "
                                             "events into RUN_DIR/tb/ (needs pip install \"nntrain[tensorboard]\")"),
}
# The plain sections with their options and nested keys, for validation and for `print-config --explain`.
SECTIONS: dict[str, tuple[dict[str, Option], tuple[str, ...]]] = {
    "data": (DATA_OPTIONS, ("augment", "classes")),
    "train": (TRAIN_OPTIONS, ("early_stopping",)),
    "train.early_stopping": (EARLY_STOPPING_OPTIONS, ()),
    "logging": (LOGGING_OPTIONS, ()),
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


# --- helpers --------------------------------------------------------------------------------------
def _section(given: Any, path: str) -> dict[str, Any]:
    """Validate a plain section (SECTIONS[path]): unknown keys are reported against its options and
    its nested keys. Returns the declared options resolved, nested keys left out."""
    options, nested = SECTIONS[path]
    if not isinstance(given, Mapping):
        raise ConfigError(f"expected a mapping (the {path} section), got {_kind(given)}", path)
    for key in given:
        if key not in options and key not in nested:
            raise ConfigError(unknown_key_message(key, [*options, *nested], path), f"{path}.{key}")
    try:
        return plain(validate_options(options, {k: v for k, v in given.items() if k in options}, path))
    except ConfigError as e:
        raise e.located(prefix=path) from None


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


def _classes(raw: Mapping[str, Any], dataset: str) -> list[str] | None:
    """data.classes: class names in label order (folder, csv); the resolved config fills them in."""
    classes = raw.get("classes")
    if classes is None:
        return None
    if dataset not in CONFIGURED:
        raise ConfigError(f"{dataset} has its own classes; data.classes applies to dataset: folder or csv",
                          "data.classes")
    if (not isinstance(classes, (list, tuple)) or len(classes) < 2
            or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)):
        raise ConfigError(f"expected a list of at least two class names, got {_kind(classes)}", "data.classes")
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ConfigError("class names must differ from each other", "data.classes")
    return classes


def _data_info(data: Mapping[str, Any], listing: bool = False) -> DatasetInfo:
    """`data_info`, with a DataError found while listing the files located at the key that names them."""
    try:
        return data_info(data, listing)
    except DataError as e:
        raise ConfigError(str(e), "data.path" if data["dataset"] == "csv" else "data.root") from None


# keys of image folders and CSV files only: absent from the resolved config of a named dataset
CONFIGURED_KEYS = ("path", "test_path", "image_size", "image_shape", "color", "test_size", "strict")


def _data(raw: Any) -> dict[str, Any]:
    data = _section(raw, "data")
    if data["dataset"] not in CONFIGURED:
        for key in CONFIGURED_KEYS:
            if key in raw:
                raise ConfigError(f"{data['dataset']} has a fixed form: data.{key} applies to dataset: folder "
                                  "or csv only", f"data.{key}")
            del data[key]
    data["classes"] = _classes(raw, data["dataset"])
    info = _data_info(data, listing=data["val_size"] is None)   # a default val_size needs the sizes
    if data["dataset"] in CONFIGURED:
        data["classes"] = list(info.class_names)
    else:
        del data["classes"]
    if data["val_size"] is None:
        data["val_size"] = info.val_size
    if info.num_train and data["val_size"] >= info.num_train:
        raise ConfigError(f"got {data['val_size']}, but {data['dataset']} has {info.num_train} training images; "
                          f"expected an integer in [0, {info.num_train - 1}]", "data.val_size")
    augment = raw.get("augment") or []
    if not isinstance(augment, (list, tuple)):
        raise ConfigError(f"expected a list of {{type: ..., options}} augmentations, got {_kind(augment)}",
                          "data.augment")
    data["augment"] = [AUGMENTATIONS.resolve(a, f"data.augment[{i}]") for i, a in enumerate(augment)]
    return data


def _model(raw: Any, info: DatasetInfo) -> list[dict[str, Any]]:
    """Each layer resolved and its output shape inferred from the dataset's input shape.

    Shape inference finds every impossible shape without allocating weights, so a hostile config
    (`out_features: 1e12`) cannot exhaust memory while being validated. A block (residual) resolves
    its layer lists and infers its branches' shapes itself; errors inside carry the nested key path
    (`model[4].body[2].out_channels`), and branches whose shapes disagree are named with both shapes.
    """
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"expected a non-empty list of layers ({{type: linear, out_features: 10}}, ...), "
                          f"got {_kind(raw) if raw is not None and raw != [] else 'nothing'}", "model")
    shape = info.input_shape
    layers = []
    for i, spec in enumerate(raw):
        path = f"model[{i}]"
        spec = LAYERS.resolve(spec, path)
        try:
            shape = tuple(int(s) for s in LAYERS.build(spec).output_shape(shape))
        except ConfigError as e:
            raise e.located(prefix=path) from None
        layers.append(spec)
    if shape != (info.num_classes,):
        raise ConfigError(f"the last layer outputs shape {shape}, but {info.name} has {info.num_classes} classes: "
                          f"the model must end with an output of shape ({info.num_classes},), e.g. "
                          f"{{type: linear, out_features: {info.num_classes}}}", f"model[{len(raw) - 1}]")
    return layers


def _monitor(value: str | None, val_size: int, path: str) -> str:
    if value is None:
        return "val_acc" if val_size > 0 else "train_acc"
    if value.startswith("val_") and val_size == 0:
        raise ConfigError(f"{value} needs a validation split, but data.val_size is 0: monitor one of "
                          "train_loss, train_acc, or set data.val_size > 0", path)
    return value


def _train(raw: Any, val_size: int) -> dict[str, Any]:
    train = _section(raw if raw is not None else {}, "train")
    es = (raw or {}).get("early_stopping")
    if es is not None:
        es = _section(es, "train.early_stopping")
        es["monitor"] = _monitor(es["monitor"], val_size, "train.early_stopping.monitor")
    train["early_stopping"] = es
    if train["checkpoint_monitor"] is None and es is not None:
        # stopping on a metric and keeping the best checkpoint by another would restore weights the
        # stopping rule never judged: best.npz follows early stopping's metric unless set apart
        train["checkpoint_monitor"] = es["monitor"]
    train["checkpoint_monitor"] = _monitor(train["checkpoint_monitor"], val_size, "train.checkpoint_monitor")
    return train


def _logging(raw: Any) -> dict[str, Any]:
    """The optional logging section; tensorboard: true needs tensorboardX (an optional extra)."""
    section = _section(raw if raw is not None else {}, "logging")
    if section["tensorboard"]:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise ConfigError('tensorboard: true needs tensorboardX: pip install "nntrain[tensorboard]"',
                              "logging.tensorboard") from None
    return section


def _available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable on Linux, physical memory elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(cfg: Mapping[str, Any], info: DatasetInfo, available: int | None) -> None:
    """Refuse a model whose float32 parameters, gradients and optimizer state cannot fit in memory,
    naming the layer that needs the most (a typo like `out_features: 100000000`)."""
    if available is None:
        return
    copies = 2 + len(OPTIMIZERS[cfg["optimizer"]["type"]].state_names)   # param, grad, optimizer state
    shape, sizes = info.input_shape, []
    for i, spec in enumerate(cfg["model"]):
        layer = LAYERS.build(spec)
        # every layer inside a block on its own, so that the largest one is named by its key path
        sizes += [(leaf.num_params(leaf_shape), path, leaf.type_name)
                  for path, leaf, leaf_shape in leaves(layer, shape, f"model[{i}]")]
        shape = layer.output_shape(shape)
    total = sum(n for n, _, _ in sizes) * 4 * copies
    if total > available:
        n, path, kind = max(sizes, key=lambda size: size[0])
        raise ConfigError(
            f"the model needs {_gb(total)} for its parameters, their gradients and the "
            f"{cfg['optimizer']['type']} state, but this machine has {_gb(available)} available; "
            f"{kind} {path} alone has {n:,} parameters ({_gb(n * 4 * copies)}): is a size off by a few "
            "zeros?", path)


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def _collect(errors: list[ConfigError], check: Any) -> Any:
    """check() or, where it raises ConfigError(s), None with the error(s) appended to `errors`."""
    try:
        return check()
    except ConfigErrors as e:
        errors.extend(e.errors)
    except ConfigError as e:
        errors.append(e)
    return None


def validate_data_part(raw: Any, default_name_: str | None = None) -> dict[str, Any]:
    """`name`, `seed` and `data` of `raw` resolved, the other sections neither required nor checked
    (what looking at the data needs: `augment-preview`). Unknown top-level keys are still refused."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"the config must be a mapping of sections ({', '.join(TOP_LEVEL)}), got {_kind(raw)}")
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(unknown_key_message(key, TOP_LEVEL, "the config"), str(key))
    if "data" not in raw:
        raise ConfigError("missing required section 'data'", "data")
    errors: list[ConfigError] = []
    cfg = {"name": _collect(errors, lambda: _name(raw, default_name_)),
           "seed": _collect(errors, lambda: TOP_OPTIONS["seed"].validate(raw.get("seed", 0), "seed")),
           "data": _collect(errors, lambda: _data(raw["data"]))}
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return cfg


def validate(raw: Any, default_name_: str | None = None, available_memory: int | None = -1) -> dict[str, Any]:
    """The resolved config of `raw`, or a ConfigError with the key path (no file or line).

    available_memory: bytes the model may use (-1: ask the machine; None: do not check)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"the config must be a mapping of sections ({', '.join(TOP_LEVEL)}), got {_kind(raw)}")
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(unknown_key_message(key, TOP_LEVEL, "the config"), str(key))
    for key in REQUIRED_TOP_LEVEL:
        if key not in raw:
            raise ConfigError(f"missing required section '{key}'; a config needs {', '.join(REQUIRED_TOP_LEVEL)}",
                              key)
    # Sections are checked one after another, each mistake collected, so one run reports them all;
    # a section that depends on a failed one (model shapes on data.dataset) is skipped.
    errors: list[ConfigError] = []
    cfg: dict[str, Any] = {}
    cfg["name"] = _collect(errors, lambda: _name(raw, default_name_))
    cfg["seed"] = _collect(errors, lambda: TOP_OPTIONS["seed"].validate(raw.get("seed", 0), "seed"))
    cfg["data"] = _collect(errors, lambda: _data(raw["data"]))
    info = _data_info(cfg["data"]) if cfg["data"] else None
    if info is not None:
        cfg["model"] = _collect(errors, lambda: _model(raw["model"], info))
    loss = raw.get("loss")
    if loss is None or (isinstance(loss, Mapping) and "type" not in loss):
        loss = {"type": "softmax_cross_entropy", **(loss or {})}
    if info is not None:   # class_weights: one per class
        cfg["loss"] = _collect(errors, lambda: LOSSES.resolve(loss, "loss", {"num_classes": info.num_classes}))
    cfg["optimizer"] = _collect(errors, lambda: OPTIMIZERS.resolve(raw["optimizer"], "optimizer"))
    train = cfg["train"] = _collect(errors, lambda: _train(raw.get("train"), (cfg["data"] or {}).get("val_size", 1)))
    scheduler = raw.get("scheduler")
    if scheduler is not None and train and cfg["optimizer"]:
        # the optimizer too: onecycle's cycle_momentum needs one with a momentum (or beta1) to cycle
        scheduler = _collect(errors, lambda: SCHEDULERS.resolve(
            scheduler, "scheduler", {"epochs": train["epochs"], "optimizer": cfg["optimizer"]}))
    cfg = {key: cfg.get(key) for key in ("name", "seed", "data", "model", "loss", "optimizer")}
    cfg["scheduler"], cfg["train"] = scheduler, train
    if "logging" in raw:   # only when given: configs of earlier runs (without it) resolve as they did
        cfg["logging"] = _collect(errors, lambda: _logging(raw["logging"]))
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    _check_memory(cfg, info, _available_memory() if available_memory == -1 else available_memory)
    return cfg
