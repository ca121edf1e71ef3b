"""Linear solves with ``M = I - gamma * P_pi`` (and its transpose).

Every linear system in fastmeta is ``M x = b`` or ``M^T x = b`` where ``P_pi``
is a row-stochastic ``S x S`` matrix and ``0 < gamma < 1``: ``M`` is a
nonsingular, strictly row diagonally dominant M-matrix.  The same ``M`` is
solved once with ``M`` and once with ``M^T`` (adjoint method) and then thrown
away; the sparsity pattern is fixed for an MDP while the values change with the
policy.  Hence the two-stage API:

* :func:`analyse` computes, once per pattern, a :class:`SolverPlan` (method
  choice, transposed pattern, aggregation hierarchy, ...);
* :func:`factorize` builds, once per matrix, a solver object with
  ``.solve(b)`` and ``.solve_transposed(b)``; ``b`` is one right-hand side
  ``(n,)`` or several ``(n, k)`` (the result has the shape of ``b``).

Tolerances follow SciPy's iterative solvers: a solve stops when
``||b - M x|| <= max(rtol ||b||, atol)`` (per column); ``callback`` is called
after every iteration, ``iterations`` reports how many were done.  Direct
methods ignore them (their residual is at rounding level).

Methods
-------
``"dense"``
    LAPACK LU (``scipy.linalg.lu_factor``) of the densified matrix.
``"splu"``
    SuperLU (``scipy.sparse.linalg.splu``) with a minimum-degree ordering on
    ``M^T + M`` and no pivoting (``M`` is diagonally dominant).
``"pardiso"``
    Intel MKL PARDISO (optional extra ``fastmeta[pardiso]``, via ``pypardiso``):
    nested-dissection ordering computed once per pattern (in the plan), a
    parallel numerical factorisation per matrix.
``"krylov"``
    Restarted GMRES(5) (Numba kernels, right preconditioning, classical
    Gram-Schmidt (one pass, ``DGKS_ETA``), preconditioned
    basis kept as in flexible GMRES) preconditioned by an aggregation-based
    algebraic multigrid V-cycle built from the values of every new matrix
    (double pairwise matching along the strongest couplings, smoothed-aggregation
    interpolation on the finest level and piecewise-constant below
    (``AMG_INTERPOLATION``), Petrov-Galerkin coarse matrices, two forward (the first from zero)
    and two backward block Gauss-Seidel sweeps around the coarse correction,
    dense LU on the coarsest level; stored in float32,
    ``AMG_DTYPE``, which limits only the preconditioner, not the solve's
    accuracy; ``M^T`` gets its own hierarchy); coarsening stops where it
    stalls or the coarse matrices fill in (expanders), the last level is then
    smoothed only.  Several
    right-hand sides (``b`` of shape ``(n, k)``) run as up to 4 GMRES
    iterations in lockstep, sharing every pass over the matrices.
    Convergence is declared per column on the *true* residual
    ``||b - M x|| <= max(rtol ||b||, atol)``; if ``maxiter`` is reached first,
    :class:`SolverError` is raised.  Not a factorisation: :class:`KrylovSolver`
    also accepts ``M`` as a :class:`scipy.sparse.linalg.LinearOperator`
    (unpreconditioned, or with a preconditioner given as an operator).
``"auto"``
    :func:`choose_method`.

All results of the ``krylov`` method are bit-identical for any number of Numba
threads.
"""
from __future__ import annotations

import functools
import math
import threading
import weakref
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg
from scipy.sparse.csgraph import reverse_cuthill_mckee

from . import _pardiso
from ._blas import single_threaded_blas
from ._kernels import krylov as _k
from ._kernels._config import N_CHUNKS, PARALLEL_MIN_SIZE

__all__ = [
    "METHODS",
    "SolverError",
    "SolverPlan",
    "analyse",
    "choose_method",
    "factorize",
    "DenseFactorization",
    "SpluFactorization",
    "PardisoFactorization",
    "KrylovSolver",
    "krylov_restart",
]

METHODS = ("auto", "dense", "splu", "pardiso", "krylov")
PRECONDITIONERS = ("auto", "amg", "sgs", "none")

#: ``"auto"`` picks ``"dense"`` up to this many states (see the study).
DENSE_MAX_N = 300
#: ... or up to this many states when the matrix is dense-ish (nnz >= n^2/10).
DENSE_MAX_N_DENSEISH = 2000
#: ``"auto"`` never picks ``"splu"`` above this many states (grid-like chains,
#: one meta-gradient: splu and krylov tie at 1e5 states on a quiet machine,
#: krylov is 1.3-1.4x faster at 2e5-3e5; under load splu wins up to ~5e5).
SPLU_MAX_N = 150_000
#: ``"auto"`` prefers ``"pardiso"`` (when installed) to ``"splu"`` from this many states on
#: (grid systems: PARDISO 1.6-2.2x faster at 1e5, 0.45-1.05x SuperLU at 1e4, see the study).
PARDISO_MIN_N = 50_000
#: ``"splu"`` is considered only if the RCM bandwidth is <= this * sqrt(n).
SPLU_BANDWIDTH_FACTOR = 3.0

