"""Configs are data: hostile YAML (tags, alias bombs, huge or deep files, bad bytes, odd paths) and
generated configs, valid or mutated, either load to a valid config or raise ConfigError, nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nntrain.config import dump_config, load_config, validate_config
from nntrain.config.yamlsafe import MAX_BYTES, MAX_DEPTH, MAX_NODES
from nntrain.errors import ConfigError
from nntrain.nn.layers import LAYERS

pytestmark = pytest.mark.reliability

VALID = """\
data: {dataset: mnist-mini}
model: [{type: flatten}, {type: linear, out_features: 10}]
optimizer: {type: sgd, lr: 0.1}
"""

BILLION_LAUGHS = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
) + "data: *i\n"


def load_bytes(tmp_path: Path, data: bytes, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    path = tmp_path / "hostile.yaml"
    path.write_bytes(data)
    return load_config(path, list(overrides))


def refused(tmp_path: Path, data: bytes | str, fragment: str) -> ConfigError:
    """Load `data` expecting a ConfigError whose message contains `fragment` (and no other exception)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with pytest.raises(ConfigError) as info:
        load_bytes(tmp_path, data)
    assert fragment in str(info.value), str(info.value)
    assert str(tmp_path / "hostile.yaml") in str(info.value)
    return info.value


@pytest.mark.parametrize("text", [
    "!!python/object/apply:os.system ['touch /tmp/pwned']\n",
    VALID + "name: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
    VALID + "seed: !!python/name:os.system\n",
    VALID + "name: !!binary aGVsbG8=\n",
    VALID + "name: !custom hello\n",
    VALID + "name: !!str hello\n",
    VALID.replace("data:", "data: !!set") + "",
    "--- !!python/object:collections.OrderedDict\ndata: {dataset: mnist}\n",
])
def test_yaml_tags_are_refused(tmp_path: Path, text: str) -> None:
    marker = Path("/tmp/pwned")
    assert not marker.exists()
    refused(tmp_path, text, "tags")
    assert not marker.exists()


def test_billion_laughs_is_refused_before_expansion(tmp_path: Path) -> None:
    start = time.perf_counter()
    refused(tmp_path, BILLION_LAUGHS, "expand (through aliases)")
    assert time.perf_counter() - start < 5.0


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, VALID + "train: &t {x: *t}\n", "nested more than")
    refused(tmp_path, "&a [*a]\n", "nested more than")


def test_small_aliases_still_work(tmp_path: Path) -> None:
    """Anchors are legitimate YAML; each use is a separate copy (an override of one never changes another)."""
    text = ("data: {dataset: mnist-mini}\nmodel:\n  - &hidden {type: linear, out_features: 8}\n"
            "  - *hidden\n  - {type: linear, out_features: 10}\noptimizer: {type: sgd, lr: 0.1}\n")
    text = text.replace("model:\n", "model:\n  - {type: flatten}\n")
    cfg = load_bytes(tmp_path, text.encode(), ("model[1].out_features=4",))
    assert [layer.get("out_features") for layer in cfg["model"]] == [None, 4, 8, 10]


@pytest.mark.parametrize("size", [MAX_BYTES + 1, 10_000_000])
def test_huge_files_are_refused_without_parsing(tmp_path: Path, size: int) -> None:
    data = VALID.encode() + b"#" * (size - len(VALID))
    start = time.perf_counter()
    refused(tmp_path, data, "larger than")
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    "{a: " * 5000 + "1" + "}" * 5000,
    "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n",
    VALID + "train: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n",
])
def test_deep_nesting_is_refused_without_recursion_error(tmp_path: Path, text: str) -> None:
    refused(tmp_path, text, "nested more than")


def test_many_values_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, "seed: [" + "0," * (MAX_NODES + 1) + "0]\n", "more than")


