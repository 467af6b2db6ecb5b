"""ONNX export: a trained model as one ONNX graph in evaluation mode, for onnxruntime or any ONNX runtime.

The graph takes raw pixels and applies the run's normalisation itself, so a user feeds images exactly
as `nntrain predict` reads them (uint8 / 255):

    pixels  float32 (N, C, H, W) in [0, 1], N dynamic
      -> Sub(mean) -> Div(std)         the run's per-channel statistics as (1, C, 1, 1) constants
                                       (no nodes when the run has no normalisation)
      -> the layers, each as standard operators (dropout: nothing; batchnorm: running statistics)
      -> logits (N, K)                 or `probabilities` (N, K) with a Softmax on axis 1

Each layer type has one exporter in EXPORTERS, `fn(layer, builder, x) -> y` with x and y tensor names,
so exporting a new layer type means adding one function there; a type without one is refused
(NNTrainError, exit 2) naming it. Blocks (residual) export their branches through the same table.
Initializers carry the model's parameter names ("0.W", "4.body.0.gamma").

onnx is an optional dependency (`pip install "nntrain[onnx]"`), imported only here and only when used.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from nntrain.atomic import atomic_write_bytes
from nntrain.errors import NNTrainError

if TYPE_CHECKING:
    import onnx

    from nntrain.nn.layers.base import Layer
    from nntrain.nn.model import Model
    from nntrain.training.run_folder import LoadedRun

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
# 13: Unsqueeze/ReduceSum take their axes as an input and Softmax normalises along one axis.
MIN_OPSET = 13
GELU_OPSET = 20   # the first opset with a Gelu operator; older ones get its Erf or Tanh form
INPUT_NAME = "pixels"
INPUT_LAYOUT = "NCHW, float32 in [0, 1]"
INSTALL_HINT = 'pip install "nntrain[onnx]"'


def require_onnx() -> Any:
    """The onnx module, or an NNTrainError (exit 2) saying which command installs it."""
    try:
        import onnx
    except ImportError:
        raise NNTrainError(f"exporting to ONNX needs the onnx package, which is not installed; install it "
                           f"with: {INSTALL_HINT}") from None
    return onnx


class GraphBuilder:
    """The nodes and initializers of one graph under construction.

    Names are unique; constants and node outputs are prefixed with the current scope, the position of
    the layer being exported ("3", "4.body.0"), so initializers carry the model's parameter names.
    `exporters` is the table `layer` dispatches on.
    """

    def __init__(self, onnx_module: Any, opset: int, exporters: Mapping[str, Exporter]):
        self.onnx = onnx_module
        self.opset = opset
        self.exporters = exporters
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()
        self._scope: list[str] = []

    # --- names -----------------------------------------------------------------------------------
    @contextmanager
    def scope(self, part: str) -> Iterator[None]:
        """Names made inside get `part` appended to the current prefix ("4" then "body" -> "4.body.")."""
        self._scope.append(part)
        try:
            yield
        finally:
            self._scope.pop()

    @property
    def where(self) -> str:
        """The current scope as a dotted path ("4.body.0"), '' at the top."""
        return ".".join(self._scope)

    def fresh(self, hint: str) -> str:
        """A new unique tensor name: `<scope>.<hint>`, with a numeric suffix if taken."""
        base = f"{self.where}.{hint}" if self._scope else hint
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    # --- graph pieces ----------------------------------------------------------------------------
    def const(self, hint: str, value: Any, dtype: Any = np.float32) -> str:
        """An initializer holding `value` (cast to `dtype`); returns its name."""
        name = self.fresh(hint)
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs: Any) -> str:
        """One node `op_type(inputs, **attrs)` with one output; returns the output's name."""
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def axes(self, *axes: int) -> str:
        """An int64 axes constant, as Unsqueeze and ReduceSum take them (opset >= 13)."""
        return self.const("axes", list(axes), np.int64)

    # --- layers ----------------------------------------------------------------------------------
    def layer(self, layer: Layer, x: str) -> str:
        """Export one layer through the table; NNTrainError naming its type if it has no exporter."""
        fn = self.exporters.get(layer.type_name)
        if fn is None:
            raise NNTrainError(f"layer type '{layer.type_name}' (layer {self.where}) cannot be exported to ONNX: "
                               f"it has no exporter; exportable layer types: {', '.join(sorted(self.exporters))}")
        return fn(layer, self, x)

    def chain(self, layers: Sequence[Layer], x: str) -> str:
        """x through `layers` in their listed order (x itself for an empty list), each in its own scope."""
        for i, layer in enumerate(layers):
            with self.scope(str(i)):
                x = self.layer(layer, x)
        return x

    def name_output(self, x: str, name: str) -> str:
        """Make the graph's final tensor `x` be called `name`: the last node's output is renamed when it
        is `x` and nothing reads it; otherwise (x is the input, or read elsewhere) an Identity is added."""
        last = self.nodes[-1] if self.nodes else None
        read = any(x in node.input for node in self.nodes)
        if last is not None and list(last.output) == [x] and not read:
            last.output[0] = name
            last.name = name
            return name
        self.nodes.append(self.onnx.helper.make_node("Identity", [x], [name], name=name))
        return name


