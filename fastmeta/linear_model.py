"""LinearModel: the hypothesis class (4.2), h_theta(x) = phi(x)^T theta, for meta-SL."""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ._validation import as_float_array, check_choice, check_int, check_real_scalar

_FEATURES = ("identity", "affine", "polynomial", "rff")
MAX_POLYNOMIAL_FEATURES = 1_000_000
"""Polynomial feature maps with more monomials than this are refused up front (the count,
C(in_dim + degree, degree), grows fast: degree 25 at in_dim 10 is 1.8e8)."""


class LinearModel:
    """Linear predictor h_theta(x) = phi(x)^T theta of (4.2).

    Parameters
    ----------
    features : {None, "identity", "affine", "polynomial", "rff"}, default None
        The feature map phi. ``None``/``"identity"``: phi(x) = x, the task's inputs
        are the features, exactly as in (4.2). ``"affine"``: phi(x) = (x, 1).
        ``"polynomial"``: every monomial of x of total degree 0..``degree`` (so a
        constant is included), in graded lexicographic order. ``"rff"``: random
        Fourier features phi(x) = sqrt(2/D) cos(Omega^T x + c) of an RBF kernel with
        length scale ``lengthscale``, Omega ~ N(0, I/lengthscale^2), c ~ U[0, 2 pi),
        D = ``n_features``, drawn from ``seed`` (the same seed and input dimension
        always give the same features).
    degree : int, default 2
        Degree of the ``"polynomial"`` features.
    n_features : int, default 100
        Number D of random Fourier features.
    lengthscale : float, default 1.0
        Length scale of the RBF kernel approximated by ``"rff"``.
    radius : float or None, default None
        If given, ``project`` maps theta onto the ball {||theta||_2 <= radius}
        (the set B_R of Theorem 4.4); ``MetaSL.fit`` projects after every step.
    seed : int or numpy.random.Generator, default 0
        Seed of the random Fourier features.

    Notes
    -----
    For this model the Gauss-Newton product used by :class:`fastmeta.MetaSL`,
    F^T diag(l''/N) F v, is the exact Hessian-vector product of the risk.
    """

    def __init__(self, features: str | None = None, *, degree: int = 2, n_features: int = 100,
                 lengthscale: float = 1.0, radius: float | None = None,
                 seed: int | np.random.Generator = 0) -> None:
        owner = "LinearModel"
        self.features = check_choice("identity" if features is None else features, "features",
                                     _FEATURES, owner)
        self.degree = check_int(degree, "degree", owner, low=1)
        self.n_features = check_int(n_features, "n_features", owner, low=1)
        self.lengthscale = check_real_scalar(lengthscale, "lengthscale", owner, low=0.0)
        self.radius = None if radius is None else check_real_scalar(radius, "radius", owner, low=0.0)
        if isinstance(seed, np.random.Generator):
            # Freeze one integer seed, so features stay a pure function of (seed, in_dim).
            seed = int(seed.integers(2**63 - 1))
        self.seed = check_int(seed, "seed", owner, low=0)
        self._rff: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __repr__(self) -> str:
        extra = {"polynomial": f", degree={self.degree}",
                 "rff": f", n_features={self.n_features}, lengthscale={self.lengthscale}, seed={self.seed}"}
        radius = "" if self.radius is None else f", radius={self.radius}"
        return f"LinearModel(features={self.features!r}{extra.get(self.features, '')}{radius})"

    def config(self) -> str:
        """A string that identifies the model's settings (used in checkpoint tags)."""
        return repr(self)

    def n_params(self, in_dim: int) -> int:
        """Dimension d of phi(x) for inputs x of dimension ``in_dim``."""
        in_dim = check_int(in_dim, "in_dim", "LinearModel", low=1)
        if self.features == "identity":
            return in_dim
        if self.features == "affine":
            return in_dim + 1
        if self.features == "polynomial":
            return self._polynomial_size(in_dim)
        return self.n_features

    def init_params(self, in_dim: int) -> np.ndarray:
        """theta = 0, of length ``n_params(in_dim)``."""
        return np.zeros(self.n_params(in_dim))

    def transform(self, X: Any) -> np.ndarray:
        """phi(X) of shape (N, d) for inputs X of shape (N, in_dim)."""
        X = as_float_array(X, "X", "LinearModel.transform", ndim=2, shape_text="(N, in_dim)")
        return self._transform(X)

    def forward(self, params: Any, X: Any) -> np.ndarray:
        """h_theta(X) = phi(X) theta, shape (N,)."""
        F = self.transform(X)
        theta = self.check_params(params, F.shape[1], "LinearModel.forward")
        return F @ theta

    def project(self, params: np.ndarray) -> np.ndarray:
        """Projection onto {||theta||_2 <= radius}; identity when radius is None."""
        params = np.asarray(params, dtype=np.float64)
        if self.radius is None:
            return params
        norm = float(np.linalg.norm(params))
        return params * (self.radius / norm) if norm > self.radius else params

    def check_params(self, params: Any, n_params: int, owner: str) -> np.ndarray:
        """Return params as a float64 vector of length ``n_params``, or raise a clear error."""
        return as_float_array(params, "params", owner, shape=(n_params,))

    # -- internals ----------------------------------------------------------------
    def _transform(self, X: np.ndarray) -> np.ndarray:
        n, p = X.shape
        if self.features == "identity":
            return np.ascontiguousarray(X)
        if self.features == "affine":
            return np.ascontiguousarray(np.hstack([X, np.ones((n, 1))]))
        if self.features == "polynomial":
            cols = [np.prod(X[:, list(m)], axis=1) if m else np.ones(n) for m in self._monomials(p)]
            return np.ascontiguousarray(np.stack(cols, axis=1))
        omega, c = self._rff_draw(p)
        return np.ascontiguousarray(np.sqrt(2.0 / self.n_features) * np.cos(X @ omega + c))

    def _polynomial_size(self, in_dim: int) -> int:
        count = math.comb(in_dim + self.degree, self.degree)
        if count > MAX_POLYNOMIAL_FEATURES:
            raise ValueError(f"The 'degree' parameter of LinearModel is too large for inputs of dimension "
                             f"{in_dim}: degree {self.degree} gives C({in_dim} + {self.degree}, {self.degree}) = "
                             f"{count:.3g} monomials, more than the limit {MAX_POLYNOMIAL_FEATURES:,}.")
        return count

    def _monomials(self, in_dim: int) -> list[tuple[int, ...]]:
        self._polynomial_size(in_dim)
        return [m for deg in range(self.degree + 1)
                for m in itertools.combinations_with_replacement(range(in_dim), deg)]

    def _rff_draw(self, in_dim: int) -> tuple[np.ndarray, np.ndarray]:
        if in_dim not in self._rff:
            rng = np.random.default_rng([self.seed, in_dim])
            omega = rng.standard_normal((in_dim, self.n_features)) / self.lengthscale
            c = rng.uniform(0.0, 2.0 * np.pi, self.n_features)
            self._rff[in_dim] = (omega, c)
        return self._rff[in_dim]