#: AMG: the coarsest level has at most this many rows (then a dense LU).
AMG_COARSE_SIZE = 200
#: AMG: stop coarsening if a level has fewer than this ratio of coarsening.
AMG_MIN_RATIO = 1.5
#: AMG: stop coarsening if the coarse nnz per row exceeds this.
AMG_MAX_ROW_NNZ = 60
AMG_MAX_LEVELS = 20
#: AMG: pairwise matching only along couplings >= this times the row's strongest.
AMG_STRENGTH = 0.0
#: AMG: Gauss-Seidel sweeps after the coarse correction on the finest level, and the
#: symmetric sweeps of a level that is smoothed only (the "sgs" preconditioner).
AMG_NSWEEP = 2
#: AMG: sweeps before the coarse correction on the finest level; the first, from zero,
#: is a forward substitution over the strictly lower part (half a sweep's bytes).
#: One instead of two: 201 instead of 192 iterations on the 10^6 replay for a fine
#: sweep less per cycle, 0.975 of the time (within the noise, see the study): not taken.
AMG_NSWEEP_PRE = 2
#: AMG: sweeps before and after the coarse correction on the coarser levels.
AMG_NSWEEP_COARSE = 2
#: AMG: relaxation factor of the Gauss-Seidel smoother (1: plain Gauss-Seidel).
AMG_OMEGA = 1.0
#: AMG: cycle index, coarse-grid recursions per level (1: V-cycle, 2: W-cycle).
AMG_CYCLE_INDEX = 1
#: AMG: interpolation between levels. ``"constant"``: piecewise-constant over the aggregates
#: (plain aggregation, ``P = T``, ``R = T^T``); ``"smoothed"``: smoothed aggregation with
#: the same aggregates, ``P = (I - w D^-1 A) T`` and the Petrov-Galerkin ``R = T^T (I - w A D^-1)``
#: (the transpose of the smoothed prolongation of ``A^T``), ``w = AMG_SA_OMEGA``.
AMG_INTERPOLATION = "smoothed"
INTERPOLATIONS = ("constant", "smoothed")
#: AMG, smoothed aggregation: damping of the Jacobi step that smooths ``T``.
AMG_SA_OMEGA = 0.5
#: AMG, smoothed aggregation: only the transfers of this many levels from the finest are
#: smoothed, the coarser ones are piecewise constant.
AMG_SA_LEVELS = 1
#: Storage precision of the preconditioner (level matrices, smoother, cycle vectors).
#: GMRES runs on the float64 ``M`` and keeps the preconditioned vectors (flexible
#: GMRES), so this limits only how good the preconditioner is, not the accuracy of
#: the solve; float32 halves the cycle's memory traffic, which bounds its speed
#: (10^6 grid: the same iterations, see the solver study).
AMG_DTYPE = np.float32
#: Gauss-Seidel smoother: a level is swept in up to ``GS_BLOCKS`` fixed row blocks
#: of at least ``GS_BLOCK_MIN_ROWS`` rows (Jacobi coupling between blocks, blocks
#: in parallel); a multiple of 4 blocks, so that 1, 2 or 4 threads get equal shares.
GS_BLOCK_MIN_ROWS = 1000
GS_BLOCKS = 16
#: A level where fewer than this fraction of the rows couple only inside their block is swept
#: as one block (serial Gauss-Seidel): blocked, most of its couplings would be Jacobi ones.
#: Grid levels keep 0.9-1.0 of their rows interior; on an expander-like chain (RL^2 random
#: MDPs) no row is, and one block took 95 instead of 123 iterations per meta-gradient at
#: 10^5 states for about the same time per sweep (one core against two on random accesses).
GS_MIN_INTERIOR = 0.5
#: GMRES: default restart length.  The AMG-preconditioned iteration converges
#: almost linearly, so a short Krylov memory costs few iterations (one meta-gradient
#: at 10^6 states: the same 192 with restart 4, 6 and 12; at 2.25 x 10^4: 151 with 5,
#: 150 with 12) while Gram-Schmidt reads every basis vector per iteration: restart 5
#: instead of 12 saves about 10% of the bytes moved per iteration (see the study).
KRYLOV_RESTART = 5
#: GMRES: the restart is lowered for large systems so that the basis fits in this
#: many bytes, counted as if all of it were float64 (10^6 states, 4 columns: restart 4,
#: 288 MB, for the same iterations as restart 5 and 64 MB less at the peak of a gradient;
#: 10^7 states: restart 2, 1.6 GB). The preconditioned half is float32 behind the AMG
#: cycle (see ``_gmres``), so the basis takes less: 224 MB at 10^6 states.
KRYLOV_BASIS_BYTES = 320 * 2**20
#: GMRES: storage precision of the Krylov basis and of the preconditioned basis.
#: The arithmetic is float64 and every restart recomputes the true residual in
#: float64 from the float64 iterate, so a float32 basis (as in compressed-basis
#: GMRES) perturbs each restart cycle by ~1e-7 relative, not the attainable
#: accuracy, and halves the basis memory. It is not the default because it was
#: slower where measured: one 10^6-state gradient replay 0.86 of the old settings
#: against 0.72 with a float64 basis, and a gradient of 8 random MDPs of 1000
#: states 81 ms against 66 ms (same process, bench_results/solver_study.md).
#: Set it to ``np.float32`` when the basis memory matters more than its speed.
KRYLOV_BASIS_DTYPE = np.float64
#: GMRES: at most this many right-hand sides advance in lockstep (kernel limit 4).
KRYLOV_BLOCK = 4
#: GMRES: reorthogonalise (a second classical Gram-Schmidt pass) when the first
#: shrinks a vector below this fraction of its norm; 0 never does. With a good
#: preconditioner almost every step shrinks below the classical DGKS value 1/sqrt(2),
#: so that doubled the Gram-Schmidt traffic on every step, for the same iterations
#: and residuals (10^6 replay: 192 iterations either way). A single pass loses
#: orthogonality only gradually, and the restart (5) rebuilds the basis from the
#: true float64 residual, which is also what the stopping test is applied to, so a
#: less orthogonal basis can cost iterations but never accuracy.
DGKS_ETA = 0.0
#: GMRES with the multigrid preconditioner has stalled when a residual fell by less than
#: ``STALL_FACTOR`` over the last ``STALL_ITERATIONS`` iterations: the solve is restarted with
#: symmetric Gauss-Seidel (see :meth:`KrylovSolver._solve`). A healthy solve gains 10 orders of
#: magnitude in 25-95 iterations.
STALL_ITERATIONS = 100
STALL_FACTOR = 0.1
#: :meth:`KrylovSolver.solve_each` watches its shared preconditioner over this shorter
#: window: a preconditioner of M that does not serve the other matrices should cost
#: few iterations before each is solved with its own (healthy: 10^3-10^4 in 10 iterations).
EACH_STALL_ITERATIONS = 10

_POOL_LOCK = threading.Lock()

PatternLike = Union[sp.csr_matrix, "SolverPlan", Tuple[np.ndarray, np.ndarray, int]]


class _Stalled(Exception):
    """GMRES with the multigrid preconditioner stopped making progress (see ``STALL_FACTOR``)."""


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
        self._pardiso_pool = None

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
    def grid_like(self) -> bool:
        """Whether the chain is grid-like: RCM bandwidth <= ``SPLU_BANDWIDTH_FACTOR * sqrt(n)``.

        Grid-like chains have small LU fill and mix slowly (GMRES needs the AMG
        cycle); expander-like chains fill in under LU but mix fast, so GMRES
        converges in a few iterations with a plain Gauss-Seidel preconditioner,
        whose set-up is free (RL^2 random MDPs, 1e5 states: 1.7 s per meta-gradient
        with "sgs" against 4.3 s with the AMG hierarchy, whose coarse levels fill in).
        """
        return self.bandwidth <= SPLU_BANDWIDTH_FACTOR * math.sqrt(self.n)

    @property
    def preconditioner(self) -> str:
        """The Krylov preconditioner ``"auto"`` resolves to: "amg" if grid-like, else "sgs"."""
        return "amg" if self.grid_like else "sgs"

    @property
    def method(self) -> str:
        """The method ``"auto"`` resolves to for this pattern."""
        if self._method is None:
            self._method = choose_method(self)
        return self._method

    def _borrow_pardiso(self) -> "_pardiso.PardisoHandle":
        """A PARDISO handle analysed for this pattern (from the pool, or a new one)."""
        if self.nnz >= 2**31 - 1:
            raise ValueError(f"method='pardiso' supports up to 2^31 - 1 stored entries, got {self.nnz}")
        with _POOL_LOCK:
            pool = self._pardiso_pool
            if pool is None:
                # PARDISO's memory is freed with the plan (or at exit), not per factorisation
                pool = self._pardiso_pool = []
                weakref.finalize(self, _release_handles, pool)
            if pool:
                return pool.pop()
        return _pardiso.PardisoHandle(self.indptr, self.indices, self.n)

    def _return_pardiso(self, handle) -> None:
        with _POOL_LOCK:
            self._pardiso_pool.append(handle)

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