Exporter = Callable[["Layer", GraphBuilder, str], str]


# --- one exporter per layer type --------------------------------------------------------------------
def _linear(layer: Layer, b: GraphBuilder, x: str) -> str:
    """(N, in) -> Gemm(x, W (in, out)[, b (out,)]) -> (N, out)."""
    inputs = [x, b.const("W", layer.params["W"])]
    if layer.bias:
        inputs.append(b.const("b", layer.params["b"]))
    return b.op("Gemm", *inputs)


def _conv2d(layer: Layer, b: GraphBuilder, x: str) -> str:
    """(N, C, H, W) -> Conv(W (O, C, kh, kw)[, b (O,)]) with zero padding on each side -> (N, O, OH, OW)."""
    inputs = [x, b.const("W", layer.params["W"])]
    if layer.bias:
        inputs.append(b.const("b", layer.params["b"]))
    (ph, pw), (sh, sw) = layer.padding, layer.stride
    return b.op("Conv", *inputs, kernel_shape=list(layer.kernel_size), strides=[sh, sw], pads=[ph, pw, ph, pw])


def _pool_attrs(layer: Layer) -> dict[str, Any]:
    """kernel_shape, strides and pads of a pooling layer (floor mode, as nntrain and PyTorch)."""
    (ph, pw) = layer.padding
    return {"kernel_shape": list(layer.kernel_size), "strides": list(layer.stride), "pads": [ph, pw, ph, pw],
            "ceil_mode": 0}


def _maxpool2d(layer: Layer, b: GraphBuilder, x: str) -> str:
    """MaxPool: ONNX's padding never wins a maximum, as nntrain's -inf padding."""
    return b.op("MaxPool", x, **_pool_attrs(layer))


def _avgpool2d(layer: Layer, b: GraphBuilder, x: str) -> str:
    """AveragePool with count_include_pad=1: padding counts as zeros in the divisor kh·kw, as in nntrain."""
    return b.op("AveragePool", x, count_include_pad=1, **_pool_attrs(layer))


def _batchnorm(layer: Layer, b: GraphBuilder, x: str) -> str:
    """BatchNormalization with the running statistics (evaluation). A flat (N, F) input goes through
    Unsqueeze to (N, F, 1) and Flatten back, so both forms use the one operator."""
    consts = [b.const(name, arr) for name, arr in (("gamma", layer.params["gamma"]), ("beta", layer.params["beta"]),
                                                   ("running_mean", layer.buffers["running_mean"]),
                                                   ("running_var", layer.buffers["running_var"]))]
    flat = len(layer.input_shape) == 1
    if flat:
        x = b.op("Unsqueeze", x, b.axes(2))
    y = b.op("BatchNormalization", x, *consts, epsilon=float(layer.eps))
    return b.op("Flatten", y, axis=1) if flat else y


def _relu(layer: Layer, b: GraphBuilder, x: str) -> str:
    return b.op("Relu", x)


def _leaky_relu(layer: Layer, b: GraphBuilder, x: str) -> str:
    return b.op("LeakyRelu", x, alpha=float(layer.slope))


def _sigmoid(layer: Layer, b: GraphBuilder, x: str) -> str:
    return b.op("Sigmoid", x)


def _tanh(layer: Layer, b: GraphBuilder, x: str) -> str:
    return b.op("Tanh", x)


def _softmax(layer: Layer, b: GraphBuilder, x: str) -> str:
    """(N, K) -> Softmax over axis 1."""
    return b.op("Softmax", x, axis=1)


