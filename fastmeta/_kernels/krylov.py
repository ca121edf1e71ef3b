"""Numba kernels for the iterative solver in :mod:`fastmeta.linalg`.

Private module: no validation, no Python objects; every kernel fills arrays
allocated by the caller.  Reductions over long vectors are computed per fixed
chunk (``N_CHUNKS`` chunks, chunk boundaries independent of the thread count)
and the partial sums are combined serially in chunk order, so every result is
bit-identical for any number of Numba threads.  Block vectors are ``(n, k)``
C arrays with ``k <= 4`` (the caller splits wider blocks), so a matrix is read
once per sweep for all ``k`` right-hand sides.  Gauss-Seidel sweeps run on fixed
row blocks (a function of ``n`` only); the aggregation set-up is serial except
the triple product and row sorts, which run rows in parallel, each row in a
fixed order.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._config import N_CHUNKS, jit, sized, vectorized


# --------------------------------------------------------------------------
# batched vector kernels: a block of k <= 4 vectors is an (n, k) C array, so
# every matrix entry is read once for the k vectors.  Each kernel is written
# once, for a column count K that is a compile-time constant (a closure
# variable of the factory): the per-column lines read ``if K > s`` and compile
# away, so the K accumulators live in registers (a loop over a runtime k keeps
# them in memory: 1.5x slower, see the solver study).  Each K is compiled on
# first use, serial and parallel (see ``sized``), and cached on disk (Numba's
# cache keys a closure by the contents of its cells).
# --------------------------------------------------------------------------
class ColumnKernel:
    """A kernel family over the column count K = 1..4 of its block arguments.

    ``factory(K)`` returns the kernel's Python function for K columns; calling
    the family (or its ``serial``/``parallel`` side) reads K from the shape of
    argument ``block`` and runs that variant.
    """

    def __init__(self, factory, block: int):
        self._factory, self._block = factory, block
        self._variants = {}
        self.__doc__, self.__name__ = factory.__doc__, factory.__name__
        self.serial = _Side(self, "serial")
        self.parallel = _Side(self, "parallel")

    def at(self, k: int):
        """The serial/parallel pair (``sized`` kernel) for ``k`` columns."""
        kernel = self._variants.get(k)
        if kernel is None:
            if not 1 <= k <= 4:
                raise ValueError(f"{self.__name__}: blocks have 1 to 4 columns, got {k}")
            kernel = self._variants[k] = vectorized(sized(self._factory(k)))
        return kernel

    def __call__(self, *args):
        return self.at(args[self._block].shape[1])(*args)


class _Side:
    """The serial (or parallel) kernels of a :class:`ColumnKernel`, K picked per call."""

    def __init__(self, family: ColumnKernel, side: str):
        self._family, self._side = family, side
        self._by_k = {}  # K -> dispatcher: one dict lookup per call (solver loops call these often)

    def __call__(self, *args):
        family = self._family
        k = args[family._block].shape[1]
        kernel = self._by_k.get(k)
        if kernel is None:
            kernel = self._by_k[k] = getattr(family.at(k), self._side)
        return kernel(*args)


def column_kernel(block: int):
    """Decorator of a kernel factory ``f(K)``: a :class:`ColumnKernel` reading K from argument ``block``."""
    return lambda factory: ColumnKernel(factory, block)


def _csr_products(K, EACH, ADD=False):
    """``csr_matvec`` and ``csr_residual`` for K columns: one matrix for all (``data`` of shape
    ``(nnz,)``) or, with ``EACH``, one per column (``data[:, c]``, ``(nnz, K)``: the pattern is read
    once for the K matrices); with ``ADD`` the product is added to ``Y`` (``csr_matvec_add``).
    ``EACH`` and ``ADD`` are compile-time constants like K: their other branches compile away,
    so each kernel is what it was as a copy of its own."""
    def csr_matvec(indptr, indices, data, X, Y):  # pragma: no cover - numba
        for i in prange(indptr.shape[0] - 1):
            s0 = s1 = s2 = s3 = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                a = data[p, 0] if EACH else data[p]
                s0 += a * X[j, 0]
                if K > 1:
                    s1 += (data[p, 1] if EACH else a) * X[j, 1]
                if K > 2:
                    s2 += (data[p, 2] if EACH else a) * X[j, 2]
                if K > 3:
                    s3 += (data[p, 3] if EACH else a) * X[j, 3]
            Y[i, 0] = (Y[i, 0] + s0) if ADD else s0
            if K > 1:
                Y[i, 1] = (Y[i, 1] + s1) if ADD else s1
            if K > 2:
                Y[i, 2] = (Y[i, 2] + s2) if ADD else s2
            if K > 3:
                Y[i, 3] = (Y[i, 3] + s3) if ADD else s3

    def csr_residual(indptr, indices, data, X, B, R):  # pragma: no cover - numba
        for i in prange(indptr.shape[0] - 1):
            s0 = B[i, 0]
            s1 = B[i, 1] if K > 1 else 0.0
            s2 = B[i, 2] if K > 2 else 0.0
            s3 = B[i, 3] if K > 3 else 0.0
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                a = data[p, 0] if EACH else data[p]
                s0 -= a * X[j, 0]
                if K > 1:
                    s1 -= (data[p, 1] if EACH else a) * X[j, 1]
                if K > 2:
                    s2 -= (data[p, 2] if EACH else a) * X[j, 2]
                if K > 3:
                    s3 -= (data[p, 3] if EACH else a) * X[j, 3]
            R[i, 0] = s0
            if K > 1:
                R[i, 1] = s1
            if K > 2:
                R[i, 2] = s2
            if K > 3:
                R[i, 3] = s3
    return csr_matvec, csr_residual


@column_kernel(block=3)
def csr_matvec(K):
    """``Y = A @ X`` for a CSR matrix and an (n, K) block (parallel over rows)."""
    return _csr_products(K, False)[0]


@column_kernel(block=3)
def csr_residual(K):
    """``R = B - A @ X`` for an (n, K) block (parallel over rows)."""
    return _csr_products(K, False)[1]


@column_kernel(block=3)
def csr_matvec_add(K):
    """``Y += A @ X`` for a CSR matrix and an (n, K) block (parallel over rows): the smoothed
    prolongation ``x += P e`` (``P`` stored by fine rows, so every row is written once)."""
    return _csr_products(K, False, True)[0]


@column_kernel(block=3)
def csr_matvec_each(K):
    """``Y[:, c] = A_c @ X[:, c]`` for K matrices on one CSR pattern, values ``data[:, c]``
    (``(nnz, K)``: the pattern is read once for the K matrices; parallel over rows)."""
    return _csr_products(K, True)[0]


@column_kernel(block=3)
def csr_residual_each(K):
    """``R[:, c] = B[:, c] - A_c @ X[:, c]`` for K matrices on one pattern (see ``csr_matvec_each``)."""
    return _csr_products(K, True)[1]


@column_kernel(block=4)
def gs_sweep(K):
    """One in-place block Gauss-Seidel sweep for ``A X = B``, X an (n, K) block.

    The rows are split into ``nblk`` fixed contiguous blocks (chosen from ``n``
    only); inside a block the sweep is Gauss-Seidel in row order (ascending if
    ``forward``), couplings to other blocks use ``Xold`` (a copy of ``X`` made
    before the sweep).  The blocks are independent, so the result does not
    depend on how they are scheduled over threads.  ``nblk == 1`` is plain
    Gauss-Seidel (``Xold`` unused).  ``invd = 1/diag(A)``; ``interior[i]`` says
    that row ``i`` couples only to its own block (no test per entry), see
    :func:`block_halo`.
    """
    def gs_sweep(indptr, indices, data, invd, B, X, Xold, nblk, interior, forward):  # pragma: no cover - numba
        n = indptr.shape[0] - 1
        bs = (n + nblk - 1) // nblk
        for q in prange(nblk):
            blo = q * bs
            bhi = min(n, blo + bs)
            for t in range(max(0, bhi - blo)):
                i = blo + t if forward else bhi - 1 - t
                s0 = B[i, 0]
                s1 = B[i, 1] if K > 1 else 0.0
                s2 = B[i, 2] if K > 2 else 0.0
                s3 = B[i, 3] if K > 3 else 0.0
                inner = nblk == 1 or interior[i]
                for p in range(indptr[i], indptr[i + 1]):
                    j = indices[p]
                    a = data[p]
                    if inner or (j >= blo and j < bhi):
                        s0 -= a * X[j, 0]
                        if K > 1:
                            s1 -= a * X[j, 1]
                        if K > 2:
                            s2 -= a * X[j, 2]
                        if K > 3:
                            s3 -= a * X[j, 3]
                    else:
                        s0 -= a * Xold[j, 0]
                        if K > 1:
                            s1 -= a * Xold[j, 1]
                        if K > 2:
                            s2 -= a * Xold[j, 2]
                        if K > 3:
                            s3 -= a * Xold[j, 3]
                d = invd[i]
                X[i, 0] += s0 * d
                if K > 1:
                    X[i, 1] += s1 * d
                if K > 2:
                    X[i, 2] += s2 * d
                if K > 3:
                    X[i, 3] += s3 * d
    return gs_sweep


@column_kernel(block=5)
def gs_sweep_zero(K):
    """:func:`gs_sweep` (forward) from ``X = 0``: ``X`` need not be initialised.

    Only the strictly lower part inside a row's block contributes (everything
    else multiplies zeros), so this is a forward substitution per block.  The
    row's column indices must be sorted, ``diag[i]`` the position of its
    diagonal entry: the strictly lower part is ``indptr[i]:diag[i]``, so the
    upper part is not read and an interior row tests no entry (a test per
    entry mispredicts on unsorted coarse rows: 2x slower, see the study).
    """
    def gs_sweep_zero(indptr, indices, data, diag, invd, B, X, nblk, interior):  # pragma: no cover - numba
        n = indptr.shape[0] - 1
        bs = (n + nblk - 1) // nblk
        for q in prange(nblk):
            blo = q * bs
            bhi = min(n, blo + bs)
            for i in range(blo, bhi):
                s0 = B[i, 0]
                s1 = B[i, 1] if K > 1 else 0.0
                s2 = B[i, 2] if K > 2 else 0.0
                s3 = B[i, 3] if K > 3 else 0.0
                inner = nblk == 1 or interior[i]
                for p in range(indptr[i], diag[i]):
                    j = indices[p]
                    if inner or j >= blo:
                        a = data[p]
                        s0 -= a * X[j, 0]
                        if K > 1:
                            s1 -= a * X[j, 1]
                        if K > 2:
                            s2 -= a * X[j, 2]
                        if K > 3:
                            s3 -= a * X[j, 3]
                d = invd[i]
                X[i, 0] = s0 * d
                if K > 1:
                    X[i, 1] = s1 * d
                if K > 2:
                    X[i, 2] = s2 * d
                if K > 3:
                    X[i, 3] = s3 * d
    return gs_sweep_zero


@jit
def rows_sorted(indptr, indices):  # pragma: no cover - numba
    """Whether the column indices of every CSR row are strictly increasing."""
    for i in range(indptr.shape[0] - 1):
        for p in range(indptr[i] + 1, indptr[i + 1]):
            if indices[p] <= indices[p - 1]:
                return False
    return True


@sized
def sort_rows(indptr, indices, data, diag):  # pragma: no cover - numba
    """Sort every CSR row by column (insertion sort: rows are short) and store the
    position of each row's diagonal entry in ``diag`` (rows in parallel: independent)."""
    for i in prange(indptr.shape[0] - 1):
        lo, hi = indptr[i], indptr[i + 1]
        for p in range(lo + 1, hi):
            j, a = indices[p], data[p]
            q = p - 1
            while q >= lo and indices[q] > j:
                indices[q + 1] = indices[q]
                data[q + 1] = data[q]
                q -= 1
            indices[q + 1] = j
            data[q + 1] = a
        for p in range(lo, hi):
            if indices[p] == i:
                diag[i] = p


