"""What a sweep leaves besides its trials' run folders: trials.csv (one row per trial), best.yaml (the
best trial's full config, trainable as is) and Optuna's plots (optimisation history, parallel
coordinates, parameter importances), each skipped with a log line where it cannot be drawn yet."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Callable

from optuna.trial import FrozenTrial, TrialState

from nntrain.atomic import atomic_write_text
from nntrain.config import dump_config
from nntrain.sweep.folder import SweepFolder
from nntrain.sweep.owners import WORKER_ATTR
from nntrain.sweep.study import SweepStudy, quiet
from nntrain.sweep.worker import BEST_ATTR, MESSAGE_ATTR, RUN_DIR_ATTR, SECONDS_ATTR

log = logging.getLogger(__name__)

FIXED_COLUMNS = ("number", "state", "value")
TAIL_COLUMNS = ("epochs", "seconds", "run_dir", "worker", "message")


def trial_rows(sweep: SweepStudy) -> list[dict[str, Any]]:
    """One row per trial: number, state, value (its best epoch; pruned ones too), each parameter,
    epochs reported, training seconds, run folder, worker and the failure message."""
    rows = []
    for t in sweep.trials():
        attrs, owner = t.user_attrs, t.user_attrs.get(WORKER_ATTR) or {}
        row: dict[str, Any] = {"number": t.number, "state": t.state.name,
                               "value": attrs.get(BEST_ATTR, t.value if t.state == TrialState.COMPLETE else None)}
        row.update({p.key: t.params.get(p.key) for p in sweep.spec.parameters})
        row.update({"epochs": len(t.intermediate_values) or None, "seconds": attrs.get(SECONDS_ATTR),
                    "run_dir": attrs.get(RUN_DIR_ATTR), "worker": f"{owner['host']}:{owner['pid']}" if owner else None,
                    "message": attrs.get(MESSAGE_ATTR)})
        rows.append(row)
    return rows


def write_trials_csv(sweep: SweepStudy, path: Path) -> Path:
    columns = [*FIXED_COLUMNS, *(p.key for p in sweep.spec.parameters), *TAIL_COLUMNS]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for row in trial_rows(sweep):
        w.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())
    return path


def best_trial(sweep: SweepStudy) -> FrozenTrial | None:
    """The best COMPLETE trial, or None while there is none."""
    complete = sweep.trials((TrialState.COMPLETE,))
    if not complete:
        return None
    if sweep.spec.goal == "maximize":
        return max(complete, key=lambda t: (t.value, -t.number))   # ties: the earlier trial
    return min(complete, key=lambda t: (t.value, t.number))


def write_best(sweep: SweepStudy, path: Path) -> Path | None:
    """best.yaml: the base config with the best trial's parameters, fully resolved."""
    best = best_trial(sweep)
    if best is None:
        log.info("no trial is complete: no best.yaml")
        return None
    cfg = sweep.spec.trial_config({p.key: best.params[p.key] for p in sweep.spec.parameters})
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    header = (f"# The best trial of sweep {sweep.name}: trial {best.number}, {sweep.spec.metric} {best.value:.6g}\n"
              f"# ({params}). Train it with: nntrain train {path.name}\n")
    atomic_write_text(path, header + dump_config(cfg))
    return path


def write_plots(sweep: SweepStudy, plots: Path) -> list[Path]:
    """history.png, parallel_coordinates.png and importances.png, where they can be drawn."""
    from optuna.visualization import matplotlib as ovm

    complete = len(sweep.trials((TrialState.COMPLETE,)))
    wanted: list[tuple[str, Callable[..., Any], int]] = [
        ("history.png", ovm.plot_optimization_history, 1),
        ("parallel_coordinates.png", ovm.plot_parallel_coordinate, 1),
        ("importances.png", ovm.plot_param_importances, 2),
    ]
    written = []
    for name, plot, needed in wanted:
        if complete < needed:
            log.info("skipped %s: it needs %d complete trial%s, the sweep has %d", name, needed,
                     "s" if needed > 1 else "", complete)
            continue
        path = _draw(plot, sweep, plots / name)
        if path is not None:
            written.append(path)
    return written


def _draw(plot: Callable[..., Any], sweep: SweepStudy, path: Path) -> Path | None:
    """One Optuna plot saved as `path`. Optuna draws through pyplot and sets its ggplot style globally:
    both are undone here (rc_context restores the style, the figure is closed)."""
    import matplotlib
    import matplotlib.pyplot as plt

    from nntrain.training.plots import save_figure

    with matplotlib.rc_context():
        try:
            with quiet():
                axes = plot(sweep.study, target_name=sweep.spec.metric)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:   # e.g. importances of a constant parameter
            log.info("skipped %s: %s", path.name, e)
            plt.close("all")
            return None
        fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        try:
            return save_figure(fig, path)
        finally:
            plt.close(fig)


def write_outputs(sweep: SweepStudy, folder: SweepFolder, plots: bool = True) -> list[Path]:
    """trials.csv, best.yaml and (with `plots`) the plots; returns the files written."""
    written = [write_trials_csv(sweep, folder.trials_csv)]
    best = write_best(sweep, folder.best)
    if best is not None:
        written.append(best)
    if plots:
        written.extend(write_plots(sweep, folder.plots))
    return written