def _release_handles(handles) -> None:
    for handle in handles:
        handle.release()
    handles.clear()


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
    2. ``"krylov"`` if ``n > SPLU_MAX_N`` (150 000): SuperLU's factorisation
       time grows like ``n^1.5`` on grids, the AMG-preconditioned GMRES's
       roughly linearly (one meta-gradient of the benchmark, quiet machine:
       tie at 1e5 states, krylov 1.3x faster at 2e5 and 1.4x at 3e5; splu is
       serial, so on a loaded machine it wins up to ~5e5);
    3. otherwise a sparse LU if the reverse Cuthill-McKee bandwidth is at most
       ``3 sqrt(n)`` (grid-like chain: small LU fill; 2.4x faster than krylov
       at 2e4 states), else ``"krylov"`` (expander-like chain: LU fill
       explodes, GMRES needs few iterations).  The sparse LU is ``"pardiso"``
       from ``PARDISO_MIN_N`` (50 000) states on when ``pypardiso`` is
       installed (1.6-2.2x faster than SuperLU at 1e5 states, the ordering
       reused; no faster at 1e4), else ``"splu"``.

    Parameters
    ----------
    M_pattern : scipy.sparse.csr_matrix, SolverPlan or tuple
        Matrix, plan or ``(indptr, indices, n)``.

    Returns
    -------
    str
        One of ``"dense"``, ``"splu"``, ``"pardiso"``, ``"krylov"``.
    """
    plan = M_pattern if isinstance(M_pattern, SolverPlan) else None
    indptr, indices, n = _as_pattern(M_pattern)
    nnz = int(indices.shape[0])
    if n <= DENSE_MAX_N or (n <= DENSE_MAX_N_DENSEISH and 10 * nnz >= n * n):
        return "dense"
    if n > SPLU_MAX_N:
        return "krylov"
    plan = plan if plan is not None else SolverPlan(indptr, indices, n)
    if not plan.grid_like:
        return "krylov"
    return "pardiso" if n >= PARDISO_MIN_N and _pardiso.available() else "splu"


# --------------------------------------------------------------------------
# factorisations
# --------------------------------------------------------------------------
def _check_rhs(b, n, name="b") -> np.ndarray:
    """``b`` as float64 of shape ``(n,)`` or ``(n, k)``."""
    b = np.asarray(b, dtype=np.float64)
    if b.ndim not in (1, 2) or b.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, k), got {b.shape}")
    return b


class _DirectFactorization:
    """Shared by the LU factorisations: solve and solve-transposed through ``_solve``."""

    method = ""

    def solve(self, b: np.ndarray, x0: Optional[np.ndarray] = None) -> np.ndarray:
        """Solve ``M x = b``; ``b`` of shape ``(n,)`` or ``(n, k)`` (``x0`` is ignored)."""
        return self._solve(_check_rhs(b, self.n), False)

    def solve_transposed(self, b: np.ndarray, x0: Optional[np.ndarray] = None) -> np.ndarray:
        """Solve ``M^T x = b``; ``b`` of shape ``(n,)`` or ``(n, k)`` (``x0`` is ignored)."""
        return self._solve(_check_rhs(b, self.n), True)


class DenseFactorization(_DirectFactorization):
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
        with single_threaded_blas():
            self._lu = scipy.linalg.lu_factor(M.toarray(), check_finite=False)

    def _solve(self, b: np.ndarray, transposed: bool) -> np.ndarray:
        with single_threaded_blas():
            return scipy.linalg.lu_solve(self._lu, b, trans=1 if transposed else 0, check_finite=False)


class SpluFactorization(_DirectFactorization):
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

    def _solve(self, b: np.ndarray, transposed: bool) -> np.ndarray:
        return self._lu.solve(b, trans="T" if transposed else "N")


class PardisoFactorization(_DirectFactorization):
    """MKL PARDISO factorisation of ``M`` (optional extra ``fastmeta[pardiso]``).

    The nested-dissection analysis belongs to the pattern: PARDISO handles are
    analysed once and pooled on the plan; a factorisation borrows one, runs only
    the numerical phase, and returns it when it is garbage-collected (so memory
    is bounded by the number of factorisations alive at once).

    Attributes
    ----------
    method : str
        ``"pardiso"``.
    n : int
    """

    method = "pardiso"

    def __init__(self, M: sp.csr_matrix, plan: "SolverPlan"):
        self.n = M.shape[0]
        self._plan = plan
        self._handle = plan._borrow_pardiso()
        try:
            self._handle.factor(M.data)
        except BaseException:
            plan._return_pardiso(self._handle)
            raise

    def _solve(self, b: np.ndarray, transposed: bool) -> np.ndarray:
        return self._handle.solve(b, transposed)

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            self._plan._return_pardiso(handle)


class _Level:
    """One level of the AMG hierarchy: CSR matrix, ``1/diag``, aggregation to the next."""

    def __init__(self, indptr, indices, data, diag):
        self.n = indptr.shape[0] - 1
        self.indptr, self.indices, self.data, self.diag = indptr, indices, data, diag
        self.invd = AMG_OMEGA / data[diag]
        self.nblk = _gs_blocks(self.n)
        self.interior = np.ones(self.n, dtype=np.bool_)
        self.halo = None  # rows read across blocks: only they are copied before a sweep
        if self.nblk > 1:
            mark = np.empty(self.n, dtype=np.int8)
            _k.block_halo(indptr, indices, self.nblk, self.interior, mark)
            if np.count_nonzero(self.interior) < GS_MIN_INTERIOR * self.n:
                self.nblk = 1
                self.interior[:] = True
            else:
                self.halo = np.flatnonzero(mark).astype(indices.dtype)
        # serial or parallel kernels for this level (same results; no dispatch per call)
        self.par = "parallel" if indices.shape[0] >= PARALLEL_MIN_SIZE else "serial"
        self.gs = getattr(_k.gs_sweep, self.par)
        self.gs0 = getattr(_k.gs_sweep_zero, self.par)
        self.copy = getattr(_k.copy_rows, self.par)
        self.residual = getattr(_k.csr_residual, self.par)
        self.restrict = getattr(_k.restrict_sum, self.par)
        self.prolong = getattr(_k.prolong_add, self.par)
        self.cast = getattr(_k.cast_copy, self.par)
        self.agg = self.ptr = self.members = None
        self.P = self.R = None  # smoothed aggregation: CSR (indptr, indices, data) of P and R
        self.to_coarse = self.from_coarse = None

    def bind_transfer(self):
        """Fix the transfer kernels to the next level: ``to_coarse(r, rc)`` (``rc = R r``) and
        ``from_coarse(e, x)`` (``x += P e``), after the level's arrays have their final dtype."""
        if self.P is None:
            self.to_coarse = functools.partial(self.restrict, self.ptr, self.members)
            self.from_coarse = functools.partial(self.prolong, self.agg)
        else:
            self.to_coarse = functools.partial(getattr(_k.csr_matvec, self.par), *self.R)
            self.from_coarse = functools.partial(getattr(_k.csr_matvec_add, self.par), *self.P)


