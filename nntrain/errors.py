"""The exceptions nntrain raises for user mistakes; the CLI turns each into a message and an exit code."""

from __future__ import annotations


class NNTrainError(Exception):
    """Base class: a problem the user can fix. `exit_code` is what the CLI exits with."""

    exit_code = 2


class ConfigError(NNTrainError):
    """A config (YAML file, override or layer spec) is invalid.

    `path` is the key path (`model[3].kernel_size`), `source` the file and `line` the 1-based line
    where known; str() gives the one-paragraph message the CLI prints.
    """

    def __init__(self, message: str, path: str = "", source: str | None = None, line: int | None = None):
        self.message = message
        self.path = path
        self.source = source
        self.line = line
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source) + (f", line {self.line}" if self.line else ""))
        if self.path:
            where.append(self.path)
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def located(self, source: str | None = None, line: int | None = None, prefix: str = "") -> "ConfigError":
        """A copy of this error with file/line filled in and `prefix` put before the key path."""
        path = self.path
        if prefix:
            path = prefix + ("" if not path or path.startswith("[") else ".") + path if path else prefix
        return type(self)(self.message, path, source or self.source, line or self.line)

    def __reduce__(self):  # keep the error picklable for multiprocessing-based test tools
        return (type(self), (self.message, self.path, self.source, self.line))


class ConfigErrors(ConfigError):
    """Several independent mistakes in one config, reported in one pass; the first gives the path and
    line that `path`/`line` name, and the message lists every one on its own line."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.message, first.path, first.source, first.line)

    def _render(self) -> str:
        return f"{len(self.errors)} problems in the config:\n" + "\n".join(
            "  " + e._render() for e in self.errors)

    def located(self, source: str | None = None, line: int | None = None, prefix: str = "") -> "ConfigErrors":
        return ConfigErrors([e.located(source, line, prefix) for e in self.errors])

    def __reduce__(self):
        return (type(self), (self.errors,))


class ShapeError(ConfigError):
    """A layer cannot take the shape it is given (a kernel larger than its input, linear on 4-D)."""


class DataError(NNTrainError):
    """A data file is missing, truncated, corrupt or fails its checksum."""


class CheckpointError(NNTrainError):
    """A checkpoint is unreadable, corrupt, from a newer format or does not match the model."""


class NumericalError(NNTrainError):
    """The loss became NaN or infinite: a failed run, not a usage error."""

    exit_code = 1
