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
from ._config import exact_division_jit, jit, sized
from .checks import all_finite
from .work_queue import take_next

# Serial twins of the per-task kernels, called from compiled code (numba needs dispatchers).
_centred_advantage = _rl.centred_advantage.serial
_softmax_policy = _rl.softmax_policy.serial
_policy_average = _rl.policy_average.serial


@jit
def lu_inplace(a):
    """a <- its LU factors (unit lower L below the diagonal, U on and above), no pivoting.

    Blocked by 4 pivots: factor the 4-column panel, finish its 4 rows of U, then
    update the trailing matrix one row at a time with all 4 pivots at once (each
    trailing entry read and written once per 4 eliminations). Every inner loop runs
    over a view that starts at index 0 (``xs = a[i, e:]``): loops from a variable
    start are not vectorised by the compiler, these are (1.7x faster at n = 64, 5x
    at n = 300 than the same arithmetic over ``range(e, n)``, with the same bits).
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
            uk = a[k, e:]
            for i in range(k + 1, e):
                lik = a[i, k]
                xs = a[i, e:]
                for j in range(xs.size):
                    xs[j] -= lik * uk[j]
        if e - k0 < 4:
            for i in range(e, n):  # only for the last (n mod 4) pivots: nothing left to update
                xs = a[i, e:]
                for k in range(k0, e):
                    lik = a[i, k]
                    uk = a[k, e:]
                    for j in range(xs.size):
                        xs[j] -= lik * uk[j]
            continue
        u0, u1, u2, u3 = a[k0, e:], a[k0 + 1, e:], a[k0 + 2, e:], a[k0 + 3, e:]
        for i in range(e, n):
            x = a[i]
            l0, l1, l2, l3 = x[k0], x[k0 + 1], x[k0 + 2], x[k0 + 3]
            xs = x[e:]
            for j in range(xs.size):
                xs[j] -= l0 * u0[j] + l1 * u1[j] + l2 * u2[j] + l3 * u3[j]


@jit(inline="always")
def lu_solve(lu, b, x):
    """x = (LU)^{-1} b (x may be b); inner loops over views from index 0, as in :func:`lu_inplace`."""
    n = lu.shape[0]
    for i in range(n):
        x[i] = b[i]
    for i in range(n):  # L y = b
        acc = x[i]
        row = lu[i]
        for k in range(i):
            acc -= row[k] * x[k]
        x[i] = acc
    for i in range(n - 1, -1, -1):  # U x = y
        acc = x[i]
        row = lu[i, i + 1:]
        rest = x[i + 1:]
        for k in range(rest.size):
            acc -= row[k] * rest[k]
        x[i] = acc / lu[i, i]


@jit(inline="always")
def lu_solve_transposed(lu, b, x):
    """x = (LU)^{-T} b (x may be b), by row sweeps: U^T y = b, then L^T x = y."""
    n = lu.shape[0]
    for i in range(n):
        x[i] = b[i]
    for k in range(n):
        x[k] /= lu[k, k]
        xk = x[k]
        if xk != 0.0:
            row = lu[k, k + 1:]
            rest = x[k + 1:]
            for i in range(rest.size):
                rest[i] -= row[i] * xk
    for k in range(n - 1, -1, -1):
        xk = x[k]
        if xk != 0.0:
            row = lu[k]
            for i in range(k):
                x[i] -= row[i] * xk


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


@jit(inline="always")
def _policy_matrix(indptr, indices, data, row0, Pk, pi, gamma, out):
    """out = I - gamma P_pi from the kernel's dense rows ``Pk`` (S*A x S) if given, else from its CSR rows."""
    S, A = pi.shape
    if Pk.shape[0] == 0:
        dense_policy_matrix(indptr, indices, data, row0, pi, gamma, out)
        return
    for s in range(S):
        for j in range(S):
            out[s, j] = 0.0
        out[s, s] = 1.0
        for a in range(A):
            scale = -gamma * pi[s, a]
            q = s * A + a
            for j in range(S):
                out[s, j] += scale * Pk[q, j]


@jit(inline="always")
def _bellman_q(indptr, indices, data, row0, Pk, r, V, gamma, out):
    S, A = r.shape
    dense = Pk.shape[0] > 0
    for s in range(S):
        for a in range(A):
            q = s * A + a  # the row in the kernel's dense rows; row0 + q in the batch's CSR
            acc = 0.0
            if dense:
                for j in range(S):
                    acc += Pk[q, j] * V[j]
            else:
                for k in range(indptr[row0 + q], indptr[row0 + q + 1]):
                    acc += data[k] * V[indices[k]]
            out[s, a] = (1.0 - gamma) * r[s, a] + gamma * acc