def _gelu(layer: Layer, b: GraphBuilder, x: str) -> str:
    """Gelu (opset >= 20), else its formula: ½x(1 + erf(x/√2)), or ½x(1 + tanh(√(2/π)(x + 0.044715x³)))."""
    if b.opset >= GELU_OPSET:
        return b.op("Gelu", x, approximate=layer.approximate)
    if layer.approximate == "tanh":
        cube = b.op("Mul", b.op("Mul", x, x), x)
        inner = b.op("Add", x, b.op("Mul", cube, b.const("c", 0.044715)))
        t = b.op("Tanh", b.op("Mul", inner, b.const("sqrt_2_over_pi", math.sqrt(2 / math.pi))))
    else:
        t = b.op("Erf", b.op("Mul", x, b.const("sqrt_half", math.sqrt(0.5))))
    half_x = b.op("Mul", x, b.const("half", 0.5))
    return b.op("Mul", half_x, b.op("Add", t, b.const("one", 1.0)))


def _dropout(layer: Layer, b: GraphBuilder, x: str) -> str:
    """Evaluation dropout is the identity: no node."""
    return x


def _flatten(layer: Layer, b: GraphBuilder, x: str) -> str:
    """(N, C, H, W) -> (N, C·H·W), row-major as nntrain's flatten."""
    return b.op("Flatten", x, axis=1)


def _global_avgpool(layer: Layer, b: GraphBuilder, x: str) -> str:
    """(N, C, H, W) -> GlobalAveragePool (N, C, 1, 1) -> Flatten (N, C)."""
    return b.op("Flatten", b.op("GlobalAveragePool", x), axis=1)


def _residual(layer: Layer, b: GraphBuilder, x: str) -> str:
    """body(x) + shortcut(x): each branch exported layer by layer (an empty shortcut is x itself), then Add."""
    outs = []
    for name in ("body", "shortcut"):
        with b.scope(name):
            outs.append(b.chain(layer.branches[name], x))
    return b.op("Add", *outs)


# Layer type name -> exporter. Read-only: a caller wanting another table passes its own to `to_onnx`.
EXPORTERS: Mapping[str, Exporter] = MappingProxyType({
    "linear": _linear, "conv2d": _conv2d, "maxpool2d": _maxpool2d, "avgpool2d": _avgpool2d,
    "batchnorm": _batchnorm, "relu": _relu, "leaky_relu": _leaky_relu, "sigmoid": _sigmoid, "tanh": _tanh,
    "softmax": _softmax, "gelu": _gelu, "dropout": _dropout, "flatten": _flatten,
    "global_avgpool": _global_avgpool, "residual": _residual,
})


# --- the whole graph --------------------------------------------------------------------------------
def check_opset(onnx_module: Any, opset: int) -> None:
    """NNTrainError unless `opset` is one nntrain exports and the installed onnx knows."""
    highest = onnx_module.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= highest:
        raise NNTrainError(f"--opset {opset} is not supported: nntrain exports opsets {MIN_OPSET} to {highest} "
                           f"(the highest the installed onnx {onnx_module.__version__} knows); the default is "
                           f"{DEFAULT_OPSET}")


def _normalise(b: GraphBuilder, x: str, mean: np.ndarray | None, std: np.ndarray | None) -> str:
    """x -> (x - mean) / std with (1, C, 1, 1) float32 constants, as nntrain's batches are made."""
    if mean is not None:
        x = b.op("Sub", x, b.const("norm_mean", np.reshape(mean, (1, -1, 1, 1))))
    if std is not None:
        x = b.op("Div", x, b.const("norm_std", np.reshape(std, (1, -1, 1, 1))))
    return x