@pytest.mark.parametrize("data, fragment", [
    (b"\xff\xfe\x00d\x00a\x00t\x00a", "not UTF-8"),
    ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8"),
    (VALID.encode() + b"name: a\x00b\n", "unacceptable character"),
    (VALID.encode() + b"name: \x07bell\n", "unacceptable character"),
    (b"", "empty"),
    (b"   \n\n  \n", "empty"),
    (b"# only a comment\n", "empty"),
    (b"~\n", "empty"),
    (b"42\n", "top level must be a mapping"),
    (b"just a string\n", "top level must be a mapping"),
    (b"- a\n- b\n", "top level must be a mapping"),
    (VALID.encode() + b"---\nseed: 1\n", "invalid YAML"),
    (b"data: {dataset: mnist\n", "invalid YAML"),
    (b"data:\n\t- x\n", "invalid YAML"),
    (VALID.encode() + b"seed: 1\nseed: 2\n", "duplicate key 'seed'"),
    (b"data: {dataset: mnist, dataset: cifar10}\n", "duplicate key 'dataset'"),
    (VALID.encode() + b"seed: " + b"9" * 5000 + b"\n", "cannot read the value"),
    (VALID.encode() + b"? [a, b]\n: c\n", "plain string"),
    (VALID.encode() + b"null: 3\n", "must be a string"),
    (b"base: &b {dataset: mnist}\ndata:\n  <<: *b\n", "merge keys"),
    (VALID.replace("lr: 0.1", "lr: .inf").encode(), "optimizer.lr"),
    (VALID.replace("lr: 0.1", "lr: 1e999").encode(), "optimizer.lr"),
    (VALID.encode() + b"seed: 2001-01-01\n", "seed"),
    (VALID.encode() + b"name: *missing\n", "invalid YAML"),
])
def test_malformed_files_are_config_errors(tmp_path: Path, data: bytes, fragment: str) -> None:
    refused(tmp_path, data, fragment)


def test_bom_is_accepted(tmp_path: Path) -> None:
    assert load_bytes(tmp_path, b"\xef\xbb\xbf" + VALID.encode())["data"]["dataset"] == "mnist-mini"


def test_paths_that_are_not_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "nul\0byte.yaml"))
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing-dir" / "x.yaml")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(VALID)
    path.chmod(0)
    with pytest.raises(ConfigError, match="permission denied"):
        load_config(path)


def test_huge_layer_is_refused_without_allocating(tmp_path: Path) -> None:
    """Validation infers shapes and parameter counts only: a 10^12-unit layer is refused in no time,
    naming the layer and the bytes it needs, not blamed on the batch size later."""
    text = VALID.replace("{type: flatten}, ", "{type: flatten}, {type: linear, out_features: 1000000000000}, ")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"linear model\[1\] alone has 785,000,000,000,000 parameters") as e:
        load_bytes(tmp_path, text.encode())
    assert e.value.path == "model[1]" and "GB" in str(e.value) and "batch_size" not in str(e.value)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("override", ["seed=!!python/name:os.system", "data=" + "[" * 100 + "]" * 100,
                                      "seed=" + "9" * 5000, "seed=\x00", "model[99999999999999999999].p=1"])
def test_hostile_overrides(tmp_path: Path, override: str) -> None:
    with pytest.raises(ConfigError):
        load_bytes(tmp_path, VALID.encode(), (override,))


# --- property: generated configs, valid or mutated -------------------------------------------------
WRONG_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["mnist", "sgd", "linear", "relu", "val_acc", "auto", "", "1e-3", "type"]),
)