@jit(inline="always")
def _kernel_transpose_apply(indptr, indices, data, row0, Pk, w, out):
    """out = P^T w, i.e. out(s') = sum_{s,a} w(s, a) P(s'|s, a): rows added in (s, a) order, zeros skipped.

    One call for the whole of w: a compiled call inside the (s, a) loop (array
    arguments, reference counts) cost more than the arithmetic at small S.
    """
    S, A = w.shape
    out[:] = 0.0
    dense = Pk.shape[0] > 0
    for s in range(S):
        for a in range(A):
            ws = w[s, a]
            if ws == 0.0:
                continue
            if dense:
                q = s * A + a
                for j in range(S):
                    out[j] += ws * Pk[q, j]
            else:
                row = row0 + s * A + a
                for k in range(indptr[row], indptr[row + 1]):
                    out[indices[k]] += ws * data[k]


@jit
def scaled_energy(f, inv_tau, z0):
    """z0(s, a) = (f(s, a) - max_b f(s, b)) / tau: the energy part of every policy's logits.

    The same arithmetic as ``softmax_policy`` (an exact zero at the maximum, so an
    inf ``inv_tau`` gives no 0 * inf); computed once per call and shared by the
    adapted policies of all tasks instead of once per task.
    """
    for s in range(f.shape[0]):
        _rl.scale_energy_row(f, s, inv_tau, z0)


@jit(inline="always")
def adapted_policy(z0, Q, eta, out):
    """out[s] = softmax(z0[s] + eta (Q[s] - max Q[s])): ``softmax_policy(f, inv_tau, Q, eta)`` from z0.

    Bit for bit the per-task path's arithmetic, with the energy part read from z0.
    """
    for s in range(Q.shape[0]):
        for a in range(Q.shape[1]):
            out[s, a] = z0[s, a]
        _rl.adapt_and_normalise_row(out, s, Q, eta)


@jit(inline="always")
def one_task(indptr, indices, data, row0, Pk, gamma, r, init, z0, pi, inv_tau, eta, lu_main, want_grad,
             V, Q, adv, pi_i, M_i, V_i, Q_i, adv_i, nu, sigma, xi, grad, tmp):
    """One task's objective J_i (returned) and, if ``want_grad``, dL_i/df into ``grad``.

    ``lu_main`` holds the LU factors of the main effect's M for this task's kernel
    and discount, ``z0`` the energy part of the logits (:func:`scaled_energy`), ``Pk``
    the kernel's dense rows (S*A x S) or an empty array (then its CSR rows). Every
    other array is an output or a workspace (``M_i`` ends as the adapted policy's LU
    factors); see :class:`fastmeta.rl.TaskTrace` for their meaning.
    """
    S, A = pi.shape
    _policy_average(pi, r, tmp)
    lu_solve(lu_main, tmp, V)
    for s in range(S):
        V[s] *= 1.0 - gamma
    _bellman_q(indptr, indices, data, row0, Pk, r, V, gamma, Q)
    # The same arithmetic as the per-task path: advantages centred under their policy
    # (exact zeros where it is saturated) and a softmax exact for logits of any size.
    _centred_advantage(Q, pi, adv)
    adapted_policy(z0, Q, eta, pi_i)
    _policy_matrix(indptr, indices, data, row0, Pk, pi_i, gamma, M_i)
    lu_inplace(M_i)
    _policy_average(pi_i, r, tmp)
    lu_solve(M_i, tmp, V_i)
    J = 0.0
    for s in range(S):
        V_i[s] *= 1.0 - gamma
        J += init[s] * V_i[s]
    if not want_grad:
        return J
    _bellman_q(indptr, indices, data, row0, Pk, r, V_i, gamma, Q_i)
    lu_solve_transposed(M_i, init, nu)
    for s in range(S):
        nu[s] *= 1.0 - gamma
    _centred_advantage(Q_i, pi_i, adv_i)
    for s in range(S):  # sigma_i and, in grad until the last loop, sigma_i A_i
        for a in range(A):
            sigma[s, a] = nu[s] * pi_i[s, a]
            grad[s, a] = sigma[s, a] * adv_i[s, a]
    _kernel_transpose_apply(indptr, indices, data, row0, Pk, grad, tmp)  # mu = P^T (sigma_i A_i)
    lu_solve_transposed(lu_main, tmp, xi)
    c_own = inv_tau / (1.0 - gamma)
    c_meta = eta * gamma * inv_tau / ((1.0 - gamma) * (1.0 - gamma))
    for s in range(S):
        xi[s] *= 1.0 - gamma
        # as add_own_term / add_meta_term: exact zeros skipped (no 0 * inf), c_meta xi first
        cx = c_meta * xi[s] if (c_meta != 0.0 and xi[s] != 0.0) else 0.0
        for a in range(A):
            g = 0.0
            w = grad[s, a]
            if w != 0.0:
                g = c_own * w
            w = pi[s, a] * adv[s, a]
            if cx != 0.0 and w != 0.0:
                g += cx * w
            grad[s, a] = g
    return J


