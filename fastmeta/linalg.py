"""Linear solves with ``M = I - gamma * P_pi`` (and its transpose).

Every linear system in fastmeta is ``M x = b`` or ``M^T x = b`` where ``P_pi``
is a row-stochastic ``S x S`` matrix and ``0 < gamma < 1``: ``M`` is a
nonsingular, strictly row diagonally dominant M-matrix.  The same ``M`` is
solved once with ``M`` and once with ``M^T`` (adjoint method) and then thrown
away; the sparsity pattern is fixed for an MDP while the values change with the
policy.  Hence the two-stage API:

* :func:`analyse` computes, once per pattern, a :class:`SolverPlan` (method
  choice, transposed pattern, aggregation hierarchy, ...);
* :func:`factorize` builds, once per matrix, a factorisation object with
  ``.solve(b)`` and ``.solve_transposed(b)``.

Methods
-------
``"dense"``
    LAPACK LU (``scipy.linalg.lu_factor``) of the densified matrix.
``"splu"``
    SuperLU (``scipy.sparse.linalg.splu``) with a minimum-degree ordering on
    ``M^T + M`` and no pivoting (``M`` is diagonally dominant).
``"krylov"``
    Restarted GMRES(30) (Numba kernels, right preconditioning, CGS2
    orthogonalisation) preconditioned by an aggregation-based algebraic
    multigrid V-cycle built from the values of every new matrix (double
    pairwise matching along the strongest couplings, piecewise-constant
    prolongation, Galerkin coarse matrices, two forward / two backward
    Gauss-Seidel sweeps, dense LU on the coarsest level); coarsening stops
    where it stalls or the coarse matrices fill in (expanders), the last level
    is then smoothed only.  Convergence is declared on the *true*
    relative residual ``||b - M x|| <= tol ||b||``; if ``maxiter`` is reached
    first, :class:`SolverError` is raised.
``"auto"``
    :func:`choose_method`.

All results of the ``krylov`` method are bit-identical for any number of Numba
threads.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg
from scipy.sparse.csgraph import reverse_cuthill_mckee

from ._kernels import krylov as _k
from ._kernels._config import N_CHUNKS

__all__ = [
    "METHODS",
    "SolverError",
    "SolverPlan",
    "analyse",
    "choose_method",
    "factorize",
    "DenseFactorization",
    "SpluFactorization",
    "KrylovFactorization",
]

METHODS = ("auto", "dense", "splu", "krylov")
PRECONDITIONERS = ("auto", "amg", "sgs", "none")

#: ``"auto"`` picks ``"dense"`` up to this many states (see the study).
DENSE_MAX_N = 300
#: ... or up to this many states when the matrix is dense-ish (nnz >= n^2/10).
DENSE_MAX_N_DENSEISH = 2000
#: ``"auto"`` never picks ``"splu"`` above this many states.
SPLU_MAX_N = 20_000
#: ``"splu"`` is considered only if the RCM bandwidth is <= this * sqrt(n).
SPLU_BANDWIDTH_FACTOR = 3.0

#: AMG: the coarsest level has at most this many rows (then a dense LU).
AMG_COARSE_SIZE = 400
#: AMG: stop coarsening if a level has fewer than this ratio of coarsening.
AMG_MIN_RATIO = 1.5
#: AMG: stop coarsening if the coarse nnz per row exceeds this.
AMG_MAX_ROW_NNZ = 60
AMG_MAX_LEVELS = 20
#: AMG: pairwise matching only along couplings >= this times the row's strongest.
AMG_STRENGTH = 0.0
#: AMG: Gauss-Seidel sweeps before and after the coarse correction.
AMG_NSWEEP = 2
#: AMG: number of coarse-grid recursions per level (1: V-cycle, 2: W-cycle).
AMG_GAMMA = 1

PatternLike = Union[sp.csr_matrix, "SolverPlan", Tuple[np.ndarray, np.ndarray, int]]


class SolverError(RuntimeError):
    """An iterative solve did not reach the requested tolerance."""


# --------------------------------------------------------------------------
# pattern analysis
# --------------------------------------------------------------------------
def _index_dtype(n: int, nnz: int):
    return np.int32 if max(n, nnz) < 2**31 - 1 else np.int64


def _transpose_pattern(indptr, indices, n):
    """Transpose pattern and ``perm`` with ``values_T = values[perm]``."""
    nnz = indices.shape[0]
    A = sp.csr_matrix((np.arange(nnz, dtype=np.float64), indices, indptr), shape=(n, n))
    T = A.T.tocsr()
    T.sort_indices()
    idt = _index_dtype(n, nnz)
    perm = T.data.astype(idt)
    return T.indptr.astype(np.int64), T.indices.astype(idt), perm


def _diag_positions(indptr, indices, n):
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    pos = np.flatnonzero(rows == indices)
    if pos.shape[0] != n:
        raise ValueError("every row of M must store its diagonal entry in the sparsity pattern")
    return pos.astype(indices.dtype)


def _rcm_bandwidth(indptr, indices, n) -> int:
    if n <= 1:
        return 0
    A = sp.csr_matrix((np.ones(indices.shape[0]), indices, indptr), shape=(n, n))
    perm = reverse_cuthill_mckee(A, symmetric_mode=False)
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    return int(np.max(np.abs(inv[rows] - inv[indices]))) if indices.shape[0] else 0


class SolverPlan:
    """Everything that depends only on the sparsity pattern of ``M``.

    Compute it once per pattern with :func:`analyse` and pass it to
    :func:`factorize` for every new set of values.  Expensive parts (transposed
    pattern, AMG hierarchy, RCM bandwidth) are computed lazily on first use and
    cached.

    Attributes
    ----------
    n : int
        Number of rows.
    nnz : int
        Number of stored entries.
    indptr, indices : numpy.ndarray
        Canonical copies of the pattern (``int64`` indptr, ``int32`` indices
        when they fit).
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n: int):
        n = int(n)
        indptr = np.asarray(indptr)
        indices = np.asarray(indices)
        if indptr.shape != (n + 1,):
            raise ValueError(f"indptr must have shape ({n + 1},), got {indptr.shape}")
        self.n = n
        self.nnz = int(indices.shape[0])
        self.indptr = indptr.astype(np.int64, copy=True)
        self.indices = indices.astype(_index_dtype(n, self.nnz), copy=True)
        self._diag = None
        self._tpat = None
        self._tdiag = None
        self._bandwidth = None
        self._method = None

    # lazily computed pattern data -------------------------------------
    @property
    def diag(self) -> np.ndarray:
        if self._diag is None:
            self._diag = _diag_positions(self.indptr, self.indices, self.n)
        return self._diag

    @property
    def transpose_pattern(self):
        """``(indptr_T, indices_T, perm)`` with ``data_T = data[perm]``."""
        if self._tpat is None:
            self._tpat = _transpose_pattern(self.indptr, self.indices, self.n)
        return self._tpat

    @property
    def bandwidth(self) -> int:
        """Bandwidth of ``M`` after reverse Cuthill-McKee reordering."""
        if self._bandwidth is None:
            self._bandwidth = _rcm_bandwidth(self.indptr, self.indices, self.n)
        return self._bandwidth

    @property
    def transpose_diag(self) -> np.ndarray:
        """Positions of the diagonal in the transposed pattern."""
        if self._tdiag is None:
            tip, tix, _ = self.transpose_pattern
            self._tdiag = _diag_positions(tip, tix, self.n)
        return self._tdiag

    @property
    def method(self) -> str:
        """The method ``"auto"`` resolves to for this pattern."""
        if self._method is None:
            self._method = choose_method(self)
        return self._method

    def matches(self, M: sp.csr_matrix) -> bool:
        """Whether ``M`` has exactly this sparsity pattern."""
        return (
            M.shape == (self.n, self.n)
            and M.indices.shape[0] == self.nnz
            and np.array_equal(M.indptr, self.indptr)
            and np.array_equal(M.indices, self.indices)
        )

    def __repr__(self) -> str:
        return f"SolverPlan(n={self.n}, nnz={self.nnz})"


