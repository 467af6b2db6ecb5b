"""Config loading: a YAML file (read safely) plus `-s key.path=value` overrides -> the validated,
fully resolved config (every default filled in), and back to YAML text for the run folder.

    cfg = load_config("configs/cnn.yaml", overrides=["optimizer.lr=0.01", "model[2].p=0.3"])

Every mistake is a ConfigError naming the file, the line, the key path and what would be valid;
a value set by an override names the override instead of a line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from nntrain.config.overrides import apply_overrides_tracked
from nntrain.config.schema import default_name, validate, validate_data_part
from nntrain.options import plain
from nntrain.config.yamlsafe import parse_yaml, read_text
from nntrain.errors import ConfigError, ConfigErrors

__all__ = ["apply_overrides", "dump_config", "load_config", "parse_config_text", "validate_config"]

_LAST_STEP = re.compile(r"(\.[^.\[]+|\[[0-9]+\])$")


def _line_for(path: str, lines: Mapping[str, int]) -> int | None:
    """Line of `path`, else of its nearest enclosing key ('optimizer.lr' missing -> 'optimizer')."""
    while path:
        if path in lines:
            return lines[path]
        shorter = _LAST_STEP.sub("", path)
        if shorter == path:
            return None
        path = shorter
    return None


def _override_for(path: str, applied: list[tuple[str, str]]) -> str | None:
    """The last override that set `path`, a key above it or a key below it."""
    for key, text in reversed(applied):
        if path and (path == key or path.startswith((key + ".", key + "["))
                     or key.startswith((path + ".", path + "["))):
            return text
    return None


def _validate_located(raw: Any, source: str | None, lines: Mapping[str, int],
                      applied: list[tuple[str, str]], name: str | None, data_only: bool = False) -> dict[str, Any]:
    def located(e: ConfigError) -> ConfigError:
        override = _override_for(e.path, applied)
        if override is not None:
            return type(e)(f"{e.message} (set by the override '{override}')", e.path, source)
        return type(e)(e.message, e.path, source, _line_for(e.path, lines))

    try:
        return validate_data_part(raw, name) if data_only else validate(raw, name)
    except ConfigErrors as e:
        raise ConfigErrors([located(err) for err in e.errors]) from None
    except ConfigError as e:
        raise located(e) from None


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of `raw` with each `key.path=value` override applied in order (values read as YAML).

    Missing mappings on the way are created (`scheduler.type=step`); list items must exist
    (`model[2].p=0.3`). Bad syntax or a path that cannot exist raises ConfigError naming the override.
    """
    return apply_overrides_tracked(raw, overrides)[0]


def validate_config(raw: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """The resolved config of `raw` (a dict as from YAML). `source` names the file in messages and,
    when `name` is missing, gives the default run name (its stem)."""
    name = default_name(Path(source).stem) if source else None
    return _validate_located(raw, source, {}, [], name)


def parse_config_text(text: str, source: str | None = None, overrides: Iterable[str] = (),
                      name: str | None = None, data_only: bool = False) -> dict[str, Any]:
    """Resolved config from YAML `text` (the body of load_config, for text not in a file).
    `name` is the default run name; `data_only`: see load_config."""
    raw, lines = parse_yaml(text, source)
    if raw is None:
        raise ConfigError("the config is empty; expected a mapping with the sections data, model and "
                          "optimizer (and optionally name, seed, loss, scheduler, train)", source=source)
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of sections (data, model, optimizer, ...), "
                          f"not {'a list' if isinstance(raw, list) else 'a single value'}", source=source, line=1)
    try:
        raw, applied = apply_overrides_tracked(raw, overrides)
    except ConfigError as e:
        raise type(e)(e.message, e.path, source) from None
    return _validate_located(raw, source, lines, applied, name, data_only)


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = (), data_only: bool = False
                ) -> dict[str, Any]:
    """Read, override and validate a YAML config file; returns the resolved config.

    The run name defaults to the file's stem. Raises ConfigError (file, line, key path, what is valid).
    `data_only`: resolve only `name`, `seed` and `data` (the other sections may be missing or
    unfinished), for commands that only look at the data (`augment-preview`).
    """
    source = str(path)
    return parse_config_text(read_text(path), source, overrides, default_name(Path(source).stem), data_only)


def dump_config(cfg: Mapping[str, Any]) -> str:
    """YAML text of a resolved config; `validate_config` of the text read back gives the same dict."""
    return yaml.safe_dump(plain(dict(cfg)), sort_keys=False, default_flow_style=None, allow_unicode=True,
                          width=100)