def to_onnx(model: Model, mean: np.ndarray | None = None, std: np.ndarray | None = None, *,
            opset: int = DEFAULT_OPSET, probabilities: bool = False, ends_in_softmax: bool = False,
            metadata: Mapping[str, str] | None = None, name: str = "nntrain",
            exporters: Mapping[str, Exporter] | None = None) -> onnx.ModelProto:
    """The model in evaluation mode as an ONNX model (checked by onnx.checker, full_check).

    Input `pixels` float32 (N, *model.input_shape) in [0, 1], N dynamic; mean/std: (C,) statistics on
    the [0, 1] scale applied inside the graph (None: not applied). Output (N, *model.output_shape):
    `logits`; `probabilities` with probabilities=True (a Softmax on axis 1 is appended), or always when
    `ends_in_softmax` (a model trained with loss.softmax: false already outputs probabilities; nothing
    is appended). `metadata` goes into metadata_props. `exporters` replaces the EXPORTERS table.
    """
    onnx = require_onnx()
    check_opset(onnx, opset)
    helper, TensorProto = onnx.helper, onnx.TensorProto
    b = GraphBuilder(onnx, opset, EXPORTERS if exporters is None else exporters)
    x = _normalise(b, INPUT_NAME, mean, std)
    for i, layer in enumerate(model.layers):   # listed order: the plan's relu/max-pool swap gives the same values
        with b.scope(str(i)):
            x = b.layer(layer, x)
    out_name = "probabilities" if probabilities or ends_in_softmax else "logits"
    if probabilities and not ends_in_softmax:
        x = b.op("Softmax", x, axis=1, hint="softmax")
    b.name_output(x, out_name)
    graph = helper.make_graph(
        b.nodes, name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", *model.input_shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", *model.output_shape])],
        initializer=b.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                              producer_name="nntrain", producer_version=_version(),
                              doc_string=f"{name}: input {INPUT_NAME} ({INPUT_LAYOUT}), output {out_name}")
    helper.set_model_props(proto, dict(metadata or {}))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _version() -> str:
    from nntrain import __version__

    return __version__


# --- a trained run ----------------------------------------------------------------------------------
@dataclass
class Exported:
    """What `export_run` wrote: the file, its output's name, opset and size of the graph."""

    path: Path
    output: str
    opset: int
    nodes: int
    bytes: int

    def describe(self) -> str:
        return (f"wrote {self.path}: input {INPUT_NAME} ({INPUT_LAYOUT}), output {self.output}, opset {self.opset}, "
                f"{self.nodes} nodes, {self.bytes / 1e6:.2f} MB")


def run_metadata(run: LoadedRun, output: str) -> dict[str, str]:
    """metadata_props of a run's export: class names (JSON list), dataset, input layout, output, the
    normalisation the graph applies (JSON, informational), the run's test-time augmentation (which the
    graph leaves to its user), the run's name and nntrain's version."""
    from nntrain.tools.report import run_class_names

    norm = "none" if run.mean is None else json.dumps({"mean": np.asarray(run.mean).tolist(),
                                                       "std": np.asarray(run.std).tolist()})
    return {
        "class_names": json.dumps(run_class_names(run)),
        "dataset": str(run.ckpt.meta.get("dataset", run.cfg["data"]["dataset"])),
        "input_layout": INPUT_LAYOUT,
        "input_shape": json.dumps(list(run.model.input_shape)),
        "output": output,
        "normalisation_in_graph": norm,
        "test_time_augmentation": str(run.cfg["train"]["tta"]),   # not in the graph: averaged outside it
        "run_name": str(run.cfg.get("name", "")),
        "nntrain_version": _version(),
    }


def default_output(target: str | Path, run: LoadedRun) -> Path:
    """RUN_DIR -> RUN_DIR/model.onnx; a checkpoint file -> the same path with .onnx (best.npz -> best.onnx)."""
    target = Path(target)
    return target / "model.onnx" if target.is_dir() else run.checkpoint_path.with_suffix(".onnx")


def export_run(run: LoadedRun, out: str | Path, opset: int = DEFAULT_OPSET, probabilities: bool = False,
               exporters: Mapping[str, Exporter] | None = None) -> Exported:
    """Write a loaded run's model as ONNX to `out` (atomically), normalisation and metadata included."""
    ends_in_softmax = not run.cfg["loss"].get("softmax", True)
    output = "probabilities" if probabilities or ends_in_softmax else "logits"
    if probabilities and ends_in_softmax:
        log.info("the model ends in its own softmax (loss.softmax: false): its outputs are the probabilities")
    if run.cfg["train"]["tta"] != "none":
        log.warning("the run's evaluation averages test-time augmented views (train.tta: %s); the graph computes "
                    "one view: average its outputs for the image and its mirror image to get the same "
                    "predictions", run.cfg["train"]["tta"])
    mean = None if run.mean is None else np.asarray(run.mean, dtype=np.float32)
    std = None if run.std is None else np.asarray(run.std, dtype=np.float32)
    proto = to_onnx(run.model, mean, std, opset=opset, probabilities=probabilities,
                    ends_in_softmax=ends_in_softmax, metadata=run_metadata(run, output),
                    name=str(run.cfg.get("name") or "nntrain"), exporters=exporters)
    data = proto.SerializeToString()
    path = Path(out)
    atomic_write_bytes(path, data)
    log.debug("exported %s to %s", run.checkpoint_path, path)
    return Exported(path, output, opset, len(proto.graph.node), len(data))