def _as_pattern(obj) -> Tuple[np.ndarray, np.ndarray, int]:
    if isinstance(obj, SolverPlan):
        return obj.indptr, obj.indices, obj.n
    if sp.issparse(obj):
        M = obj.tocsr()
        if M.shape[0] != M.shape[1]:
            raise ValueError(f"M must be square, got shape {M.shape}")
        return M.indptr, M.indices, M.shape[0]
    indptr, indices, n = obj
    return np.asarray(indptr), np.asarray(indices), int(n)


def analyse(M_pattern: PatternLike) -> SolverPlan:
    """Pattern-only analysis of ``M``, reusable for every matrix with that pattern.

    Parameters
    ----------
    M_pattern : scipy.sparse.csr_matrix or tuple
        A CSR matrix (only its pattern is used) or ``(indptr, indices, n)``.
        Indices must be sorted, without duplicates, and every row must store
        its diagonal.

    Returns
    -------
    SolverPlan
    """
    if isinstance(M_pattern, SolverPlan):
        return M_pattern
    indptr, indices, n = _as_pattern(M_pattern)
    return SolverPlan(indptr, indices, n)


def choose_method(M_pattern: PatternLike) -> str:
    """Method used by ``method="auto"``, decided from size and structure only.

    Rule (thresholds measured in ``bench_results/solver_study.md``):

    1. ``"dense"`` if ``n <= DENSE_MAX_N`` (300), or ``n <= 2000`` and the
       pattern is dense-ish (``nnz >= n^2 / 10``);
    2. ``"krylov"`` if ``n > SPLU_MAX_N`` (20 000): AMG-preconditioned GMRES
       beats SuperLU on grids from about that size on, and on expanders always;
    3. otherwise ``"splu"`` if the reverse Cuthill-McKee bandwidth is at most
       ``3 sqrt(n)`` (grid-like chain: small LU fill), else ``"krylov"``
       (expander-like chain: LU fill explodes, GMRES needs few iterations).

    Parameters
    ----------
    M_pattern : scipy.sparse.csr_matrix, SolverPlan or tuple
        Matrix, plan or ``(indptr, indices, n)``.

    Returns
    -------
    str
        One of ``"dense"``, ``"splu"``, ``"krylov"``.
    """
    plan = M_pattern if isinstance(M_pattern, SolverPlan) else None
    indptr, indices, n = _as_pattern(M_pattern)
    nnz = int(indices.shape[0])
    if n <= DENSE_MAX_N or (n <= DENSE_MAX_N_DENSEISH and 10 * nnz >= n * n):
        return "dense"
    if n > SPLU_MAX_N:
        return "krylov"
    bw = plan.bandwidth if plan is not None else _rcm_bandwidth(indptr, indices, n)
    if bw <= SPLU_BANDWIDTH_FACTOR * math.sqrt(n):
        return "splu"
    return "krylov"


