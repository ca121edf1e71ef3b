"""Numba kernels of the meta-RL core. Private: no validation, callers allocate outputs.

Sparse kernels take the transition kernel as CSR arrays of shape (S*A, S), row
``s*A + a`` = P(.|s, a). Work is split by state (or by fixed chunks of states),
each output entry written by exactly one iteration in a fixed order, so results do
not depend on the number of threads.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._config import N_CHUNKS, jit, sized


@jit(inline="always")
def scale_energy_row(f, s, inv_tau, out):
    """out[s] = (f[s] - max f[s]) * inv_tau, an exact zero at the maximum (so an inf
    ``inv_tau`` gives no 0 * inf): the energy part of the policy's logits."""
    A = f.shape[1]
    fmax = -np.inf
    for a in range(A):
        if f[s, a] > fmax:
            fmax = f[s, a]
    for a in range(A):
        d = f[s, a] - fmax
        out[s, a] = 0.0 if d == 0.0 else d * inv_tau


@jit(inline="always")
def adapt_and_normalise_row(out, s, Q, eta):
    """out[s] <- softmax(out[s] + eta (Q[s] - max Q[s])), out[s] holding the energy part.

    The Q part is shifted by its maximum (an exact zero there) and the softmax by the
    largest logit, summed in action order: one form for every policy kernel.
    """
    A = out.shape[1]
    qmax = -np.inf
    for a in range(A):
        if Q[s, a] > qmax:
            qmax = Q[s, a]
    m = -np.inf
    for a in range(A):
        z = out[s, a]
        if eta != 0.0:
            dq = Q[s, a] - qmax
            if dq != 0.0:
                z += eta * dq
        out[s, a] = z
        if z > m:
            m = z
    total = 0.0
    for a in range(A):
        e = np.exp(out[s, a] - m)
        out[s, a] = e
        total += e
    inv = 1.0 / total
    for a in range(A):
        out[s, a] *= inv


@sized
def softmax_policy(f, inv_tau, Q, eta, out):
    """out[s] = softmax(f[s] * inv_tau + eta * Q[s]), exact for logits of any size.

    Both parts of the logit are shifted by their per-state maxima before scaling, so
    f / tau beyond the float range (theta = 1e300, tau = 1e-10) gives the limiting
    policy (the argmax) instead of inf - inf = NaN; an inf ``inv_tau`` is allowed.
    """
    for s in prange(f.shape[0]):
        scale_energy_row(f, s, inv_tau, out)
        adapt_and_normalise_row(out, s, Q, eta)


@sized
def policy_average(pi, x, out):
    """out[s] = sum_a pi[s, a] * x[s, a] (e.g. r_pi, V from Q)."""
    S, A = pi.shape
    for s in prange(S):
        acc = 0.0
        for a in range(A):
            acc += pi[s, a] * x[s, a]
        out[s] = acc


@sized
def bellman_q(indptr, indices, data, r, V, gamma, out):
    """Q(s, a) = (1 - gamma) r(s, a) + gamma sum_s' P(s'|s, a) V(s'), out of shape (S, A)."""
    S, A = r.shape
    for s in prange(S):
        for a in range(A):
            row = s * A + a
            acc = 0.0
            for k in range(indptr[row], indptr[row + 1]):
                acc += data[k] * V[indices[k]]
            out[s, a] = (1.0 - gamma) * r[s, a] + gamma * acc


@jit
def kernel_transpose_apply(indptr, indices, data, w, out):
    """out(s') = sum_{s,a} w(s, a) P(s'|s, a), i.e. P^T w (serial scatter: fixed order)."""
    S, A = w.shape
    out[:] = 0.0
    for s in range(S):
        for a in range(A):
            row = s * A + a
            ws = w[s, a]
            if ws != 0.0:
                for k in range(indptr[row], indptr[row + 1]):
                    out[indices[k]] += ws * data[k]


@sized
def count_policy_pattern(indptr, indices, S, A, counts):
    """counts[s] = number of distinct columns in rows s*A..s*A+A-1 of P, plus the diagonal."""
    for c in prange(N_CHUNKS):
        lo = c * S // N_CHUNKS
        hi = (c + 1) * S // N_CHUNKS
        buf = np.empty(_widest_state(indptr, lo, hi, A), dtype=np.int64)
        for s in range(lo, hi):
            counts[s] = _merge_columns(indptr, indices, s, A, buf)


@sized
def fill_policy_pattern(indptr, indices, S, A, m_indptr, m_indices, nnz_map, diag_pos):
    """Columns of M = I - gamma P_pi for each state, and where each P entry lands in M.

    ``nnz_map[k]`` is the position in M's data of the k-th stored entry of P;
    ``diag_pos[s]`` the position of M[s, s].
    """
    for c in prange(N_CHUNKS):
        lo = c * S // N_CHUNKS
        hi = (c + 1) * S // N_CHUNKS
        buf = np.empty(_widest_state(indptr, lo, hi, A), dtype=np.int64)
        for s in range(lo, hi):
            n = _merge_columns(indptr, indices, s, A, buf)
            start = m_indptr[s]
            for j in range(n):
                m_indices[start + j] = buf[j]
                if buf[j] == s:
                    diag_pos[s] = start + j
            for k in range(indptr[s * A], indptr[(s + 1) * A]):
                nnz_map[k] = start + _find(buf, n, indices[k])


@jit
def _widest_state(indptr, lo, hi, A):
    """Largest number of stored entries over the A rows of a state in [lo, hi), plus one."""
    width = 1
    for s in range(lo, hi):
        w = indptr[(s + 1) * A] - indptr[s * A] + 1
        if w > width:
            width = w
    return width