@jit(inline="always")
def kernel_rows(Pd, q):
    """Kernel q's dense rows (S*A x S), or an empty array when the batch keeps kernels as CSR only."""
    return Pd[q] if Pd.shape[1] > 0 else Pd[0]


@jit
def factor_group(indptr, indices, data, Pd, kernel, gamma, pi, out):
    """out <- LU factors of I - gamma P_pi for one kernel of a batch (``Pd``: dense kernels or empty)."""
    S, A = pi.shape
    _policy_matrix(indptr, indices, data, kernel * S * A, kernel_rows(Pd, kernel), pi, gamma, out)
    lu_inplace(out)


# ---------------------------------------------------------------- packed batches
HEADER = 6
"""``ints[:HEADER]`` of a packed batch: n tasks, G groups, K kernels, nnz, number of shared groups,
1 if the kernels are also stored dense."""


@jit(inline="always")
def unpack(ints, floats, S, A):
    """Views of a packed batch (see ``fastmeta._rl_batch``): two buffers, so a call passes two arrays.

    ints = header, indptr (K*S*A + 1), indices (nnz), group_kernel (G), group_slot (G:
    the group's place among the shared factorisations, -1 for a group of one task),
    task_group (n); floats = data (nnz), group_gamma (G), r (n*S*A), init (n*S), then the
    dense kernels Pd (K x S*A x S) if stored (else Pd is an empty 1 x 0 x S array).
    """
    n, G, K, nnz = ints[0], ints[1], ints[2], ints[3]
    o = HEADER
    indptr = ints[o:o + K * S * A + 1]
    o += K * S * A + 1
    indices = ints[o:o + nnz]
    o += nnz
    group_kernel = ints[o:o + G]
    group_slot = ints[o + G:o + 2 * G]
    task_group = ints[o + 2 * G:o + 2 * G + n]
    data = floats[:nnz]
    group_gamma = floats[nnz:nnz + G]
    o = nnz + G
    r = floats[o:o + n * S * A].reshape((n, S, A))
    o += n * S * A
    init = floats[o:o + n * S].reshape((n, S))
    o += n * S
    if ints[5]:
        Pd = floats[o:o + K * S * A * S].reshape((K, S * A, S))
    else:
        Pd = floats[o:o].reshape((1, 0, S))
    return indptr, indices, data, group_kernel, group_slot, group_gamma, task_group, r, init, Pd


@jit
def _task_queue(ints, floats, z0, pi, inv_tau, eta, want_grad, queue, lu_shared, J_out, slots):
    """Tasks of a packed batch taken one after the other from ``queue`` (see ``work_queue``), one workspace."""
    S, A = pi.shape
    indptr, indices, data, group_kernel, group_slot, group_gamma, task_group, r, init, Pd = unpack(ints, floats, S, A)
    ws = np.empty(2 * S * S + 5 * S + 6 * S * A)
    lu_own = ws[:S * S].reshape((S, S))
    M_i = ws[S * S:2 * S * S].reshape((S, S))
    o = 2 * S * S
    V, V_i, nu, xi, tmp = ws[o:o + S], ws[o + S:o + 2 * S], ws[o + 2 * S:o + 3 * S], \
        ws[o + 3 * S:o + 4 * S], ws[o + 4 * S:o + 5 * S]
    o += 5 * S
    mats = ws[o:o + 6 * S * A].reshape((6, S, A))
    Q, adv, pi_i, Q_i, adv_i, sigma = mats[0], mats[1], mats[2], mats[3], mats[4], mats[5]
    n = J_out.size
    while True:
        i = take_next(queue)
        if i >= n:
            break
        g = task_group[i]
        gamma = group_gamma[g]
        slot = group_slot[g]
        if slot >= 0:
            lu_main = lu_shared[slot]
        else:  # the group's only task: its main effect is factorised here, by the thread computing it
            factor_group(indptr, indices, data, Pd, group_kernel[g], gamma, pi, lu_own)
            lu_main = lu_own
        J_out[i] = one_task(indptr, indices, data, group_kernel[g] * S * A, kernel_rows(Pd, group_kernel[g]), gamma,
                            r[i], init[i], z0, pi,
                            inv_tau, eta, lu_main, want_grad, V, Q, adv, pi_i, M_i, V_i, Q_i, adv_i, nu, sigma,
                            xi, slots[i if want_grad else 0], tmp)


