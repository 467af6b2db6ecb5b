"""Command-line overrides `key.path=value` (`-s optimizer.lr=0.01`, `-s model[2].p=0.3`), applied to
the raw config before validation; values are read as YAML with the same safe loader as files."""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from nntrain.config.yamlsafe import join_key, parse_yaml
from nntrain.errors import ConfigError

_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_KEY = re.compile(rf"{_NAME}(\[[0-9]+\])*(\.{_NAME}(\[[0-9]+\])*)*")
_STEP = re.compile(rf"({_NAME})|\[([0-9]+)\]")
_FORM = "key.path=value, e.g. optimizer.lr=0.01 or model[2].p=0.3"


def parse_override(text: Any) -> tuple[list[str | int], str, Any]:
    """'model[2].p=0.3' -> (['model', 2, 'p'], 'model[2].p', 0.3)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} has no '='; expected {_FORM}")
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not _KEY.fullmatch(key):
        raise ConfigError(f"override {text!r}: {key!r} is not a key path; expected {_FORM}")
    steps: list[str | int] = [m.group(1) if m.group(1) else int(m.group(2)) for m in _STEP.finditer(key)]
    try:
        value, _ = parse_yaml(value_text)
    except ConfigError as e:
        raise ConfigError(f"override {text!r}: the value is not valid: {e.message}", key) from None
    return steps, key, value


def copy_tree(value: Any, depth: int = 0) -> Any:
    """A fresh copy of nested dicts/lists (tuples become lists), so overrides never touch the caller's
    data and no two key paths share one list."""
    if depth > 64:
        raise ConfigError("values are nested too deeply")
    if isinstance(value, dict):
        return {k: copy_tree(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [copy_tree(v, depth + 1) for v in value]
    return value


def _set(cfg: dict[str, Any], steps: Sequence[str | int], key: str, value: Any, text: str) -> None:
    """Set cfg[steps...] = value. Missing (or null) mappings on the way are created, so
    `scheduler.type=step` works without a scheduler section; list indices must exist."""
    node: Any = cfg
    path = ""
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(step, int):
            if not isinstance(node, list):
                raise ConfigError(f"override {text!r}: {path} is not a list, so [{step}] does not exist", key)
            if step >= len(node):
                raise ConfigError(f"override {text!r}: {path} has {len(node)} items "
                                  f"(valid indices 0..{len(node) - 1})" if node else
                                  f"override {text!r}: {path} is empty", key)
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {path or 'the config'} is not a mapping, "
                                  f"so it has no key '{step}'", key)
            if not last and node.get(step) is None:
                if isinstance(steps[i + 1], int):
                    raise ConfigError(f"override {text!r}: {join_key(path, step)} is not a list", key)
                node[step] = {}
        if last:
            node[step] = value
        else:
            node = node[step]
            path = join_key(path, step)


def apply_overrides_tracked(raw: Any, overrides: Iterable[str]) -> tuple[Any, list[tuple[str, str]]]:
    """Apply overrides in order to a copy of `raw`. Returns (config, [(key path, override text)])."""
    if isinstance(overrides, str):  # a lone string would otherwise be read character by character
        overrides = [overrides]
    cfg = copy_tree(raw)
    applied: list[tuple[str, str]] = []
    for text in overrides:
        steps, key, value = parse_override(text)
        if not isinstance(cfg, dict):
            raise ConfigError(f"override {text!r}: the config is not a mapping", key)
        _set(cfg, steps, key, value, text)
        applied.append((key, text))
    return cfg, applied
