"""Element-wise activations. Each keeps its input dtype and returns a new array in backward."""

from __future__ import annotations

import numpy as np

from nntrain.nn.layers.base import LAYERS, Layer, Option, require_shape
from nntrain.nn.parallel import split


@LAYERS.register("relu")
class ReLU(Layer):
    """y = max(x, 0); dx = g · [x > 0] (the subgradient at 0 is 0, as in PyTorch).

    Outputs keep the input's memory layout (channels-last stays channels-last); the work is split
    over the batch axis across `workers`. max(x, 0) is exact and zeroes the gradient wherever it
    maps two values to one (x <= 0), so it commutes with a max-pool (see Layer)."""

    commutes_with_max = True

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        y = np.empty_like(x)
        mask = np.empty_like(x, dtype=bool) if train else None

        def work(s: slice) -> None:
            if mask is not None:
                np.greater(x[s], 0, out=mask[s])
            np.maximum(x[s], 0, out=y[s])

        split(self.workers, work, len(x), x[:1].size)
        self.mask = mask
        return y

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        mask = self._cached("mask")
        dx = np.empty_like(grad)
        split(self.workers, lambda s: np.multiply(grad[s], mask[s], out=dx[s]), len(grad), grad[:1].size)
        return dx

    def kink_state(self) -> np.ndarray | None:
        """[x > 0] of the last training forward."""
        return getattr(self, "mask", None)


@LAYERS.register("leaky_relu")
class LeakyReLU(Layer):
    """y = x if x > 0 else slope·x; dx = g if x > 0 else slope·g (PyTorch's F.leaky_relu)."""

    options = {"slope": Option("float", 0.01, doc="gradient for x <= 0 (PyTorch's negative_slope)")}

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        mask = x > 0
        self.mask = mask if train else None
        return np.where(mask, x, x * x.dtype.type(self.slope))

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        return np.where(self._cached("mask"), grad, grad * grad.dtype.type(self.slope))

    def kink_state(self) -> np.ndarray | None:
        """[x > 0] of the last training forward."""
        return getattr(self, "mask", None)


@LAYERS.register("sigmoid")
class Sigmoid(Layer):
    """y = 1 / (1 + e^-x), computed from e = e^-|x| so that no exp overflows:
    y = 1/(1+e) for x >= 0, e/(1+e) for x < 0. dx = g·y·(1 - y)."""

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        e = np.exp(-np.abs(x))
        d = 1 + e
        y = np.where(x >= 0, 1 / d, e / d)
        self.y = y if train else None
        return y

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        y = self._cached("y")
        return grad * y * (1 - y)


@LAYERS.register("tanh")
class Tanh(Layer):
    """y = tanh(x); dx = g·(1 - y²)."""

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        y = np.tanh(x)
        self.y = y if train else None
        return y

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        y = self._cached("y")
        return grad * (1 - y * y)


@LAYERS.register("softmax")
class Softmax(Layer):
    """Row-wise softmax over features, x: (N, K) -> probabilities (N, K); for a model that ends in
    probabilities, with the loss's `softmax: false` (cancel_softmax). y = exp(x - max) / Σ exp(x - max);
    dx = y ⊙ (g - Σ_k g_k y_k)."""

    def output_shape(self, input_shape):
        require_shape(self, input_shape, 1, "add {type: flatten} before it")
        return tuple(input_shape)

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True)) if x.size else np.exp(x)
        y = e / e.sum(axis=1, keepdims=True)
        self.y = y if train else None
        return y

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        y = self._cached("y")
        return y * (grad - (grad * y).sum(axis=1, keepdims=True))


@LAYERS.register("gelu")
class GELU(Layer):
    """GELU as PyTorch's F.gelu. approximate: none (default) y = x·Φ(x) with Φ(x) = ½(1 + erf(x/√2)),
    dx = g·(Φ(x) + x·φ(x)); tanh: y = ½x(1 + tanh(u)), u = √(2/π)(x + 0.044715x³),
    dx = g·(½(1 + tanh u) + ½x(1 - tanh²u)·√(2/π)(1 + 3·0.044715x²))."""

    options = {"approximate": Option("str", "none", choices=("none", "tanh"), doc="erf form or tanh approximation")}

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        t = x.dtype.type
        self.x = x if train else None   # backward needs x and tanh(u) or Φ(x); evaluation keeps nothing
        if self.approximate == "tanh":
            th = np.tanh(t(_SQRT_2_OVER_PI) * (x + t(0.044715) * x * x * x))
            self.t = th if train else None
            return t(0.5) * x * (1 + th)
        cdf = t(0.5) * (1 + erf(x * t(_SQRT_HALF)))
        self.cdf = cdf if train else None
        return x * cdf

    def backward(self, grad: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        x = self._cached("x")
        t = x.dtype.type
        if self.approximate == "tanh":
            du = t(_SQRT_2_OVER_PI) * (1 + t(3 * 0.044715) * x * x)
            return grad * (t(0.5) * (1 + self.t) + t(0.5) * x * (1 - self.t * self.t) * du)
        pdf = t(_INV_SQRT_2PI) * np.exp(t(-0.5) * x * x)
        return grad * (self.cdf + x * pdf)


_SQRT_HALF = 0.7071067811865476
_SQRT_2_OVER_PI = 0.7978845608028654
_INV_SQRT_2PI = 0.3989422804014327

# Cephes ndtr.c rational approximations (S. Moshier): erf(x) = x·T(x²)/U(x²) for |x| < 1;
# erfc(x) = e^{-x²}·P(x)/Q(x) for 1 <= x < 8 and e^{-x²}·R(x)/S(x) for x >= 8 (leading 1 of Q, S, U implied).
_T = (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
      7.00332514112805075473e3, 5.55923013010394962768e4)
_U = (1.0, 3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
      2.26290000613890934246e4, 4.92673942608635921086e4)
_P = (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
      4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
      9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2)
_Q = (1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
      9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
      1.65666309194161350182e3, 5.57535340817727675546e2)
_R = (5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0,
      6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0)
_S = (1.0, 2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
      1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0)


def _poly(coeffs: tuple[float, ...], z: np.ndarray) -> np.ndarray:
    """Horner evaluation of coeffs[0]·z^k + ... + coeffs[k], in z's dtype."""
    t = z.dtype.type
    acc = np.full_like(z, t(coeffs[0]))
    for c in coeffs[1:]:
        acc *= z
        acc += t(c)
    return acc


def erf(x: np.ndarray) -> np.ndarray:
    """Element-wise error function in x's float dtype (NumPy has none and SciPy is not a dependency);
    relative error ~1e-16 in float64 (Cephes' rational approximations)."""
    a = np.abs(x)
    small = a < 1
    xs = np.clip(x, -1, 1)  # the |x| < 1 branch only; clipping keeps the other lanes finite
    z = xs * xs
    near = xs * _poly(_T, z) / _poly(_U, z)
    # erfc(a) for a >= 1; min() keeps the unused branch finite for huge a.
    am = np.minimum(a, x.dtype.type(30))
    tail = np.exp(-am * am) * np.where(am < 8, _poly(_P, am) / _poly(_Q, am), _poly(_R, am) / _poly(_S, am))
    far = np.copysign(1 - tail, x)
    return np.where(small, near, far)
