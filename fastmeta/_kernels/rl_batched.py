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

from . import rl as _rl
from ._config import jit, sized

# Serial twins of the per-task kernels, called from compiled code (numba needs dispatchers).
_centred_advantage = _rl.centred_advantage.serial
_softmax_policy = _rl.softmax_policy.serial
_policy_average = _rl.policy_average.serial


@jit
def lu_inplace(a):
    """a <- its LU factors (unit lower L below the diagonal, U on and above), no pivoting.

    Blocked by 4 pivots: factor the 4-column panel, finish its 4 rows of U, then
    update the trailing matrix two rows at a time with all 4 pivots at once (each
    trailing entry read and written once per 4 eliminations, each U entry loaded
    once per 2 rows): 1.5-1.9x faster than a rank-1 or rank-2 elimination for
    n = 64 ... 300, equal at n = 16.
    """
    n = a.shape[0]
    for k0 in range(0, n, 4):
        e = min(k0 + 4, n)
        for k in range(k0, e):  # panel
            inv = 1.0 / a[k, k]
            for i in range(k + 1, n):
                a[i, k] *= inv
                lik = a[i, k]
                for j in range(k + 1, e):
                    a[i, j] -= lik * a[k, j]
        for k in range(k0, e):  # the panel's rows of U
            for i in range(k + 1, e):
                lik = a[i, k]
                for j in range(e, n):
                    a[i, j] -= lik * a[k, j]
        if e - k0 < 4:
            for i in range(e, n):  # only for the last (n mod 4) pivots: nothing left to update
                for k in range(k0, e):
                    lik = a[i, k]
                    for j in range(e, n):
                        a[i, j] -= lik * a[k, j]
            continue
        u0, u1, u2, u3 = a[k0], a[k0 + 1], a[k0 + 2], a[k0 + 3]
        i = e
        while i < n:
            x = a[i]
            y = a[i + 1] if i + 1 < n else x
            l0, l1, l2, l3 = x[k0], x[k0 + 1], x[k0 + 2], x[k0 + 3]
            if i + 1 < n:
                m0, m1, m2, m3 = y[k0], y[k0 + 1], y[k0 + 2], y[k0 + 3]
                for j in range(e, n):
                    c0, c1, c2, c3 = u0[j], u1[j], u2[j], u3[j]
                    x[j] -= l0 * c0 + l1 * c1 + l2 * c2 + l3 * c3
                    y[j] -= m0 * c0 + m1 * c1 + m2 * c2 + m3 * c3
            else:
                for j in range(e, n):
                    x[j] -= l0 * u0[j] + l1 * u1[j] + l2 * u2[j] + l3 * u3[j]
            i += 2


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
    # The same arithmetic as the per-task path: advantages centred under their policy
    # (exact zeros where it is saturated) and a softmax exact for logits of any size.
    _centred_advantage(Q, pi, adv)
    _softmax_policy(f, inv_tau, Q, eta, pi_i)
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
    _centred_advantage(Q_i, pi_i, adv_i)
    for s in range(S):
        for a in range(A):
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
        # as add_own_term / add_meta_term: exact zeros skipped (no 0 * inf), c_meta xi first
        cx = c_meta * xi[s] if (c_meta != 0.0 and xi[s] != 0.0) else 0.0
        for a in range(A):
            g = 0.0
            w = sigma[s, a] * adv_i[s, a]
            if w != 0.0:
                g = c_own * w
            w = pi[s, a] * adv[s, a]
            if cx != 0.0 and w != 0.0:
                g += cx * w
            grad[s, a] = g
    return J


@jit
def _factor_group(indptr, indices, data, kernel, gamma, pi, out):
    S, A = pi.shape
    dense_policy_matrix(indptr, indices, data, kernel * S * A, pi, gamma, out)
    lu_inplace(out)


@jit
def factor_group(indptr, indices, data, kernel, gamma, pi, out):
    """out <- LU factors of I - gamma P_pi for one kernel of a batch."""
    _factor_group(indptr, indices, data, kernel, gamma, pi, out)


@sized
def batch_meta_grad(indptr, indices, data, group_kernel, group_gamma, task_group, r, init, f, pi, inv_tau, eta,
                    want_grad, n_chunks, J_out, grad_out):
    """The batch's tasks in one call: returns sum_i J_i, and grad_out = sum_i dL_i/df if ``want_grad``.

    1. every group's main-effect LU (parallel over groups);
    2. every task (parallel over ``n_chunks`` contiguous chunks of tasks, one
       workspace per chunk; the split only decides which thread computes a task),
       J_i into ``J_out[i]`` and dL_i/df into a slot of its own;
    3. the sums, in task order.
    """
    S, A = pi.shape
    n = task_group.size
    G = group_kernel.size
    lu_main = np.empty((G, S, S))
    for g in prange(G):
        _factor_group(indptr, indices, data, group_kernel[g], group_gamma[g], pi, lu_main[g])
    slots = np.empty((n if want_grad else 1, S, A))
    for c in prange(n_chunks):
        V, V_i, nu, xi, tmp = np.empty(S), np.empty(S), np.empty(S), np.empty(S), np.empty(S)
        Q, adv, pi_i = np.empty((S, A)), np.empty((S, A)), np.empty((S, A))
        Q_i, adv_i, sigma = np.empty((S, A)), np.empty((S, A)), np.empty((S, A))
        M_i = np.empty((S, S))
        for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            g = task_group[i]
            J_out[i] = one_task(indptr, indices, data, group_kernel[g] * S * A, group_gamma[g], r[i], init[i],
                                f, pi, inv_tau, eta, lu_main[g], want_grad, V, Q, adv, pi_i, M_i, V_i, Q_i,
                                adv_i, nu, sigma, xi, slots[i if want_grad else 0], tmp)
    total = 0.0
    for i in range(n):
        total += J_out[i]
    if want_grad:
        for s in prange(S):
            for a in range(A):
                acc = 0.0
                for i in range(n):
                    acc += slots[i, s, a]
                grad_out[s, a] = acc
    return total
