"""The `nntrain` command: a thin click shell over the library.

User mistakes (NNTrainError) print one paragraph and exit 2 (1 for failed checks and NaN stops,
130 for Ctrl-C); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

EPILOG_TRAIN = """\b
Examples:
  nntrain train configs/quickstart.yaml
  nntrain train configs/cnn.yaml -s optimizer.lr=0.01 -s train.epochs=3
  nntrain train configs/cnn.yaml -s "model[0].out_channels=16" --run-dir runs/small-cnn
  nntrain train configs/cnn.yaml --resume runs/mnist-cnn-20261125-101500
  nntrain train configs/fashion_cnn.yaml --init-from runs/mnist-cnn-20261125-101500/checkpoints/best.npz
"""


def _set_blas_environment() -> None:
    """Settings OpenBLAS reads only when it loads, so they must be in the environment before NumPy is
    first imported (which is why `nntrain`'s public names are imported lazily).

    OpenBLAS's idle threads otherwise spin between matrix products, taking the cores that the model's
    element-wise workers need; a short OPENBLAS_THREAD_TIMEOUT lets them sleep (unless the user set it).
    """
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _set_threads(ctx: click.Context, threads: int | None) -> None:
    """Apply `--threads N` to the loaded BLAS (and OpenMP) pools at run time, until the command ends
    (so calling `cli` in-process, as tests do, leaves the process's thread counts as they were).

    gradcheck defaults to one thread: its float64 products are tiny, and threads only add overhead.
    Without `--threads` the BLAS keeps its own default (all cores, or its environment variables).
    """
    if threads is None and ctx.invoked_subcommand == "gradcheck":
        threads = 1
    if threads is not None:
        from nntrain.nn.blas import controller

        ctx.with_resource(controller().limit(limits=threads))


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("nntrain")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_nntrain_console", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        h._nntrain_console = True  # type: ignore[attr-defined]
        logger.addHandler(h)


def handle_errors(fn: Callable) -> Callable:
    """Turn the project's exceptions into a message and exit code (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from nntrain.errors import NNTrainError

        ctx = click.get_current_context()
        debug = (ctx.find_root().params or {}).get("debug", False)
        try:
            return fn(*args, **kwargs)
        except NNTrainError as e:
            if debug:
                raise
            click.echo(f"error: {e}" if e.exit_code != 130 else str(e), err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            if debug:
                raise
            click.echo("error: out of memory: try a smaller train.batch_size or train.eval_batch_size", err=True)
            sys.exit(2)

    return wrapper


GLOBAL_OPTIONS = ("--threads", "--debug", "-v", "--verbose")


class _Command(click.Command):
    """A subcommand that says where a global option goes when one is given after it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            if e.option_name not in GLOBAL_OPTIONS:
                raise
            value = " 2" if e.option_name == "--threads" else ""
            raise click.UsageError(f"No such option '{e.option_name}'. {e.option_name} is an option of nntrain "
                                   f"itself: give it before the command, e.g. nntrain {e.option_name}{value} "
                                   f"{ctx.info_name} ...", ctx) from None


class _Group(click.Group):
    command_class = _Command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="BLAS threads (default: all cores).")
@click.version_option(package_name="nntrain")
def cli(debug: bool, verbose: bool, threads: int | None) -> None:
    """Train neural networks written from scratch in NumPy, from YAML configs.

    \b
    Examples:
      nntrain train configs/quickstart.yaml       train, print the run folder
      nntrain eval runs/quickstart-20261125-101500  test-set metrics and plots
      nntrain gradcheck configs/cnn.yaml            check every gradient numerically
      nntrain print-config configs/cnn.yaml -s optimizer.lr=0.01
      nntrain augment-preview configs/cnn_augment.yaml   look at the augmentation
      nntrain compare runs/mnist-mlp-* runs/mnist-cnn-*  one table and overlaid curves
      nntrain predict runs/mnist-cnn-20261125-101500 digit.png
    """
    _setup_logging(verbose)
    _set_threads(click.get_current_context(), threads)


def _load(config: str, overrides: tuple[str, ...]) -> dict:
    from nntrain.config import load_config

    return load_config(config, list(overrides))


set_option = click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config value (YAML syntax), e.g. -s optimizer.lr=0.01; repeatable.")


@cli.command(epilog=EPILOG_TRAIN)
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@set_option
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Continue the run in this folder from its checkpoints/last.npz (CONFIG is then optional).")
@click.option("--force", is_flag=True,
              help="With --resume: continue with the values of CONFIG or -s where they differ from the run's "
                   "(recorded in its config.yaml and log).")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None, help="Folder for this run.")
@click.option("--init-from", type=click.Path(dir_okay=False), default=None,
              help="Start from the weights of this checkpoint (fresh optimizer state).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal).")
@click.option("--show-augment", is_flag=True,
              help="Only write the augmentation preview (<name>-augment.png here) and exit, like augment-preview.")
@click.option("--strict", is_flag=True,
              help="Image folders and CSVs: refuse unreadable images instead of skipping them (-s data.strict=true).")
@handle_errors
def train(config: str | None, overrides: tuple[str, ...], resume: str | None, force: bool, run_dir: str | None,
          init_from: str | None, progress: bool | None, show_augment: bool = False, strict: bool = False) -> None:
    """Train the model described by CONFIG, or continue a run with --resume; prints the run folder."""
    from nntrain.training.runner import resume_config, train as run_training

    if strict:
        overrides = (*overrides, "data.strict=true")

    forced: list[str] = []
    if resume and (init_from or run_dir):
        raise click.UsageError("--resume continues a run in its own folder from its own weights: it takes no "
                               "--run-dir or --init-from")
    if resume:
        wanted = None
        if config is not None:
            wanted = _load(config, overrides)
        elif overrides:
            wanted = _with_overrides(resume_config(resume)[0], overrides)
        cfg, forced = resume_config(resume, wanted, force)
    elif config is None:
        raise click.UsageError("give a CONFIG to train, or --resume RUN_DIR to continue a run")
    else:
        cfg = _load(config, overrides)
    if show_augment:
        from nntrain.tools.preview import write_augment_preview

        click.echo(str(write_augment_preview(cfg)))
        return

    def announce(trainer: Any, folder: Any) -> None:
        click.echo(trainer.parts.model.summary(), err=True)
        click.echo(f"run folder: {folder}", err=True)

    # the test figures are in the run's log (on stderr); the folder, announced there at the start, goes to
    # stdout for scripts (`run=$(nntrain train ...)`), and is not repeated on a terminal
    folder, _ = run_training(cfg, run_dir=run_dir, resume=resume, forced=forced, init_from=init_from,
                             progress=progress, on_start=announce)   # writes report.html too
    if not sys.stdout.isatty():
        click.echo(str(folder))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@handle_errors
def report(run_dir: str) -> None:
    """Rebuild RUN_DIR/report.html: results, metrics, figures, model and config in one self-contained page."""
    from nntrain.training.report_page import write_report

    click.echo(str(write_report(run_dir)))


def _with_overrides(cfg: dict, overrides: tuple[str, ...]) -> dict:
    """A resolved config with `-s` overrides applied and resolved again."""
    from nntrain.config import apply_overrides, validate_config

    return validate_config(apply_overrides(cfg, overrides))


@cli.command("print-config")
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@set_option
@click.option("--explain", is_flag=True,
              help="Print the reference of every config key (type, default, range, meaning) instead.")
@handle_errors
def print_config(config: str | None, overrides: tuple[str, ...], explain: bool) -> None:
    """Print CONFIG fully resolved: every default filled in, overrides applied.

    \b
    Examples:
      nntrain print-config configs/cnn.yaml -s train.epochs=3
      nntrain print-config --explain     every key of every section, layer, optimizer and schedule
    """
    if explain:
        from nntrain.config.explain import explain as reference

        click.echo(reference(), nl=False)
        return
    if config is None:
        raise click.UsageError("give a CONFIG to print, or --explain for the reference of every key")
    from nntrain.config import dump_config

    click.echo(dump_config(_load(config, overrides)), nl=False)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--full", is_flag=True, help="Check every entry of every tensor (default: a sample).")
@click.option("--samples", type=click.IntRange(min=1), default=50, show_default=True,
              help="Entries checked per tensor when not --full.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Samples in the checked batch (default: 2, or more so that every batchnorm "
                   "normalises over at least 8 values per feature).")
@handle_errors
def gradcheck(config: str, overrides: tuple[str, ...], full: bool, samples: int, batch_size: int | None) -> None:
    """Check every gradient of CONFIG's model numerically (float64, central differences).

    Prints a table of relative errors; exits 1 if any tensor fails.

    \b
    Example:
      nntrain gradcheck configs/cnn.yaml --full
    """
    from nntrain.tools.gradcheck import format_gradcheck, gradcheck_config

    rows = gradcheck_config(_load(config, overrides), full=full, batch_size=batch_size, samples=samples)
    click.echo(format_gradcheck(rows))
    failed = [r for r in rows if not r.passed]
    if failed:
        click.echo(f"gradcheck FAILED for {len(failed)} tensor(s): "
                   + ", ".join(r.name for r in failed), err=True)
        sys.exit(1)
    click.echo("gradcheck passed")


@cli.command("time")
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--batches", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: train.batch_size.")
@handle_errors
def time_cmd(config: str, overrides: tuple[str, ...], batches: int, batch_size: int | None) -> None:
    """Per-layer forward/backward time of CONFIG's model (like `caffe time`), each layer's GFLOP/s and
    its share of the machine's GEMM peak (measured first, same BLAS and threads), and where the rest of
    the step's time goes.

    \b
    Example:
      nntrain --threads 2 time configs/cnn.yaml --batches 50
    """
    from nntrain.tools.timing import format_profile, gemm_peak, profile_config

    peak = gemm_peak()
    rows = profile_config(_load(config, overrides), batches=batches, batch_size=batch_size, peak=peak)
    click.echo(format_profile(rows, peak=peak))


@cli.command("lr-find")
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--start", type=click.FloatRange(min=0, min_open=True), default=1e-6, show_default=True,
              help="First learning rate.")
@click.option("--end", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Last learning rate.")
@click.option("--steps", type=click.IntRange(min=2), default=200, show_default=True,
              help="Batches, one learning rate each (fewer if the loss diverges first).")
@click.option("--out", type=click.Path(dir_okay=False), default="plots/lr_find.png", show_default=True,
              help="Where to write the plot.")
@handle_errors
def lr_find_cmd(config: str, overrides: tuple[str, ...], start: float, end: float, steps: int, out: str) -> None:
    """The learning-rate range test: train a fresh model of CONFIG for a few hundred batches while the
    learning rate grows exponentially from --start to --end; plot the smoothed loss against it and
    suggest a learning rate (where the smoothed loss falls fastest).

    \b
    Example:
      nntrain lr-find configs/quickstart.yaml --steps 100
    """
    from nntrain.tools.lr_find import lr_find, write_lr_find_plot

    if end <= start:
        raise click.UsageError(f"--end ({end:g}) must be larger than --start ({start:g})")
    cfg = _load(config, overrides)
    result = lr_find(cfg, start=start, end=end, steps=steps)
    click.echo(result.summary())
    click.echo(f"plot: {write_lr_find_plot(result, out, title=str(cfg.get('name') or Path(config).stem))}")


def _parse_perturb(values: tuple[str, ...]) -> list[tuple[str, list[float]]]:
    from nntrain.errors import ConfigError

    out = []
    for v in values:
        kind, sep, levels = v.partition("=")
        try:
            parsed = [float(x) for x in levels.split(",") if x.strip()]
        except ValueError:
            parsed = []
        if not sep or not parsed:
            raise ConfigError(f"--perturb {v!r}: expected KIND=LEVEL[,LEVEL...], e.g. rotate=0,5,10", "--perturb")
        out.append((kind.strip(), parsed))
    return out


@cli.command("eval")
@click.argument("target", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path())
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Where the dataset lies (default: the run's data.root, $NNTRAIN_DATA, ~/.cache/nntrain).")
@click.option("--perturb", multiple=True, metavar="KIND=LEVELS",
              help="Accuracy under perturbed inputs: rotate=0,5,10 (degrees), shift=0,1,2 (pixels), "
                   "noise=0,0.1,0.2 (std); repeatable.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for eval/ and plots/ (default: the run folder, or the checkpoint's folder).")
@click.option("--allow-other-data", is_flag=True,
              help="Evaluate even on data that are not the ones the run was trained on (another fingerprint "
                   "or other normalisation statistics): a warning instead of a refusal.")
@click.option("--tta", type=click.Choice(["none", "hflip"]), default=None,   # nntrain.data.tta.TTA_VIEWS
              help="Test-time augmentation (default: the run's train.tta): hflip averages the predictions of "
                   "each image and its mirror image.")
@handle_errors
def eval_cmd(target: str, split: str, batch_size: int, data_root: str | None, perturb: tuple[str, ...],
             out: str | None, allow_other_data: bool = False, tta: str | None = None) -> None:
    """Loss, accuracy, per-class accuracy and confusion matrix of a trained run.

    The first line printed names the checkpoint (path, epoch) and the split. Results go to
    eval/<checkpoint>-<split>/ (eval/best-test/, eval/last-val/, ...), one folder per checkpoint and
    split: metrics.json, confusion.csv, confusion.png, misclassified.png, robustness.png (with
    --perturb; kept, merged, while the checkpoint file is unchanged), and kernels.png (first conv
    layer's kernels) or weights.png (an MLP's first-layer weights as images). The default
    evaluation (best checkpoint, test split) also copies its figures into plots/.

    \b
    Examples:
      nntrain eval runs/mnist-cnn-20261125-101500
      nntrain eval runs/mnist-cnn-20261125-101500/checkpoints/best.npz --split val
      nntrain eval runs/mnist-cnn-20261125-101500 --perturb rotate=0,5,10,15,20 --perturb noise=0,0.1,0.2
      nntrain eval runs/cifar-resnet-20261207-001500 --tta none
    """
    from nntrain.tools.report import evaluate_run, write_results
    from nntrain.training.run_folder import load_run

    perturbations = _parse_perturb(perturb)
    run = load_run(target)
    report = evaluate_run(run, split, batch_size, data_root, perturbations, allow_other_data=allow_other_data,
                          tta=tta)
    click.echo(report.format())
    for path in write_results(report, run, Path(out) if out else run.out_dir, out_given=out is not None):
        click.echo(f"wrote {path}", err=True)
    if out is None:
        from nntrain.training.report_page import write_report_or_warn

        write_report_or_warn(run.out_dir)


@cli.command("augment-preview")
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="PNG to write (default: <name>-augment.png in the current folder).")
@click.option("-n", "--num", "num", type=click.IntRange(min=1, max=64), default=8, show_default=True,
              help="Training images shown (columns).")
@click.option("--variants", type=click.IntRange(min=1, max=16), default=3, show_default=True,
              help="Augmented versions of each (rows).")
@handle_errors
def augment_preview_cmd(config: str, overrides: tuple[str, ...], out: str | None, num: int, variants: int) -> None:
    """Write a grid of training images (top row) and augmented versions of them; prints its path.

    \b
    Examples:
      nntrain augment-preview configs/cnn_augment.yaml
      nntrain augment-preview configs/cifar_cnn.yaml -n 12 --out preview.png
    """
    from nntrain.tools.preview import write_augment_preview

    from nntrain.config import load_config

    cfg = load_config(config, list(overrides), data_only=True)   # no model or optimizer needed to look at data
    click.echo(str(write_augment_preview(cfg, out, n=num, variants=variants)))


@cli.command()
@click.argument("runs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for compare.md and compare.png (default: comparisons/compare-<timestamp>/).")
@handle_errors
def compare(runs: tuple[str, ...], out: str | None) -> None:
    """One table of several runs (config keys that differ, best val acc, test acc, robustness from
    eval, epochs, median seconds per epoch) and their loss/accuracy curves overlaid.

    A section that differs is one column (optimizer: adam(lr=0.003)), the model a short description
    (2 conv + 2 fc, 52k params); the curves are labelled by what differs when that is short. A folder
    that cannot be compared (no config.yaml, no finished epoch, an unreadable file) is skipped with a
    warning; none left is an error (exit 2).

    \b
    Examples:
      nntrain compare runs/mnist-mlp-20261125-101500 runs/mnist-cnn-20261125-103000
      nntrain compare runs/cnn-plain-* runs/cnn-augment-* --out comparisons/augment
    """
    from nntrain.tools.compare import compare_runs, default_out_dir, save_comparison

    comp = compare_runs(runs)
    click.echo(comp.markdown())
    for path in save_comparison(comp, Path(out) if out else default_out_dir()):
        click.echo(f"wrote {path}", err=True)


@cli.command()
@click.argument("target", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path())
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True, type=click.Path())
@click.option("--invert/--no-invert", default=None,
              help="Invert the images (default: automatic for MNIST-style datasets: invert dark strokes on a "
                   "light background).")
@click.option("--mnist-style/--no-mnist-style", default=None,
              help="Frame the ink as the dataset was made: crop it to its bounding box, scale that to 20x20 of "
                   "28x28 and put its centre of mass at the centre (Fashion-MNIST: 28, box centred) "
                   "[default: on for white-on-black datasets such as mnist; off pads to a square and resizes].")
@click.option("--show", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Save what the model saw for each image (after inversion, framing and resizing; enlarged 8x) "
                   "as DIR/<name>-input.png.")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="Classes shown per image.")
@handle_errors
def predict(target: str, images: tuple[str, ...], invert: bool | None, mnist_style: bool | None,
            show: str | None, top: int) -> None:
    """Classify PNG/JPEG files with a trained model: the top classes with probabilities for each.

    \b
    Examples:
      nntrain predict runs/mnist-cnn-20261125-101500 my_digit.png
      nntrain predict runs/mnist-cnn-20261125-101500 photo_of_a_7.jpg --show seen/
      nntrain predict runs/cifar-cnn-20261126-090000/checkpoints/best.npz cat.jpg ship.jpg --top 5
    """
    from nntrain.tools.predict import format_predictions, predict_files, save_inputs
    from nntrain.training.run_folder import load_run

    preds = predict_files(load_run(target), images, invert, top, mnist_style)
    click.echo(format_predictions(preds))
    if show is not None:
        for path in save_inputs(preds, Path(show)):
            click.echo(f"wrote {path}", err=True)


@cli.command("export")
@click.argument("target", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path())
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="ONNX file to write (default: RUN_DIR/model.onnx, or the checkpoint's path with .onnx).")
@click.option("--opset", type=int, default=17, show_default=True,
              help="ONNX opset (13 or later; 20 and later use the Gelu operator).")
@click.option("--probabilities", is_flag=True,
              help="End in a Softmax: output `probabilities` instead of `logits`.")
@handle_errors
def export_cmd(target: str, out: str | None, opset: int, probabilities: bool) -> None:
    """Write a trained model as one ONNX graph (evaluation mode), for onnxruntime or any ONNX runtime;
    prints its path.

    The graph's input `pixels` is float32 (N, C, H, W) in [0, 1] (uint8 pixels / 255, any batch size);
    the run's normalisation is part of the graph. Its output is `logits` (N, K), or `probabilities`.
    Class names, dataset and input layout are in the model's metadata. Needs: pip install "nntrain[onnx]".

    \b
    Examples:
      nntrain export runs/mnist-cnn-20261125-101500
      nntrain export runs/mnist-cnn-20261125-101500/checkpoints/last.npz -o mnist.onnx --probabilities
    """
    from nntrain.tools.export import default_output, export_run, require_onnx
    from nntrain.training.run_folder import load_run

    require_onnx()
    run = load_run(target)
    result = export_run(run, Path(out) if out else default_output(target, run), opset, probabilities)
    click.echo(result.describe(), err=True)
    click.echo(str(result.path))


@cli.command("sweep")
@click.argument("sweep_file", metavar="SWEEP.yaml", type=click.Path(dir_okay=False), required=False)
@set_option
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Worker processes on this machine (default: the usable cores / --threads-per-worker; with "
                   "--resume: as the sweep was started). 0 creates the study only, for --join from elsewhere.")
@click.option("--threads-per-worker", type=click.IntRange(min=1), default=None,
              help="BLAS threads of each worker (default 1).")
@click.option("--runs-root", type=click.Path(file_okay=False), default=None,
              help="Folder under which sweeps/<name>-<timestamp>/ is made (default: runs). With --join or "
                   "--resume: trial run folders go under RUNS_ROOT/sweeps/<study>/trials/ instead of the "
                   "sweep folder's trials/.")
@click.option("--join", "join_target", metavar="DIR_OR_URL", default=None,
              help="Run more workers on an existing sweep: its folder, or its postgresql:// storage URL.")
@click.option("--study", default=None, help="With --join URL: the study, where the storage holds several.")
@click.option("--resume", "resume_dir", metavar="DIR", type=click.Path(file_okay=False), default=None,
              help="Continue a sweep after a crash or Ctrl-C: trials whose worker died continue from their "
                   "own last checkpoint, then the trials left are run.")
@handle_errors
def sweep_cmd(sweep_file: str | None, overrides: tuple[str, ...], workers: int | None,
              threads_per_worker: int | None, runs_root: str | None, join_target: str | None, study: str | None,
              resume_dir: str | None) -> None:
    """Search hyperparameters with Optuna: train each trial of SWEEP.yaml (a base config plus the key
    paths to search) as a run folder, in parallel worker processes; prints the sweep folder.

    The sweep folder (runs/sweeps/<name>-<timestamp>/) holds trials/<n>/ (ordinary run folders),
    trials.csv, best.yaml (the best trial's config, trainable as is) and plots/. Needs:
    pip install "nntrain[sweep]".

    \b
    Examples:
      nntrain sweep configs/sweeps/quickstart_lr.yaml --workers 2
      nntrain sweep configs/sweeps/cnn_lr_wd.yaml -s train.epochs=3 --workers 4
      nntrain sweep --join runs/sweeps/quickstart-lr-20261125-101500 --workers 2
      nntrain sweep --join postgresql://user:pw@db-host/sweeps --runs-root /scratch/runs
      nntrain sweep --resume runs/sweeps/quickstart-lr-20261125-101500
    """
    from nntrain.sweep import require_optuna

    modes = [m for m in (sweep_file, join_target, resume_dir) if m is not None]
    if len(modes) != 1:
        raise click.UsageError("give a SWEEP.yaml to start a sweep, or --join DIR_OR_URL, or --resume DIR")
    if overrides and sweep_file is None:
        raise click.UsageError("-s applies to a new sweep (SWEEP.yaml); a joined or resumed sweep keeps its own")
    if study is not None and join_target is None:
        raise click.UsageError("--study goes with --join")
    require_optuna()
    from nntrain.sweep import launch
    from nntrain.sweep.spec import load_sweep

    threads = threads_per_worker or 1
    if workers is None and resume_dir is None:
        workers = max(1, _usable_cores() // threads)
    if workers == 0 and sweep_file is None:
        raise click.UsageError("--workers 0 only creates a new sweep; --join and --resume need workers")

    def show(progress: Any) -> None:
        click.echo(progress.line(), err=True)

    if sweep_file is not None:
        spec = load_sweep(sweep_file, overrides)
        click.echo(f"sweep: {spec.trials} trials ({spec.method}) of {spec.base_source}, {spec.metric} "
                   f"({spec.goal}), {workers} worker(s) x {threads} thread(s)", err=True)
        result = launch.start(spec, runs_root or "runs", workers, threads, on_progress=show)
    elif join_target is not None:
        result = launch.join(join_target, runs_root, workers, threads, study, on_progress=show)
    else:
        result = launch.resume(resume_dir, workers, threads_per_worker, runs_root, on_progress=show)
    for path in result.outputs:
        click.echo(f"wrote {path}", err=True)
    for dead in result.dead_workers:
        click.echo(f"warning: {dead}", err=True)
    if workers == 0:
        click.echo(f"created the study; run its trials with: nntrain sweep --join {result.folder.path}", err=True)
    click.echo(str(result.folder.path))
    if result.orphans:
        click.echo(f"error: trial(s) {', '.join(map(str, result.orphans))} lost their worker; continue them from "
                   f"their last checkpoint with: nntrain sweep --resume {result.folder.path}", err=True)
        sys.exit(1)


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def main() -> None:
    _set_blas_environment()
    from nntrain.nn.allocator import keep_freed_memory

    keep_freed_memory()   # the same large arrays every step: keep them mapped (nn/allocator.py)
    cli(prog_name="nntrain")


if __name__ == "__main__":
    main()
