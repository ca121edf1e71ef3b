"""The whole meta-gradient of a batch of small tasks in one compiled call.

Private: no validation, callers allocate outputs. A batch holds kernels (CSR,
concatenated: kernel q owns rows ``q*S*A .. (q+1)*S*A - 1`` of one global
``indptr`` of int64 positions), groups (a kernel and a discount: tasks of a group
share the main effect's matrix M) and tasks (a group, r, zeta).

Every matrix is dense and factorised by LU without pivoting: M = I - gamma P_pi is
strictly row diagonally dominant for gamma < 1, Gaussian elimination keeps that
property in every Schur complement, so no pivot is small and the growth factor is
at most 2. Each task is computed serially by one thread and writes its own output
slot; the slots are summed afterwards in task order. So the result does not depend
on the number of threads, nor on how tasks are spread over them.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._config import jit, sized


@jit
def lu_inplace(a):
    """a <- its LU factors (unit lower L below the diagonal, U on and above), no pivoting.

    Two pivots per sweep (a rank-2 update): each trailing entry is read and
    written once per two eliminations, 1.4x faster than rank-1 at n = 64.
    """
    n = a.shape[0]
    k = 0
    while k + 1 < n:
        inv0 = 1.0 / a[k, k]
        l10 = a[k + 1, k] * inv0
        a[k + 1, k] = l10
        for j in range(k + 1, n):
            a[k + 1, j] -= l10 * a[k, j]
        inv1 = 1.0 / a[k + 1, k + 1]
        u01 = a[k, k + 1]
        for i in range(k + 2, n):
            li0 = a[i, k] * inv0
            li1 = (a[i, k + 1] - li0 * u01) * inv1
            a[i, k] = li0
            a[i, k + 1] = li1
            if li0 != 0.0 or li1 != 0.0:
                for j in range(k + 2, n):
                    a[i, j] -= li0 * a[k, j] + li1 * a[k + 1, j]
        k += 2


@jit
def lu_solve(lu, b, x):
    """x = (LU)^{-1} b (x may be b)."""
    n = lu.shape[0]
    for i in range(n):
        x[i] = b[i]
    for i in range(n):  # L y = b
        acc = x[i]
        for k in range(i):
            acc -= lu[i, k] * x[k]
        x[i] = acc
    for i in range(n - 1, -1, -1):  # U x = y
        acc = x[i]
        for k in range(i + 1, n):
            acc -= lu[i, k] * x[k]
        x[i] = acc / lu[i, i]


@jit
def lu_solve_transposed(lu, b, x):
    """x = (LU)^{-T} b (x may be b), by row sweeps: U^T y = b, then L^T x = y."""
    n = lu.shape[0]
    for i in range(n):
        x[i] = b[i]
    for k in range(n):
        x[k] /= lu[k, k]
        xk = x[k]
        if xk != 0.0:
            for i in range(k + 1, n):
                x[i] -= lu[k, i] * xk
    for k in range(n - 1, -1, -1):
        xk = x[k]
        if xk != 0.0:
            for i in range(k):
                x[i] -= lu[k, i] * xk


@jit
def dense_policy_matrix(indptr, indices, data, row0, pi, gamma, out):
    """out = I - gamma P_pi (dense) for the kernel whose rows start at ``row0``."""
    S, A = pi.shape
    out[:, :] = 0.0
    for s in range(S):
        out[s, s] = 1.0
        for a in range(A):
            row = row0 + s * A + a
            scale = -gamma * pi[s, a]
            for k in range(indptr[row], indptr[row + 1]):
                out[s, indices[k]] += scale * data[k]


@jit
def _bellman_q(indptr, indices, data, row0, r, V, gamma, out):
    S, A = r.shape
    for s in range(S):
        for a in range(A):
            row = row0 + s * A + a
            acc = 0.0
            for k in range(indptr[row], indptr[row + 1]):
                acc += data[k] * V[indices[k]]
            out[s, a] = (1.0 - gamma) * r[s, a] + gamma * acc


@jit
def _softmax(f, inv_tau, Q, eta, out):
    S, A = f.shape
    for s in range(S):
        m = -np.inf
        for a in range(A):
            z = f[s, a] * inv_tau + eta * Q[s, a]
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


@jit
def _policy_average(pi, x, out):
    S, A = pi.shape
    for s in range(S):
        acc = 0.0
        for a in range(A):
            acc += pi[s, a] * x[s, a]
        out[s] = acc


@jit
def one_task(indptr, indices, data, row0, gamma, r, init, f, pi, inv_tau, eta, lu_main, want_grad,
             V, Q, adv, pi_i, M_i, V_i, Q_i, adv_i, nu, sigma, xi, grad, tmp):
    """One task's objective J_i (returned) and, if ``want_grad``, dL_i/df into ``grad``.

    ``lu_main`` holds the LU factors of the main effect's M for this task's kernel
    and discount. Every other array is an output or a workspace (``M_i`` ends as
    the adapted policy's LU factors); see :class:`fastmeta.rl.TaskTrace` for their
    meaning.
    """
    S, A = pi.shape
    _policy_average(pi, r, tmp)
    lu_solve(lu_main, tmp, V)
    for s in range(S):
        V[s] *= 1.0 - gamma
    _bellman_q(indptr, indices, data, row0, r, V, gamma, Q)
    for s in range(S):
        for a in range(A):
            adv[s, a] = Q[s, a] - V[s]
    _softmax(f, inv_tau, Q, eta, pi_i)
    dense_policy_matrix(indptr, indices, data, row0, pi_i, gamma, M_i)
    lu_inplace(M_i)
    _policy_average(pi_i, r, tmp)
    lu_solve(M_i, tmp, V_i)
    J = 0.0
    for s in range(S):
        V_i[s] *= 1.0 - gamma
        J += init[s] * V_i[s]
    if not want_grad:
        return J
    _bellman_q(indptr, indices, data, row0, r, V_i, gamma, Q_i)
    lu_solve_transposed(M_i, init, nu)
    for s in range(S):
        nu[s] *= 1.0 - gamma
        tmp[s] = 0.0
    # mu = P^T (sigma_i A_i), a serial scatter in a fixed order
    for s in range(S):
        for a in range(A):
            adv_i[s, a] = Q_i[s, a] - V_i[s]
            sigma[s, a] = nu[s] * pi_i[s, a]
            w = sigma[s, a] * adv_i[s, a]
            if w != 0.0:
                row = row0 + s * A + a
                for k in range(indptr[row], indptr[row + 1]):
                    tmp[indices[k]] += w * data[k]
    lu_solve_transposed(lu_main, tmp, xi)
    c_own = inv_tau / (1.0 - gamma)
    c_meta = eta * gamma * inv_tau / ((1.0 - gamma) * (1.0 - gamma))
    for s in range(S):
        xi[s] *= 1.0 - gamma
        for a in range(A):
            grad[s, a] = c_own * sigma[s, a] * adv_i[s, a] + c_meta * xi[s] * pi[s, a] * adv[s, a]
    return J


@sized
def factor_groups(indptr, indices, data, group_kernel, group_gamma, pi, lu_out):
    """lu_out[g] <- LU factors of I - gamma_g P_{pi} for the kernel of every group g."""
    S, A = pi.shape
    for g in prange(group_kernel.size):
        dense_policy_matrix(indptr, indices, data, group_kernel[g] * S * A, pi, group_gamma[g], lu_out[g])
        lu_inplace(lu_out[g])


@sized
def batch_tasks(indptr, indices, data, group_kernel, group_gamma, task_group, r, init, f, pi, inv_tau, eta,
                lu_main, want_grad, n_chunks, J_out, grad_out):
    """J_out[i] and (if ``want_grad``) grad_out[i] = dL_i/df for every task i of the batch.

    Tasks are split into ``n_chunks`` contiguous chunks, one workspace each; the
    split only decides which thread computes a task, never how.
    """
    S, A = pi.shape
    n = task_group.size
    for c in prange(n_chunks):
        V, V_i, nu, xi, tmp = np.empty(S), np.empty(S), np.empty(S), np.empty(S), np.empty(S)
        Q, adv, pi_i = np.empty((S, A)), np.empty((S, A)), np.empty((S, A))
        Q_i, adv_i, sigma = np.empty((S, A)), np.empty((S, A)), np.empty((S, A))
        grad = np.empty((S, A))
        M_i = np.empty((S, S))
        for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            g = task_group[i]
            slot = grad_out[i] if want_grad else grad
            J_out[i] = one_task(indptr, indices, data, group_kernel[g] * S * A, group_gamma[g], r[i], init[i],
                                f, pi, inv_tau, eta, lu_main[g], want_grad, V, Q, adv, pi_i, M_i, V_i, Q_i,
                                adv_i, nu, sigma, xi, slot, tmp)


@sized
def sum_slots(slots, out):
    """out = sum_i slots[i], entry by entry in slot order (thread-count independent)."""
    n, S, A = slots.shape
    for s in prange(S):
        for a in range(A):
            acc = 0.0
            for i in range(n):
                acc += slots[i, s, a]
            out[s, a] = acc
