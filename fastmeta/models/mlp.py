"""MLP: a multi-layer ReLU network with every layer trained, for meta-SL.

f(x; theta) = W_L ReLU(... ReLU(W_0 x + b_0) ...) + b_L, scalar output. This is the
network of Finn, Abbeel and Levine's (2017) sinusoid benchmark (hidden=(40, 40)). Unlike
:class:`fastmeta.TwoLayerReLU` (one trained layer, the paper's analysis class), f is not
piecewise linear in theta, so the Gauss-Newton product is not the Hessian: ``hvp`` is the
exact product by Pearlmutter's R-operator.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from .._kernels import mlp as _k
from .._kernels.sl import MODE_VALUE
from .._validation import as_float_array, check_choice, check_int, check_real_scalar

# Multiply-adds per meta-objective call (rows x parameters) below which the task loop runs
# serially: a thread-pool wake-up costs more than a small batch's whole work.
_PARALLEL_WORK = 2_000_000


class MLP:
    """Fully connected ReLU network with a scalar output; all weights and biases trained.

    Parameters
    ----------
    in_dim : int
        Input dimension.
    hidden : sequence of int, default (40, 40)
        Widths of the hidden layers (at least one).
    seed : int or numpy.random.Generator, default 0
        Source of the initial parameters.
    init : {"uniform", "normal"}, default "uniform"
        ``"uniform"``: PyTorch's ``nn.Linear`` default, every weight and bias of a layer
        with fan-in n uniform on [-1/sqrt(n), 1/sqrt(n)]. ``"normal"``: Finn et al.'s
        TensorFlow code, weights from a normal of standard deviation 0.01 truncated at
        two standard deviations, biases zero.
    radius : float or None, default None
        If given, ``project`` maps theta onto {||theta - theta(0)||_2 <= radius}.

    Attributes
    ----------
    sizes : tuple of int
        (in_dim, *hidden, 1).
    n_params : int
        Total number of weights and biases.

    Notes
    -----
    A :class:`fastmeta.models.Predictor`. The flat parameter vector holds, layer by
    layer, W_l (row-major, shape (sizes[l+1], sizes[l])) then b_l; ``unflatten`` returns
    the list of (W_l, b_l). ``predict``, ``vjp``, ``jvp`` and ``hvp`` run compiled
    kernels; the meta-objective runs one fused compiled call per batch of tasks
    (``meta_terms``). Sums over samples and tasks run in a fixed order, so results do
    not depend on the number of threads. At a ReLU kink (a pre-activation exactly 0) the
    risk is not twice differentiable and the derivatives are one-sided values.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (40, 40),
                 seed: int | np.random.Generator = 0, radius: float | None = None,
                 init: str = "uniform") -> None:
        owner = "MLP"
        self.init = check_choice(init, "init", ("uniform", "normal"), owner)
        self.in_dim = check_int(in_dim, "in_dim", owner, low=1)
        if isinstance(hidden, (int, np.integer)) or not hasattr(hidden, "__len__") or len(hidden) == 0:
            raise ValueError(f"The 'hidden' parameter of MLP must be a non-empty sequence of layer widths. "
                             f"Got {hidden!r} instead.")
        self.hidden = tuple(check_int(h, "hidden", owner, low=1) for h in hidden)
        self.radius = None if radius is None else check_real_scalar(radius, "radius", owner, low=0.0)
        self.sizes = (self.in_dim, *self.hidden, 1)
        n_layers = len(self.sizes) - 1
        self._sizes = np.asarray(self.sizes, dtype=np.int64)
        self._woff = np.empty(n_layers, dtype=np.int64)
        self._boff = np.empty(n_layers, dtype=np.int64)
        self._uoff = np.zeros(n_layers + 2, dtype=np.int64)
        self._uoff[1] = self.in_dim
        pos = 0
        for l in range(n_layers):
            self._woff[l] = pos
            pos += self.sizes[l] * self.sizes[l + 1]
            self._boff[l] = pos
            pos += self.sizes[l + 1]
            self._uoff[l + 2] = self._uoff[l + 1] + self.sizes[l + 1]
        self.n_params = pos
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(
            check_int(seed, "seed", owner, low=0))
        theta0 = np.zeros(self.n_params)
        for l in range(n_layers):
            end = self._boff[l] + self.sizes[l + 1]
            if self.init == "uniform":
                bound = 1.0 / np.sqrt(self.sizes[l])
                theta0[self._woff[l]:end] = rng.uniform(-bound, bound, end - self._woff[l])
            else:
                w = rng.normal(0.0, 0.01, self._boff[l] - self._woff[l])
                while np.any(np.abs(w) > 0.02):        # truncate: redraw beyond two deviations
                    bad = np.abs(w) > 0.02
                    w[bad] = rng.normal(0.0, 0.01, int(bad.sum()))
                theta0[self._woff[l]:self._boff[l]] = w
        theta0.setflags(write=False)
        self._theta0 = theta0
        self._layout = (self._sizes, self._woff, self._boff, self._uoff)

    def __repr__(self) -> str:
        init = "" if self.init == "uniform" else f", init={self.init!r}"
        return f"MLP(in_dim={self.in_dim}, hidden={self.hidden}, radius={self.radius}{init})"

    def config(self) -> str:
        """Identifies the architecture and its initialisation (for checkpoint tags)."""
        return f"{self!r}#init{hashlib.sha1(self._theta0.tobytes()).hexdigest()[:12]}"

    def init_params(self) -> np.ndarray:
        """theta(0), a fresh copy."""
        return self._theta0.copy()

    def project(self, theta: np.ndarray) -> np.ndarray:
        """Projection onto {||theta - theta(0)||_2 <= radius}; identity when radius is None."""
        if self.radius is None:
            return theta
        delta = theta - self._theta0
        norm = float(np.linalg.norm(delta))
        return theta if norm <= self.radius else self._theta0 + delta * (self.radius / norm)

    def unflatten(self, theta: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(W_l, b_l)] views of a flat parameter vector, W_l of shape (sizes[l+1], sizes[l])."""
        theta = as_float_array(theta, "theta", "MLP.unflatten", shape=(self.n_params,))
        out = []
        for l in range(len(self.sizes) - 1):
            n_in, n_out = self.sizes[l], self.sizes[l + 1]
            W = theta[self._woff[l]:self._boff[l]].reshape(n_out, n_in)
            out.append((W, theta[self._boff[l]:self._boff[l] + n_out]))
        return out

    def forward(self, theta: Any, X: Any) -> np.ndarray:
        """f(X[j]) for every row of X (validated), shape (N,)."""
        theta = as_float_array(theta, "theta", "MLP.forward", shape=(self.n_params,))
        X = as_float_array(X, "X", "MLP.forward", shape=(None, self.in_dim))
        return self.predict(theta, X)

    # -- the predictor protocol (inputs already validated) -----------------------
    def predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """f(X[j]) for every row of X."""
        out = np.empty(X.shape[0])
        _k.mlp_forward(theta, *self._layout, X, out)
        return out

    def jvp(self, theta: np.ndarray, X: np.ndarray, v: np.ndarray) -> np.ndarray:
        """J v: the directional derivative of every output along v."""
        out = np.empty(X.shape[0])
        _k.mlp_jvp(theta, v, *self._layout, X, out)
        return out

    def vjp(self, theta: np.ndarray, X: np.ndarray, g: np.ndarray) -> np.ndarray:
        """J^T g = sum_j g[j] d f(X[j]) / d theta."""
        out = np.empty(self.n_params)
        _k.mlp_vjp(theta, *self._layout, X, np.ascontiguousarray(g, dtype=np.float64), out)
        return out

    def hvp(self, theta: np.ndarray, X: np.ndarray, v: np.ndarray, d1: np.ndarray,
            d2: np.ndarray) -> np.ndarray:
        """Exact Hess [sum_j l_j(f(X[j]))] v for l_j' = d1[j], l_j'' = d2[j] (R-operator)."""
        out = np.empty(self.n_params)
        _k.mlp_hvp(theta, v, *self._layout, X, np.ascontiguousarray(d1, dtype=np.float64),
                   np.ascontiguousarray(d2, dtype=np.float64), out)
        return out

    #: Compiled kernels behind meta_terms (MetaSL.fit says when they are still to compile).
    compiled_kernels = (_k.mlp_meta,)

    def meta_terms(self, theta: np.ndarray, packed: Any, eta: float, loss: int, mode: int,
                   task_loss: np.ndarray) -> np.ndarray | None:
        """The whole meta-objective in one compiled call (see the predictor protocol)."""
        n = task_loss.shape[0]
        work = (packed.Zs.shape[0] + packed.Zq.shape[0]) * self.n_params
        kernel = _k.mlp_meta.parallel if work >= _PARALLEL_WORK else _k.mlp_meta.serial
        task_grad = np.empty((n, self.n_params))
        kernel(theta, *self._layout, packed.Zs, packed.ys, packed.offs, packed.Zq, packed.yq, packed.offq,
               eta, loss, mode, task_loss, task_grad)
        # numpy sums axis 0 row by row in task order: thread-count independent.
        return task_grad.sum(axis=0) / n if mode != MODE_VALUE else None
