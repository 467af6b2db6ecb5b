"""One typed-spec registry for every part a YAML file names by `type:` (layers, losses, optimizers,
schedulers, augmentations).

A spec `{type: name, **options}` is resolved once: the type looked up, every option checked against
the class's declared `Option`s, cross-option rules run (`check`), defaults filled in. The result is a
`Spec`, which builders trust: building from a `Spec` validates nothing again.

    LAYERS = Registry("layer")

    @LAYERS.register("linear")
    class Linear(Layer): options = {...}

    spec = LAYERS.resolve({"type": "linear", "out_features": 10}, "model[3]")
    layer = LAYERS.build(spec)
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterator, Mapping, TypeVar

from nntrain.errors import ConfigError
from nntrain.options import Option, closest, plain, validate_options


class Configurable:
    """A class built from a resolved spec: declares its YAML `options`; `check` adds the rules that span
    options or need context (such as train.epochs). Instances get each option as an attribute and the
    whole set as `self.config`."""

    type_name: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}

    @classmethod
    def check(cls, values: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """Values after the per-option checks -> final values; raise ConfigError with the option's name
        as path. `context` holds what the surrounding config decides (e.g. `epochs`)."""
        return values

    def _set_options(self, options: Mapping[str, Any]) -> None:
        """Keep resolved options; a direct Python construction may leave out options with defaults."""
        self.config: dict[str, Any] = {k: options.get(k, opt.default) for k, opt in self.options.items()
                                        if k in options or not opt.required}   # in declared order
        for key, value in self.config.items():
            setattr(self, key, value)

    def describe(self) -> str:
        """`type(option=value, ...)` with the options that are required or differ from their default."""
        parts = [f"{k}={v}" for k, v in self.config.items()
                 if k in self.options and (self.options[k].required or plain(v) != _default(self.options[k], k))]
        return f"{self.type_name}({', '.join(parts)})"


def _default(option: Option, key: str) -> Any:
    """An option's default in resolved form (a pair default 1 is [1, 1])."""
    return plain(option.default if option.default is None else option.validate(option.default, key))


class Spec(dict):
    """A resolved spec: `type` plus every declared option, checked and normalised to plain data (lists,
    not tuples). Builders take it as it is; a plain dict (a file, a library caller) is resolved first."""


C = TypeVar("C", bound=type)


class Registry:
    """YAML type name -> class, for one kind of part. Filled at import time by `@register`, read-only
    after."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: the class becomes `type: name` in YAML (and gets `type_name = name`)."""

        def wrap(cls: C) -> C:
            if name in self._classes:
                raise ValueError(f"{self.kind} type '{name}' registered twice")
            cls.type_name = name
            self._classes[name] = cls
            return cls

        return wrap

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def __getitem__(self, name: str) -> type:
        return self._classes[name]

    def items(self) -> list[tuple[str, type]]:
        return sorted(self._classes.items())

    def lookup(self, name: Any, path: str) -> type:
        """The class registered as `name`, else a ConfigError at `path` listing the known types."""
        if not isinstance(name, str) or name not in self._classes:
            raise ConfigError(f"unknown {self.kind} type {name!r}{closest(name, self._classes)}; known types: "
                              f"{', '.join(self)}", path)
        return self._classes[name]

    def resolve(self, spec: Any, path: str, context: Mapping[str, Any] | None = None) -> Spec:
        """Check `spec` and fill in its defaults; ConfigError paths are below `path` (`model[3].kernel_size`)."""
        if isinstance(spec, Spec):
            return spec
        if not isinstance(spec, Mapping):
            raise ConfigError(f"expected a mapping with a 'type' key ({{type: {next(iter(self), 'name')}, ...}}), "
                              f"got {_kind(spec)}", path)
        if "type" not in spec:
            raise ConfigError(f"missing 'type' (which {self.kind}); known types: {', '.join(self)}", path)
        cls = self.lookup(spec["type"], f"{path}.type" if path else "type")
        given = {k: v for k, v in spec.items() if k != "type"}
        try:
            values = validate_options(cls.options, given, f"{self.kind} '{cls.type_name}'")
            values = cls.check(values, context or {})
        except ConfigError as e:
            raise e.located(prefix=path) from None
        return Spec(type=cls.type_name, **plain(values))   # plain data: equal to its own JSON round trip

    def build(self, spec: Any, *args: Any, path: str = "", context: Mapping[str, Any] | None = None,
              **kwargs: Any) -> Any:
        """An instance of the spec's class: `cls(*args, **kwargs, **options)`; a plain dict is resolved first."""
        spec = self.resolve(spec, path or self.kind, context)
        cls = self._classes[spec["type"]]
        return cls(*args, **kwargs, **{k: v for k, v in spec.items() if k != "type"})

    def explain(self) -> list[tuple[str, str, list[tuple[str, Option]]]]:
        """(type name, first docstring paragraph, declared options) of every registered class, for the docs."""
        out = []
        for name, cls in self.items():
            para = (cls.__doc__ or "").strip().split("\n\n")[0]
            out.append((name, " ".join(line.strip() for line in para.splitlines()), list(cls.options.items())))
        return out


def _kind(value: Any) -> str:
    """How a wrong value is named in a message: 'null', 'a list', or its type and text."""
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"{type(value).__name__} {value!r}"[:80]
