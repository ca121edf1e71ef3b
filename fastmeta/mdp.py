"""Finite MDPs with dense or sparse transition kernels, validated on every construction."""
from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._fingerprint import csr_fingerprint
from ._validation import as_float_array, check_real_scalar

_OWNER = "TabularMDP"
EXACT_TOL = 1e-12
"""Rows of P (and init) summing to 1 within this are used bit for bit as given."""
RENORMALISE_TOL = 1e-6
"""Rows summing to 1 within this, but not within EXACT_TOL, are divided by their sums:
that is the rounding of a distribution normalised in float32. Beyond it they are refused."""

# Canonical kernels by content: tasks built from equal kernels (the goal family of
# a gridworld, say) share one read-only canonical copy and its memory. Entries
# vanish with the last TabularMDP that uses them.
_INTERNED: "weakref.WeakValueDictionary[str, sp.csr_matrix]" = weakref.WeakValueDictionary()
_INTERN_LOCK = threading.Lock()


class TabularMDP:
    """A finite MDP (S, A, P, r, gamma, zeta) of the paper's Section 2.1.

    Parameters
    ----------
    P : ndarray of shape (S, A, S) or (S*A, S), or scipy.sparse matrix of shape (S*A, S)
        Transition kernel. In the (S*A, S) layouts, row ``s*A + a`` is P(.|s, a).
        Every row must be a probability distribution: non-negative and summing to 1
        within 1e-6. Rows off by more than 1e-12 (e.g. a kernel normalised in
        float32) are divided by their sums; rows within 1e-12 are used as given.
    r : ndarray of shape (S, A)
        Rewards r(s, a).
    gamma : float
        Discount factor in (0, 1).
    init : ndarray of shape (S,)
        Initial state distribution zeta (summing to 1, renormalised like P's rows).

    Attributes
    ----------
    P : scipy.sparse.csr_matrix of shape (S*A, S)
        The kernel in canonical form (float64, sorted indices, no duplicates,
        int32 indices when they fit), read-only.
    kernel_fingerprint : str
        Digest of P's content (shape, pattern, values): equal kernels have equal
        fingerprints, whatever objects they were built from.
    r : ndarray of shape (S, A)
    gamma : float
    init : ndarray of shape (S,)
    n_states, n_actions : int

    Notes
    -----
    Values follow the paper's normalisation (2.1)-(2.2): V and Q carry the factor
    (1 - gamma), so they are averages of rewards and J = zeta^T V = E_sigma[r].
    Tasks of one meta-learning problem share S and A; they may differ in P, r,
    gamma and init.

    The kernel is checked on every construction (shape, index structure, finite
    non-negative entries, row sums), at O(nnz) cost, and kept as a private,
    read-only canonical copy: changing the caller's matrix afterwards cannot change
    a TabularMDP already built. Canonical kernels are shared by content: tasks built
    from equal kernels hold one copy. Recognising an equal kernel costs one BLAKE2b
    pass over it (about 0.25 s at 10^6 states and 4 actions); building a new one
    also costs one copy of the matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmeta import TabularMDP
    >>> P = np.full((2, 2, 2), 0.5)                 # (S, A, S): every move is a coin flip
    >>> r = np.array([[1.0, 0.0], [0.0, 0.0]])      # reward 1 for action 0 in state 0
    >>> task = TabularMDP(P, r, gamma=0.9, init=[1.0, 0.0])
    >>> task.shape, task.P.shape
    ((2, 2), (4, 2))
    """

    def __init__(self, P: Any, r: Any, gamma: float, init: Any):
        self.gamma = check_real_scalar(gamma, "gamma", _OWNER, low=0.0, high=1.0)
        self.r = as_float_array(r, "r", _OWNER, ndim=2, shape_text="(S, A)")
        S, A = self.r.shape
        if S < 1 or A < 1:
            raise ValueError(f"The 'r' parameter of {_OWNER} must have shape (S, A) with S, A >= 1. "
                             f"Got shape {self.r.shape} instead.")
        self.n_states, self.n_actions = S, A
        self.P, self.kernel_fingerprint = _canonical_kernel(P, S, A)
        init = as_float_array(init, "init", _OWNER, shape=(S,), allow_negative=False,
                              shape_text=f"(S,) = ({S},)")
        total = float(init.sum())
        if abs(total - 1.0) > RENORMALISE_TOL:
            raise ValueError(f"The 'init' parameter of {_OWNER} must be a probability distribution over "
                             f"the {S} states (non-negative, summing to 1). Got entries summing to "
                             f"{total!r} instead.")
        if abs(total - 1.0) > EXACT_TOL:
            init = init / total
        # Private read-only copies (O(S A), small next to P): the caller's arrays stay
        # writable, and changing them cannot change this task.
        self.r, self.init = self.r.copy(), init.copy()
        for arr in (self.r, self.init):
            arr.flags.writeable = False

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