@jit
def block_halo(indptr, indices, nblk, interior, mark):  # pragma: no cover - numba
    """Block structure of :func:`gs_sweep`: ``interior[i]`` (row ``i`` couples
    only inside its block) and ``mark[j]`` (row ``j`` is read by another block).
    Returns the number of marked rows."""
    n = indptr.shape[0] - 1
    bs = (n + nblk - 1) // nblk
    for i in range(n):
        mark[i] = 0
    for i in range(n):
        blo = (i // bs) * bs
        bhi = min(n, blo + bs)
        inside = True
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            if j < blo or j >= bhi:
                inside = False
                mark[j] = 1
        interior[i] = inside
    cnt = 0
    for i in range(n):
        cnt += mark[i]
    return cnt


@sized
def copy_rows(rows, X, Y):  # pragma: no cover - numba
    """``Y[rows] = X[rows]`` for (n, k) blocks."""
    k = X.shape[1]
    for t in prange(rows.shape[0]):
        i = rows[t]
        for s in range(k):
            Y[i, s] = X[i, s]


@column_kernel(block=2)
def restrict_sum(K):
    """``Rc[c] = sum_{i in aggregate c} R[i]`` (piecewise-constant restriction).

    The residual is computed before, in row order (:func:`csr_residual`): computed
    here, aggregate by aggregate through ``members``, it took 1.7x as long at 10^6
    states (rows read out of order), for the same bits.
    """
    def restrict_sum(ptr, members, R, Rc):  # pragma: no cover - numba
        for c in prange(ptr.shape[0] - 1):
            r0 = r1 = r2 = r3 = 0.0
            for m in range(ptr[c], ptr[c + 1]):
                i = members[m]
                r0 += R[i, 0]
                if K > 1:
                    r1 += R[i, 1]
                if K > 2:
                    r2 += R[i, 2]
                if K > 3:
                    r3 += R[i, 3]
            Rc[c, 0] = r0
            if K > 1:
                Rc[c, 1] = r1
            if K > 2:
                Rc[c, 2] = r2
            if K > 3:
                Rc[c, 3] = r3
    return restrict_sum


@sized
def cast_copy(X, Y):  # pragma: no cover - numba
    """``Y[:] = X`` for (n, k) blocks of different precision (parallel over rows)."""
    k = X.shape[1]
    for i in prange(X.shape[0]):
        for s in range(k):
            Y[i, s] = X[i, s]


@sized
def prolong_add(agg, Xc, X):  # pragma: no cover - numba
    """``X[i] += Xc[agg[i]]`` (piecewise-constant prolongation)."""
    k = X.shape[1]
    for i in prange(X.shape[0]):
        a = agg[i]
        for s in range(k):
            X[i, s] += Xc[a, s]


@jit
def dense_lu(A):  # pragma: no cover - numba
    """In-place LU of a dense matrix without pivoting (coarsest AMG level).

    Safe for diagonally dominant matrices (by rows or by columns), which Galerkin
    products of ``M`` or ``M^T`` with piecewise-constant prolongation are; below a
    smoothed-aggregation level the caller checks the pivots. Serial, so no BLAS
    thread pool competes with Numba's.
    """
    n = A.shape[0]
    for p in range(n):
        inv = 1.0 / A[p, p]
        for i in range(p + 1, n):
            l = A[i, p] * inv
            A[i, p] = l
            if l != 0.0:
                for j in range(p + 1, n):
                    A[i, j] -= l * A[p, j]


@jit
def dense_lu_solve(LU, B, X):  # pragma: no cover - numba
    """``X = A^{-1} B`` from :func:`dense_lu`; (n, k) blocks."""
    n, k = B.shape
    for i in range(n):
        for s in range(k):
            X[i, s] = B[i, s]
    for i in range(n):  # L y = b (unit lower)
        for j in range(i):
            l = LU[i, j]
            for s in range(k):
                X[i, s] -= l * X[j, s]
    for i in range(n - 1, -1, -1):  # U x = y
        for j in range(i + 1, n):
            u = LU[i, j]
            for s in range(k):
                X[i, s] -= u * X[j, s]
        d = 1.0 / LU[i, i]
        for s in range(k):
            X[i, s] *= d


# --------------------------------------------------------------------------
# GMRES building blocks on a basis V of shape (m + 1, n, k): V[i, :, s] is the
# i-th basis vector of system s.  Reductions are chunked (N_CHUNKS fixed
# chunks), so results do not depend on the number of threads.
# --------------------------------------------------------------------------
@column_kernel(block=2)
def col_dots(K):
    """``out[i, s] = V[i, :, s] . W[:, s]`` for ``i < j1`` and ``out[j1, s] = |W[:, s]|^2``.

    ``part`` is (N_CHUNKS, >= j1 + 1, K) scratch; chunk partial sums are combined
    serially in chunk order.
    """
    def col_dots(V, j1, W, part, out):  # pragma: no cover - numba
        n = W.shape[0]
        csize = (n + N_CHUNKS - 1) // N_CHUNKS
        for c in prange(N_CHUNKS):
            lo = c * csize
            hi = min(n, lo + csize)
            for i in range(j1 + 1):
                a0 = a1 = a2 = a3 = 0.0
                if i < j1:
                    for t in range(lo, hi):
                        a0 += V[i, t, 0] * W[t, 0]
                        if K > 1:
                            a1 += V[i, t, 1] * W[t, 1]
                        if K > 2:
                            a2 += V[i, t, 2] * W[t, 2]
                        if K > 3:
                            a3 += V[i, t, 3] * W[t, 3]
                else:
                    for t in range(lo, hi):
                        a0 += W[t, 0] * W[t, 0]
                        if K > 1:
                            a1 += W[t, 1] * W[t, 1]
                        if K > 2:
                            a2 += W[t, 2] * W[t, 2]
                        if K > 3:
                            a3 += W[t, 3] * W[t, 3]
                part[c, i, 0] = a0
                if K > 1:
                    part[c, i, 1] = a1
                if K > 2:
                    part[c, i, 2] = a2
                if K > 3:
                    part[c, i, 3] = a3
        for i in range(j1 + 1):
            for s in range(K):
                acc = 0.0
                for c in range(N_CHUNKS):
                    acc += part[c, i, s]
                out[i, s] = acc
    return col_dots


@column_kernel(block=3)
def col_lincomb_sub(K):
    """``W[:, s] -= sum_{i<j1} H[i, s] V[i, :, s]``, then ``nrm[s] = |W[:, s]|^2`` (chunked).

    Each element of ``W`` is loaded and stored once.
    """
    def col_lincomb_sub(V, j1, H, W, part, nrm):  # pragma: no cover - numba
        n = W.shape[0]
        csize = (n + N_CHUNKS - 1) // N_CHUNKS
        for c in prange(N_CHUNKS):
            lo = c * csize
            hi = min(n, lo + csize)
            a0 = a1 = a2 = a3 = 0.0
            for t in range(lo, hi):
                w0 = W[t, 0]
                w1 = W[t, 1] if K > 1 else 0.0
                w2 = W[t, 2] if K > 2 else 0.0
                w3 = W[t, 3] if K > 3 else 0.0
                for i in range(j1):
                    w0 -= H[i, 0] * V[i, t, 0]
                    if K > 1:
                        w1 -= H[i, 1] * V[i, t, 1]
                    if K > 2:
                        w2 -= H[i, 2] * V[i, t, 2]
                    if K > 3:
                        w3 -= H[i, 3] * V[i, t, 3]
                W[t, 0] = w0
                a0 += w0 * w0
                if K > 1:
                    W[t, 1] = w1
                    a1 += w1 * w1
                if K > 2:
                    W[t, 2] = w2
                    a2 += w2 * w2
                if K > 3:
                    W[t, 3] = w3
                    a3 += w3 * w3
            part[c, 0, 0] = a0
            if K > 1:
                part[c, 0, 1] = a1
            if K > 2:
                part[c, 0, 2] = a2
            if K > 3:
                part[c, 0, 3] = a3
        for s in range(K):
            acc = 0.0
            for c in range(N_CHUNKS):
                acc += part[c, 0, s]
            nrm[s] = acc
    return col_lincomb_sub


@sized
def col_scale(X, alpha, Y):  # pragma: no cover - numba
    """``Y[:, s] = alpha[s] * X[:, s]``."""
    n, k = X.shape
    for t in prange(n):
        for s in range(k):
            Y[t, s] = alpha[s] * X[t, s]


@jit
def arnoldi_givens(H, cs, sn, g, j, hcol, live):  # pragma: no cover - numba
    """Store column ``j`` of each live system's Hessenberg matrix and reduce it.

    ``hcol[:j + 2, s]`` holds ``h_{0..j+1, j}`` of system ``s``; previous Givens
    rotations are applied, a new one annihilates ``h_{j+1, j}`` and is applied
    to the right-hand side ``g``.  ``H`` is (k, m + 1, m).
    """
    k = H.shape[0]
    for s in range(k):
        if not live[s]:
            continue
        for i in range(j + 2):
            H[s, i, j] = hcol[i, s]
        for i in range(j):
            a = H[s, i, j]
            b = H[s, i + 1, j]
            H[s, i, j] = cs[s, i] * a + sn[s, i] * b
            H[s, i + 1, j] = -sn[s, i] * a + cs[s, i] * b
        a = H[s, j, j]
        b = H[s, j + 1, j]
        rr = np.sqrt(a * a + b * b)
        if rr == 0.0:
            cs[s, j] = 1.0
            sn[s, j] = 0.0
        else:
            cs[s, j] = a / rr
            sn[s, j] = b / rr
        H[s, j, j] = rr
        H[s, j + 1, j] = 0.0
        g[s, j + 1] = -sn[s, j] * g[s, j]
        g[s, j] = cs[s, j] * g[s, j]


@jit
def gmres_restart(beta, target, zero, total, maxiter, g, live, ks, alpha):  # pragma: no cover - numba
    """Start of a restart cycle for every system, from its residual norm ``beta``.

    A system is active unless converged (``beta <= target``; NaN is not) or zero;
    an active one gets ``g = (beta, 0, ...)``, ``live``, ``ks = 0`` and the scale
    ``alpha = 1/beta`` of its first basis vector (0 for the others). Returns the
    number of active systems, or ``-1 - s`` for the first active system ``s`` that
    must fail (``maxiter`` iterations done, or a non-finite residual).
    """
    k = beta.shape[0]
    for s in range(k):
        if not (beta[s] <= target[s]) and not zero[s] and (total[s] >= maxiter or not np.isfinite(beta[s])):
            return -1 - s
    nactive = 0
    for s in range(k):
        active = not (beta[s] <= target[s]) and not zero[s]
        live[s] = active
        ks[s] = 0
        for i in range(g.shape[1]):
            g[s, i] = 0.0
        if active:
            g[s, 0] = beta[s]
            alpha[s] = 1.0 / beta[s]
            nactive += 1
        else:
            alpha[s] = 0.0
    return nactive


@jit
def dgks_redo(h, j, nrm, live, eta2, redo):  # pragma: no cover - numba
    """``redo[s]``: live system ``s`` lost more than ``1 - eta2`` of ``|w|^2`` to the
    orthogonalisation (``h[j + 1, s]`` before, ``nrm[s]`` after); returns whether any did."""
    anyredo = False
    for s in range(nrm.shape[0]):
        redo[s] = live[s] and nrm[s] < eta2 * h[j + 1, s]
        anyredo = anyredo or redo[s]
    return anyredo


@jit
def arnoldi_step(H, cs, sn, g, j, h, nrm, live, total, ks, beta, target, maxiter, alpha):  # pragma: no cover - numba
    """The bookkeeping of GMRES step ``j`` after the orthogonalisation, for every system.

    ``h[j + 1] = |w| = sqrt(nrm)``, Hessenberg column and Givens rotation
    (:func:`arnoldi_givens`), iteration counts; a live system stops on breakdown
    (``|w| <= 1e-14 beta``, NaN included), on convergence (``|g[j + 1]| <= target``)
    or at ``maxiter``. ``alpha`` gets the scale of the next basis vector (``1/|w|``,
    0 for a stopped system). Returns the number of systems still live.
    """
    k = nrm.shape[0]
    for s in range(k):
        h[j + 1, s] = np.sqrt(nrm[s])
    arnoldi_givens(H, cs, sn, g, j, h, live)
    nlive = 0
    for s in range(k):
        if not live[s]:
            alpha[s] = 0.0
            continue
        total[s] += 1
        ks[s] = j + 1
        hnext = h[j + 1, s]
        breakdown = not hnext > 1e-14 * beta[s]
        if breakdown or abs(g[s, j + 1]) <= target[s] or total[s] >= maxiter:
            live[s] = False
            alpha[s] = 0.0
        else:
            alpha[s] = 1.0 / hnext
            nlive += 1
    return nlive


@jit
def hessenberg_solve(H, g, ks, Y):  # pragma: no cover - numba
    """``Y[:ks[s], s] = R_s^{-1} g_s[:ks[s]]`` (back substitution), zero below."""
    k = H.shape[0]
    m = Y.shape[0]
    for s in range(k):
        for i in range(m):
            Y[i, s] = 0.0
        for i in range(ks[s] - 1, -1, -1):
            acc = g[s, i]
            for l in range(i + 1, ks[s]):
                acc -= H[s, i, l] * Y[l, s]
            Y[i, s] = acc / H[s, i, i] if H[s, i, i] != 0.0 else 0.0


@sized
def gather(src, perm, out):  # pragma: no cover - numba
    """``out[k] = src[perm[k]]`` (values of a transposed pattern)."""
    for k in prange(out.shape[0]):
        out[k] = src[perm[k]]


@sized
def set_column(src, out, j):  # pragma: no cover - numba
    """``out[:, j] = src`` (a matrix's values into an ``(nnz, k)`` block)."""
    for k in prange(src.shape[0]):
        out[k, j] = src[k]


@sized
def gather_column(src, perm, out, j):  # pragma: no cover - numba
    """``out[:, j] = src[perm]`` (a transposed matrix's values into an ``(nnz, k)`` block)."""
    for k in prange(src.shape[0]):
        out[k, j] = src[perm[k]]


@jit
def pair_match(indptr, indices, data, beta, agg):  # pragma: no cover - numba
    """Pairwise aggregation along the strongest couplings; returns #aggregates.

    Rows are visited in order; a free row ``i`` is paired with the free
    ``j != i`` with the largest ``-a_ij``, provided ``-a_ij >= beta * max_k
    (-a_ik)`` and ``-a_ij > 0``; otherwise it stays a singleton.
    """
    n = indptr.shape[0] - 1
    for i in range(n):
        agg[i] = -1
    nc = 0
    for i in range(n):
        if agg[i] >= 0:
            continue
        mx = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            if indices[k] != i and -data[k] > mx:
                mx = -data[k]
        best = -1
        bv = beta * mx
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            if j != i and agg[j] < 0 and -data[k] > 0.0 and -data[k] >= bv:
                if best < 0 or -data[k] > bv:
                    bv = -data[k]
                    best = j
        agg[i] = nc
        if best >= 0:
            agg[best] = nc
        nc += 1
    return nc


@jit
def agg_members(agg, ptr, members):  # pragma: no cover - numba
    """Counting sort of ``agg``: members of aggregate ``c`` are ``members[ptr[c]:ptr[c+1]]``."""
    nc = ptr.shape[0] - 1
    for c in range(nc + 1):
        ptr[c] = 0
    for i in range(agg.shape[0]):
        ptr[agg[i] + 1] += 1
    for c in range(nc):
        ptr[c + 1] += ptr[c]
    for i in range(agg.shape[0]):
        c = agg[i]
        members[ptr[c]] = i
        ptr[c] += 1
    for c in range(nc, 0, -1):
        ptr[c] = ptr[c - 1]
    ptr[0] = 0


@jit(inline="always")
def _accumulate(marker, start, cnt, col, v, ix, dv):  # pragma: no cover - numba
    """Add ``v`` at column ``col`` of the sparse row being built in ``ix``/``dv`` from position
    ``start`` on (``marker[col]``: where ``col`` was last put); returns the new entry count."""
    q = marker[col]
    if q < start:
        marker[col] = cnt
        ix[cnt] = col
        dv[cnt] = v
        return cnt + 1
    dv[q] += v
    return cnt


@jit
def galerkin(indptr, indices, data, agg, ptr, members, marker,
             cindptr, cindices, cdata, cdiag):  # pragma: no cover - numba
    """Coarse matrix ``P^T A P`` for piecewise-constant ``P`` (aggregates ``agg``).

    Fills ``cindptr`` (nc+1), ``cindices``/``cdata`` (capacity ``nnz(A)``) and
    the diagonal positions ``cdiag``; ``marker`` is int scratch of length nc.
    Entries of a coarse row are in order of first appearance (unsorted).
    Returns the coarse nnz.
    """
    nc = ptr.shape[0] - 1
    for c in range(nc):
        marker[c] = -1
    cnt = 0
    cindptr[0] = 0
    for c in range(nc):
        start = cnt
        for m in range(ptr[c], ptr[c + 1]):
            i = members[m]
            for k in range(indptr[i], indptr[i + 1]):
                cnt = _accumulate(marker, start, cnt, agg[indices[k]], data[k], cindices, cdata)
        cdiag[c] = marker[c]  # (every member's diagonal entry lands in column c)
        cindptr[c + 1] = cnt
    return cnt


# --------------------------------------------------------------------------
# smoothed aggregation set-up: P = (I - w D^-1 A) T, R = T^T (I - w A D^-1) (serial),
# A_c = R A P (coarse rows in parallel), with T the piecewise-constant prolongation of
# the aggregates
# --------------------------------------------------------------------------
@jit
def sa_prolongator(indptr, indices, data, diag, agg, omega, marker, pip, pix, pdv):  # pragma: no cover - numba
    """Smoothed prolongation ``P = (I - omega D^-1 A) T`` (``n x nc``, CSR by fine rows).

    ``T[i, agg[i]] = 1``; ``P[i, c] = [agg[i] == c] - omega / a_ii sum_{j in c} a_ij``.
    Fills ``pip`` (n+1), ``pix``/``pdv`` (capacity ``nnz(A)``: the diagonal entry of row ``i``
    falls on ``agg[i]``, so a row of ``P`` has at most the entries of row ``i`` of ``A``); ``marker`` is
    int scratch of length nc. Columns of a row in order of first appearance.
    Returns nnz(P).
    """
    n = indptr.shape[0] - 1
    for c in range(marker.shape[0]):
        marker[c] = -1
    cnt = 0
    pip[0] = 0
    for i in range(n):
        start = cnt
        cnt = _accumulate(marker, start, cnt, agg[i], 1.0, pix, pdv)
        w = omega / data[diag[i]]
        for p in range(indptr[i], indptr[i + 1]):
            cnt = _accumulate(marker, start, cnt, agg[indices[p]], -w * data[p], pix, pdv)
        pip[i + 1] = cnt
    return cnt


@jit
def sa_restrictor(indptr, indices, data, diag, ptr, members, omega, marker, rip, rix, rdv):  # pragma: no cover - numba
    """Petrov-Galerkin restriction ``R = T^T (I - omega A D^-1)`` (``nc x n``, CSR by aggregates),
    the transpose of the smoothed prolongation of ``A^T``: ``R[c, j] = [j in c] - omega / a_jj
    sum_{i in c} a_ij``.

    ``ptr``/``members`` list the aggregates (:func:`agg_members`); fills ``rip`` (nc+1),
    ``rix``/``rdv`` (capacity ``nnz(A)``: member ``i``'s own column comes with its diagonal
    entry); ``marker`` is int scratch of length n.
    Returns nnz(R).
    """
    nc = ptr.shape[0] - 1
    for j in range(marker.shape[0]):
        marker[j] = -1
    cnt = 0
    rip[0] = 0
    for c in range(nc):
        start = cnt
        for m in range(ptr[c], ptr[c + 1]):
            i = members[m]
            cnt = _accumulate(marker, start, cnt, i, 1.0, rix, rdv)
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                cnt = _accumulate(marker, start, cnt, j, -omega * data[p] / data[diag[j]], rix, rdv)
        rip[c + 1] = cnt
    return cnt


@sized
def triple_product_rows(rip, rix, aip, aix, pip, pix, marker, cip):  # pragma: no cover - numba
    """Symbolic ``C = R A P`` (CSR triples, ``C`` square of order ``nrows(R)``): ``cip`` gets
    the row pointer of ``C``; no intermediate product is stored.

    Rows of ``C`` are split into ``marker.shape[0]`` fixed chunks, each with its own row of
    ``marker`` (int scratch of shape ``(chunks, ncols(P))``); a row's entries do not depend
    on the chunking, so neither does the result. Returns nnz(C).
    """
    n = rip.shape[0] - 1
    nch = marker.shape[0]
    csize = (n + nch - 1) // nch
    for ch in prange(nch):
        mk = marker[ch]
        for j in range(mk.shape[0]):
            mk[j] = -1
        for c in range(ch * csize, min(n, (ch + 1) * csize)):
            cnt = 0
            for p in range(rip[c], rip[c + 1]):
                i = rix[p]
                for q in range(aip[i], aip[i + 1]):
                    k = aix[q]
                    for t in range(pip[k], pip[k + 1]):
                        j = pix[t]
                        if mk[j] != c:
                            mk[j] = c
                            cnt += 1
            cip[c + 1] = cnt
    cip[0] = 0
    for c in range(n):
        cip[c + 1] += cip[c]
    return cip[n]


@sized
def triple_product(rip, rix, rdv, aip, aix, adv, pip, pix, pdv, marker, cip, cix, cdv):  # pragma: no cover - numba
    """Numerical ``C = R A P`` into the pattern sized by :func:`triple_product_rows` (``cip``
    given; ``cix``/``cdv`` filled, a row's columns in order of first appearance); ``marker``
    as there. Each row is summed in the same order whatever the chunking."""
    n = rip.shape[0] - 1
    nch = marker.shape[0]
    csize = (n + nch - 1) // nch
    for ch in prange(nch):
        mk = marker[ch]
        for j in range(mk.shape[0]):
            mk[j] = -1
        for c in range(ch * csize, min(n, (ch + 1) * csize)):
            start = cip[c]
            cnt = start
            for p in range(rip[c], rip[c + 1]):
                i = rix[p]
                r = rdv[p]
                for q in range(aip[i], aip[i + 1]):
                    k = aix[q]
                    ra = r * adv[q]
                    for t in range(pip[k], pip[k + 1]):
                        cnt = _accumulate(mk, start, cnt, pix[t], ra * pdv[t], cix, cdv)