def _augmentations() -> list[str]:
    try:
        from nntrain.data.augment import AUGMENTATIONS
    except ImportError:
        return []
    return sorted(AUGMENTATIONS)


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    dataset = draw(st.sampled_from(["mnist", "fashion-mnist", "cifar10", "mnist-mini"]))
    model: list[dict[str, Any]] = []
    if draw(st.booleans()) and "conv2d" in LAYERS and "maxpool2d" in LAYERS:
        model += [{"type": "conv2d", "out_channels": draw(st.integers(1, 8)), "kernel_size": draw(st.integers(1, 5)),
                   "padding": draw(st.integers(0, 2))},
                  {"type": "relu"}, {"type": "maxpool2d", "kernel_size": draw(st.sampled_from([2, [2, 2], 3]))}]
    model.append({"type": "flatten"})
    for _ in range(draw(st.integers(0, 2))):
        model.append({"type": "linear", "out_features": draw(st.integers(1, 64))})
        model.append({"type": draw(st.sampled_from(["relu", "tanh", "sigmoid"]))})
        if "dropout" in LAYERS and draw(st.booleans()):
            model.append({"type": "dropout", "p": draw(st.floats(0.0, 0.9))})
    model.append({"type": "linear", "out_features": 10, "weight_decay": draw(st.floats(0, 1e-2))})
    optimizer: dict[str, Any] = {"type": draw(st.sampled_from(["sgd", "adam", "adamw"])),
                                 "lr": draw(st.floats(1e-5, 1.0))}
    cfg: dict[str, Any] = {"data": {"dataset": dataset}, "model": model, "optimizer": optimizer}
    if draw(st.booleans()):
        cfg["name"] = draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True))
    if draw(st.booleans()):
        cfg["seed"] = draw(st.integers(0, 2**40))
    if draw(st.booleans()):
        cfg["data"]["val_size"] = draw(st.integers(1, 400))
    if draw(st.booleans()) and _augmentations():
        cfg["data"]["augment"] = [{"type": t} for t in draw(st.lists(st.sampled_from(_augmentations()), max_size=2))]
    epochs = draw(st.integers(1, 20))
    train: dict[str, Any] = {"epochs": epochs, "batch_size": draw(st.integers(1, 512))}
    if draw(st.booleans()):
        train["early_stopping"] = {"monitor": draw(st.sampled_from(["val_loss", "val_acc", "train_loss"])),
                                   "patience": draw(st.integers(1, 10))}
    cfg["train"] = train
    kind = draw(st.sampled_from([None, "step", "exponential", "cosine"]))
    if kind == "step":
        cfg["scheduler"] = {"type": "step", "step_size": draw(st.integers(1, 5)), "gamma": 0.5}
    elif kind == "exponential":
        cfg["scheduler"] = {"type": "exponential", "gamma": draw(st.floats(0.5, 0.99))}
    elif kind == "cosine":
        cfg["scheduler"] = {"type": "cosine"}
    if draw(st.booleans()):
        cfg["loss"] = {"label_smoothing": draw(st.floats(0.0, 0.5))}
    return cfg


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path (tuple of keys/indices) inside nested dicts and lists."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, sub in items:
        out.append(prefix + (key,))
        out.extend(_paths(sub, prefix + (key,)))
    return out


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    cfg = draw(valid_configs())
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(cfg)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = cfg
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(st.sampled_from(["drop", "rename", "replace"]))
        if action == "drop":
            del parent[last]
        elif action == "rename" and isinstance(parent, dict):
            parent[last + draw(st.sampled_from(["s", "_", "x"]))] = parent.pop(last)
        else:
            parent[last] = draw(WRONG_VALUES)
    return cfg


def _check(tmp_dir: Path, text: str | bytes) -> None:
    """The property: ConfigError, or a valid resolved config that round-trips through dump_config."""
    path = tmp_dir / "generated.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(e)
        return
    assert validate_config(yaml.safe_load(dump_config(cfg))) == cfg


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(valid_configs())
def test_valid_generated_configs_load_and_roundtrip(tmp_path_factory: pytest.TempPathFactory,
                                                    cfg: dict[str, Any]) -> None:
    path = tmp_path_factory.getbasetemp() / "valid.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    resolved = load_config(path)
    assert resolved["data"]["dataset"] == cfg["data"]["dataset"]
    assert [layer["type"] for layer in resolved["model"]] == [layer["type"] for layer in cfg["model"]]
    assert validate_config(yaml.safe_load(dump_config(resolved))) == resolved


@PROPERTY
@given(mutated_configs())
def test_mutated_configs_load_or_raise_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                    cfg: dict[str, Any]) -> None:
    _check(tmp_path_factory.getbasetemp(), yaml.safe_dump(cfg))


YAMLISH = st.text(alphabet=st.sampled_from(list("abdelmnoprsty019 :-,.[]{}&*!#|>'\"\n\t\\%@`?<=~")), max_size=120)


@PROPERTY
@given(st.one_of(YAMLISH, st.text(max_size=80), st.binary(max_size=80)))
def test_random_text_loads_or_raises_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                  text: str | bytes) -> None:
    _check(tmp_path_factory.getbasetemp(), text)


@PROPERTY
@given(valid_configs(), st.lists(st.text(max_size=30), max_size=3))
def test_random_overrides_apply_or_raise_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                      cfg: dict[str, Any], overrides: list[str]) -> None:
    path = tmp_path_factory.getbasetemp() / "over.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    try:
        load_config(path, overrides)
    except ConfigError:
        pass
