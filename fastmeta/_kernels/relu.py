"""Two-layer ReLU network kernels: forward, jvp, vjp and the fused meta-SL task loop.

u(x; W) = sum_r sb[r] ReLU(W_r . x) with sb = b / sqrt(m). Kernels take the weights
transposed, WT of shape (in_dim, m), so that every inner loop runs over the m hidden
units: contiguous and long, which is what the vectoriser needs (in_dim is often 2-8).
Gradients come back in the same (in_dim, m) layout; the public wrappers transpose.
The kernels compile without reassociation, so the sums over hidden units are
``sl.dot`` (eight fixed-order accumulators) after a separate masking pass: a single
chain ``acc += ...`` would run at the latency of one addition per unit.

Determinism: forward and jvp give each row to one thread; vjp gives each block of
hidden units to one thread, which sums over rows in row order; the meta kernel gives
each task to one thread and sums tasks in task order. Chunks and blocks are fixed by
the problem size, never by the thread count.

Private: no validation; float64 C-contiguous arrays, int64 offsets.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._config import N_CHUNKS, jit, pjit
from .sl import MODE_EXACT, MODE_VALUE, dot, loss_d1, loss_d2, loss_value

BLOCK = 128  # hidden units per block of the vjp and of the task mean


@jit
def _pre(WT, x, out):
    """out[r] = W_r . x for every hidden unit r."""
    p, m = WT.shape
    x0 = x[0]
    for r in range(m):
        out[r] = x0 * WT[0, r]
    for k in range(1, p):
        xk = x[k]
        for r in range(m):
            out[r] += xk * WT[k, r]


@jit
def _relu(v):
    """v <- max(v, 0) elementwise (NaN -> 0, as a skipped unit)."""
    for r in range(v.shape[0]):
        v[r] = v[r] if v[r] > 0.0 else 0.0


@pjit
def relu_forward(WT, sb, X, out):
    """out[j] = u(X[j]; W)."""
    n_rows = X.shape[0]
    m = WT.shape[1]
    n_chunks = min(N_CHUNKS, n_rows)
    for c in prange(n_chunks):
        tmp = np.empty(m)
        for j in range(c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks):
            _pre(WT, X[j], tmp)
            _relu(tmp)
            out[j] = dot(sb, tmp)


@pjit
def relu_jvp(WT, sb, X, VT, out):
    """out[j] = d u(X[j]; W) / dW [V] = sum_r sb[r] 1[W_r . x > 0] V_r . x."""
    n_rows = X.shape[0]
    m = WT.shape[1]
    n_chunks = min(N_CHUNKS, n_rows)
    for c in prange(n_chunks):
        tmp = np.empty(m)
        tmv = np.empty(m)
        for j in range(c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks):
            _pre(WT, X[j], tmp)
            _pre(VT, X[j], tmv)
            for r in range(m):
                tmv[r] = tmv[r] if tmp[r] > 0.0 else 0.0
            out[j] = dot(sb, tmv)


@pjit
def relu_vjp(WT, sb, X, g, outT):
    """outT[k, r] = sum_j g[j] d u(X[j]; W) / dW[r, k] = sum_j g[j] sb[r] 1[W_r . x_j > 0] x_j[k]."""
    p, m = WT.shape
    n_rows = X.shape[0]
    n_blocks = (m + BLOCK - 1) // BLOCK
    for c in prange(n_blocks):
        r0 = c * BLOCK
        bl = min(m, r0 + BLOCK) - r0
        # Private contiguous copies of the block: the loops below then vectorise
        # (indexing the shared arrays at r0 + t ran about 5x slower).
        W = np.empty((p, bl))
        for k in range(p):
            for t in range(bl):
                W[k, t] = WT[k, r0 + t]
        s = sb[r0:r0 + bl].copy()
        G = np.zeros((p, bl))
        tmp = np.empty(bl)
        for j in range(n_rows):
            gj = g[j]
            x0 = X[j, 0]
            for t in range(bl):
                tmp[t] = x0 * W[0, t]
            for k in range(1, p):
                xk = X[j, k]
                for t in range(bl):
                    tmp[t] += xk * W[k, t]
            for t in range(bl):
                tmp[t] = gj * s[t] if tmp[t] > 0.0 else 0.0
            for k in range(p):
                xk = X[j, k]
                for t in range(bl):
                    G[k, t] += xk * tmp[t]
        for k in range(p):
            for t in range(bl):
                outT[k, r0 + t] = G[k, t]


@jit
def _relu_task(i, WT, sb, Xs, ys, offs, Xq, yq, offq, eta, loss, mode, A, hs, task_loss, task_grad):
    """Task i of the meta-objective; task_grad[i] (in_dim, m) gets (I - eta H_i) grad R_i^q(W_i)."""
    p, m = WT.shape
    s0, s1 = offs[i], offs[i + 1]
    q0, q1 = offq[i], offq[i + 1]
    inv_s = 1.0 / (s1 - s0)
    inv_q = 1.0 / (q1 - q0)
    tmp = np.empty(m)
    GT = np.zeros((p, m))
    # Support forward pass; A[j, r] = sb[r] 1[W_r . x_j > 0] is the Jacobian row of sample j
    # (times x_j), kept for the Gauss-Newton product below.
    for j in range(s0, s1):
        _pre(WT, Xs[j], tmp)
        for r in range(m):
            A[j, r] = sb[r] if tmp[r] > 0.0 else 0.0
        acc = dot(A[j], tmp)
        hs[j] = acc
        c = loss_d1(acc, ys[j], loss) * inv_s
        for k in range(p):
            cx = c * Xs[j, k]
            for r in range(m):
                GT[k, r] += cx * A[j, r]
    # Inner step (4.3).
    WiT = np.empty((p, m))
    for k in range(p):
        for r in range(m):
            WiT[k, r] = WT[k, r] - eta * GT[k, r]
    VT = task_grad[i]
    if mode != MODE_VALUE:
        VT[:, :] = 0.0
    acc_loss = 0.0
    for j in range(q0, q1):
        _pre(WiT, Xq[j], tmp)
        _relu(tmp)
        h = dot(sb, tmp)
        acc_loss += loss_value(h, yq[j], loss)
        if mode != MODE_VALUE:
            c = loss_d1(h, yq[j], loss) * inv_q
            for r in range(m):
                tmp[r] = c * sb[r] if tmp[r] > 0.0 else 0.0
            for k in range(p):
                xk = Xq[j, k]
                for r in range(m):
                    VT[k, r] += xk * tmp[r]
    task_loss[i] = acc_loss * inv_q
    if mode != MODE_EXACT:
        return
    # Gauss-Newton product H V = J^T diag(l''/N) J V on the support set; exact for ReLU
    # away from the kinks, where the second derivative of u in W vanishes.
    GT[:, :] = 0.0
    for j in range(s0, s1):
        _pre(VT, Xs[j], tmp)
        jv = dot(A[j], tmp)
        c = loss_d2(hs[j], ys[j], loss) * inv_s * jv
        for k in range(p):
            cx = c * Xs[j, k]
            for r in range(m):
                GT[k, r] += cx * A[j, r]
    for k in range(p):
        for r in range(m):
            VT[k, r] -= eta * GT[k, r]


@pjit
def relu_meta(WT, sb, Xs, ys, offs, Xq, yq, offq, eta, loss, mode, task_loss, out):
    """Meta-objective terms task_loss (n,) and, unless MODE_VALUE, out (m, in_dim) = mean_i grads."""
    p, m = WT.shape
    n = offs.shape[0] - 1
    A = np.empty((Xs.shape[0], m))
    hs = np.empty(Xs.shape[0])
    # Untouched (so never paged in) when only the objective is wanted.
    task_grad = np.empty((n, p, m))
    for i in prange(n):
        _relu_task(i, WT, sb, Xs, ys, offs, Xq, yq, offq, eta, loss, mode, A, hs, task_loss, task_grad)
    if mode == MODE_VALUE:
        return
    # Mean over tasks, in task order, one block of hidden units per thread; written
    # straight into the (m, in_dim) layout of the flat parameter vector.
    n_blocks = (m + BLOCK - 1) // BLOCK
    inv = 1.0 / n
    for c in prange(n_blocks):
        r0 = c * BLOCK
        r1 = min(m, r0 + BLOCK)
        buf = np.zeros((p, r1 - r0))
        for t in range(n):
            for k in range(p):
                for r in range(r0, r1):
                    buf[k, r - r0] += task_grad[t, k, r]
        for r in range(r0, r1):
            for k in range(p):
                out[r, k] = buf[k, r - r0] * inv