# --------------------------------------------------------------------------
# factorisations
# --------------------------------------------------------------------------
def _check_rhs(b, n) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (n,):
        raise ValueError(f"b must have shape ({n},), got {b.shape}")
    return b


class DenseFactorization:
    """LAPACK LU of the densified ``M``.

    Attributes
    ----------
    method : str
        ``"dense"``.
    n : int
    """

    method = "dense"

    def __init__(self, M: sp.csr_matrix):
        self.n = M.shape[0]
        self._lu = scipy.linalg.lu_factor(M.toarray(), check_finite=False)

    def solve(self, b: np.ndarray, x0: Optional[np.ndarray] = None) -> np.ndarray:
        """Solve ``M x = b`` (``x0`` is ignored)."""
        b = _check_rhs(b, self.n)
        return scipy.linalg.lu_solve(self._lu, b, trans=0, check_finite=False)

    def solve_transposed(self, b: np.ndarray, x0: Optional[np.ndarray] = None) -> np.ndarray:
        """Solve ``M^T x = b`` (``x0`` is ignored)."""
        b = _check_rhs(b, self.n)
        return scipy.linalg.lu_solve(self._lu, b, trans=1, check_finite=False)


class SpluFactorization:
    """SuperLU factorisation of ``M`` (minimum degree on ``M^T + M``, no pivoting).

    Attributes
    ----------
    method : str
        ``"splu"``.
    n : int
    """

    method = "splu"

    def __init__(self, M: sp.csr_matrix):
        self.n = M.shape[0]
        self._lu = scipy.sparse.linalg.splu(
            M.tocsc(),
            permc_spec="MMD_AT_PLUS_A",
            diag_pivot_thresh=0.0,
            options=dict(SymmetricMode=True),
        )

    def solve(self, b: np.ndarray, x0: Optional[np.ndarray] = None) -> np.ndarray:
        """Solve ``M x = b`` (``x0`` is ignored)."""
        b = _check_rhs(b, self.n)
        return self._lu.solve(b, trans="N")

    def solve_transposed(self, b: np.ndarray, x0: Optional[np.ndarray] = None) -> np.ndarray:
        """Solve ``M^T x = b`` (``x0`` is ignored)."""
        b = _check_rhs(b, self.n)
        return self._lu.solve(b, trans="T")


