"""`nntrain report RUN_DIR`: one self-contained `report.html` per run, to see a run at a glance.

The page holds what the run folder holds: the test result (test.json), every evaluation `nntrain
eval` saved (eval/<checkpoint>-<split>/: a small table of checkpoint, epoch, split, loss and accuracy,
per-class accuracy, robustness, and that evaluation's figures; an older run's eval/metrics.json too),
the metrics table (metrics.csv), the figures in plots/ (curves, health, ...; those an evaluation
section already shows are not repeated) embedded as base64 PNGs, the model summary (rebuilt from the
checkpoint) and the resolved config. No scripts, no styles or images from elsewhere, no network: the
file can be mailed or archived on its own. `nntrain train` writes it after training and `nntrain
eval` after each evaluation; `nntrain report` rebuilds it.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

from nntrain.atomic import atomic_write_text
from nntrain.training.run_folder import RunFolder

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; } figure img { max-width: 34em; }
figcaption { text-align: center; font-size: 0.85em; color: #555; } .muted { color: #777; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and _is_number(value) and "." in value:
        return f"{float(value):.4g}"
    return "" if value is None else str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; numbers right-aligned and shortened to 4 significant digits."""
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for v in row:
            text = _fmt(v)
            cls = ' class="num"' if isinstance(v, (int, float)) or _is_number(text) else ""
            cells.append(f"<td{cls}>{_e(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _metrics_section(folder: RunFolder) -> str:
    try:
        with open(folder.metrics, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError:
        return '<p class="muted">no metrics.csv</p>'
    if len(rows) < 2:
        return '<p class="muted">no epoch finished</p>'
    return table(rows[0], rows[1:])


def _pngs(paths: Iterable[Path], skip: Collection[tuple[str, bytes]] = ()) -> str:
    """The PNG files among `paths` as embedded figures captioned with their names; a file whose
    (name, bytes) is in `skip` (a figure already on the page) is left out."""
    out = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if not data.startswith(b"\x89PNG\r\n\x1a\n") or (path.name, data) in skip:
            continue
        b64 = base64.b64encode(data).decode("ascii")
        out.append(f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{b64}">'
                   f"<figcaption>{_e(path.name)}</figcaption></figure>")
    return "\n".join(out)


def _figures(folder: RunFolder, shown: Collection[tuple[str, bytes]] = ()) -> str:
    """plots/*.png, less the copies of figures in `shown` (the default evaluation's, shown with it)."""
    pngs = sorted(folder.plots.glob("*.png")) if folder.plots.is_dir() else []
    return _pngs(pngs, shown) or '<p class="muted">no figures</p>'


def _model_summary(folder: RunFolder) -> str:
    from nntrain.training.run_folder import load_run

    try:
        return load_run(folder.path).model.summary()
    except Exception as e:   # noqa: BLE001 - a run without a loadable checkpoint still gets its page
        return f"(no model summary: {e})"


def _evaluation(folder: RunFolder, where: Path) -> tuple[str, set[tuple[str, bytes]]]:
    """One evaluation's section: its table, per-class accuracy, robustness and figures; and the figures
    it showed, as (name, bytes). `where` is eval/<checkpoint>-<split>/, or eval/ (an older layout, whose
    figures are in plots/)."""
    ev = _read_json(where / "metrics.json")
    if not isinstance(ev, dict):
        return "", set()
    legacy = where == folder.eval
    name = "eval/metrics.json (an older nntrain's layout)" if legacy else f"eval/{where.name}/"
    keys = ("checkpoint", "epoch", "split", "samples", "loss", "accuracy",
            *(k for k in ("tta", "single_view_accuracy") if k in ev))   # test-time augmentation, when recorded
    parts = [f"<h3>{_e(name)}</h3>", table(keys, [[ev.get(k) if not isinstance(ev.get(k), (dict, list)) else ""
                                                   for k in keys]])]
    per_class = ev.get("per_class_accuracy")
    if isinstance(per_class, dict) and per_class:
        parts.append(table(["class", *per_class], [["accuracy", *per_class.values()]]))
    robustness = ev.get("robustness")
    if isinstance(robustness, dict):
        rows = [[kind, r.get("level"), r.get("accuracy")] for kind, entries in robustness.items()
                if isinstance(entries, list) for r in entries if isinstance(r, dict)]
        if rows:
            parts.append(table(["perturbation", "level", "accuracy"], rows))
    figures = [] if legacy else sorted(where.glob("*.png"))
    parts.append(_pngs(figures))
    return "\n".join(parts), {(p.name, _read_bytes(p)) for p in figures}


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _results(folder: RunFolder) -> tuple[str, set[tuple[str, bytes]]]:
    """The test result and every saved evaluation; and the names of the figures the evaluations showed."""
    parts = []
    test = _read_json(folder.test)
    if test:
        parts.append("<h2>Test result</h2>" + table(["key", "value"], test.items()))
    shown: set[tuple[str, bytes]] = set()
    sections = []
    for where in folder.evaluations():
        html_, names = _evaluation(folder, where)
        if html_:
            sections.append(html_)
            shown |= names
    if sections:
        parts.append("<h2>Evaluations (nntrain eval)</h2>\n" + "\n".join(sections))
    return "\n".join(parts), shown


def render_report(run_dir: str | Path) -> str:
    """The HTML of a run folder's report (see the module docstring)."""
    folder = RunFolder(run_dir)
    try:
        config = folder.config.read_text(encoding="utf-8")
    except OSError:
        config = "(no config.yaml)"
    name = folder.path.name
    results, shown = _results(folder)
    body = [
        f"<h1>nntrain run {_e(name)}</h1>",
        f'<p class="muted">{_e(folder.path.resolve())}</p>',
        results,
        "<h2>Metrics per epoch</h2>", _metrics_section(folder),
        "<h2>Figures</h2>", _figures(folder, shown),
        "<h2>Model</h2>", f"<pre>{_e(_model_summary(folder))}</pre>",
        "<h2>Resolved config</h2>", f"<pre>{_e(config)}</pre>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>nntrain run {_e(name)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (atomically); returns its path."""
    path = Path(run_dir) / REPORT_NAME
    atomic_write_text(path, render_report(run_dir))
    log.debug("wrote %s", path)
    return path


def write_report_or_warn(run_dir: str | Path) -> Path | None:
    """write_report, logging where it went; a page that cannot be written is a warning, never the run's
    failure (its checkpoints and results are complete by then)."""
    from nntrain.errors import NNTrainError

    try:
        path = write_report(run_dir)
    except (NNTrainError, OSError) as e:
        log.warning("could not write %s: %s", Path(run_dir) / REPORT_NAME, e)
        return None
    log.info("wrote %s", path)
    return path
