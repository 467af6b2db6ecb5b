"""`python -m bench`: nntrain and PyTorch side by side on the reference workloads (bench/workloads.py).

For each workload both sides train the same net (same batch size, optimizer, data, thread count),
alternating epoch by epoch (the side that goes first alternates too), each epoch in a fresh
process of its own: nntrain as the real `nntrain --threads T train bench/configs/<workload>.yaml`
(continued with --resume), PyTorch as `python -m bench.torch_worker`. Results go to --out (JSON)
and a markdown table beside it (same name, .md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import datasets, nntrain_side, report, torch_side
from bench.machine import machine_info, usable_cores
from bench.workloads import WORKLOADS, Workload

QUICK_FRACTION = 0.1
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python -m bench --workloads mnist-mlp,mnist-cnn --quick --threads 2\n"
               "  python -m bench --epochs 3 --scaling\n  python -m bench --workloads none --scaling --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated, from {', '.join(WORKLOADS)} ('none': only --scaling); default all")
    p.add_argument("--epochs", type=int, default=1, help="epochs per side (default 1)")
    p.add_argument("--threads", type=int, default=usable_cores(), help="threads for both sides (default: all cores)")
    p.add_argument("--quick", action="store_true",
                   help=f"train on the first {QUICK_FRACTION * 100:.0f}%% of the training images (MNIST workloads; "
                        "nntrain cannot read a smaller CIFAR-10, so cifar-cnn stays full)")
    p.add_argument("--scaling", action="store_true",
                   help="also time nntrain mnist-cnn on 1/4 of the training set and on all of it (ratio ≤ 4.4)")
    p.add_argument("--data-root", type=Path, default=datasets.default_root(),
                   help="holds mnist/ and cifar10/cifar-10-batches-bin/ (default: $NNTRAIN_DATA, else ~/.cache/nntrain)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (markdown beside it, .md)")
    p.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (run folders, logs)")
    args = p.parse_args(argv)
    names = [] if args.workloads.strip() == "none" else [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if args.epochs < 1 or args.threads < 1:
        p.error("--epochs and --threads must be at least 1")
    if not names and not args.scaling:
        p.error("nothing to do: give --workloads or --scaling")
    args.workload_list = [WORKLOADS[n] for n in names]
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_data(datasets_needed: set[str], root: Path) -> None:
    """Exit 2 with a hint when a dataset's files are missing under the data root."""
    for ds in sorted(datasets_needed):
        missing = datasets.missing_files(ds, root)
        if missing:
            hint = (f"expected the binary layout, {root / datasets.CIFAR_DIR}/ with data_batch_1..5.bin and "
                    "test_batch.bin; nntrain downloads it with: python -c \"import nntrain.data as d; "
                    f"d.load_dataset('cifar10', '{root}')\"" if ds == "cifar10" else
                    f"expected {root / 'mnist'}/ with the four IDX .gz files; nntrain downloads them with: "
                    f"python -c \"import nntrain.data as d; d.load_dataset('mnist', '{root}')\"")
            log(f"error: {ds} is incomplete under {root}: missing {', '.join(missing)}; {hint} "
                "(or pass --data-root)")
            sys.exit(2)


def data_root_for(wl: Workload, args: argparse.Namespace, work: Path, notes: list[str]) -> tuple[Path, int, float]:
    """(data root, training images, fraction of an epoch) for a workload, making the --quick subset."""
    full = datasets.TRAIN_SIZE[wl.dataset]
    if not args.quick:
        return args.data_root, full, 1.0
    if not datasets.subset_supported(wl.dataset):
        notes.append(f"{wl.name}: --quick trains the full epoch ({wl.dataset} subsets are not readable by nntrain)")
        return args.data_root, full, 1.0
    n = int(full * QUICK_FRACTION)
    dest = work / "data" / f"{wl.dataset}-{n}"
    if not dest.exists():
        datasets.make_subset_root(wl.dataset, args.data_root, n, dest)
    return dest, n, n / full


def bench_workload(wl: Workload, args: argparse.Namespace, work: Path, notes: list[str]) -> dict:
    """Both sides, alternating epoch by epoch; the summary of report.summarize_workload."""
    root, n_train, fraction = data_root_for(wl, args, work, notes)
    wdir = work / wl.name
    run_dir, state = wdir / "nntrain-run", wdir / "torch-state.pt"
    nn_epochs: list[dict] = []
    th_epochs: list[dict] = []
    for epoch in range(1, args.epochs + 1):
        sides = ["nntrain", "torch"] if epoch % 2 else ["torch", "nntrain"]
        for side in sides:
            log(f"[{wl.name}] epoch {epoch}/{args.epochs}: {side} ...")
            logs = wdir / "logs" / f"{side}-epoch{epoch}"
            if side == "nntrain":
                r = nntrain_side.run_epoch(wl, root, run_dir, epoch, args.threads, logs)
                nn_epochs.append(r)
            else:
                r = torch_side.run_epoch(wl, root, state, epoch, args.threads, logs)
                th_epochs.append(r)
            log(f"[{wl.name}] epoch {epoch}: {side} {r['seconds']:.2f} s, test acc {r['test_acc']:.4f}, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB")
    return report.summarize_workload(wl.name, n_train, fraction, nn_epochs, th_epochs)


def bench_scaling(args: argparse.Namespace, work: Path) -> dict:
    """nntrain mnist-cnn on a quarter of the (quick) training set and on all of it, alternating."""
    wl = WORKLOADS["mnist-cnn"]
    full = datasets.TRAIN_SIZE["mnist"]
    n_big = int(full * QUICK_FRACTION) if args.quick else full
    n_small = n_big // 4
    roots = {n_small: datasets.make_subset_root("mnist", args.data_root, n_small, work / "data" / f"scaling-{n_small}")}
    roots[n_big] = (args.data_root if n_big == full else
                    datasets.make_subset_root("mnist", args.data_root, n_big, work / "data" / f"scaling-{n_big}"))
    times: dict[int, list[float]] = {n_small: [], n_big: []}
    for rep in range(1, args.epochs + 1):
        order = [n_small, n_big] if rep % 2 else [n_big, n_small]
        for n in order:
            d = work / "scaling" / f"{n}-rep{rep}"
            r = nntrain_side.run_epoch(wl, roots[n], d / "run", 1, args.threads, d / "logs")
            times[n].append(r["seconds"])
            log(f"[scaling] {n} images: {r['seconds']:.2f} s")
    return report.summarize_scaling(n_small, n_big, times[n_small], times[n_big])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needed = {w.dataset for w in args.workload_list} | ({"mnist"} if args.scaling else set())
    check_data(needed, args.data_root)
    work = Path(tempfile.mkdtemp(prefix="nntrain-bench-", dir=args.work_dir))
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": command.strip(), "threads": args.threads,
                     "epochs": args.epochs, "quick": args.quick, "data_root": str(args.data_root),
                     "workloads": [], "scaling": None, "notes": []}
    try:
        results["machine"] = machine_info(args.threads, work / "machine")
        log(f"machine: {report.machine_line(results)}")
        for wl in args.workload_list:
            results["workloads"].append(bench_workload(wl, args, work, results["notes"]))
        if args.scaling:
            results["scaling"] = bench_scaling(args, work)
    except RuntimeError as e:
        log(f"error: {e}")
        return 1
    finally:
        if args.keep:
            log(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report.format_console(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    md = args.out.with_suffix(".md")
    md.write_text(report.format_markdown(results))
    log(f"wrote {args.out} and {md}")
    return 0
