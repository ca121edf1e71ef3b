"""Thin ctypes binding of Intel MKL PARDISO, reached through the optional ``pypardiso``.

Only what :class:`fastmeta.linalg.PardisoFactorization` needs: a handle whose
symbolic analysis (nested-dissection ordering of ``M + M^T``, done once per
sparsity pattern) is reused by every numerical factorisation with that pattern,
and forward/transposed solves with one or several right-hand sides.
``pypardiso`` (extra ``fastmeta[pardiso]``) supplies the MKL runtime and finds
its shared library; it is imported only when this method is used.
"""
from __future__ import annotations

import ctypes
import functools
import threading

import numpy as np

_MTYPE_REAL_UNSYMMETRIC = 11
_PHASE_ANALYSE, _PHASE_FACTOR, _PHASE_SOLVE, _PHASE_RELEASE = 11, 22, 33, -1
#: PARDISO settings of every new handle (index: value; the others are 0).
IPARM = {
    0: 1,    # use the values below
    1: 2,    # METIS nested dissection
    9: 13,   # pivot perturbation 1e-13 (never hit: M is an M-matrix)
    # Two-level parallel factorisation: with the classic one (0) repeated factorisations
    # and solves of one matrix differed in the last bits from run to run, and its
    # multi-column solves took 10x one column; two-level gives the same bits every
    # time (for a fixed number of MKL threads) and a 10^5-state meta-gradient in
    # 0.70-0.76 of the time (benchmarks/solver_pardiso_settings.py, solver study round 5).
    23: 1,
    34: 1,   # zero-based indexing
}


def available() -> bool:
    """Whether ``pypardiso`` (and so MKL PARDISO) can be imported."""
    try:
        import pypardiso  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _library():
    try:
        import pypardiso
    except ImportError as exc:
        raise ImportError("method='pardiso' needs the optional package pypardiso: "
                          "pip install 'fastmeta[pardiso]'") from exc
    # pypardiso locates mkl_rt on every platform and declares the argument types.
    return pypardiso.PyPardisoSolver()._mkl_pardiso


class PardisoHandle:
    """One PARDISO instance analysed for a fixed CSR pattern (``int32`` indices).

    ``M`` is diagonally dominant, so scaling and weighted matching are off
    (``iparm[10] = iparm[12] = 0``): the analysis then depends on the pattern
    only and is reused across values. Settings: :data:`IPARM`.  Zero-based indexing (``iparm[34] = 1``)
    avoids copying the pattern at every call.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n: int):
        self._fn = _library()
        self.n = int(n)
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int32)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.pt = np.zeros(64, dtype=np.int64)
        self.iparm = np.zeros(64, dtype=np.int32)
        for key, value in IPARM.items():
            self.iparm[key] = value
        self._data = None
        self._lock = threading.Lock()
        self._call(_PHASE_ANALYSE, np.zeros(self.indices.shape[0]), None)

    def factor(self, data: np.ndarray) -> None:
        """Numerical factorisation of the matrix with this pattern and values ``data``."""
        self._data = np.ascontiguousarray(data, dtype=np.float64)
        self._call(_PHASE_FACTOR, self._data, None)

    def solve(self, b: np.ndarray, transposed: bool) -> np.ndarray:
        """``M^{-1} b`` or ``M^{-T} b`` for ``b`` of shape ``(n,)`` or ``(n, k)``."""
        bf = np.asfortranarray(b, dtype=np.float64)
        with self._lock:  # iparm[11] selects the orientation: one solve at a time per handle
            self.iparm[11] = 2 if transposed else 0
            x = self._call(_PHASE_SOLVE, self._data, bf)
        return np.ascontiguousarray(x)

    def release(self) -> None:
        """Free PARDISO's internal memory (the handle is unusable afterwards)."""
        if self.pt.any():
            self._call(_PHASE_RELEASE, np.zeros(1), None)
            self.pt[:] = 0

    def _call(self, phase, data, b):
        err = ctypes.c_int32(0)
        i32 = ctypes.POINTER(ctypes.c_int32)
        f64 = ctypes.POINTER(ctypes.c_double)
        if b is None:
            b = np.zeros((self.n, 1), order="F")
        x = np.zeros_like(b, order="F")
        nrhs = 1 if b.ndim == 1 else b.shape[1]
        perm = np.zeros(1, dtype=np.int32)
        self._fn(self.pt.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
                 ctypes.byref(ctypes.c_int32(1)), ctypes.byref(ctypes.c_int32(1)),
                 ctypes.byref(ctypes.c_int32(_MTYPE_REAL_UNSYMMETRIC)), ctypes.byref(ctypes.c_int32(phase)),
                 ctypes.byref(ctypes.c_int32(self.n)), data.ctypes.data_as(f64),
                 self.indptr.ctypes.data_as(i32), self.indices.ctypes.data_as(i32),
                 perm.ctypes.data_as(i32), ctypes.byref(ctypes.c_int32(nrhs)),
                 self.iparm.ctypes.data_as(i32), ctypes.byref(ctypes.c_int32(0)),
                 b.ctypes.data_as(f64), x.ctypes.data_as(f64), ctypes.byref(err))
        if err.value != 0:
            raise RuntimeError(f"PARDISO phase {phase} failed with error {err.value}")
        return x