@jit
def sum_in_task_order(J_out, slots, want_grad, grad_out):
    """sum_i J_out[i], and grad_out = sum_i slots[i] with want_grad: in task order, whatever
    thread computed which task (the batch kernels' results do not depend on the thread count)."""
    n = J_out.size
    total = 0.0
    for i in range(n):
        total += J_out[i]
    if want_grad:
        size = grad_out.size
        flat_out = grad_out.reshape(size)
        flat = slots.reshape((n, size))
        flat_out[:] = flat[0]
        for i in range(1, n):
            for p in range(size):
                flat_out[p] += flat[i, p]
    return total


@sized
def batch_meta_grad(ints, floats, f, pi, inv_tau, eta, want_grad, n_workers, grad_out):
    """A packed batch's tasks in one call: returns sum_i J_i, and grad_out = sum_i dL_i/df if ``want_grad``.

    1. the main-effect LU of every group shared by several tasks (parallel over
       them); a group of one task is factorised with that task, in step 2;
    2. every task (``n_workers`` in parallel, each with one workspace, taking the
       tasks one at a time from a shared counter: which thread computes a task
       changes nothing), J_i into a slot of its own and dL_i/df into another;
    3. the sums, serially in task order (one parallel region per call: waking the
       threads costs more than these sums).
    """
    S, A = pi.shape
    n, G, n_shared = ints[0], ints[1], ints[4]
    z0 = np.empty((S, A))
    scaled_energy(f, inv_tau, z0)
    lu_shared = np.empty((n_shared, S, S))
    if n_shared > 0:
        indptr, indices, data, group_kernel, group_slot, group_gamma, _, _, _, Pd = unpack(ints, floats, S, A)
        for g in prange(G):
            if group_slot[g] >= 0:
                factor_group(indptr, indices, data, Pd, group_kernel[g], group_gamma[g], pi,
                             lu_shared[group_slot[g]])
    J_out = np.empty(n)
    slots = np.empty((n if want_grad else 1, S, A))
    queue = np.zeros(1, dtype=np.int64)
    for _ in prange(n_workers):
        _task_queue(ints, floats, z0, pi, inv_tau, eta, want_grad, queue, lu_shared, J_out, slots)
    return sum_in_task_order(J_out, slots, want_grad, grad_out)


# ---------------------------------------------------------------- one call for a linear energy
_linear_energy = _rl.linear_energy.serial
_linear_energy_vjp = _rl.linear_energy_vjp.serial
_batch_meta_grad_serial = batch_meta_grad.serial


@jit(inline="always")
def linear_prologue(phi, theta, inv_tau, want_grad):
    """(f, pi, dL/df buffer) of a linear-energy call: f = phi theta and pi = softmax(f / tau),
    by the serial twins of the kernels the general path calls, so with their bits."""
    S, A, _ = phi.shape
    f = np.empty((S, A))
    _linear_energy(phi, theta, f)
    pi = np.empty((S, A))
    _softmax_policy(f, inv_tau, f, 0.0, pi)
    grad = np.empty((S, A)) if want_grad else np.empty((0, 0))
    return f, pi, grad


@exact_division_jit
def divide(x, n):
    """x /= n, entry by entry, as NumPy's ``x /= n`` (the general path's mean) rounds it."""
    x /= n


@jit(inline="always")
def linear_epilogue(phi, total, n_total, want_grad, grad, out):
    """(L, finite) from the batch's sum of J_i; with ``want_grad``, out = grad_theta L = phi^T (dL/df)."""
    value = total / n_total  # rl.mean_of_sums
    if not np.isfinite(value):  # a non-finite f shows in L (a NaN policy) or in the gradient
        return value, False
    if not want_grad:
        return value, True
    divide(grad, n_total)
    _linear_energy_vjp(phi, grad, out)
    return value, all_finite(out)


@jit
def linear_batch_serial(phi, theta, ints, floats, inv_tau, eta, want_grad, n_total, out):
    """(L, all finite) and out = grad_theta L of a one-batch problem with a linear energy, in one call.

    The calls of the general path (energy, main policy, :func:`batch_meta_grad`'s serial
    twin, mean, vector-Jacobian product, finiteness check) in its order, so its bits,
    without a Python-level dispatch for each: for a task of 10 states those dispatches
    and their temporaries cost as much as the task's arithmetic.
    """
    f, pi, grad = linear_prologue(phi, theta, inv_tau, want_grad)
    total = _batch_meta_grad_serial(ints, floats, f, pi, inv_tau, eta, want_grad, 1, grad)
    return linear_epilogue(phi, total, n_total, want_grad, grad, out)
