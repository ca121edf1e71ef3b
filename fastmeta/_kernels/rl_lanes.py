"""The batched meta-gradient of small tasks, ``LANES`` tasks at a time in lockstep.

Private: no validation, callers allocate outputs. The per-task chain of
:mod:`fastmeta._kernels.rl_batched` is a sequence of short loops (16-64 iterations
at S = 16) and of dot products, which the compiler cannot vectorise without
reordering the sums. Here a block of ``LANES`` tasks is stored with the task index
innermost (``x[s, a, w]`` is task w's ``x[s, a]``), and every step runs over the
lanes in its innermost loop: the same scalar operations, in the same order, for
each task, and the lanes side by side in the vector registers. Each lane therefore
computes what ``rl_batched.one_task`` computes for its task (the branches that skip
exact zeros become selects of the same values), and a block is computed
by one thread into slots of its own: the result does not depend on the number of
threads.

The one exception is the exponential of the adapted policies' softmax: the C
library's ``exp`` is one call per value, which the compiler cannot vectorise (14% of
the time at S = 16); :func:`exp_nonpositive` is a polynomial it vectorises, within 2
units in the last place of the C library's value, so the lanes and the task-by-task
kernel agree to rounding, not bit for bit.

Every lane builds and factorises its own main-effect matrix from its own copy of
its kernel (dense, ``S*A x S``): LU without pivoting, valid since M = I - gamma P_pi
is strictly row diagonally dominant (see :mod:`fastmeta._kernels.rl_batched`).
A block's unused lanes (the last block of a batch) hold a copy of its first task;
their results are not read.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._config import jit, sized
from .rl_batched import linear_epilogue, linear_prologue, scaled_energy, sum_in_task_order
from .work_queue import take_next

LANES = 32
"""Tasks per block. Every inner loop runs over the lanes, so more lanes spread each loop's
fixed cost (the compiler's checks that its arrays do not overlap) over more arithmetic:
S = 16, 64 tasks, one thread: 16, 32, 64 lanes 211-217, 181-194, 166 us per gradient
(the tasks one by one 555-655 us); at S = 32, 64 lanes are slower than 32 (898 / 793 us),
and 64 lanes would leave a batch of 64 tasks a single block for two threads."""


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float64 whose IEEE 754 bits are the int64 ``bits`` (a no-op in machine code)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 in two parts: k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10
_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13 = (1.0 / math.factorial(k) for k in range(2, 14))


@jit
def exp_nonpositive(x):
    """exp(x) for x <= 0 (and -inf, NaN), in operations the compiler vectorises.

    x = k ln 2 + r with |r| <= ln 2 / 2, exp(r) by its Taylor polynomial of degree 13
    (truncation below 1e-17 relative), times 2^k built from its bits in two factors (so
    that results below the normal range round to subnormals and 0 as the C library's
    do). Within 2 units in the last place of the C library's ``exp`` (measured on 2e6
    points of [-800, 0]), the same zeros.
    """
    xc = x if x > -746.0 else -746.0  # exp(-746) is 0 in float64; also keeps int(k) defined for -inf
    k = np.floor(xc * _LOG2E + 0.5)
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    p = _C13
    p = p * r + _C12
    p = p * r + _C11
    p = p * r + _C10
    p = p * r + _C9
    p = p * r + _C8
    p = p * r + _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + 1.0
    p = p * r + 1.0
    ki = np.int64(k)
    k1 = ki if ki > -1020 else -1020
    y = p * _float_from_bits((k1 + 1023) << 52) * _float_from_bits((ki - k1 + 1023) << 52)
    return y if x == x else x


@jit
def block_views(buf, b, S, A):
    """Block b of a lane-packed buffer: P (S*A, S, W), r (S, A, W), init (S, W), gamma (W)."""
    W = LANES
    size = (S * A * S + S * A + S + 1) * W
    o = b * size
    P = buf[o:o + S * A * S * W].reshape((S * A, S, W))
    o += S * A * S * W
    r = buf[o:o + S * A * W].reshape((S, A, W))
    o += S * A * W
    init = buf[o:o + S * W].reshape((S, W))
    o += S * W
    gamma = buf[o:o + W]
    return P, r, init, gamma


@jit
def _average(pi, r, out):
    """out[s, w] = sum_a pi[s, a, w] r[s, a, w]."""
    S, A, W = r.shape
    for s in range(S):
        for w in range(W):
            out[s, w] = 0.0
        for a in range(A):
            for w in range(W):
                out[s, w] += pi[s, a, w] * r[s, a, w]


@jit
def _scale(x, gamma):
    """x[s, w] *= 1 - gamma[w]."""
    S, W = x.shape
    for s in range(S):
        for w in range(W):
            x[s, w] *= 1.0 - gamma[w]


@jit
def _policy_matrix(P, pi, gamma, scale, out):
    """out = I - gamma P_pi for every lane.

    ``scale`` (W,) is a workspace: a buffer allocated here would cost a heap allocation per call."""
    S, _, W = out.shape
    A = P.shape[0] // S
    for s in range(S):
        row = out[s]
        for j in range(S):
            for w in range(W):
                row[j, w] = 0.0
        for w in range(W):
            row[s, w] = 1.0
        for a in range(A):
            p = P[s * A + a]
            for w in range(W):
                scale[w] = -gamma[w] * pi[s, a, w]
            for j in range(S):
                for w in range(W):
                    row[j, w] += scale[w] * p[j, w]


@jit
def _lu(a, inv):
    """Every lane's a <- its LU factors: ``rl_batched.lu_inplace``'s operations, in its order (``inv``: (W,))."""
    n, _, W = a.shape
    for k0 in range(0, n, 4):
        e = min(k0 + 4, n)
        for k in range(k0, e):  # panel
            for w in range(W):
                inv[w] = 1.0 / a[k, k, w]
            for i in range(k + 1, n):
                for w in range(W):
                    a[i, k, w] *= inv[w]
                for j in range(k + 1, e):
                    for w in range(W):
                        a[i, j, w] -= a[i, k, w] * a[k, j, w]
        for k in range(k0, e):  # the panel's rows of U
            for i in range(k + 1, e):
                for j in range(e, n):
                    for w in range(W):
                        a[i, j, w] -= a[i, k, w] * a[k, j, w]
        if e - k0 < 4:  # then e == n: nothing left to update
            continue
        for i in range(e, n):
            for j in range(e, n):
                for w in range(W):
                    a[i, j, w] -= (a[i, k0, w] * a[k0, j, w] + a[i, k0 + 1, w] * a[k0 + 1, j, w]
                                   + a[i, k0 + 2, w] * a[k0 + 2, j, w] + a[i, k0 + 3, w] * a[k0 + 3, j, w])


@jit
def _solve(lu, b, x):
    """x = (LU)^{-1} b per lane (``rl_batched.lu_solve``'s order)."""
    n, W = b.shape
    for i in range(n):
        for w in range(W):
            x[i, w] = b[i, w]
    for i in range(n):
        for k in range(i):
            for w in range(W):
                x[i, w] -= lu[i, k, w] * x[k, w]
    for i in range(n - 1, -1, -1):
        for k in range(i + 1, n):
            for w in range(W):
                x[i, w] -= lu[i, k, w] * x[k, w]
        for w in range(W):
            x[i, w] = x[i, w] / lu[i, i, w]


@jit
def _solve_transposed(lu, b, x):
    """x = (LU)^{-T} b per lane (``rl_batched.lu_solve_transposed``'s order; exact zeros skipped)."""
    n, W = b.shape
    for i in range(n):
        for w in range(W):
            x[i, w] = b[i, w]
    for k in range(n):
        for w in range(W):
            x[k, w] /= lu[k, k, w]
        for i in range(k + 1, n):
            for w in range(W):
                xk = x[k, w]
                x[i, w] = x[i, w] - lu[k, i, w] * xk if xk != 0.0 else x[i, w]
    for k in range(n - 1, -1, -1):
        for i in range(k):
            for w in range(W):
                xk = x[k, w]
                x[i, w] = x[i, w] - lu[k, i, w] * xk if xk != 0.0 else x[i, w]


@jit
def _bellman_q(P, r, V, gamma, out):
    """out[s, a, w] = (1 - gamma) r + gamma sum_j P[s*A + a, j, w] V[j, w] per lane.

    The sum over j in order for each (s, a), the A actions of a state side by side (V[j]
    read once for all of them: 1.7x faster at S = 16 than one action at a time)."""
    S, A, W = r.shape
    for s in range(S):
        o = out[s]
        for a in range(A):
            for w in range(W):
                o[a, w] = 0.0
        Ps = P[s * A:(s + 1) * A]
        for j in range(S):
            v = V[j]
            for a in range(A):
                p = Ps[a, j]
                oa = o[a]
                for w in range(W):
                    oa[w] += p[w] * v[w]
        for a in range(A):
            for w in range(W):
                o[a, w] = (1.0 - gamma[w]) * r[s, a, w] + gamma[w] * o[a, w]


@jit
def _centred(Q, pi, v, out):
    """out = Q - sum_b pi(b|s) Q(s, b) per lane (``centred_advantage``: exact zeros of pi skipped; ``v``: (W,))."""
    S, A, W = Q.shape
    for s in range(S):
        for w in range(W):
            v[w] = 0.0
        for a in range(A):
            for w in range(W):
                p = pi[s, a, w]
                v[w] = v[w] + p * Q[s, a, w] if p != 0.0 else v[w]
        for a in range(A):
            for w in range(W):
                out[s, a, w] = Q[s, a, w] - v[w]


@jit
def _adapted_policy(z0, Q, eta, lane, out):
    """out[s] = softmax(z0[s] + eta (Q[s] - max Q[s])) per lane (``adapt_and_normalise_row``'s arithmetic).

    ``lane`` (3, W) is a workspace."""
    S, A, W = Q.shape
    qmax, m, total = lane[0], lane[1], lane[2]
    for s in range(S):
        for w in range(W):
            qmax[w] = -np.inf
            m[w] = -np.inf
            total[w] = 0.0
        for a in range(A):
            for w in range(W):
                qmax[w] = Q[s, a, w] if Q[s, a, w] > qmax[w] else qmax[w]
        for a in range(A):
            z0sa = z0[s, a]
            for w in range(W):
                z = z0sa
                if eta != 0.0:
                    dq = Q[s, a, w] - qmax[w]
                    z = z + eta * dq if dq != 0.0 else z
                out[s, a, w] = z
                m[w] = z if z > m[w] else m[w]
        for a in range(A):
            for w in range(W):
                e = exp_nonpositive(out[s, a, w] - m[w])
                out[s, a, w] = e
                total[w] += e
        for w in range(W):
            total[w] = 1.0 / total[w]
        for a in range(A):
            for w in range(W):
                out[s, a, w] *= total[w]


@jit
def _transpose_apply(P, x, out):
    """out[j, w] = sum_{s,a} x[s, a, w] P[s*A + a, j, w], rows in (s, a) order, exact zeros of x skipped."""
    S, A, W = x.shape
    for j in range(S):
        for w in range(W):
            out[j, w] = 0.0
    for s in range(S):
        for a in range(A):
            p = P[s * A + a]
            xs = x[s, a]
            for j in range(S):
                for w in range(W):
                    out[j, w] = out[j, w] + xs[w] * p[j, w] if xs[w] != 0.0 else out[j, w]


@jit
def one_block(P, r, init, gamma, z0, pi, inv_tau, eta, want_grad, lu_main, M_i, vecs, mats, lane, J, grad):
    """A block's tasks: J[w] = J_i of lane w and, if ``want_grad``, grad[w] = dL_i/df (S, A).

    ``rl_batched.one_task`` for ``LANES`` tasks at once (see its docstring for the
    steps), with the main policy ``pi`` copied into every lane (S, A, W); ``lu_main``,
    ``M_i`` (S, S, W), ``vecs`` (5, S, W), ``mats`` (7, S, A, W) and ``lane`` (3, W)
    are workspaces.
    """
    S, A, W = r.shape
    V, V_i, nu, xi, tmp = vecs[0], vecs[1], vecs[2], vecs[3], vecs[4]
    Q, adv, pi_i, Q_i, adv_i, sigma, g = mats[0], mats[1], mats[2], mats[3], mats[4], mats[5], mats[6]
    _policy_matrix(P, pi, gamma, lane[0], lu_main)
    _lu(lu_main, lane[0])
    _average(pi, r, tmp)
    _solve(lu_main, tmp, V)
    _scale(V, gamma)
    _bellman_q(P, r, V, gamma, Q)
    _centred(Q, pi, lane[0], adv)
    _adapted_policy(z0, Q, eta, lane, pi_i)
    _policy_matrix(P, pi_i, gamma, lane[0], M_i)
    _lu(M_i, lane[0])
    _average(pi_i, r, tmp)
    _solve(M_i, tmp, V_i)
    _scale(V_i, gamma)
    acc = lane[0]
    for w in range(W):
        acc[w] = 0.0
    for s in range(S):
        for w in range(W):
            acc[w] += init[s, w] * V_i[s, w]
    for w in range(J.size):
        J[w] = acc[w]
    if not want_grad:
        return
    _bellman_q(P, r, V_i, gamma, Q_i)
    _solve_transposed(M_i, init, nu)
    _scale(nu, gamma)
    _centred(Q_i, pi_i, lane[0], adv_i)
    for s in range(S):
        for a in range(A):
            for w in range(W):
                sigma[s, a, w] = nu[s, w] * pi_i[s, a, w]
                g[s, a, w] = sigma[s, a, w] * adv_i[s, a, w]
    _transpose_apply(P, g, tmp)  # mu = P^T (sigma_i A_i)
    _solve_transposed(lu_main, tmp, xi)
    _scale(xi, gamma)
    c_own, c_meta, cx = lane[0], lane[1], lane[2]
    for w in range(W):
        c_own[w] = inv_tau / (1.0 - gamma[w])
        c_meta[w] = eta * gamma[w] * inv_tau / ((1.0 - gamma[w]) * (1.0 - gamma[w]))
    for s in range(S):
        for w in range(W):
            # as one_task: exact zeros skipped (no 0 * inf), c_meta xi first
            cx[w] = c_meta[w] * xi[s, w] if (c_meta[w] != 0.0 and xi[s, w] != 0.0) else 0.0
        for a in range(A):
            for w in range(W):
                x = g[s, a, w]
                val = c_own[w] * x if x != 0.0 else 0.0
                x = pi[s, a, w] * adv[s, a, w]
                g[s, a, w] = val + cx[w] * x if (cx[w] != 0.0 and x != 0.0) else val
    for w in range(grad.shape[0]):
        for s in range(S):
            for a in range(A):
                grad[w, s, a] = g[s, a, w]


@jit
def _block_queue(buf, n, z0, pi, inv_tau, eta, want_grad, queue, J_out, slots):
    """Blocks of a lane-packed batch taken one after the other from ``queue`` (see ``work_queue``), one workspace."""
    S, A, W = pi.shape
    lu_main = np.empty((S, S, W))
    M_i = np.empty((S, S, W))
    vecs = np.empty((5, S, W))
    mats = np.empty((7, S, A, W))
    lane = np.empty((3, W))
    n_blocks = (n + W - 1) // W
    while True:
        b = take_next(queue)
        if b >= n_blocks:
            break
        P, r, init, gamma = block_views(buf, b, S, A)
        t0 = b * W
        t1 = min(t0 + W, n)
        one_block(P, r, init, gamma, z0, pi, inv_tau, eta, want_grad, lu_main, M_i, vecs, mats, lane,
                  J_out[t0:t1], slots[t0:t1] if want_grad else slots[0:0])


@sized
def lanes_meta_grad(buf, n, f, pi, inv_tau, eta, want_grad, n_workers, grad_out):
    """A lane-packed batch of n tasks: returns sum_i J_i, and grad_out = sum_i dL_i/df if ``want_grad``.

    ``rl_batched.batch_meta_grad`` for a batch packed by lanes (``fastmeta._rl_batch``):
    ``n_workers`` threads take the blocks one at a time from a shared counter (which
    thread computes a block changes nothing), the sums run serially in task order.
    """
    S, A = pi.shape
    W = LANES
    z0 = np.empty((S, A))
    scaled_energy(f, inv_tau, z0)
    pi_lanes = np.empty((S, A, W))  # the main policy, the same in every lane
    for s in range(S):
        for a in range(A):
            for w in range(W):
                pi_lanes[s, a, w] = pi[s, a]
    J_out = np.empty(n)
    slots = np.empty((n if want_grad else 1, S, A))
    queue = np.zeros(1, dtype=np.int64)
    for _ in prange(n_workers):
        _block_queue(buf, n, z0, pi_lanes, inv_tau, eta, want_grad, queue, J_out, slots)
    return sum_in_task_order(J_out, slots, want_grad, grad_out)


_lanes_meta_grad_serial = lanes_meta_grad.serial


@jit
def linear_lanes_serial(phi, theta, buf, n, inv_tau, eta, want_grad, n_total, out):
    """``rl_batched.linear_batch_serial`` for a batch packed by lanes (one compiled call)."""
    f, pi, grad = linear_prologue(phi, theta, inv_tau, want_grad)
    total = _lanes_meta_grad_serial(buf, n, f, pi, inv_tau, eta, want_grad, 1, grad)
    return linear_epilogue(phi, total, n_total, want_grad, grad, out)
