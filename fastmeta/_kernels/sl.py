"""Meta-SL kernels shared by every model: losses, the linear-model meta-gradient, task sums.

Private: no validation, no Python objects. Arrays are float64 C-contiguous, offsets
int64, as packed once by :class:`fastmeta.MetaSL`. Loss codes: 0 squared, 1 logistic.

Tasks are laid out as concatenated sample arrays with offsets: task i owns rows
``off[i]:off[i+1]``. Per-task results are written to their own row of a
(n_tasks, ...) buffer inside the task loop and summed over tasks afterwards in
task order, so the result does not depend on how many threads ran the loop.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._config import jit, sized

SQUARED = 0
LOGISTIC = 1

MODE_VALUE = 0        # objective only
MODE_EXACT = 1        # objective and exact second-order meta-gradient
MODE_FIRST_ORDER = 2  # objective and first-order MAML gradient (drops the Hessian term)


@jit
def loss_value(h, y, loss):
    """l(h, y): squared 1/2 (h - y)^2, or logistic softplus(h) - y h without overflow."""
    if loss == SQUARED:
        d = h - y
        return 0.5 * d * d
    # softplus(h) - y h written so that no exp overflows and, for large |h| with the
    # "right" label, the result is the tiny log1p term rather than a cancellation h - h.
    if h > 0.0:
        return (1.0 - y) * h + np.log1p(np.exp(-h))
    return np.log1p(np.exp(h)) - y * h


@jit
def loss_d1(h, y, loss):
    """dl/dh: h - y, or sigmoid(h) - y."""
    if loss == SQUARED:
        return h - y
    # For a confident correct prediction (h >> 0, y = 1) the residual is -e/(1+e) with
    # e = exp(-h); computed as 1/(1+e) - 1 it would round to 0. The label branches keep
    # that relative accuracy even under fast-math reassociation (labels are 0 or 1).
    if h >= 0.0:
        e = np.exp(-h)
        c = e / (1.0 + e)             # 1 - sigmoid(h)
        if y == 1.0:
            return -c
        return (1.0 - y) - c
    e = np.exp(h)
    s = e / (1.0 + e)                 # sigmoid(h)
    if y == 0.0:
        return s
    return s - y


@jit
def loss_d2(h, y, loss):
    """d2l/dh2: 1, or sigmoid(h) (1 - sigmoid(h)) = e / (1 + e)^2 with e = exp(-|h|)."""
    if loss == SQUARED:
        return 1.0
    e = np.exp(-abs(h))
    return e / ((1.0 + e) * (1.0 + e))


@jit(inline="always")
def dot(a, b):
    """sum_k a[k] b[k] in a fixed order that vectorises without reassociation.

    The kernels compile without ``reassoc`` (see ``_config``), so a serial sum
    ``acc += a[k] * b[k]`` is one chain of dependent additions that LLVM may not
    reorder. Eight accumulators, lane l summing k = l mod 8 in order, are eight
    independent chains that become vector instructions; they are combined in a
    fixed tree and the tail is added last. The order depends only on len(a):
    every compilation and thread count gives the same bits (2.5x faster than one
    chain at length 1024 on AVX2).
    """
    n = a.shape[0]
    n_blocks = n // 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for c in range(n_blocks):
        k = 8 * c
        s0 += a[k] * b[k]
        s1 += a[k + 1] * b[k + 1]
        s2 += a[k + 2] * b[k + 2]
        s3 += a[k + 3] * b[k + 3]
        s4 += a[k + 4] * b[k + 4]
        s5 += a[k + 5] * b[k + 5]
        s6 += a[k + 6] * b[k + 6]
        s7 += a[k + 7] * b[k + 7]
    acc = ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))
    for k in range(8 * n_blocks, n):
        acc += a[k] * b[k]
    return acc


@jit
def _linear_task(i, theta, Fs, ys, offs, Fq, yq, offq, eta, loss, mode, hs, tbuf, task_loss, task_grad):
    """Task i of the linear meta-objective h = F theta; fills task_loss[i] and task_grad[i]."""
    d = theta.shape[0]
    s0, s1 = offs[i], offs[i + 1]
    q0, q1 = offq[i], offq[i + 1]
    inv_s = 1.0 / (s1 - s0)
    inv_q = 1.0 / (q1 - q0)
    g = task_grad[i]
    ti = tbuf[i]
    # Inner step (4.3): theta_i = theta - eta grad R_i^support(theta).
    g[:] = 0.0
    for j in range(s0, s1):
        h = dot(Fs[j], theta)
        hs[j] = h
        c = loss_d1(h, ys[j], loss) * inv_s
        for k in range(d):
            g[k] += c * Fs[j, k]
    for k in range(d):
        ti[k] = theta[k] - eta * g[k]
    # Outer risk at theta_i, and v = grad R_i^query(theta_i).
    acc = 0.0
    if mode != MODE_VALUE:
        g[:] = 0.0
    for j in range(q0, q1):
        h = dot(Fq[j], ti)
        acc += loss_value(h, yq[j], loss)
        if mode != MODE_VALUE:
            c = loss_d1(h, yq[j], loss) * inv_q
            for k in range(d):
                g[k] += c * Fq[j, k]
    task_loss[i] = acc * inv_q
    if mode != MODE_EXACT:
        return
    # (I - eta H) v with H v = F^T diag(l''/N) F v, the exact Hessian of a linear model's risk.
    ti[:] = 0.0
    for j in range(s0, s1):
        c = loss_d2(hs[j], ys[j], loss) * inv_s * dot(Fs[j], g)
        for k in range(d):
            ti[k] += c * Fs[j, k]
    for k in range(d):
        g[k] -= eta * ti[k]


@sized
def linear_meta(theta, Fs, ys, offs, Fq, yq, offq, eta, loss, mode, task_loss, task_grad):
    """Fill task_loss (n,) and, unless mode == MODE_VALUE, task_grad (n, d); one task per iteration.

    Compiled serial (``linear_meta.serial``) and parallel over tasks
    (``linear_meta.parallel``); MetaSL picks one once, at construction.
    """
    n = offs.shape[0] - 1
    hs = np.empty(Fs.shape[0])
    tbuf = np.empty((n, theta.shape[0]))
    for i in prange(n):
        _linear_task(i, theta, Fs, ys, offs, Fq, yq, offq, eta, loss, mode, hs, tbuf, task_loss, task_grad)


@jit
def risk_terms(h, y, loss, values, d1, d2):
    """Per-sample l, l', l'' (used by the single-task helpers: risk, gradient, HVP, adapt)."""
    for j in range(h.shape[0]):
        values[j] = loss_value(h[j], y[j], loss)
        d1[j] = loss_d1(h[j], y[j], loss)
        d2[j] = loss_d2(h[j], y[j], loss)
