"""`nntrain report RUN_DIR`: one self-contained `report.html` per run, to see a run at a glance.

The page holds what the run folder holds: the test result (test.json) and the latest `nntrain eval`
(eval/metrics.json: per-class accuracy), the metrics table (metrics.csv), every figure in plots/
(curves, confusion matrix, misclassified grid, weights, ...) embedded as base64 PNGs, the model summary
(rebuilt from the checkpoint) and the resolved config. No scripts, no styles or images from elsewhere,
no network: the file can be mailed or archived on its own. `nntrain train` writes it after training
and `nntrain eval` after each evaluation; `nntrain report` rebuilds it.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

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


def _figures(folder: RunFolder) -> str:
    pngs = sorted(folder.plots.glob("*.png")) if folder.plots.is_dir() else []
    if not pngs:
        return '<p class="muted">no figures</p>'
    out = []
    for path in pngs:
        data = path.read_bytes()
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            continue
        b64 = base64.b64encode(data).decode("ascii")
        out.append(f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{b64}">'
                   f"<figcaption>{_e(path.name)}</figcaption></figure>")
    return "\n".join(out)


def _model_summary(folder: RunFolder) -> str:
    from nntrain.training.run_folder import load_run

    try:
        return load_run(folder.path).model.summary()
    except Exception as e:   # noqa: BLE001 - a run without a loadable checkpoint still gets its page
        return f"(no model summary: {e})"


def _results(folder: RunFolder) -> str:
    parts = []
    test = _read_json(folder.test)
    if test:
        parts.append("<h2>Test result</h2>" + table(["key", "value"], test.items()))
    ev = _read_json(folder.eval / "metrics.json")
    if ev:
        head = {k: v for k, v in ev.items() if not isinstance(v, (dict, list))}
        parts.append("<h2>Latest evaluation (nntrain eval)</h2>" + table(["key", "value"], head.items()))
        per_class = ev.get("per_class_accuracy")
        if isinstance(per_class, dict):
            parts.append(table(["class", "accuracy"], per_class.items()))
    return "\n".join(parts)


def render_report(run_dir: str | Path) -> str:
    """The HTML of a run folder's report (see the module docstring)."""
    folder = RunFolder(run_dir)
    try:
        config = folder.config.read_text(encoding="utf-8")
    except OSError:
        config = "(no config.yaml)"
    name = folder.path.name
    body = [
        f"<h1>nntrain run {_e(name)}</h1>",
        f'<p class="muted">{_e(folder.path.resolve())}</p>',
        _results(folder),
        "<h2>Metrics per epoch</h2>", _metrics_section(folder),
        "<h2>Figures</h2>", _figures(folder),
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