class _Level:
    """One level of the AMG hierarchy (matrix, its lazy transpose, aggregation)."""

    __slots__ = ("n", "indptr", "indices", "data", "diag", "t", "agg", "ptr", "members")

    def __init__(self, indptr, indices, data, diag, t=None):
        self.n = indptr.shape[0] - 1
        self.indptr, self.indices, self.data, self.diag = indptr, indices, data, diag
        self.t = t  # (indptr, indices, data, diag) of the transpose, built lazily
        self.agg = self.ptr = self.members = None

    def transposed(self):
        if self.t is None:
            n, nnz = self.n, self.indices.shape[0]
            tip = np.empty(n + 1, dtype=np.int64)
            tix = np.empty(nnz, dtype=self.indices.dtype)
            tdv = np.empty(nnz)
            tdg = np.empty(n, dtype=self.indices.dtype)
            _k.csr_transpose(self.indptr, self.indices, self.data, tip, tix, tdv, tdg)
            self.t = (tip, tix, tdv, tdg)
        return self.t


def _galerkin(lv_ip, lv_ix, lv_dv, agg, nc):
    ptr = np.empty(nc + 1, dtype=np.int64)
    members = np.empty(agg.shape[0], dtype=agg.dtype)
    _k.agg_members(agg, ptr, members)
    nnz = lv_ix.shape[0]
    cip = np.empty(nc + 1, dtype=np.int64)
    cix = np.empty(nnz, dtype=lv_ix.dtype)
    cdv = np.empty(nnz)
    cdg = np.empty(nc, dtype=lv_ix.dtype)
    marker = np.empty(nc, dtype=np.int64)
    cnt = _k.galerkin(lv_ip, lv_ix, lv_dv, agg, ptr, members, marker, cip, cix, cdv, cdg)
    return ptr, members, cip, cix[:cnt].copy(), cdv[:cnt].copy(), cdg


