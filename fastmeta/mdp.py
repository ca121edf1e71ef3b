"""Finite MDPs with dense or sparse transition kernels, validated once."""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._validation import as_float_array, check_real_scalar

_OWNER = "TabularMDP"
STOCHASTIC_TOL = 1e-8


class TabularMDP:
    """A finite MDP (S, A, P, r, gamma, zeta) of the paper's Section 2.1.

    Parameters
    ----------
    P : ndarray of shape (S, A, S) or scipy.sparse matrix of shape (S*A, S)
        Transition kernel. In the sparse form, row ``s*A + a`` is P(.|s, a).
        Every row must be a probability distribution (non-negative, summing to 1
        within 1e-8).
    r : ndarray of shape (S, A)
        Rewards r(s, a).
    gamma : float
        Discount factor in (0, 1).
    init : ndarray of shape (S,)
        Initial state distribution zeta.

    Attributes
    ----------
    P : scipy.sparse.csr_matrix of shape (S*A, S)
        The kernel in canonical form (float64, sorted indices, no duplicates,
        int32 indices when they fit). Dense input is converted once.
    r : ndarray of shape (S, A)
    gamma : float
    init : ndarray of shape (S,)
    n_states, n_actions : int

    Notes
    -----
    Values follow the paper's normalisation (2.1)-(2.2): V and Q carry the factor
    (1 - gamma), so they are averages of rewards and J = zeta^T V = E_sigma[r].
    Tasks of one meta-learning problem share S and A; they may differ in P, r,
    gamma and init. Tasks built from the *same* sparse matrix object share its
    canonical form (and its memory).

    Examples
    --------
    Two states; action a moves to state a, and action 1 pays 1:

    >>> import numpy as np
    >>> from fastmeta import TabularMDP
    >>> P = np.zeros((2, 2, 2))
    >>> P[:, 0, 0] = P[:, 1, 1] = 1.0
    >>> task = TabularMDP(P, np.array([[0.0, 1.0], [0.0, 1.0]]), 0.9, np.array([1.0, 0.0]))
    >>> task.n_states, task.n_actions, task.P.shape
    (2, 2, (4, 2))
    """

    def __init__(self, P: Any, r: Any, gamma: float, init: Any):
        self.gamma = check_real_scalar(gamma, "gamma", _OWNER, low=0.0, high=1.0)
        self.r = as_float_array(r, "r", _OWNER, ndim=2)
        S, A = self.r.shape
        if S < 1 or A < 1:
            raise ValueError(f"The 'r' parameter of {_OWNER} must have shape (S, A) with S, A >= 1. "
                             f"Got shape {self.r.shape} instead.")
        self.n_states, self.n_actions = S, A
        self.P = _canonical_kernel(P, S, A)
        self.init = as_float_array(init, "init", _OWNER, shape=(S,), allow_negative=False)
        total = float(self.init.sum())
        if abs(total - 1.0) > STOCHASTIC_TOL:
            raise ValueError(f"The 'init' parameter of {_OWNER} must be a probability distribution over "
                             f"the {S} states (non-negative, summing to 1). Got entries summing to "
                             f"{total!r} instead.")

    @property
    def shape(self) -> tuple[int, int]:
        """(S, A)."""
        return self.n_states, self.n_actions

    def dense_P(self) -> np.ndarray:
        """The kernel as a dense (S, A, S) array (for small problems and tests)."""
        S, A = self.shape
        return self.P.toarray().reshape(S, A, S)

    def __repr__(self) -> str:
        return (f"TabularMDP(S={self.n_states}, A={self.n_actions}, nnz={self.P.nnz}, "
                f"gamma={self.gamma:g})")


_CANONICAL_CACHE: dict[int, tuple[weakref.ref, weakref.ref]] = {}


def _canonical_kernel(P: Any, S: int, A: int) -> sp.csr_matrix:
    """Validate P and return it as canonical CSR (S*A, S).

    Converting and checking a 10^6-state kernel costs about a second, so the
    result is memoised per input object: the tasks of a goal family built from one
    shared matrix are checked once and share one canonical copy.
    """
    key = id(P)
    hit = _CANONICAL_CACHE.get(key)
    if hit is not None and hit[0]() is P and hit[1]() is not None:
        return hit[1]()
    if sp.issparse(P):
        if P.shape != (S * A, S):
            raise ValueError(f"The 'P' parameter of {_OWNER} must be a sparse matrix of shape "
                             f"(S*A, S) = ({S * A}, {S}) to match r of shape ({S}, {A}). "
                             f"Got shape {P.shape} instead.")
        if P.dtype.kind not in "biuf":
            raise TypeError(f"The 'P' parameter of {_OWNER} must hold real numbers. Got dtype {P.dtype} instead.")
        # A kernel that is already canonical CSR float64 is used as is (not copied):
        # at 10^6 states a copy costs hundreds of MB.
        canonical = sp.isspmatrix_csr(P) and P.dtype == np.float64 and P.has_canonical_format
        csr = P if canonical else sp.csr_matrix(P, dtype=np.float64, copy=True)
        csr.sum_duplicates()  # sorts the indices; a no-op on canonical input
        data = csr.data
        if data.size and not np.isfinite(data).all():
            k = int(np.flatnonzero(~np.isfinite(data))[0])
            row = int(np.searchsorted(csr.indptr, k, side="right") - 1)
            raise ValueError(f"The 'P' parameter of {_OWNER} must contain only finite values. Got "
                             f"{float(data[k])!r} at (s, a, s') = ({row // A}, {row % A}, {int(csr.indices[k])}) instead.")
        if data.size and data.min() < 0:
            k = int(np.argmin(data))
            row = int(np.searchsorted(csr.indptr, k, side="right") - 1)
            raise ValueError(f"The 'P' parameter of {_OWNER} must be non-negative. Got {float(data[k])!r} at "
                             f"(s, a, s') = ({row // A}, {row % A}, {int(csr.indices[k])}) instead.")
        row_sums = np.asarray(csr.sum(axis=1)).ravel()
    else:
        dense = as_float_array(P, "P", _OWNER, shape=(S, A, S), allow_negative=False)
        row_sums = dense.sum(axis=2).ravel()
        csr = sp.csr_matrix(dense.reshape(S * A, S))
    err = np.abs(row_sums - 1.0)
    worst = int(np.argmax(err)) if err.size else 0
    if err.size and err[worst] > STOCHASTIC_TOL:
        raise ValueError(f"The 'P' parameter of {_OWNER} must have rows P(.|s, a) that sum to 1 "
                         f"(tolerance {STOCHASTIC_TOL:g}). The worst row is (s, a) = ({worst // A}, "
                         f"{worst % A}), summing to {float(row_sums[worst])!r}; {int((err > STOCHASTIC_TOL).sum())} "
                         f"row(s) fail.")
    if csr is P:  # never change the caller's object
        return _remember(P, csr)
    index_type = np.int32 if max(csr.nnz, S * A) < np.iinfo(np.int32).max else np.int64
    csr.indices = csr.indices.astype(index_type, copy=False)
    csr.indptr = csr.indptr.astype(index_type, copy=False)
    return _remember(P, csr) if sp.issparse(P) else csr


def _remember(P: Any, csr: sp.csr_matrix) -> sp.csr_matrix:
    for stale in [k for k, (p, c) in _CANONICAL_CACHE.items() if p() is None or c() is None]:
        del _CANONICAL_CACHE[stale]
    _CANONICAL_CACHE[id(P)] = (weakref.ref(P), weakref.ref(csr))
    return csr
