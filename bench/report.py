"""Summaries of benchmark results: medians, ratios, the speed and memory targets, a console table and markdown."""

from __future__ import annotations

import statistics
from typing import Any

# The targets: nntrain seconds per epoch / PyTorch's at the same thread count; peak memory; linear scaling.
TIME_TARGETS = {"mnist-mlp": 1.0, "mnist-cnn": 1.25, "cifar-cnn": 1.5}
MEMORY_TARGET = ("mnist-cnn", 0.6)
SCALING_TARGET = 4.4


def summarize_side(epochs: list[dict], n_train: int) -> dict[str, Any]:
    """Median seconds, samples/s, last test accuracy and the peak RSS over the side's processes."""
    secs = [e["seconds"] for e in epochs]
    med = statistics.median(secs)
    return {"seconds_median": med, "seconds_min": min(secs), "seconds": secs, "samples_per_s": n_train / med if med > 0 else None,
            "test_acc": epochs[-1]["test_acc"], "train_acc": epochs[-1]["train_acc"],
            "peak_rss_mb": max(e["peak_rss_mb"] for e in epochs)}


def summarize_workload(name: str, n_train: int, fraction: float, nn_epochs: list[dict],
                       torch_epochs: list[dict]) -> dict[str, Any]:
    """The per-workload result: both sides, time and memory ratios, and the target's verdict."""
    nn, th = summarize_side(nn_epochs, n_train), summarize_side(torch_epochs, n_train)
    ratio = nn["seconds_median"] / th["seconds_median"]
    out = {"workload": name, "n_train": n_train, "fraction_of_epoch": fraction, "nntrain": nn, "torch": th,
           "time_ratio": ratio, "time_ratio_best": nn["seconds_min"] / th["seconds_min"], "memory_ratio": nn["peak_rss_mb"] / th["peak_rss_mb"],
           "time_target": TIME_TARGETS.get(name),
           "epochs": {"nntrain": nn_epochs, "torch": torch_epochs}}
    out["time_ok"] = ratio <= out["time_target"] if out["time_target"] else None
    if name == MEMORY_TARGET[0]:
        out["memory_target"] = MEMORY_TARGET[1]
        out["memory_ok"] = out["memory_ratio"] <= MEMORY_TARGET[1]
    return out


def summarize_scaling(n_small: int, n_big: int, small: list[float], big: list[float]) -> dict[str, Any]:
    """Time ratio of the full over the quarter training set (medians) against the 4.4 target."""
    ratio = statistics.median(big) / statistics.median(small)
    return {"time_ratio_best": min(big) / min(small),"workload": "mnist-cnn", "n_small": n_small, "n_big": n_big, "seconds_small": small, "seconds_big": big,
            "data_ratio": n_big / n_small, "time_ratio": ratio, "target": SCALING_TARGET,
            "ok": ratio <= SCALING_TARGET}


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ok" if ok else " MISS")


def table_rows(results: dict) -> list[list[str]]:
    """Header plus one row per workload, as strings (shared by the console and markdown tables)."""
    rows = [["workload", "train images", "nntrain s/epoch", "PyTorch s/epoch", "ratio (target)",
             "nntrain samples/s", "PyTorch samples/s", "nntrain test acc", "PyTorch test acc",
             "nntrain peak RSS MB", "PyTorch peak RSS MB", "RSS ratio"]]
    for w in results["workloads"]:
        nn, th = w["nntrain"], w["torch"]
        target = f" (≤{w['time_target']:g}{_mark(w['time_ok'])})" if w["time_target"] else ""
        mem = f"{w['memory_ratio']:.2f}"
        if "memory_target" in w:
            mem += f" (≤{w['memory_target']:g}{_mark(w['memory_ok'])})"
        rows.append([w["workload"], f"{w['n_train']}", f"{nn['seconds_median']:.2f}", f"{th['seconds_median']:.2f}",
                     f"{w['time_ratio']:.2f}{target}", f"{nn['samples_per_s']:.0f}", f"{th['samples_per_s']:.0f}",
                     f"{nn['test_acc']:.4f}", f"{th['test_acc']:.4f}", f"{nn['peak_rss_mb']:.0f}",
                     f"{th['peak_rss_mb']:.0f}", mem])
    return rows


def machine_line(results: dict) -> str:
    m = results["machine"]
    blas = m.get("blas_nntrain_side", {})
    return (f"{m['cpu']}, {m['cores']} cores; threads {results['threads']}; Python {m['python']}, "
            f"numpy {m['numpy']} ({blas.get('library', '?')}, kernel {blas.get('kernel', '?')}), torch {m['torch']}")


def scaling_line(s: dict) -> str:
    return (f"scaling (nntrain mnist-cnn): {s['n_small']} -> {s['n_big']} training images ({s['data_ratio']:.0f}x data): "
            f"{min(s['seconds_small']):.2f}..{max(s['seconds_small']):.2f} s -> "
            f"{min(s['seconds_big']):.2f}..{max(s['seconds_big']):.2f} s, time ratio of medians "
            f"{s['time_ratio']:.2f} (≤{s['target']:g}{_mark(s['ok'])}), of the fastest runs {s['time_ratio_best']:.2f}")


def best_lines(results: dict) -> list[str]:
    """Ratios of the fastest epochs: on a shared machine, contention only ever adds time."""
    return [f"{w['workload']}: fastest epochs nntrain {w['nntrain']['seconds_min']:.2f} s, PyTorch "
            f"{w['torch']['seconds_min']:.2f} s, ratio {w['time_ratio_best']:.2f}" for w in results["workloads"]
            if len(w["nntrain"]["seconds"]) > 1]


def format_console(results: dict) -> str:
    """A plain-text report: machine, one aligned table, scaling."""
    rows = table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [machine_line(results), f"command: {results['command']}", ""]
    lines += ["  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in rows]
    lines += best_lines(results)
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    if results.get("scaling"):
        lines.append(scaling_line(results["scaling"]))
    return "\n".join(lines)


def format_markdown(results: dict) -> str:
    """The README table: ours, PyTorch, ratio, with the command and the machine."""
    rows = table_rows(results)
    out = [f"Measured {results['date']} with `{results['command']}`", "",
           f"Machine: {machine_line(results)}.", "",
           "Seconds per epoch are medians over the epochs run, training batches only (both sides), the two "
           "sides alternating epoch by epoch, each epoch in its own process; peak RSS is each side's own process.", ""]
    out.append("| " + " | ".join(rows[0]) + " |")
    out.append("|" + "|".join("---" for _ in rows[0]) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    if best_lines(results):
        out += ["", "Ratios of the fastest epochs (contention on a shared machine only adds time):", ""]
        out += [f"- {line}" for line in best_lines(results)]
    for note in results.get("notes", []):
        out += ["", f"Note: {note}"]
    if results.get("scaling"):
        out += ["", scaling_line(results["scaling"]).replace("scaling (", "Scaling (", 1)]
    return "\n".join(out) + "\n"