class _Hierarchy:
    """Aggregation AMG hierarchy for one matrix, built from its values.

    Each level aggregates by two passes of pairwise matching along the
    strongest negative couplings (aggregates of <= 4 nodes, after Notay's
    AGMG), coarse matrices are Galerkin products with piecewise-constant
    prolongation, the smoother is Gauss-Seidel (forward before, backward
    after the coarse correction), the coarsest level (<= ``AMG_COARSE_SIZE``
    rows) is solved by dense LU.  With ``max_levels=1`` this is one symmetric
    Gauss-Seidel sweep.  The transposed hierarchy uses the same aggregates
    (``(P^T A P)^T = P^T A^T P``) and is built lazily.
    """

    def __init__(self, indptr, indices, data, diag, tfine=None, max_levels=AMG_MAX_LEVELS,
                 nsweep=None, cycles=None):
        self.levels = [_Level(indptr, indices, data, diag, tfine)]
        while len(self.levels) < max_levels:
            lv = self.levels[-1]
            if lv.n <= AMG_COARSE_SIZE:
                break
            agg1 = np.empty(lv.n, dtype=lv.indices.dtype)
            nc1 = int(_k.pair_match(lv.indptr, lv.indices, lv.data, AMG_STRENGTH, agg1))
            _, _, ip1, ix1, dv1, _ = _galerkin(lv.indptr, lv.indices, lv.data, agg1, nc1)
            agg2 = np.empty(nc1, dtype=lv.indices.dtype)
            nc = int(_k.pair_match(ip1, ix1, dv1, AMG_STRENGTH, agg2))
            if nc * AMG_MIN_RATIO > lv.n:
                break
            agg = agg2[agg1]
            ptr, members, cip, cix, cdv, cdg = _galerkin(ip1, ix1, dv1, agg2, nc)
            del ip1, ix1, dv1
            if cix.shape[0] > AMG_MAX_ROW_NNZ * nc:
                break
            # members of the combined aggregates, in fine numbering
            lv.ptr = np.empty(nc + 1, dtype=np.int64)
            lv.members = np.empty(lv.n, dtype=agg.dtype)
            _k.agg_members(agg, lv.ptr, lv.members)
            lv.agg = agg
            self.levels.append(_Level(cip, cix, cdv, cdg))
        last = self.levels[-1]
        self.lu = None
        if last.n <= 4 * AMG_COARSE_SIZE and max_levels > 1:
            dense = sp.csr_matrix((last.data, last.indices, last.indptr),
                                  shape=(last.n, last.n)).toarray()
            self.lu = scipy.linalg.lu_factor(dense, check_finite=False)
        self.nsweep = AMG_NSWEEP if nsweep is None else nsweep
        self.cycles = AMG_GAMMA if cycles is None else cycles
        self.work = [None] + [(np.empty(lv.n), np.empty(lv.n)) for lv in self.levels[1:]]
        self.res = [np.empty(lv.n) for lv in self.levels[:-1]]

    def apply(self, b, x, trans):
        """``x = B b`` with ``B`` one cycle (``x`` is overwritten)."""
        self._cycle(0, b, x, trans)

    def _cycle(self, l, b, x, trans):
        lv = self.levels[l]
        if trans:
            ip, ix, dv, dg = lv.transposed()
        else:
            ip, ix, dv, dg = lv.indptr, lv.indices, lv.data, lv.diag
        if l == len(self.levels) - 1:
            if self.lu is not None:
                x[:] = scipy.linalg.lu_solve(self.lu, b, trans=1 if trans else 0,
                                             check_finite=False)
            else:
                x[:] = 0.0
                for _ in range(self.nsweep):
                    _k.gs_sweep(ip, ix, dv, dg, b, x, True)
                    _k.gs_sweep(ip, ix, dv, dg, b, x, False)
            return
        x[:] = 0.0
        for _ in range(self.nsweep):
            _k.gs_sweep(ip, ix, dv, dg, b, x, True)
        r = self.res[l]
        bc, xc = self.work[l + 1]
        for c in range(self.cycles if l + 2 < len(self.levels) else 1):
            _k.csr_residual(ip, ix, dv, x, b, r)
            _k.restrict(lv.ptr, lv.members, r, bc)
            self._cycle(l + 1, bc, xc, trans)
            _k.prolong_add(lv.agg, xc, x)
        for _ in range(self.nsweep):
            _k.gs_sweep(ip, ix, dv, dg, b, x, False)


