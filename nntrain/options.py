"""Declared options: the one description of a YAML key (type, default, bounds) that both builds an
object and validates the config. Layers, optimizers, schedulers and augmentations declare theirs."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from nntrain.errors import ConfigError

_REQUIRED = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Option:
    """One declared layer option.

    kind: "int", "float", "bool", "str", "pair" (an int or a list of two ints, as kernel sizes),
    "ints" / "floats" (a list of numbers; `length` fixes its length).
    minimum/maximum bound numbers (for lists and pairs, each element); `exclusive_max` makes maximum
    open; choices restrict strings; `nullable` admits null; `default` omitted means required.
    """

    kind: str
    default: Any = _REQUIRED
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_max: bool = False
    exclusive_min: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    length: int | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        """What a valid value looks like, for error messages."""
        what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "pair": "an integer or a list of two integers",
                "ints": "a list of integers", "floats": "a list of numbers"}[self.kind]
        if self.length is not None and self.kind in ("ints", "floats"):
            what = what.replace("a list of", f"a list of {self.length}")
        if self.choices:
            what = "one of " + ", ".join(self.choices)
        if self.minimum is not None and self.maximum is not None:
            what += (f" in {'(' if self.exclusive_min else '['}{self.minimum}, "
                     f"{self.maximum}{')' if self.exclusive_max else ']'}")
        elif self.minimum is not None:
            what += f" {'>' if self.exclusive_min else '>='} {self.minimum}"
        elif self.maximum is not None:
            what += f" {'<' if self.exclusive_max else '<='} {self.maximum}"
        if self.nullable:
            what += " (or null)"
        return what

    def _bounded(self, v: float) -> bool:
        if self.minimum is not None and (v <= self.minimum if self.exclusive_min else v < self.minimum):
            return False
        if self.maximum is not None and (v >= self.maximum if self.exclusive_max else v > self.maximum):
            return False
        return True

    def validate(self, value: Any, path: str) -> Any:
        """Return `value` normalised (pairs become tuples, ints become floats where floats are wanted)."""
        bad = ConfigError(f"got {value!r}, expected {self.describe()}", path)
        if value is None:
            if self.nullable:
                return None
            raise bad
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind == "int":
            if not _is_int(value) or not self._bounded(value):
                raise bad
            return int(value)
        if self.kind == "float":
            if not _is_number(value) or not np.isfinite(value) or not self._bounded(value):
                raise bad
            return float(value)
        if self.kind == "str":
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise bad
            return value
        if self.kind == "pair":
            pair = (value, value) if _is_int(value) else value
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(_is_int(p) and self._bounded(p) for p in pair)):
                raise bad
            return (int(pair[0]), int(pair[1]))
        if self.kind in ("ints", "floats"):
            ok = _is_int if self.kind == "ints" else (lambda v: _is_number(v) and np.isfinite(v))
            if (not isinstance(value, (list, tuple)) or (self.length is not None and len(value) != self.length)
                    or not all(ok(v) and self._bounded(v) for v in value)):
                raise bad
            return [int(v) if self.kind == "ints" else float(v) for v in value]
        raise AssertionError(f"unknown option kind {self.kind}")


def plain(value: Any) -> Any:
    """Plain YAML/JSON-able data: tuples become lists, NumPy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def closest(name: Any, names: Any) -> str:
    """' (did you mean 'x'?)' for the closest of `names`, or ''."""
    close = difflib.get_close_matches(str(name), list(names), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key_message(key: str, valid: Any, where: str) -> str:
    """'unknown key X in WHERE (did you mean Y?); valid keys: ...'."""
    valid = sorted(valid)
    return f"unknown key '{key}' in {where}{closest(key, valid)}; valid keys: {', '.join(valid) if valid else 'none'}"


def validate_options(options: Mapping[str, Option], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check `given` against declared `options`: unknown keys (with a suggestion), missing required
    keys, types and bounds. Returns every option with defaults filled in. Error paths are the key."""
    for key in given:
        if key not in options:
            raise ConfigError(unknown_key_message(key, options, where), str(key))
    values = {}
    for key, opt in options.items():
        if key in given:
            values[key] = opt.validate(given[key], key)
        elif opt.required:
            raise ConfigError(f"missing required option '{key}' ({opt.describe()})", key)
        else:  # defaults go through the same normalisation as given values (a pair default 1 -> (1, 1))
            values[key] = opt.default if opt.default is None else opt.validate(opt.default, key)
    return values