def _gs_blocks(n: int) -> int:
    """Number of Gauss-Seidel row blocks of a level (a function of ``n`` only)."""
    if n < GS_BLOCK_MIN_ROWS * 4:
        return 1
    return min(GS_BLOCKS, 4 * (n // (GS_BLOCK_MIN_ROWS * 4)))


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


def _smoothed_galerkin(lv, agg, ptr, members, nc, omega):
    """Smoothed aggregation transfer of level ``lv`` (float64) for aggregates ``agg`` (members
    ``members[ptr[c]:ptr[c + 1]]``, see :func:`_k.agg_members`): ``(P, R, coarse)``, each a CSR
    triple ``(indptr, indices, data)``, ``coarse = R A P`` (sorted rows, then ``coarse``
    diagonal positions as a fourth element)."""
    # every row of A stores its diagonal, so no row of P or R has more entries than the rows
    # of A it is made of: nnz(A) bounds both
    n, nnz, idt = lv.n, lv.indices.shape[0], lv.indices.dtype
    pip, pix, pdv = np.empty(n + 1, np.int64), np.empty(nnz, idt), np.empty(nnz)
    cnt = _k.sa_prolongator(lv.indptr, lv.indices, lv.data, lv.diag, agg, omega,
                            np.empty(nc, np.int64), pip, pix, pdv)
    P = (pip, pix[:cnt].copy(), pdv[:cnt].copy())
    del pix, pdv
    rip, rix, rdv = np.empty(nc + 1, np.int64), np.empty(nnz, idt), np.empty(nnz)
    cnt = _k.sa_restrictor(lv.indptr, lv.indices, lv.data, lv.diag, ptr, members, omega,
                           np.empty(n, np.int64), rip, rix, rdv)
    R = (rip, rix[:cnt].copy(), rdv[:cnt].copy())
    del rix, rdv
    A = (lv.indptr, lv.indices, lv.data)
    marker = np.empty((SETUP_CHUNKS, nc), np.int64)
    cip = np.empty(nc + 1, np.int64)
    cnt = _k.triple_product_rows(R[0], R[1], A[0], A[1], P[0], P[1], marker, cip)
    cix, cdv = np.empty(cnt, idt), np.empty(cnt)
    _k.triple_product(*R, *A, *P, marker, cip, cix, cdv)
    cdg = np.empty(nc, dtype=idt)
    _k.sort_rows(cip, cix, cdv, cdg)
    return P, R, (cip, cix, cdv, cdg)


#: AMG: the coarsest level's LU (no pivoting) is used only if every pivot is at least this
#: fraction of the largest; otherwise that level is smoothed only.
LU_PIVOT_MIN = 1e-8
#: AMG set-up: the triple product ``R A P`` runs in this many fixed chunks of coarse rows (a
#: multiple of 4, so that 1, 2 or 4 threads get equal shares; the results do not depend on it).
SETUP_CHUNKS = 8


class _Hierarchy:
    """Aggregation AMG hierarchy for one matrix, built from its values.

    Each level aggregates by two passes of pairwise matching along the
    strongest negative couplings (aggregates of <= 4 nodes, after Notay's
    AGMG); ``interpolation`` (default ``AMG_INTERPOLATION``) ``"constant"``
    transfers by the piecewise-constant ``T`` of the aggregates (``P = T``,
    ``R = T^T``), ``"smoothed"`` by ``P = (I - w D^-1 A) T`` and
    ``R = T^T (I - w A D^-1)`` on the first ``AMG_SA_LEVELS`` levels (``T``
    below); coarse matrices are ``R A P``. The smoother is block Gauss-Seidel (forward before,
    backward after the coarse correction, see :func:`_gs_blocks`; the first
    sweep from zero is a forward substitution; ``AMG_NSWEEP_PRE``,
    ``AMG_NSWEEP`` and ``AMG_NSWEEP_COARSE`` sweeps), the coarsest level
    (<= ``AMG_COARSE_SIZE`` rows) is solved by a dense LU without pivoting
    (Numba).  With ``max_levels=1`` this is ``nsweep`` symmetric Gauss-Seidel
    sweeps.  ``M^T`` gets a hierarchy of its own (its own aggregates).
    Vectors are ``(n, k)`` blocks, ``k <= KRYLOV_BLOCK``.  The hierarchy is
    built in float64 and stored in ``dtype`` (default ``AMG_DTYPE``): matrices,
    ``1/diag`` and the cycle's vectors (float64 input and output are cast).
    """

    def __init__(self, indptr, indices, data, diag, max_levels=AMG_MAX_LEVELS,
                 nsweep=None, cycles=None, dtype=None, interpolation=None):
        self.interpolation = AMG_INTERPOLATION if interpolation is None else interpolation
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        smoothed = self.interpolation == "smoothed"
        self.levels = [_Level(indptr, indices, data, diag)]
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
            # members of the combined aggregates, in fine numbering
            ptr = np.empty(nc + 1, dtype=np.int64)
            members = np.empty(lv.n, dtype=agg.dtype)
            _k.agg_members(agg, ptr, members)
            if smoothed and len(self.levels) <= AMG_SA_LEVELS:
                P, R, (cip, cix, cdv, cdg) = _smoothed_galerkin(lv, agg, ptr, members, nc, AMG_SA_OMEGA)
            else:
                _, _, cip, cix, cdv, cdg = _galerkin(ip1, ix1, dv1, agg2, nc)
                P = R = None
            del ip1, ix1, dv1
            if cix.shape[0] > AMG_MAX_ROW_NNZ * nc:
                break
            lv.ptr, lv.members, lv.agg, lv.P, lv.R = ptr, members, agg, P, R
            self.levels.append(_Level(cip, cix, cdv, cdg))
        last = self.levels[-1]
        self.lu = None
        if max_levels > 1 and last.n <= 4 * AMG_COARSE_SIZE:
            dense = sp.csr_matrix((last.data, last.indices, last.indptr),
                                  shape=(last.n, last.n)).toarray()
            _k.dense_lu(dense)  # Numba, serial: LAPACK's thread pool would fight Numba's
            # no pivoting: safe for the diagonally dominant matrices of plain aggregation; below a
            # smoothed level dominance is not guaranteed, so a bad pivot leaves the level smoothed only
            pivots = np.abs(np.diagonal(dense))
            if np.all(np.isfinite(dense)) and pivots.min() > LU_PIVOT_MIN * pivots.max():
                self.lu = dense
        # built in float64, stored in the cycle's precision (level 0: a copy; M stays float64)
        self.dtype = np.dtype(AMG_DTYPE if dtype is None else dtype)
        for l, lv in enumerate(self.levels):
            lv.data = lv.data.astype(self.dtype, copy=False)
            lv.invd = lv.invd.astype(self.dtype, copy=False)
            if lv.P is not None:
                lv.P = lv.P[:2] + (lv.P[2].astype(self.dtype),)
                lv.R = lv.R[:2] + (lv.R[2].astype(self.dtype),)
            if lv.agg is not None:
                lv.bind_transfer()
            # the smoother's first sweep reads only the strictly lower part, which needs
            # sorted rows (Galerkin rows come in order of first appearance); sorted after
            # the coarsening, so that the aggregates and coarse values do not change
            if l or not _k.rows_sorted(lv.indptr, lv.indices):
                if not l:  # the caller's pattern (and M's values when stored in float64)
                    lv.indices, lv.data = lv.indices.copy(), lv.data.copy()
                lv.diag = np.empty(lv.n, dtype=lv.indices.dtype)
                _k.sort_rows(lv.indptr, lv.indices, lv.data, lv.diag)
        self.nsweep = max(1, AMG_NSWEEP if nsweep is None else nsweep)
        self.nsweep_pre = max(1, AMG_NSWEEP_PRE if nsweep is None else nsweep)
        self.nsweep_coarse = max(1, AMG_NSWEEP_COARSE if nsweep is None else nsweep)
        self.cycles = AMG_CYCLE_INDEX if cycles is None else cycles
        self._work = {}

    def _workspace(self, k):
        w = self._work.get(k)
        if w is None:
            # per level: rhs, solution, scratch (the block smoother's copy and the
            # residual before restriction); level 0 works on the caller's vectors
            # (cast copies, made on demand, if their precision differs)
            dt = self.dtype
            w = [[np.empty((lv.n, k), dt) if l else None, np.empty((lv.n, k), dt) if l else None,
                  np.empty((lv.n, k), dt) if lv.nblk > 1 or lv.agg is not None else None]
                 for l, lv in enumerate(self.levels)]
            self._work[k] = w
        return w

    def apply(self, b, x):
        """``x = B b`` with ``B`` one cycle (``x`` is overwritten); ``(n, k)`` blocks."""
        work = self._workspace(b.shape[1])
        level0, cast = work[0], self.levels[0].cast
        if b.dtype != self.dtype:
            if level0[0] is None:
                level0[0] = np.empty(b.shape, self.dtype)
            cast(b, level0[0])
            b = level0[0]
        x0 = x
        if x.dtype != self.dtype:
            if level0[1] is None:
                level0[1] = np.empty(x.shape, self.dtype)
            x0 = level0[1]
        self._cycle(0, b, x0, work)
        if x0 is not x:
            cast(x0, x)

    def _smooth(self, lv, ops, b, x, xold, forward, zero=False):
        ip, ix, dv = ops
        if zero:  # x = 0 on entry: forward substitution, no copy
            lv.gs0(ip, ix, dv, lv.diag, lv.invd, b, x, lv.nblk, lv.interior)
            return
        if lv.nblk > 1:
            lv.copy(lv.halo, x, xold)
        else:
            xold = x
        lv.gs(ip, ix, dv, lv.invd, b, x, xold, lv.nblk, lv.interior, forward)

    def _cycle(self, l, b, x, work):
        lv = self.levels[l]
        ops = (lv.indptr, lv.indices, lv.data)
        xold = work[l][2]  # also the residual's scratch (not in use between the sweeps)
        if l == len(self.levels) - 1:
            if self.lu is not None:
                _k.dense_lu_solve(self.lu, b, x)
            else:
                for s in range(self.nsweep):
                    self._smooth(lv, ops, b, x, xold, True, s == 0)
                    self._smooth(lv, ops, b, x, xold, False)
            return
        for s in range(self.nsweep_pre if l == 0 else self.nsweep_coarse):
            self._smooth(lv, ops, b, x, xold, True, s == 0)
        bc, xc = work[l + 1][0], work[l + 1][1]
        for c in range(self.cycles if l + 2 < len(self.levels) else 1):
            lv.residual(*ops, x, b, xold)
            lv.to_coarse(xold, bc)
            self._cycle(l + 1, bc, xc, work)
            lv.from_coarse(xc, x)
        for _ in range(self.nsweep if l == 0 else self.nsweep_coarse):
            self._smooth(lv, ops, b, x, xold, False)


class _Workspace:
    """GMRES arrays for ``k`` systems of size ``n`` with restart ``m``.

    The two big arrays (basis ``V``, ``KRYLOV_BASIS_DTYPE``, and preconditioned basis
    ``Zs``, ``z_dtype``) are views of ``buf``, a byte buffer from the plan's pool that
    may be larger (one buffer serves 1- and 4-column solves).
    """

    def __init__(self, n, k, m, z_dtype, buf):
        v_dtype = np.dtype(KRYLOV_BASIS_DTYPE)
        nv = (m + 1) * n * k * v_dtype.itemsize
        self.buf = buf
        self.V = buf[:nv].view(v_dtype).reshape(m + 1, n, k)
        self.Zs = buf[nv:nv + m * n * k * z_dtype.itemsize].view(z_dtype).reshape(m, n, k)  # B V (flexible GMRES)
        self.R = np.empty((n, k))
        self.part = np.empty((N_CHUNKS, m + 2, k))
        self.h = np.empty((m + 2, k))
        self.h2 = np.empty((m + 2, k))
        self.H = np.zeros((k, m + 1, m))
        self.cs = np.zeros((k, m))
        self.sn = np.zeros((k, m))
        self.g = np.zeros((k, m + 1))
        self.Y = np.zeros((m, k))
        self.nrm = np.empty(k)


def _acquire_workspace(plan, n, k, m, z_dtype):
    """Workspace whose basis lives in a buffer reused across solves and factorisations.

    The plan keeps the largest buffer released so far (no page faults per
    matrix; 1-column solves reuse the 4-column buffer); concurrent solves
    allocate their own.
    """
    z_dtype = np.dtype(z_dtype)
    need = ((m + 1) * np.dtype(KRYLOV_BASIS_DTYPE).itemsize + m * z_dtype.itemsize) * n * k
    with _POOL_LOCK:
        pool = plan.__dict__.setdefault("_pool", {})
        buf = pool.get(m)
        if buf is not None and buf.shape[0] >= need:
            del pool[m]
        else:
            buf = None
    if buf is None:
        buf = np.empty(need, np.uint8)
    return _Workspace(n, k, m, z_dtype, buf)


def _release_workspace(plan, ws, m):
    with _POOL_LOCK:
        pool = plan.__dict__["_pool"]
        old = pool.get(m)
        if old is None or old.shape[0] < ws.buf.shape[0]:
            pool[m] = ws.buf


class KrylovSolver:
    """Restarted, right-preconditioned GMRES on ``M`` and ``M^T`` (Numba); not a factorisation.

    Several right-hand sides (``b`` of shape ``(n, k)``) are solved together:
    up to ``KRYLOV_BLOCK`` independent GMRES runs advance in lockstep, so every
    matrix-vector product, smoothing sweep and coarse-grid transfer reads the
    matrices once for all of them; each run stops on its own convergence test
    and its result is the same (up to rounding) as a single-vector solve.

    Parameters
    ----------
    M : scipy.sparse.csr_matrix or scipy.sparse.linalg.LinearOperator
        The matrix; an operator (``matmat``/``rmatmat`` used) needs
        ``preconditioner="none"`` or a preconditioner operator.
    plan : SolverPlan or None
        Pattern analysis of ``M`` (``None`` for an operator).
    rtol, atol : float
        Stop when ``||b - M x|| <= max(rtol ||b||, atol)`` on the true residual
        (per column), as in :func:`scipy.sparse.linalg.gmres`.
    maxiter : int or None
        Maximum total number of GMRES iterations per solve (default 1000).
    restart : int
        GMRES restart length (Krylov basis size); lowered for very large
        systems so that the basis fits in ``KRYLOV_BASIS_BYTES``.
    preconditioner : {"auto", "amg", "sgs", "none"} or LinearOperator
        ``"amg"``: aggregation AMG V-cycle (falls back to SGS if the pattern
        does not coarsen); ``"sgs"``: one symmetric Gauss-Seidel sweep;
        ``"none"``: unpreconditioned; an operator approximating ``M^{-1}``
        (its ``rmatmat`` serves ``M^T``).  ``"auto"`` is ``plan.preconditioner``:
        ``"amg"`` for grid-like chains, ``"sgs"`` for expander-like ones.
    callback : callable or None
        ``callback(residual)`` after every iteration with the current residual
        estimate ``||b - M x|| / ||b||`` (float for ``b`` of shape ``(n,)``,
        array of the lockstep columns otherwise), like SciPy's
        ``callback_type="pr_norm"``.

    Attributes
    ----------
    method : str
        ``"krylov"``.
    iterations : int or None
        GMRES iterations of the last :meth:`solve` (the largest over the columns
        of a block right-hand side).
    iterations_transposed : int or None
        GMRES iterations of the last :meth:`solve_transposed`.
    iterations_each : int or None
        GMRES iterations of the last :meth:`solve_each` (largest over its matrices).
    residual, residual_transposed, residual_each : float or None
        True relative residuals reached by the last solves (largest over columns).
    fallbacks : list of str
        ``"M"`` or ``"M^T"`` for each side whose multigrid preconditioner stalled and was
        replaced by symmetric Gauss-Seidel (see ``STALL_FACTOR``); empty normally.
    """

    method = "krylov"

    def __init__(self, M, plan: Optional[SolverPlan] = None, *, rtol: float = 1e-10, atol: float = 0.0,
                 maxiter: Optional[int] = None, restart: int = KRYLOV_RESTART,
                 preconditioner="auto", callback=None):
        operator = isinstance(M, scipy.sparse.linalg.LinearOperator)
        prec_op = isinstance(preconditioner, scipy.sparse.linalg.LinearOperator)
        if not prec_op and preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {PRECONDITIONERS} or a LinearOperator, "
                             f"got {preconditioner!r}")
        if not rtol >= 0 or not atol >= 0 or not (rtol > 0 or atol > 0):
            raise ValueError(f"rtol and atol must be >= 0 and not both 0, got rtol={rtol}, atol={atol}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
        self.n = n = M.shape[0]
        if M.shape != (n, n):
            raise ValueError(f"M must be square, got shape {M.shape}")
        if prec_op and preconditioner.shape != (n, n):
            raise ValueError(f"preconditioner must have shape {(n, n)}, got {preconditioner.shape}")
        if operator and not prec_op and preconditioner not in ("none", "auto"):
            raise ValueError("a LinearOperator M needs preconditioner='none' or a preconditioner operator, "
                             f"got {preconditioner!r}")
        self.plan = plan
        self.rtol, self.atol = float(rtol), float(atol)
        self.callback = callback
        self.maxiter = 1000 if maxiter is None else int(maxiter)
        if self.maxiter < 0:
            raise ValueError("maxiter must be >= 0")
        self.restart = max(1, min(int(restart), n))
        self._op = M if operator else None
        self._pool_owner = plan if plan is not None else self
        if prec_op:
            self.preconditioner = preconditioner
        elif operator:
            self.preconditioner = "none"
        else:
            self.preconditioner = plan.preconditioner if preconditioner == "auto" else preconditioner
        self.data = None if operator else np.ascontiguousarray(M.data, dtype=np.float64)
        self._tdata = None
        self._uses_hierarchy = isinstance(self.preconditioner, str) and self.preconditioner in ("amg", "sgs")
        # levels of the hierarchy of M and of M^T (1 after a stalled multigrid solve on that side)
        self._hier_levels = [AMG_MAX_LEVELS if self.preconditioner == "amg" else 1] * 2
        self._hier_t = None
        self._hier = self._new_hierarchy(False, self._hier_levels[0]) if self._uses_hierarchy else None
        self.iterations = None
        self.iterations_transposed = None
        self.iterations_each = None
        self.residual = None
        self.residual_transposed = None
        self.residual_each = None
        self.fallbacks = []

    def _operator(self, trans):
        p = self.plan
        if not trans:
            return p.indptr, p.indices, self.data
        tip, tix, perm = p.transpose_pattern
        if self._tdata is None:
            self._tdata = np.empty(p.nnz)
            _k.gather(self.data, perm, self._tdata)
        return tip, tix, self._tdata

    def _hierarchy(self, trans):
        """Preconditioner of ``M`` or of ``M^T``.

        ``M^T`` gets its own aggregation, along the strong couplings of ``M^T``
        (the columns of ``M``): 25 instead of 29 iterations on the benchmark's
        adjoint solves, for one more set-up (built on the first transposed solve).
        """
        if not self._uses_hierarchy:
            return None
        if trans:
            if self._hier_t is None:
                self._hier_t = self._new_hierarchy(True, self._hier_levels[1])
            return self._hier_t
        if self._hier is None:  # released (see release_preconditioner)
            self._hier = self._new_hierarchy(False, self._hier_levels[0])
        return self._hier

    def release_preconditioner(self, transposed: bool = False) -> None:
        """Free the preconditioner of ``M`` (or of ``M^T``) when no more solves on that side are
        coming; a later solve builds it again, the same.

        At 10^6 grid states a multigrid hierarchy and its workspace take about 220 MB; a
        meta-gradient frees M's after its last forward solve, before the transposed ones.
        """
        if transposed:
            self._hier_t = None
        else:
            self._hier = None

    def _new_hierarchy(self, trans, max_levels):
        """A hierarchy of ``M`` or ``M^T`` (``max_levels=1``: symmetric Gauss-Seidel)."""
        diag = self.plan.transpose_diag if trans else self.plan.diag
        return _Hierarchy(*self._operator(trans), diag, max_levels=max_levels)

    def solve(self, b: np.ndarray, x0=None) -> np.ndarray:
        """Solve ``M x = b``; ``b`` (and the optional warm start ``x0``) ``(n,)`` or ``(n, k)``.

        ``x0`` may also be a list of candidate starts of that shape: per column, the
        one with the smallest residual ``||b - M x0||`` is used (zero included, so a
        start worse than none is dropped); the later candidate wins a tie.

        Raises
        ------
        SolverError
            If the tolerance is not reached within ``maxiter`` iterations.
        """
        x, its, rel = self._solve(b, x0, False)
        self.iterations, self.residual = its, rel
        return x

    def solve_transposed(self, b: np.ndarray, x0=None) -> np.ndarray:
        """Solve ``M^T x = b``; ``b`` (and the optional warm start ``x0``, or a list of
        candidates as in :meth:`solve`) ``(n,)`` or ``(n, k)``.

        Raises
        ------
        SolverError
            If the tolerance is not reached within ``maxiter`` iterations.
        """
        x, its, rel = self._solve(b, x0, True)
        self.iterations_transposed, self.residual_transposed = its, rel
        return x

    def _solve(self, b, x0, trans):
        """Solve with the preconditioner of ``M`` or ``M^T``; the multigrid one, if it stalls, is
        replaced by symmetric Gauss-Seidel for this solver's later solves on that side.

        Aggregation multigrid is not robust for every non-symmetric M: on some strongly
        directed policies (a 100 x 100 gridworld with a sharp policy, mean max_a pi(a|s) ~ 0.9)
        GMRES with its cycle on ``M^T`` stays at a relative residual ~0.9 for 1000 iterations,
        where Gauss-Seidel, a convergent splitting of every M-matrix (M and M^T alike),
        converges in ~70.
        """
        try:
            watch = STALL_ITERATIONS if self._hierarchy_is_multigrid(trans) else 0
            return self._solve_with(b, x0, trans, watch)
        except _Stalled:
            self._sgs_instead_of_multigrid(trans)
            return self._solve_with(b, x0, trans, watch=0)

    def _hierarchy_is_multigrid(self, trans):
        return (isinstance(self.preconditioner, str) and self.preconditioner == "amg"
                and len(self._hierarchy(trans).levels) > 1)

    def _sgs_instead_of_multigrid(self, trans):
        self._hier_levels[trans] = 1
        sgs = self._new_hierarchy(trans, 1)
        if trans:
            self._hier_t = sgs
        else:
            self._hier = sgs
        self.fallbacks.append("M^T" if trans else "M")

    def _starts(self, x0, b):
        """The candidate starts ``x0`` (None, an array, or a list of arrays) as (n, k) blocks."""
        starts = [] if x0 is None else list(x0) if isinstance(x0, (list, tuple)) else [x0]
        X0 = []
        for start in starts:
            start = _check_rhs(start, self.n, "x0")
            if start.shape != b.shape:
                raise ValueError(f"x0 must have the shape of b {b.shape}, got {start.shape}")
            X0.append(start.reshape(self.n, 1) if b.ndim == 1 else start)
        return X0

    def _solve_with(self, b, x0, trans, watch):
        n = self.n
        b = _check_rhs(b, n)
        vec = b.ndim == 1
        B = b.reshape(n, 1) if vec else b
        X0 = self._starts(x0, b)
        parts, its, rel = [], 0, 0.0
        for sl in _column_blocks(B.shape[1]):
            Xb, it, r = self._gmres(np.ascontiguousarray(B[:, sl]), [x[:, sl] for x in X0], trans, vec, watch)
            parts.append(Xb)
            its, rel = max(its, it), max(rel, r)
        X = _join_columns(parts)
        return (X[:, 0] if vec else X), its, rel

    def solve_each(self, Ms: Sequence[sp.csr_matrix], b: np.ndarray, x0=None, *,
                   transposed: bool = False) -> np.ndarray:
        """Solve ``M_c x_c = b[:, c]`` (``M_c^T x_c = b[:, c]`` if ``transposed``) for matrices
        ``M_c`` on this solver's pattern, in lockstep, with this solver's preconditioner.

        Meant for matrices near ``M``, such as ``I - gamma P_{pi_c}`` for policies one
        PPO step from the policy of ``M`` (the adapted tasks of a meta-gradient): no
        preconditioner is built for them, and every iteration reads the pattern once
        for all of them.  The preconditioner of ``M`` serves ``M_c`` about as well as
        its own while ``||M^{-1} (M_c - M)||`` is small.  Should it stall (see
        ``STALL_FACTOR``), each column is solved again by a solver of its own matrix.

        Parameters
        ----------
        Ms : sequence of scipy.sparse.csr_matrix
            The ``k`` matrices, each with the pattern of ``M`` (this solver's plan). Each
            is read once per block (``Ms[c]`` may build it on access, to save memory).
        b : ndarray, shape (n, k)
            One right-hand side per matrix.
        x0 : ndarray or list of ndarray, optional
            Candidate starts of shape ``(n, k)``, as in :meth:`solve`.
        transposed : bool
            Solve with the transposed matrices.

        Returns
        -------
        ndarray, shape (n, k)

        Raises
        ------
        SolverError
            If the tolerance is not reached within ``maxiter`` iterations.
        """
        if self._op is not None:
            raise TypeError("solve_each needs a solver of a CSR matrix, not of a LinearOperator")
        b = _check_rhs(b, self.n)
        if b.ndim != 2 or b.shape[1] != len(Ms):
            raise ValueError(f"b must have shape ({self.n}, {len(Ms)}) (one column per matrix), got {b.shape}")
        if len(Ms) > KRYLOV_BLOCK:  # (one block: checked as its values are read, before its solve)
            for c in range(len(Ms)):
                self._check_each(c, Ms[c])
        X0 = self._starts(x0, b)
        self._hierarchy(transposed)  # built (if not yet) before the values and the workspace: a lower peak
        parts, its, rel = [], 0, 0.0
        # the preconditioner was built for M, not for the M_c: watched if it is one of ours
        watch = EACH_STALL_ITERATIONS if self._uses_hierarchy else 0
        for sl in _column_blocks(b.shape[1]):
            ops = self._operator_each(Ms, sl, transposed)
            starts = [x[:, sl] for x in X0]
            try:
                Xb, it, r = self._gmres(np.ascontiguousarray(b[:, sl]), starts, transposed, False, watch, ops=ops)
            except _Stalled:
                ops = None  # the shared run's values, freed before the solvers of their own
                Xb, it, r = np.empty((self.n, sl.stop - sl.start)), 0, 0.0
                for j in range(sl.start, sl.stop):
                    own = KrylovSolver(Ms[j], self.plan, rtol=self.rtol, atol=self.atol, maxiter=self.maxiter,
                                       restart=self.restart, preconditioner=self.preconditioner)
                    Xb[:, j - sl.start], it_j, r_j = own._solve(b[:, j], [x[:, j] for x in X0], transposed)
                    it, r = max(it, it_j), max(r, r_j)
            parts.append(Xb)
            its, rel = max(its, it), max(rel, r)
        self.iterations_each, self.residual_each = its, rel
        return _join_columns(parts)

    def _check_each(self, c, Mc):
        if not sp.isspmatrix_csr(Mc) or not self.plan.matches(Mc):
            raise ValueError(f"Ms[{c}] must be a CSR matrix with the pattern of this solver's M")

    def _operator_each(self, Ms, sl, trans):
        """``(indptr, indices, values)`` of the matrices ``Ms[sl]`` (or their transposes), values
        ``(nnz, k)``; each matrix is read once (``Ms`` may build them on access)."""
        p = self.plan
        values = np.empty((p.nnz, sl.stop - sl.start))
        for j, c in enumerate(range(sl.start, sl.stop)):
            Mc = Ms[c]
            self._check_each(c, Mc)
            if trans:
                _k.gather_column(Mc.data, p.transpose_pattern[2], values, j)
            else:
                _k.set_column(Mc.data, values, j)
        ip, ix = (p.transpose_pattern[:2] if trans else (p.indptr, p.indices))
        return ip, ix, values

    def _prec(self, v, out, trans):
        P = self.preconditioner
        if not isinstance(P, str):
            out[:] = (P.rmatmat if trans else P.matmat)(v).reshape(out.shape)
            return
        hier = self._hierarchy(trans)
        if hier is None:
            out[:] = v
        else:
            hier.apply(v, out)

    @staticmethod
    def _ops_kernels(ops, n, k):
        """``(matvec(X, Y), residual(X, B, R))``: ``Y = op X`` and ``R = B - op X`` for the
        operator, or for the sparse matrix with its (n, k) Numba kernels resolved once per
        solve (at S ~ 1000 an iteration's arithmetic is ~0.1 ms: dispatch per call showed)."""
        if callable(ops):
            def matvec(X, Y):
                Y[:] = ops(X).reshape(Y.shape)

            def residual(X, B, R):
                np.subtract(B, ops(X).reshape(B.shape), out=R)
            return matvec, residual
        size = max(ops[2].size, n * k, n + 1)  # the largest array argument
        if ops[2].ndim == 2:  # one matrix per column (solve_each)
            matvec, residual = _k.csr_matvec_each, _k.csr_residual_each
        else:
            matvec, residual = _k.csr_matvec, _k.csr_residual
        return (functools.partial(matvec.at(k).for_size(size), *ops),
                functools.partial(residual.at(k).for_size(size), *ops))

    def _gmres(self, B, X0, trans, vec, watch, ops=None):
        """Lockstep GMRES(m) for the columns of ``B`` (``(n, k)``, ``k <= KRYLOV_BLOCK``), on
        ``M`` (or ``M^T``) or on ``ops``, the operator of :meth:`_operator_each`; ``watch``:
        raise ``_Stalled`` if a residual falls by less than ``STALL_FACTOR`` in that many
        iterations (0: never)."""
        n, k = B.shape
        m = krylov_restart(self.restart, n, k)
        if ops is None:
            ops = self._operator(trans) if self._op is None else (self._op.rmatmat if trans else self._op.matmat)
        hier = self._hierarchy(trans)  # built (if not yet) before the workspace is taken: a lower memory peak
        # the preconditioned vectors in the cycle's precision: they are its output, so float32
        # storage is exact and the sparse kernels read them as they are (the same bits as float64)
        z_dtype = hier.dtype if hier is not None and not callable(ops) else np.float64
        ws = _acquire_workspace(self._pool_owner, n, k, m, z_dtype)
        try:
            return self._gmres_ws(B, X0, trans, ops, ws, m, vec, watch)
        finally:
            _release_workspace(self._pool_owner, ws, m)

    def _gmres_ws(self, B, X0, trans, ops, ws, m, vec, watch):
        n, k = B.shape
        V, Zs, R, part, h, h2, H, cs, sn, g, Y, nrm = (
            ws.V, ws.Zs, ws.R, ws.part, ws.h, ws.h2, ws.H, ws.cs, ws.sn, ws.g, ws.Y, ws.nrm)
        # kernels resolved once per solve (serial or parallel, K columns); the
        # orthogonalisation kernels' work is ~ j n k: pick serial/parallel on that
        dots = _k.col_dots.at(k).for_size(8 * n * k)
        lincomb = _k.col_lincomb_sub.at(k).for_size(8 * n * k)
        scale = _k.col_scale.for_size(n * k)
        ops_matvec, ops_residual = self._ops_kernels(ops, n, k)
        redo = np.empty(k, dtype=np.bool_)
        alpha = np.empty(k)
        dots(V, 0, B, part, h)
        bnorm = np.sqrt(h[0])
        if not np.all(np.isfinite(bnorm)):
            raise ValueError("b contains non-finite values")
        zero = bnorm == 0.0
        # the start: per column the candidate with the smallest residual, zero included
        X = np.zeros((n, k))
        R[:] = B
        beta = bnorm.copy()
        Rc = np.empty((n, k)) if X0 else None
        for start in X0:
            Xc = np.array(start, dtype=np.float64, order="C")
            Xc[:, zero] = 0.0
            ops_residual(Xc, B, Rc)
            dots(V, 0, Rc, part, h)
            bc = np.sqrt(h[0])
            better = bc <= beta  # (NaN: not better)
            if better.all():
                X, Xc = Xc, X
                R, Rc = Rc, R
            elif better.any():
                X[:, better] = Xc[:, better]
                R[:, better] = Rc[:, better]
            beta = np.where(better, bc, beta)
        Xc = Rc = None  # the candidates not taken: freed before the iterations (2 x 32 MB at 10^6 x 4)
        target = np.maximum(self.rtol * bnorm, self.atol)
        total = np.zeros(k, dtype=np.int64)
        live = np.zeros(k, dtype=np.bool_)
        ks = np.zeros(k, dtype=np.int64)
        eta2 = DGKS_ETA ** 2
        checkpoint = (0, beta)  # (iterations, residuals) when the stall test last passed
        while True:
            nactive = _k.gmres_restart(beta, target, zero, total, self.maxiter, g, live, ks, alpha)
            if nactive == 0:
                break
            if nactive < 0:
                s = -1 - nactive
                self._fail(int(total[s]), float(beta[s] / bnorm[s]), trans, m)
            # (a NaN/inf residual was rejected above, so every live column is finite)
            scale(R, alpha, V[0])
            for j in range(m):
                W = V[j + 1]
                self._prec(V[j], Zs[j], trans)
                ops_matvec(Zs[j], W)
                # classical Gram-Schmidt, reorthogonalised (per column) only when
                # the norm drops by more than DGKS_ETA (Daniel-Gragg-Kaufman-Stewart)
                dots(V, j + 1, W, part, h)
                lincomb(V, j + 1, h, W, part, nrm)
                if _k.dgks_redo(h, j, nrm, live, eta2, redo):
                    dots(V, j + 1, W, part, h2)
                    h2[:, ~redo] = 0.0
                    lincomb(V, j + 1, h2, W, part, nrm)
                    h[: j + 1] += h2[: j + 1]
                nlive = _k.arnoldi_step(H, cs, sn, g, j, h, nrm, live, total, ks, beta, target,
                                        self.maxiter, alpha)
                if self.callback is not None:
                    est = np.abs(g[:, j + 1]) / np.where(zero, 1.0, bnorm)
                    self.callback(float(est[0]) if vec else est.copy())
                # stopped columns get a zero basis vector: they ride along at no risk
                scale(W, alpha, W)
                if nlive == 0:
                    break
            # x += B V y = Z y (the preconditioned vectors are kept: no extra cycle)
            _k.hessenberg_solve(H, g, ks, Y)
            np.negative(Y, out=Y)
            lincomb(Zs, int(ks.max()), Y, X, part, nrm)
            ops_residual(X, B, R)
            dots(V, 0, R, part, h)
            beta = np.sqrt(h[0])
            if watch:
                its = int(total.max())
                if its - checkpoint[0] >= watch:
                    if np.any((beta > STALL_FACTOR * checkpoint[1]) & (beta > target)):
                        raise _Stalled
                    checkpoint = (its, beta)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(zero, 0.0, beta / np.where(zero, 1.0, bnorm))
        return X, int(total.max()), float(rel.max())

    def _fail(self, its, rel, trans, m):
        what = "M^T x = b" if trans else "M x = b"
        prec = self.preconditioner if isinstance(self.preconditioner, str) else "operator"
        raise SolverError(
            f"krylov solver (GMRES({m}), preconditioner={prec!r}) "
            f"did not converge on {what}: {its} iterations done (maxiter={self.maxiter}), "
            f"relative residual {rel:.3e} > rtol {self.rtol:.1e} (atol {self.atol:.1e}). "
            f"Raise maxiter, loosen rtol, or use solver='splu' (or 'dense' for small problems)."
        )


def _column_blocks(k):
    """The column slices of a ``k``-column solve, ``KRYLOV_BLOCK`` columns each (the last fewer)."""
    return [slice(c, min(k, c + KRYLOV_BLOCK)) for c in range(0, k, KRYLOV_BLOCK)]


def _join_columns(parts):
    """The column blocks of a solve as one ``(n, k)`` array (the block itself if there is one)."""
    return parts[0] if len(parts) == 1 else np.hstack(parts)


def krylov_restart(restart: int, n: int, k: int) -> int:
    """GMRES restart length used for an ``(n, k)`` block: ``restart``, lowered (to >= 2)
    so that the basis (``2 m + 1`` blocks, flexible storage) fits ``KRYLOV_BASIS_BYTES``.

    The AMG-preconditioned iteration converges almost linearly, so a short
    restart costs few iterations (restart 3 instead of 12: 23/29 instead of
    22/28 iterations on the benchmark matrices, see the solver study).
    """
    fit = (KRYLOV_BASIS_BYTES // (np.dtype(KRYLOV_BASIS_DTYPE).itemsize * n * k) - 1) // 2
    return max(1, min(restart, max(2, fit)))


Factorization = Union[DenseFactorization, SpluFactorization, PardisoFactorization, KrylovSolver]


def factorize(M, method: str = "auto", *, rtol: Optional[float] = None, atol: float = 0.0,
              tol: Optional[float] = None, maxiter: Optional[int] = None,
              plan: Optional[SolverPlan] = None, restart: int = KRYLOV_RESTART,
              preconditioner="auto", callback=None) -> Factorization:
    """Factorise ``M = I - gamma P_pi`` (or set up the iterative solver) for solves with ``M`` and ``M^T``.

    Parameters
    ----------
    M : scipy.sparse.csr_matrix or scipy.sparse.linalg.LinearOperator
        Square float64 CSR matrix, sorted indices, no duplicates, diagonal
        stored in every row; an operator only with ``method="krylov"``.
    method : {"auto", "dense", "splu", "pardiso", "krylov"}
        ``"auto"`` uses ``plan.method`` (see :func:`choose_method`).
    rtol, atol : float
        Tolerances of the ``"krylov"`` method: stop when
        ``||b - M x|| <= max(rtol ||b||, atol)`` (SciPy's convention);
        ``rtol`` defaults to 1e-10.
    tol : float or None
        The former name of ``rtol`` (give one of them).
    maxiter : int or None
        Maximum GMRES iterations per solve (``"krylov"``; default 1000).
    plan : SolverPlan or None
        Pattern analysis from :func:`analyse`; computed on the fly if omitted
        (pass it to amortise the analysis over many matrices with one pattern).
    restart : int
        GMRES restart length (``"krylov"``).
    preconditioner : {"auto", "amg", "sgs", "none"} or LinearOperator
        ``"krylov"`` preconditioner; ``"auto"`` is ``plan.preconditioner``
        ("amg" for grid-like chains, "sgs" for expander-like ones).
    callback : callable or None
        ``"krylov"``: called after every iteration with the relative residual
        estimate (see :class:`KrylovSolver`).

    Returns
    -------
    DenseFactorization or SpluFactorization or PardisoFactorization or KrylovSolver
        Object with ``.solve(b, x0=None)``, ``.solve_transposed(b, x0=None)``
        and ``.method``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if tol is not None and rtol is not None:
        raise ValueError("give rtol or its former name tol, not both")
    rtol = 1e-10 if rtol is None and tol is None else float(tol if rtol is None else rtol)
    if isinstance(M, scipy.sparse.linalg.LinearOperator) and not sp.issparse(M):
        if method != "krylov":
            raise ValueError(f"a LinearOperator M needs method='krylov', got {method!r}")
        return KrylovSolver(M, None, rtol=rtol, atol=atol, maxiter=maxiter, restart=restart,
                            preconditioner=preconditioner, callback=callback)
    if not sp.issparse(M):
        raise TypeError("M must be a scipy.sparse CSR matrix or a scipy.sparse.linalg.LinearOperator")
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
    if method == "pardiso":
        return PardisoFactorization(M, plan)
    return KrylovSolver(M, plan, rtol=rtol, atol=atol, maxiter=maxiter, restart=restart,
                        preconditioner=preconditioner, callback=callback)
