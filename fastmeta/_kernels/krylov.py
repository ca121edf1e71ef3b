"""Numba kernels for the iterative solver in :mod:`fastmeta.linalg`.

Private module: no validation, no Python objects; every kernel fills arrays
allocated by the caller.  Reductions over long vectors are computed per fixed
chunk (``N_CHUNKS`` chunks, chunk boundaries independent of the thread count)
and the partial sums are combined serially in chunk order, so every result is
bit-identical for any number of Numba threads.  Gauss-Seidel sweeps and the
aggregation are serial.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._config import N_CHUNKS, jit, pjit


@pjit
def csr_matvec(indptr, indices, data, x, y):  # pragma: no cover - numba
    """``y = A @ x`` for a CSR matrix (parallel over rows)."""
    n = indptr.shape[0] - 1
    for i in prange(n):
        s = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            s += data[k] * x[indices[k]]
        y[i] = s


@pjit
def csr_residual(indptr, indices, data, x, b, r):  # pragma: no cover - numba
    """``r = b - A @ x`` for a CSR matrix (parallel over rows)."""
    n = indptr.shape[0] - 1
    for i in prange(n):
        s = b[i]
        for k in range(indptr[i], indptr[i + 1]):
            s -= data[k] * x[indices[k]]
        r[i] = s


@pjit
def multi_dot(V, k, w, part, out):  # pragma: no cover - numba
    """``out[i] = V[i] . w`` for ``i < k``; ``part`` is ``(N_CHUNKS, >=k)`` scratch.

    Chunked: partial sums per fixed chunk, combined serially in chunk order.
    """
    n = w.shape[0]
    csize = (n + N_CHUNKS - 1) // N_CHUNKS
    for c in prange(N_CHUNKS):
        lo = c * csize
        hi = min(n, lo + csize)
        for i in range(k):
            s = 0.0
            for t in range(lo, hi):
                s += V[i, t] * w[t]
            part[c, i] = s
    for i in range(k):
        s = 0.0
        for c in range(N_CHUNKS):
            s += part[c, i]
        out[i] = s


@pjit
def lincomb_sub(V, k, h, w):  # pragma: no cover - numba
    """``w -= sum_{i<k} h[i] * V[i]`` (chunked so a chunk of ``w`` stays in cache)."""
    n = w.shape[0]
    csize = (n + N_CHUNKS - 1) // N_CHUNKS
    for c in prange(N_CHUNKS):
        lo = c * csize
        hi = min(n, lo + csize)
        for i in range(k):
            hi_ = h[i]
            for t in range(lo, hi):
                w[t] -= hi_ * V[i, t]


@jit
def gs_sweep(indptr, indices, data, diag, b, x, forward):  # pragma: no cover - numba
    """One in-place Gauss-Seidel sweep for ``A x = b`` (serial).

    ``diag[i]`` is the position of ``A[i, i]`` in ``indices``/``data``.
    ``forward`` selects the row order (ascending or descending).
    """
    n = indptr.shape[0] - 1
    for t in range(n):
        i = t if forward else n - 1 - t
        s = b[i]
        for k in range(indptr[i], indptr[i + 1]):
            s -= data[k] * x[indices[k]]
        d = data[diag[i]]
        x[i] += s / d


@pjit
def gather(src, perm, out):  # pragma: no cover - numba
    """``out[k] = src[perm[k]]`` (values of a transposed pattern)."""
    for k in prange(out.shape[0]):
        out[k] = src[perm[k]]


@pjit
def restrict(ptr, members, r, rc):  # pragma: no cover - numba
    """``rc[I] = sum_{i in aggregate I} r[i]`` (aggregates as CSR member lists)."""
    nc = ptr.shape[0] - 1
    for c in prange(nc):
        s = 0.0
        for k in range(ptr[c], ptr[c + 1]):
            s += r[members[k]]
        rc[c] = s


@pjit
def prolong_add(agg, xc, x):  # pragma: no cover - numba
    """``x[i] += xc[agg[i]]`` (piecewise-constant prolongation)."""
    for i in prange(x.shape[0]):
        x[i] += xc[agg[i]]


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
                J = agg[indices[k]]
                p = marker[J]
                if p < start:
                    marker[J] = cnt
                    cindices[cnt] = J
                    cdata[cnt] = data[k]
                    if J == c:
                        cdiag[c] = cnt
                    cnt += 1
                else:
                    cdata[p] += data[k]
        cindptr[c + 1] = cnt
    return cnt


@jit
def csr_transpose(indptr, indices, data, tindptr, tindices, tdata, tdiag):  # pragma: no cover - numba
    """Transpose of a square CSR matrix (counting sort) and its diagonal positions."""
    n = indptr.shape[0] - 1
    for i in range(n + 1):
        tindptr[i] = 0
    for k in range(indices.shape[0]):
        tindptr[indices[k] + 1] += 1
    for i in range(n):
        tindptr[i + 1] += tindptr[i]
    for i in range(n):
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            p = tindptr[j]
            tindices[p] = i
            tdata[p] = data[k]
            if i == j:
                tdiag[j] = p
            tindptr[j] = p + 1
    for i in range(n, 0, -1):
        tindptr[i] = tindptr[i - 1]
    tindptr[0] = 0