class KrylovFactorization:
    """Restarted, right-preconditioned GMRES on ``M`` and ``M^T`` (Numba).

    Parameters
    ----------
    M : scipy.sparse.csr_matrix
        The matrix.
    plan : SolverPlan
        Pattern analysis of ``M``.
    tol : float
        Relative tolerance on the true residual, ``||b - M x|| <= tol ||b||``.
    maxiter : int or None
        Maximum total number of GMRES iterations per solve (default 1000).
    restart : int
        GMRES restart length (Krylov basis size).
    preconditioner : {"auto", "amg", "sgs", "none"}
        ``"amg"``: aggregation AMG V-cycle (falls back to SGS if the pattern
        does not coarsen); ``"sgs"``: one symmetric Gauss-Seidel sweep;
        ``"none"``: unpreconditioned.  ``"auto"`` is ``"amg"``.

    Attributes
    ----------
    method : str
        ``"krylov"``.
    iterations : int or None
        GMRES iterations of the last :meth:`solve`.
    iterations_transposed : int or None
        GMRES iterations of the last :meth:`solve_transposed`.
    residual, residual_transposed : float or None
        True relative residuals reached by the last solves.
    """

    method = "krylov"

    def __init__(self, M: sp.csr_matrix, plan: SolverPlan, *, tol: float = 1e-10,
                 maxiter: Optional[int] = None, restart: int = 30,
                 preconditioner: str = "auto"):
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        self.n = n = plan.n
        self.plan = plan
        self.tol = float(tol)
        self.maxiter = 1000 if maxiter is None else int(maxiter)
        if self.maxiter < 0:
            raise ValueError("maxiter must be >= 0")
        self.restart = max(1, min(int(restart), n))
        self.preconditioner = "amg" if preconditioner == "auto" else preconditioner
        self.data = np.ascontiguousarray(M.data, dtype=np.float64)
        self._tdata = None
        if self.preconditioner in ("amg", "sgs"):
            self._hier = _Hierarchy(plan.indptr, plan.indices, self.data, plan.diag,
                                    max_levels=AMG_MAX_LEVELS if self.preconditioner == "amg" else 1)
        else:
            self._hier = None
        self.iterations = None
        self.iterations_transposed = None
        self.residual = None
        self.residual_transposed = None
        self._V = None

    def _operator(self, trans):
        p = self.plan
        if not trans:
            return p.indptr, p.indices, self.data
        tip, tix, perm = p.transpose_pattern
        if self._tdata is None:
            self._tdata = np.empty(p.nnz)
            _k.gather(self.data, perm, self._tdata)
            if self._hier is not None:
                self._hier.levels[0].t = (tip, tix, self._tdata, p.transpose_diag)
        return tip, tix, self._tdata

    def solve(self, b: np.ndarray, x0: Optional[np.ndarray] = None) -> np.ndarray:
        """Solve ``M x = b``; ``x0`` is an optional warm start.

        Raises
        ------
        SolverError
            If the tolerance is not reached within ``maxiter`` iterations.
        """
        x, its, rel = self._gmres(b, x0, False)
        self.iterations, self.residual = its, rel
        return x

    def solve_transposed(self, b: np.ndarray, x0: Optional[np.ndarray] = None) -> np.ndarray:
        """Solve ``M^T x = b``; ``x0`` is an optional warm start.

        Raises
        ------
        SolverError
            If the tolerance is not reached within ``maxiter`` iterations.
        """
        x, its, rel = self._gmres(b, x0, True)
        self.iterations_transposed, self.residual_transposed = its, rel
        return x

    def _prec(self, v, out, trans):
        if self._hier is None:
            out[:] = v
        else:
            self._hier.apply(v, out, trans)

    def _gmres(self, b, x0, trans):
        n, m, tol = self.n, self.restart, self.tol
        b = _check_rhs(b, n)
        b = np.ascontiguousarray(b)
        ip, ix, dv = self._operator(trans)
        part = np.empty((N_CHUNKS, m + 1))
        h = np.empty(m + 1)
        one = np.empty(1)

        def norm(v):
            _k.multi_dot(v.reshape(1, -1), 1, v, part, one)
            return math.sqrt(one[0])

        bnorm = norm(b)
        if x0 is None:
            x = np.zeros(n)
        else:
            x = np.array(_check_rhs(x0, n), dtype=np.float64, copy=True)
        if bnorm == 0.0:
            return np.zeros(n), 0, 0.0
        if not np.isfinite(bnorm):
            raise ValueError("b contains non-finite values")
        if self._V is None:
            self._V = np.empty((m + 1, n))
        V = self._V
        r = np.empty(n)
        z = np.empty(n)
        _k.csr_residual(ip, ix, dv, x, b, r)
        beta = norm(r)
        target = tol * bnorm
        total = 0
        H = np.zeros((m + 1, m))
        cs = np.zeros(m)
        sn = np.zeros(m)
        g = np.zeros(m + 1)
        while beta > target:
            if total >= self.maxiter or not np.isfinite(beta):
                self._fail(total, beta / bnorm, trans)
            np.multiply(r, 1.0 / beta, out=V[0])
            g[:] = 0.0
            g[0] = beta
            H[:] = 0.0
            k = 0
            for j in range(m):
                self._prec(V[j], z, trans)
                w = V[j + 1]
                _k.csr_matvec(ip, ix, dv, z, w)
                # classical Gram-Schmidt with one reorthogonalisation (CGS2)
                _k.multi_dot(V, j + 1, w, part, h)
                _k.lincomb_sub(V, j + 1, h, w)
                hcol = h[: j + 1].copy()
                _k.multi_dot(V, j + 1, w, part, h)
                _k.lincomb_sub(V, j + 1, h, w)
                hcol += h[: j + 1]
                hnext = norm(w)
                H[: j + 1, j] = hcol
                H[j + 1, j] = hnext
                total += 1
                k = j + 1
                # apply previous rotations, then a new one
                for i in range(j):
                    t = cs[i] * H[i, j] + sn[i] * H[i + 1, j]
                    H[i + 1, j] = -sn[i] * H[i, j] + cs[i] * H[i + 1, j]
                    H[i, j] = t
                rr = math.hypot(H[j, j], H[j + 1, j])
                if rr == 0.0:
                    cs[j], sn[j] = 1.0, 0.0
                else:
                    cs[j], sn[j] = H[j, j] / rr, H[j + 1, j] / rr
                H[j, j] = rr
                H[j + 1, j] = 0.0
                g[j + 1] = -sn[j] * g[j]
                g[j] = cs[j] * g[j]
                if hnext <= 1e-14 * beta or not math.isfinite(hnext):
                    break  # (lucky) breakdown: solution lies in the space
                np.multiply(w, 1.0 / hnext, out=w)
                if abs(g[j + 1]) <= target or total >= self.maxiter:
                    break
            # y = H[:k,:k]^{-1} g[:k] (back substitution), x += B (V y)
            y = np.zeros(k)
            for i in range(k - 1, -1, -1):
                s = g[i] - np.dot(H[i, i + 1:k], y[i + 1:k]) if i + 1 < k else g[i]
                y[i] = s / H[i, i] if H[i, i] != 0.0 else 0.0
            r[:] = 0.0
            _k.lincomb_sub(V, k, -y, r)
            self._prec(r, z, trans)
            x += z
            _k.csr_residual(ip, ix, dv, x, b, r)
            beta = norm(r)
        return x, total, beta / bnorm

    def _fail(self, its, rel, trans):
        what = "M^T x = b" if trans else "M x = b"
        raise SolverError(
            f"krylov solver (GMRES({self.restart}), preconditioner={self.preconditioner!r}) "
            f"did not converge on {what}: {its} iterations done (maxiter={self.maxiter}), "
            f"relative residual {rel:.3e} > tol {self.tol:.1e}. "
            f"Raise maxiter, loosen tol, or use solver='splu' (or 'dense' for small problems)."
        )