@jit
def _merge_columns(indptr, indices, s, A, buf):
    """Sorted distinct columns of rows s*A..s*A+A-1 of P together with s, into buf.

    An A-way merge of the rows (each sorted in canonical CSR): O(A w) for w stored
    entries, where inserting entries one by one costs O(w^2), i.e. seconds on a
    dense S = 500 input.
    """
    heads = np.empty(A, dtype=np.int64)
    for a in range(A):
        heads[a] = indptr[s * A + a]
    n = 0
    while True:
        best = -1
        col = 0
        for a in range(A):
            h = heads[a]
            if h < indptr[s * A + a + 1] and (best < 0 or indices[h] < col):
                col = indices[h]
                best = a
        if best < 0:
            break
        heads[best] += 1
        if n == 0 or buf[n - 1] != col:
            buf[n] = col
            n += 1
    pos = n  # the diagonal, always stored
    while pos > 0 and buf[pos - 1] > s:
        pos -= 1
    if pos > 0 and buf[pos - 1] == s:
        return n
    for j in range(n, pos, -1):
        buf[j] = buf[j - 1]
    buf[pos] = s
    return n + 1


@jit
def _find(buf, n, col):
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if buf[mid] < col:
            lo = mid + 1
        else:
            hi = mid
    return lo


@sized
def fill_policy_matrix(indptr, data, nnz_map, diag_pos, m_indptr, pi, gamma, m_data):
    """Values of M = I - gamma P_pi on the pattern from ``fill_policy_pattern``."""
    S, A = pi.shape
    for s in prange(S):
        for j in range(m_indptr[s], m_indptr[s + 1]):
            m_data[j] = 0.0
        for a in range(A):
            row = s * A + a
            scale = -gamma * pi[s, a]
            for k in range(indptr[row], indptr[row + 1]):
                m_data[nnz_map[k]] += scale * data[k]
        m_data[diag_pos[s]] += 1.0


@sized
def chunked_dot(x, y):
    """x . y with a summation order that does not depend on the thread count."""
    n = x.size
    parts = np.zeros(N_CHUNKS)
    for c in prange(N_CHUNKS):
        lo = c * n // N_CHUNKS
        hi = (c + 1) * n // N_CHUNKS
        acc = 0.0
        for i in range(lo, hi):
            acc += x[i] * y[i]
        parts[c] = acc
    total = 0.0
    for c in range(N_CHUNKS):
        total += parts[c]
    return total


@sized
def add_own_term(sigma_i, adv_i, c, out):
    """out(s, a) += c sigma_i(s, a) A_i(s, a): the adapted policy's own term.

    Exact zeros are skipped rather than multiplied, so a huge ``c`` (tiny tau) times
    the exact zero of a saturated state stays zero instead of becoming NaN.
    """
    S, A = sigma_i.shape
    for s in prange(S):
        for a in range(A):
            w = sigma_i[s, a] * adv_i[s, a]
            if w != 0.0:
                out[s, a] += c * w


@sized
def add_meta_term(xi, pi, adv, c, out):
    """out(s, a) += c xi(s) pi(a|s) A(s, a): the term through the inner step (zeros skipped)."""
    S, A = pi.shape
    if c == 0.0:
        return  # eta = 0: no inner step (and no 0 * inf from huge advantages)
    for s in prange(S):
        if xi[s] == 0.0:
            continue
        # c xi first: with rewards scaled by k and eta by 1/k, c xi stays of order one,
        # so the result scales by k exactly instead of overflowing through xi A ~ k^2.
        cx = c * xi[s]
        for a in range(A):
            w = pi[s, a] * adv[s, a]
            if w != 0.0:
                out[s, a] += cx * w


@sized
def centred_advantage(Q, pi, out):
    """out(s, a) = Q(s, a) - sum_b pi(b|s) Q(s, b): the advantage centred under pi.

    Equal to Q - V in exact arithmetic, but its pi-average is zero up to one rounding
    per state, and exactly zero where pi is saturated (a one-hot row): there the
    gradient terms sigma A and pi A vanish exactly, instead of being the rounding
    error of the linear solve for V amplified by 1/tau.
    """
    S, A = Q.shape
    for s in prange(S):
        v = 0.0
        for a in range(A):
            p = pi[s, a]
            if p != 0.0:
                v += p * Q[s, a]
        for a in range(A):
            out[s, a] = Q[s, a] - v


@sized
def scale_rows(nu, pi, out):
    """out(s, a) = nu(s) pi(a|s): the state-action visitation sigma from nu."""
    S, A = pi.shape
    for s in prange(S):
        for a in range(A):
            out[s, a] = nu[s] * pi[s, a]


@sized
def linear_energy(phi, theta, out):
    """out(s, a) = phi(s, a)^T theta."""
    S, A, d = phi.shape
    for s in prange(S):
        for a in range(A):
            acc = 0.0
            for j in range(d):
                acc += phi[s, a, j] * theta[j]
            out[s, a] = acc


@sized
def linear_energy_vjp(phi, g, out):
    """out = sum_{s,a} g(s, a) phi(s, a), chunk partials summed in chunk order."""
    S, A, d = phi.shape
    parts = np.zeros((N_CHUNKS, d))
    for c in prange(N_CHUNKS):
        lo = c * S // N_CHUNKS
        hi = (c + 1) * S // N_CHUNKS
        for s in range(lo, hi):
            for a in range(A):
                gs = g[s, a]
                if gs != 0.0:
                    for j in range(d):
                        parts[c, j] += gs * phi[s, a, j]
    out[:] = 0.0
    for c in range(N_CHUNKS):
        for j in range(d):
            out[j] += parts[c, j]
