"""The sweep folder: every path in it, in one place.

    runs/sweeps/<name>-<YYYYmmdd-HHMMSS>/
      sweep.yaml       the resolved sweep file (base: the copy beside it)
      <base>.yaml      a copy of the base config
      journal.log      the Optuna JournalStorage (unless the storage is a PostgreSQL URL)
      sweep.log        what the workers did
      trials/<n>/      one ordinary run folder per trial (nntrain eval / compare work on them)
      trials.csv  best.yaml  plots/{history,parallel_coordinates,importances}.png
"""

from __future__ import annotations

import os
from pathlib import Path

from nntrain.atomic import WriteError

RESERVED = ("sweep.yaml", "best.yaml")


class SweepFolder:
    """The paths of one sweep folder (nothing is created here but by `make_dirs`)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    sweep_file = property(lambda self: self.path / "sweep.yaml", doc="the resolved sweep file")
    log = property(lambda self: self.path / "sweep.log", doc="the workers' log")
    trials = property(lambda self: self.path / "trials", doc="one run folder per trial")
    trials_csv = property(lambda self: self.path / "trials.csv")
    best = property(lambda self: self.path / "best.yaml", doc="the best trial's config")
    plots = property(lambda self: self.path / "plots")

    def base_copy(self, base_source: str) -> Path:
        """Where the copy of the base config goes: its own file name, unless a sweep file takes it."""
        name = Path(base_source).name
        return self.path / ("base.yaml" if name in RESERVED else name)

    def make_dirs(self) -> None:
        for d in (self.path, self.trials, self.plots):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WriteError(f"cannot create {d}: {e.strerror or e}") from e
