"""Reading YAML that may be hostile: safe loading only, with limits on size, nesting and alias
expansion, duplicate keys refused, and the line of every key path kept for error messages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from nntrain.errors import ConfigError

MAX_BYTES = 1_000_000  # a real config is a few KB; anything near this is a mistake or an attack
MAX_DEPTH = 32  # a real config nests 4 deep (train.early_stopping.patience, model[3].kernel_size[0])
MAX_NODES = 20_000  # values after alias expansion (a real config has a few hundred): stops alias bombs

# Tags whose scalars become Python values; timestamps (2024-01-01) and '=' stay the text written.
_SCALARS = {
    "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float", "tag:yaml.org,2002:str",
}
_MERGE = "tag:yaml.org,2002:merge"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses explicit tags and deep nesting while composing (before any value is
    built), and reads `1e-4` as a float (YAML 1.1 would make it the string '1e-4')."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark else None
        if getattr(event, "tag", None) is not None:
            raise ConfigError(f"YAML tags such as {event.tag!r} are not allowed: a config holds plain "
                              "values only (strings, numbers, true/false, null, lists and mappings)",
                              line=line)
        self._depth += 1
        self._composed += 1
        if self._depth > MAX_DEPTH:
            raise ConfigError(f"values are nested more than {MAX_DEPTH} levels deep", line=line)
        if self._composed > MAX_NODES:
            raise ConfigError(f"the file holds more than {MAX_NODES} values; a config is much smaller", line=line)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def join_key(prefix: str, key: Any) -> str:
    """Key path text: join_key('model[3]', 'p') -> 'model[3].p'; join_key('model', 2) -> 'model[2]'."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


class _Builder:
    """Turns a composed node tree into dicts/lists/scalars, recording the line of each key path and
    counting values as aliases are expanded (the composer shares aliased nodes; we would not)."""

    def __init__(self, loader: _Loader):
        self.loader = loader
        self.lines: dict[str, int] = {}
        self.count = 0

    def build(self, node: yaml.Node, path: str, depth: int) -> Any:
        line = node.start_mark.line + 1
        self.count += 1
        if self.count > MAX_NODES:
            raise ConfigError(f"the values expand (through aliases) to more than {MAX_NODES}; "
                              "a config is much smaller", path, line=line)
        if depth > MAX_DEPTH:  # reachable only through a recursive alias (&a [*a])
            raise ConfigError(f"values are nested more than {MAX_DEPTH} levels deep", path, line=line)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            out = []
            for i, item in enumerate(node.value):
                sub = join_key(path, i)
                self.lines.setdefault(sub, item.start_mark.line + 1)
                out.append(self.build(item, sub, depth + 1))
            return out
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:
                raise ConfigError("merge keys (<<) are not supported; write the keys out", path, line=line)
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("a key must be a plain string, not a list or mapping", path, line=line)
            key = self._scalar(key_node, path)
            if not isinstance(key, str):
                raise ConfigError(f"key {key!r} must be a string (quote it: '{key_node.value}')", path, line=line)
            sub = join_key(path, key)
            if key in out:
                raise ConfigError(f"duplicate key '{key}' (first at line {first_line[key]}); "
                                  "each key may appear once", sub, line=line)
            first_line[key] = line
            self.lines.setdefault(sub, line)
            out[key] = self.build(value_node, sub, depth + 1)
        return out

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        if node.tag not in _SCALARS:
            return node.value  # timestamps and the like: keep what the user wrote
        try:
            return self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError) as e:  # e.g. an integer of 5000 digits
            raise ConfigError(f"cannot read the value {node.value[:40]!r}: {e}", path,
                              line=node.start_mark.line + 1) from None


def parse_yaml(text: str, source: str | None = None) -> tuple[Any, dict[str, int]]:
    """Parse one YAML document safely. Returns (value, lines) where lines maps each key path
    ('optimizer.lr', 'model[2]') to its 1-based line; an empty document gives (None, {}).
    Every problem is a ConfigError carrying `source` and the line."""
    loader = None
    try:
        loader = _Loader(text)  # the reader checks the characters here already
        node = loader.get_single_node()
        if node is None:
            return None, {}
        builder = _Builder(loader)
        value = builder.build(node, "", 0)
        return value, builder.lines
    except ConfigError as e:
        raise type(e)(e.message, e.path, source, e.line) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = ", ".join(str(p) for p in (e.context, e.problem) if p)
        raise ConfigError(f"invalid YAML: {what}", source=source,
                          line=mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1 if isinstance(e.position, int) else None
        raise ConfigError(f"invalid YAML: unacceptable character {chr(e.character)!r} "
                          f"(code {e.character:#x}); use printable UTF-8 text", source=source, line=line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text(path: str | os.PathLike[str]) -> str:
    """The text of a config file, refusing what is not a readable, UTF-8 file of sane size."""
    p = Path(path)
    source = str(path)
    try:
        if p.is_dir():
            raise ConfigError("is a directory; expected a YAML config file", source=source)
        with open(p, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # never read more than the limit, whatever the file is
    except FileNotFoundError:
        raise ConfigError("no such file; expected the path of a YAML config file", source=source) from None
    except PermissionError:
        raise ConfigError("permission denied: cannot read the config file", source=source) from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise ConfigError(f"cannot read the config file: {getattr(e, 'strerror', None) or e}",
                          source=source) from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"the file is larger than {MAX_BYTES // 1000} KB; a config is a few KB of YAML",
                          source=source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"the file is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                          "save it as UTF-8", source=source, line=line) from None
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write
