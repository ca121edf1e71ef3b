"""Two-layer ReLU networks: a predictor for meta-SL and an energy for meta-RL.

u(x; W) = m^{-1/2} sum_{r=1..m} b_r ReLU(W_r^T x), with output weights b_r in {-1, +1}
drawn once and fixed, W_r(0) ~ N(0, I/in_dim), and only W trained (the setting of the
paper's neural analysis, section A.3). The flat parameter vector has length m * in_dim,
row r of W.reshape(m, in_dim) being W_r.

Second-order caveat. u is piecewise linear in W, so its second derivative in W is zero
wherever no pre-activation W_r^T x is exactly 0. The Hessian of a risk
R(W) = 1/N sum_j l(u(x_j; W), y_j) is then exactly the Gauss-Newton matrix
J^T diag(l''/N) J, which is what :class:`fastmeta.MetaSL` multiplies by (never forming it).
At a kink the risk is not twice differentiable and the product is a one-sided value.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._kernels import relu as _k
from ._fingerprint import array_digest
from ._validation import as_float_array, check_computed_finite, check_int, check_real_scalar


def _seed_rng(seed: Any, owner: str) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(check_int(seed, "seed", owner, low=0))


class TwoLayerReLU:
    """Two-layer ReLU network u(x; W) = m^{-1/2} sum_r b_r ReLU(W_r^T x), only W trained.

    Parameters
    ----------
    in_dim : int
        Input dimension. A bias-free network of a scalar x is piecewise linear through
        the origin; give it an embedding such as (x, 1) (see ``fastmeta.tasks.sinusoid_tasks``).
    width : int
        Number m >= 1 of hidden units.
    radius : float or None, default None
        If given, ``project`` maps W onto {W : ||W - W(0)||_2 <= radius} (Frobenius norm),
        and ``MetaSL.fit`` projects after every outer step.
    seed : int or numpy.random.Generator, default 0
        Draws b (first) and W(0) (second).

    Attributes
    ----------
    b : ndarray of shape (m,)
        Fixed output weights in {-1, +1}.
    W0 : ndarray of shape (m, in_dim)
        Initial hidden weights W(0).
    n_params : int
        m * in_dim.

    Notes
    -----
    ``forward``, ``jvp`` and ``vjp`` run compiled parallel kernels; results do not
    depend on the number of threads. See the module docstring for why the Gauss-Newton
    Hessian-vector product is exact away from the ReLU kinks.
    """

    def __init__(self, in_dim: int, width: int, radius: float | None = None,
                 seed: int | np.random.Generator = 0) -> None:
        owner = type(self).__name__
        self.in_dim = check_int(in_dim, "in_dim", owner, low=1)
        self.width = check_int(width, "width", owner, low=1)
        self.radius = None if radius is None else check_real_scalar(radius, "radius", owner, low=0.0)
        rng = _seed_rng(seed, owner)
        self.b = rng.integers(0, 2, size=self.width).astype(np.float64) * 2.0 - 1.0
        self.W0 = rng.standard_normal((self.width, self.in_dim)) / np.sqrt(self.in_dim)
        self.b.setflags(write=False)
        self.W0.setflags(write=False)
        self._sb = np.ascontiguousarray(self.b / np.sqrt(self.width))
        self._w0_flat = np.ascontiguousarray(self.W0.ravel())
        self.n_params = self.width * self.in_dim

    def __repr__(self) -> str:
        return f"TwoLayerReLU(in_dim={self.in_dim}, width={self.width}, radius={self.radius})"

    def config(self) -> str:
        """A string that identifies the architecture and its initialisation (for checkpoint tags)."""
        # A content digest, not hash(): the tag must be the same in the process that resumes.
        digest = array_digest(self.b, self.W0)
        return f"{self!r}#init{digest}"

    def init_params(self) -> np.ndarray:
        """W(0) flattened, shape (m * in_dim,)."""
        return self._w0_flat.copy()

    def project(self, params: np.ndarray) -> np.ndarray:
        """Projection onto {W : ||W - W(0)||_2 <= radius}; identity when radius is None."""
        params = np.asarray(params, dtype=np.float64)
        if self.radius is None:
            return params
        delta = params - self._w0_flat
        norm = float(np.linalg.norm(delta))
        if norm <= self.radius:
            return params
        return self._w0_flat + delta * (self.radius / norm)

    def check_params(self, params: Any, owner: str = "TwoLayerReLU") -> np.ndarray:
        """Return params as a float64 vector of length m * in_dim, or raise a clear error."""
        return as_float_array(params, "params", owner, shape=(self.n_params,))

    def check_inputs(self, X: Any, owner: str = "TwoLayerReLU", name: str = "X") -> np.ndarray:
        """Return X as float64 (N, in_dim), or raise a clear error."""
        return as_float_array(X, name, owner, shape=(None, self.in_dim))

    def forward(self, params: Any, X: Any) -> np.ndarray:
        """u(X[j]; W) for every row of X (N, in_dim); shape (N,)."""
        WT = self._WT(self.check_params(params, "TwoLayerReLU.forward"))
        X = self.check_inputs(X, "TwoLayerReLU.forward")
        out = np.empty(X.shape[0])
        if X.shape[0]:
            _k.relu_forward(WT, self._sb, X, out)
        return out

    def jvp(self, params: Any, X: Any, v: Any) -> np.ndarray:
        """Directional derivative J v, shape (N,): sum_{r,k} du(X[j])/dW[r,k] v[r,k]."""
        WT = self._WT(self.check_params(params, "TwoLayerReLU.jvp"))
        X = self.check_inputs(X, "TwoLayerReLU.jvp")
        VT = self._WT(as_float_array(v, "v", "TwoLayerReLU.jvp", shape=(self.n_params,)))
        out = np.empty(X.shape[0])
        if X.shape[0]:
            _k.relu_jvp(WT, self._sb, X, VT, out)
        return out

    def vjp(self, params: Any, X: Any, g: Any) -> np.ndarray:
        """J^T g, shape (m * in_dim,): sum_j g[j] du(X[j]; W)/dW."""
        WT = self._WT(self.check_params(params, "TwoLayerReLU.vjp"))
        X = self.check_inputs(X, "TwoLayerReLU.vjp")
        g = as_float_array(g, "g", "TwoLayerReLU.vjp", shape=(X.shape[0],))
        return self._vjp(WT, X, g)

    # -- unchecked internals (inputs already validated) ---------------------------
    def _WT(self, params: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(params.reshape(self.width, self.in_dim).T)

    def _forward(self, WT: np.ndarray, X: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape[0])
        _k.relu_forward(WT, self._sb, X, out)
        return out

    def _vjp(self, WT: np.ndarray, X: np.ndarray, g: np.ndarray) -> np.ndarray:
        outT = np.empty((self.in_dim, self.width))
        _k.relu_vjp(WT, self._sb, X, g, outT)
        return np.ascontiguousarray(outT.T).ravel()

    def _jvp(self, WT: np.ndarray, X: np.ndarray, VT: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape[0])
        _k.relu_jvp(WT, self._sb, X, VT, out)
        return out


class NeuralEnergy:
    """Two-layer ReLU energy f_W(s, a) = u(phi(s, a); W) for :class:`fastmeta.MetaRL`.

    It follows the energy protocol of ``LinearEnergy``: the meta-RL core computes
    dL/d(energy) over (s, a) and maps it to W with ``energy_vjp``, so ``MetaRL`` takes
    a NeuralEnergy in place of a LinearEnergy unchanged.

    Parameters
    ----------
    phi : array_like of shape (S, A, in_dim)
        Input embedding of every state-action pair.
    width : int
        Number m >= 1 of hidden units.
    radius : float or None, default None
        Projection radius around W(0), as in :class:`TwoLayerReLU`.
    seed : int or numpy.random.Generator, default 0
        Same draws as ``TwoLayerReLU(in_dim, width, seed=seed)``.

    Attributes
    ----------
    n_states, n_actions, n_params : int
    b : ndarray of shape (m,)
    W0 : ndarray of shape (m, in_dim)
    net : TwoLayerReLU
    """

    def __init__(self, phi: Any, width: int, radius: float | None = None,
                 seed: int | np.random.Generator = 0) -> None:
        phi = as_float_array(phi, "phi", "NeuralEnergy", ndim=3, shape_text="(S, A, d)")
        if min(phi.shape) < 1:
            raise ValueError(f"The 'phi' parameter of NeuralEnergy must have shape (S, A, in_dim) with "
                             f"every dimension >= 1. Got shape {phi.shape} instead.")
        # Validate here so that errors name NeuralEnergy, not the network inside it.
        width = check_int(width, "width", "NeuralEnergy", low=1)
        if radius is not None:
            radius = check_real_scalar(radius, "radius", "NeuralEnergy", low=0.0)
        self.n_states, self.n_actions, in_dim = phi.shape
        self.phi = phi
        self._rows = np.ascontiguousarray(phi.reshape(-1, in_dim))
        self.net = TwoLayerReLU(in_dim, width, radius=radius, seed=seed)
        self.n_params = self.net.n_params

    def __repr__(self) -> str:
        return (f"NeuralEnergy(S={self.n_states}, A={self.n_actions}, in_dim={self.net.in_dim}, "
                f"width={self.net.width}, radius={self.net.radius})")

    @property
    def b(self) -> np.ndarray:
        return self.net.b

    @property
    def W0(self) -> np.ndarray:
        return self.net.W0

    @property
    def radius(self) -> float | None:
        return self.net.radius

    def config(self) -> str:
        """A string that identifies the energy's settings (for checkpoint tags)."""
        return f"{self!r}#{self.net.config()}#phi:{array_digest(self.phi)}"

    def tag(self) -> str:
        """Same as ``config``; the name ``MetaRL`` asks energies for."""
        return self.config()

    def init_params(self) -> np.ndarray:
        """W(0) flattened."""
        return self.net.init_params()

    def project(self, theta: np.ndarray) -> np.ndarray:
        """Projection onto {||W - W(0)||_2 <= radius}; identity when radius is None."""
        return self.net.project(theta)

    def check_params(self, theta: Any, owner: str = "NeuralEnergy") -> np.ndarray:
        """Return theta as a float64 vector of length m * in_dim, or raise a clear error."""
        return as_float_array(theta, "theta", owner, shape=(self.n_params,))

    def energy(self, theta: Any) -> np.ndarray:
        """f(s, a) = u(phi(s, a); W), shape (S, A), float64 C-contiguous."""
        theta = self.check_params(theta, "NeuralEnergy.energy")
        f = self.net._forward(self.net._WT(theta), self._rows).reshape(self.n_states, self.n_actions)
        check_computed_finite(f, "the energy f = u(phi; W)", "NeuralEnergy.energy",
                              f"The largest |W| entry is {float(np.abs(theta).max()):.3g}; rescale W or phi.")
        return f

    def energy_vjp(self, theta: Any, g: Any) -> np.ndarray:
        """sum_{s,a} g[s, a] df(s, a)/dW, shape (n_params,)."""
        WT = self.net._WT(self.check_params(theta, "NeuralEnergy.energy_vjp"))
        g = as_float_array(g, "g", "NeuralEnergy.energy_vjp", shape=(self.n_states, self.n_actions))
        return self.net._vjp(WT, self._rows, g.ravel())