Factorization = Union[DenseFactorization, SpluFactorization, KrylovFactorization]


def factorize(M: sp.csr_matrix, method: str = "auto", *, tol: float = 1e-10,
              maxiter: Optional[int] = None, plan: Optional[SolverPlan] = None,
              restart: int = 30, preconditioner: str = "auto") -> Factorization:
    """Factorise ``M = I - gamma P_pi`` for solves with ``M`` and ``M^T``.

    Parameters
    ----------
    M : scipy.sparse.csr_matrix
        Square float64 CSR matrix, sorted indices, no duplicates, diagonal
        stored in every row.
    method : {"auto", "dense", "splu", "krylov"}
        ``"auto"`` uses ``plan.method`` (see :func:`choose_method`).
    tol : float
        Relative residual tolerance of the ``"krylov"`` method.
    maxiter : int or None
        Maximum GMRES iterations per solve (``"krylov"``; default 1000).
    plan : SolverPlan or None
        Pattern analysis from :func:`analyse`; computed on the fly if omitted
        (pass it to amortise the analysis over many matrices with one pattern).
    restart : int
        GMRES restart length (``"krylov"``).
    preconditioner : {"auto", "amg", "sgs", "none"}
        ``"krylov"`` preconditioner.

    Returns
    -------
    DenseFactorization or SpluFactorization or KrylovFactorization
        Object with ``.solve(b, x0=None)``, ``.solve_transposed(b, x0=None)``
        and ``.method``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not sp.issparse(M):
        raise TypeError("M must be a scipy.sparse CSR matrix")
    if M.format != "csr":
        M = M.tocsr()
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be square, got shape {M.shape}")
    if plan is None:
        plan = analyse(M)
    elif not plan.matches(M):
        raise ValueError("plan was computed for a different sparsity pattern than M")
    if method == "auto":
        method = plan.method
    if method == "dense":
        return DenseFactorization(M)
    if method == "splu":
        return SpluFactorization(M)
    return KrylovFactorization(M, plan, tol=tol, maxiter=maxiter, restart=restart,
                               preconditioner=preconditioner)