def _canonical_kernel(P: Any, S: int, A: int) -> tuple[sp.csr_matrix, str]:
    """Validate P; return its shared read-only canonical CSR (S*A, S) and its fingerprint."""
    if sp.issparse(P):
        if P.shape != (S * A, S):
            raise ValueError(f"The 'P' parameter of {_OWNER} must be a sparse matrix of shape "
                             f"(S*A, S) = ({S * A}, {S}) to match r of shape (S, A) = ({S}, {A}). "
                             f"Got shape {P.shape} instead.")
        if P.dtype.kind not in "biuf":
            raise TypeError(f"The 'P' parameter of {_OWNER} must hold real numbers. Got dtype {P.dtype} instead.")
        if P.format == "csr" and P.dtype == np.float64:
            # Equal content to a kernel already validated and frozen: share it (no copy).
            hit = _INTERNED.get(csr_fingerprint(P))
            if hit is not None:
                return hit, csr_fingerprint(hit)
        csr = _checked_csr_copy(P, S, A)
    else:
        csr = _dense_to_csr(P, S, A)
    _check_rows(csr, S, A)
    index_type = np.int32 if max(csr.nnz, S * A) < np.iinfo(np.int32).max else np.int64
    csr.indices = csr.indices.astype(index_type, copy=False)
    csr.indptr = csr.indptr.astype(index_type, copy=False)
    fingerprint = csr_fingerprint(csr)
    with _INTERN_LOCK:
        hit = _INTERNED.get(fingerprint)
        if hit is not None:
            return hit, fingerprint
        for arr in (csr.data, csr.indices, csr.indptr):
            arr.flags.writeable = False
        _INTERNED[fingerprint] = csr
    return csr, fingerprint


def _checked_csr_copy(P: Any, S: int, A: int) -> sp.csr_matrix:
    """A private canonical float64 CSR copy of a sparse P, after checking its structure."""
    if P.format in ("csr", "csc", "bsr"):  # matrices and arrays alike
        try:
            # Index arrays out of range or inconsistent would make every kernel read
            # out of bounds; scipy's own constructors do not check this by default.
            P.check_format(full_check=True)
        except ValueError as exc:
            raise ValueError(f"The 'P' parameter of {_OWNER} must be a well-formed sparse matrix. "
                             f"Its index arrays are inconsistent: {exc}.") from None
    try:
        csr = sp.csr_matrix(P, dtype=np.float64, copy=True)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"The 'P' parameter of {_OWNER} must be a well-formed sparse matrix. "
                         f"Converting it to CSR failed: {exc}.") from None
    # Cached flags of the caller's object may be stale after an in-place change.
    csr.has_sorted_indices = False
    csr.has_canonical_format = False
    csr.sum_duplicates()
    csr.check_format(full_check=True)
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
    return csr


def _dense_to_csr(P: Any, S: int, A: int) -> sp.csr_matrix:
    """CSR (S*A, S) of a dense P given as (S, A, S) or (S*A, S)."""
    dense = as_float_array(P, "P", _OWNER, allow_negative=False)
    if dense.shape not in ((S, A, S), (S * A, S)):
        raise ValueError(f"The 'P' parameter of {_OWNER} must have shape (S, A, S) = ({S}, {A}, {S}) "
                         f"or (S*A, S) = ({S * A}, {S}) to match r of shape (S, A) = ({S}, {A}). "
                         f"Got shape {dense.shape} instead.")
    return sp.csr_matrix(dense.reshape(S * A, S))


def _check_rows(csr: sp.csr_matrix, S: int, A: int) -> None:
    """Refuse rows that are not distributions; renormalise float32-level rounding in place."""
    row_sums = np.asarray(csr.sum(axis=1)).ravel()
    err = np.abs(row_sums - 1.0)
    worst = int(np.argmax(err)) if err.size else 0
    if err.size and err[worst] > RENORMALISE_TOL:
        raise ValueError(f"The 'P' parameter of {_OWNER} must have rows P(.|s, a) that sum to 1 "
                         f"(within {RENORMALISE_TOL:g}; rows off by "
                         f"more than {EXACT_TOL:g} are renormalised). The worst row is (s, a) = ({worst // A}, {worst % A}), "
                         f"summing to {float(row_sums[worst])!r}; "
                         f"{int((err > RENORMALISE_TOL).sum())} row(s) fail.")
    off = err > EXACT_TOL
    if off.any():
        scale = np.where(off, 1.0 / row_sums, 1.0)
        csr.data *= np.repeat(scale, np.diff(csr.indptr))
