"""Ball-constrained weighted least squares, solved exactly.

Both theorems end in the same term: inf over ||v||_2 <= R of ||b - Phi v||_w, where
||x||_w^2 = sum_k w_k x_k^2. With A = diag(sqrt w) Phi = U diag(s) V^T (thin SVD) and
c = U^T (sqrt(w) b) = diag(1/s) V^T A^T sqrt(w) b, the problem is diagonal in z = V^T v:

    ||b - Phi v||_w^2 = rest + sum_j (s_j z_j - c_j)^2,     ||v|| = ||z||,

with ``rest`` the part of sqrt(w) b outside the range of A. If the minimum-norm
least-squares solution z_j = c_j / s_j has norm <= R it is the answer; otherwise the
KKT conditions give z_j(lam) = s_j c_j / (s_j^2 + lam) with the multiplier lam > 0 the
root of the secular equation ||z(lam)|| = R, found by safeguarded Newton steps on
1/||z(lam)|| - 1/R (nearly linear in lam, so a handful of steps reach machine precision).

s and V come from the eigenpairs of the Gram matrix A^T A (a d x d problem). When the
feature matrix would be too large to hold (a network's Jacobian on many state-action
pairs), A^T A and A^T y are accumulated block by block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar

#: Above this many entries (rows x features) the features are accumulated block by block.
DENSE_LIMIT = 1 << 24
_BLOCK_ROWS = 4096


@dataclass
class Projection:
    """Result of one ball-constrained weighted least-squares problem."""

    value: float
    """inf over ||v|| <= R of ||b - Phi v||_w (``inf`` if b is infinite where w > 0)."""
    v: np.ndarray | None
    """The minimiser (``None`` when the value is infinite)."""
    multiplier: float
    """The Lagrange multiplier lam (0 when the ball constraint is inactive)."""


class BallLeastSquares:
    """inf over ||v||_2 <= R of ||b_k - Phi v||_w for fixed Phi, w and right-hand sides b_k.

    Parameters
    ----------
    rows : callable
        ``rows(start, stop)`` returns the feature rows Phi[start:stop] as an array of
        shape (stop - start, p); only the rows with positive weight are ever requested
        in the dense path, all rows in blocks in the Gram path.
    n_rows, n_features : int
        Shape of Phi.
    weights : ndarray of shape (n_rows,)
        Non-negative weights w.
    rhs : ndarray of shape (n_rows, k)
        The right-hand sides b_k. Entries where w = 0 are ignored; infinite entries
        where w > 0 make that column's value infinite.
    """

    def __init__(self, rows: Callable[[int, int], np.ndarray], n_rows: int, n_features: int,
                 weights: np.ndarray, rhs: np.ndarray) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        rhs = np.asarray(rhs, dtype=np.float64).reshape(n_rows, -1)
        keep = weights > 0.0
        self.infinite = ~np.isfinite(rhs[keep]).all(axis=0)
        rhs = np.where(np.isfinite(rhs), rhs, 0.0)
        sw = np.sqrt(np.where(keep, weights, 0.0))
        self.n_features = n_features
        dense = n_rows * n_features <= DENSE_LIMIT
        if dense:
            idx = np.flatnonzero(keep)
            A = rows(0, n_rows)[idx] * sw[idx, None]
            Y = rhs[idx] * sw[idx, None]
            G, AtY = A.T @ A, A.T @ Y
        else:
            G = np.zeros((n_features, n_features))
            AtY = np.zeros((n_features, rhs.shape[1]))
            y2 = np.zeros(rhs.shape[1])
            for start in range(0, n_rows, _BLOCK_ROWS):
                stop = min(start + _BLOCK_ROWS, n_rows)
                A = rows(start, stop) * sw[start:stop, None]
                Y = rhs[start:stop] * sw[start:stop, None]
                G += A.T @ A
                AtY += A.T @ Y
                y2 += np.sum(Y * Y, axis=0)
        # The Gram matrix's eigenpairs are (s_j^2, V_j): one GEMM and a d x d eigenproblem,
        # much faster than a LAPACK SVD of the tall matrix and as good for this purpose:
        # directions with s_j below sqrt(eps * rows) s_max are treated as outside the range.
        lam, V = np.linalg.eigh(G)
        order = np.argsort(lam)[::-1]
        lam, Vt = lam[order], V[:, order].T
        top = lam[0] if lam.size else 0.0
        rank = int(np.sum(lam > top * max(n_rows, n_features) * np.finfo(float).eps)) if top > 0 else 0
        s, Vt = np.sqrt(lam[:rank]), Vt[:rank]
        C = (Vt @ AtY) / s[:, None]
        if dense:
            # The residual of the unconstrained fit, computed directly (no cancellation).
            rest = np.sum((Y - A @ (Vt.T @ (C / s[:, None]))) ** 2, axis=0)
        else:
            rest = np.clip(y2 - np.sum(C * C, axis=0), 0.0, None)
        self._rest, self._s, self._C, self._Vt = rest, s, C, Vt

    @property
    def n_rhs(self) -> int:
        return self._C.shape[1]

    def solve(self, k: int, R: float) -> Projection:
        """The projection of right-hand side ``k`` onto the ball of radius ``R``."""
        if self.infinite[k]:
            return Projection(np.inf, None, np.nan)
        s, c = self._s, self._C[:, k]
        sc = s * c
        z_ls = np.divide(c, s, out=np.zeros_like(c), where=s > 0)
        lam = 0.0
        if R <= 0.0:
            z, lam = np.zeros_like(c), np.inf
        elif np.linalg.norm(z_ls) <= R:
            z = z_ls
        else:
            lam = _secular_root(s, sc, R)
            z = sc / (s * s + lam)
        resid = s * z - c
        value = float(np.sqrt(self._rest[k] + resid @ resid))
        return Projection(value, self._Vt.T @ z, lam)

    def min_norm(self, k: int) -> float:
        """Norm of the minimum-norm unconstrained solution: larger radii change nothing."""
        s, c = self._s, self._C[:, k]
        return float(np.linalg.norm(np.divide(c, s, out=np.zeros_like(c), where=s > 0)))


def _secular_root(s: np.ndarray, sc: np.ndarray, R: float) -> float:
    """lam > 0 with ||sc / (s^2 + lam)|| = R, given that the norm at lam = 0 exceeds R."""
    s2 = s * s
    lo, hi = 0.0, float(np.linalg.norm(sc)) / R  # at hi every term is <= sc / hi, so the norm is <= R
    lam = 0.0
    for _ in range(200):
        q = sc / (s2 + lam)
        norm = float(np.sqrt(q @ q))
        if norm > R:
            lo = lam
        else:
            hi = lam
        # psi(lam) = 1/||q|| - 1/R; psi' = (q . q/(s^2+lam)) / ||q||^3
        dpsi = float(q @ (q / (s2 + lam))) / norm ** 3
        step = (1.0 / norm - 1.0 / R) / dpsi if dpsi > 0 else np.inf
        new = lam - step
        if not (lo < new < hi):
            new = 0.5 * (lo + hi)
        if abs(new - lam) <= 4 * np.finfo(float).eps * max(new, 1e-300):
            return new
        lam = new
    return lam


def minimise_over_radius(problem: BallLeastSquares, k: int, eps: float, scale: float) -> tuple[float, float]:
    """min over R > 0 of R * eps + scale * projection_k(R); returns (bound, R).

    The projection is convex and non-increasing in R and constant beyond the norm of
    the minimum-norm solution, so the minimum lies in [0, that norm] and a bounded
    scalar search on a convex function finds it; both ends are compared as well. When the
    bound is infinite for every R, the radius returned is 0.
    """
    if problem.infinite[k] or not np.isfinite(scale):
        return np.inf, 0.0
    top = problem.min_norm(k)

    def bound(R: float) -> float:
        return R * eps + scale * problem.solve(k, R).value

    candidates = [(bound(top), top), (bound(0.0), 0.0)]
    if top > 0:
        res = minimize_scalar(bound, bounds=(0.0, top), method="bounded",
                              options={"xatol": 1e-12 * top, "maxiter": 500})
        candidates.append((float(res.fun), float(res.x)))
    return min(candidates)
