"""Multi-layer ReLU network kernels: forward, vjp, the R-operator Hessian-vector product
and the fused meta-SL task loop.

Layout. Layer l = 0..L maps sizes[l] inputs to sizes[l+1] outputs, z_l = W_l h_{l-1} + b_l,
h_l = ReLU(z_l) for the hidden layers, h_{-1} = x, and the scalar output f = z_L. The flat
theta holds W_l (row-major, sizes[l+1] x sizes[l]) at woff[l] and b_l at boff[l]. A
sample's activations (x, h_0, ..., h_{L-1}, f) live side by side in one vector, the input
of layer l at uoff[l] and its output at uoff[l+1]. Storing h rather than z keeps every
inner loop a branch-free dot product or axpy (h > 0 exactly where ReLU' = 1); the dot
products are ``sl.dot`` (eight fixed-order accumulators: they vectorise without reassoc).

Hessian-vector products follow Pearlmutter (1994): a forward pass of directional
derivatives R{z} (the R-operator) and a backward pass of R{delta}. ReLU'' is zero away
from the kinks, so the only curvature terms are those of the products W h: exact.

Determinism: every sum over samples runs in sample order; the meta kernel gives each
task its own output row and sums the rows in task order afterwards.

Private: no validation; float64 C-contiguous arrays, int64 layout arrays.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._config import jit, sized
from .sl import MODE_EXACT, MODE_VALUE, dot, loss_d1, loss_d2, loss_value


# Layers with at least this many outputs run their forward passes as axpys over the
# outputs (transposed weights, independent iterations: vector instructions); narrower
# ones (the scalar output) as one fixed-order dot product per output.
AXPY_MIN_OUT = 8


@jit
def _transpose(theta, sizes, woff, out):
    """out[woff[l]:] holds W_l transposed (n_in x n_out, row-major) for every layer wide
    enough for the axpy forward pass; the rest of out is left untouched."""
    for l in range(sizes.shape[0] - 1):
        n_in, n_out, w0 = sizes[l], sizes[l + 1], woff[l]
        if n_out < AXPY_MIN_OUT:
            continue
        for i in range(n_in):
            for o in range(n_out):
                out[w0 + i * n_out + o] = theta[w0 + o * n_in + i]


@jit
def _forward(theta, tT, sizes, woff, boff, uoff, x, a):
    """Activations of one input: a[uoff[0]:] = x, then h_l = ReLU(z_l) per hidden layer
    and the output f = a[uoff[-2]] (no ReLU). h_l > 0 exactly where ReLU'(z_l) = 1.
    tT is ``_transpose(theta)``; z_l = b_l + sum_i h[i] W_l[:, i], summed in i order."""
    n_layers = sizes.shape[0] - 1
    for i in range(sizes[0]):
        a[i] = x[i]
    for l in range(n_layers):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0, b0, up, u = woff[l], boff[l], uoff[l], uoff[l + 1]
        z = a[u:u + n_out]
        if n_out >= AXPY_MIN_OUT:
            for o in range(n_out):
                z[o] = theta[b0 + o]
            for i in range(n_in):
                hi = a[up + i]
                wi = tT[w0 + i * n_out:w0 + (i + 1) * n_out]
                for o in range(n_out):
                    z[o] += hi * wi[o]
        else:
            ain = a[up:up + n_in]
            for o in range(n_out):
                z[o] = dot(theta[w0 + o * n_in:w0 + (o + 1) * n_in], ain) + theta[b0 + o]
        if l < n_layers - 1:
            for o in range(n_out):
                z[o] = z[o] if z[o] > 0.0 else 0.0


@jit
def _rforward(theta, tT, v, vT, sizes, woff, boff, uoff, a, ra):
    """R{a} = d a / d theta [v] for one input (a from ``_forward``): directional derivatives,
    masked by ReLU'(z) on the hidden layers; R{x} = 0. tT, vT: ``_transpose`` of theta, v."""
    n_layers = sizes.shape[0] - 1
    for i in range(sizes[0]):
        ra[i] = 0.0
    for l in range(n_layers):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0, b0, up, u = woff[l], boff[l], uoff[l], uoff[l + 1]
        rz = ra[u:u + n_out]
        if n_out >= AXPY_MIN_OUT:
            for o in range(n_out):
                rz[o] = v[b0 + o]
            for i in range(n_in):
                hi, ri = a[up + i], ra[up + i]
                wi = tT[w0 + i * n_out:w0 + (i + 1) * n_out]
                vi = vT[w0 + i * n_out:w0 + (i + 1) * n_out]
                for o in range(n_out):
                    rz[o] += hi * vi[o] + ri * wi[o]
        else:
            ain, rin = a[up:up + n_in], ra[up:up + n_in]
            for o in range(n_out):
                rz[o] = (dot(v[w0 + o * n_in:w0 + (o + 1) * n_in], ain)
                         + dot(theta[w0 + o * n_in:w0 + (o + 1) * n_in], rin)) + v[b0 + o]
        if l < n_layers - 1:
            z = a[u:u + n_out]
            for o in range(n_out):
                rz[o] = rz[o] if z[o] > 0.0 else 0.0


@jit
def _backward(theta, sizes, woff, boff, uoff, a, gf, delta, grad):
    """grad += gf * d f / d theta for one input (a from ``_forward``); delta is scratch."""
    n_layers = sizes.shape[0] - 1
    delta[uoff[n_layers]] = gf
    for l in range(n_layers - 1, -1, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0, b0, up, u = woff[l], boff[l], uoff[l], uoff[l + 1]
        ain, din = a[up:up + n_in], delta[up:up + n_in]
        if l > 0:
            din[:] = 0.0
        for o in range(n_out):
            d = delta[u + o]
            grad[b0 + o] += d
            gw = grad[w0 + o * n_in:w0 + (o + 1) * n_in]
            for i in range(n_in):
                gw[i] += d * ain[i]
            if l > 0:
                w = theta[w0 + o * n_in:w0 + (o + 1) * n_in]
                for i in range(n_in):
                    din[i] += w[i] * d
        if l > 0:
            for i in range(n_in):
                if ain[i] <= 0.0:
                    din[i] = 0.0


@jit
def _rbackward(theta, v, sizes, woff, boff, uoff, a, ra, gf, rgf, delta, rdelta, out):
    """out += R{gf * d f / d theta}: one input's Hessian-vector product term.

    gf is l'(f) and rgf = l''(f) R{f}; ReLU'' = 0 away from the kinks, so the masks
    are the only trace of the activation. delta and rdelta are scratch.
    """
    n_layers = sizes.shape[0] - 1
    top = uoff[n_layers]
    delta[top] = gf
    rdelta[top] = rgf
    for l in range(n_layers - 1, -1, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0, b0, up, u = woff[l], boff[l], uoff[l], uoff[l + 1]
        ain, rin = a[up:up + n_in], ra[up:up + n_in]
        din, rdin = delta[up:up + n_in], rdelta[up:up + n_in]
        if l > 0:
            din[:] = 0.0
            rdin[:] = 0.0
        for o in range(n_out):
            d, rd = delta[u + o], rdelta[u + o]
            out[b0 + o] += rd
            ow = out[w0 + o * n_in:w0 + (o + 1) * n_in]
            for i in range(n_in):
                ow[i] += rd * ain[i] + d * rin[i]
            if l > 0:
                w = theta[w0 + o * n_in:w0 + (o + 1) * n_in]
                vw = v[w0 + o * n_in:w0 + (o + 1) * n_in]
                for i in range(n_in):
                    din[i] += w[i] * d
                    rdin[i] += vw[i] * d + w[i] * rd
        if l > 0:
            for i in range(n_in):
                if ain[i] <= 0.0:
                    din[i] = 0.0
                    rdin[i] = 0.0


@jit
def mlp_forward(theta, sizes, woff, boff, uoff, X, out):
    """out[j] = f(X[j])."""
    a = np.empty(uoff[-1])
    tT = np.empty(theta.shape[0])
    _transpose(theta, sizes, woff, tT)
    top = uoff[sizes.shape[0] - 1]
    for j in range(X.shape[0]):
        _forward(theta, tT, sizes, woff, boff, uoff, X[j], a)
        out[j] = a[top]


@jit
def mlp_jvp(theta, v, sizes, woff, boff, uoff, X, out):
    """out[j] = d f(X[j]) / d theta [v]."""
    a, ra = np.empty(uoff[-1]), np.empty(uoff[-1])
    tT, vT = np.empty(theta.shape[0]), np.empty(theta.shape[0])
    _transpose(theta, sizes, woff, tT)
    _transpose(v, sizes, woff, vT)
    top = uoff[sizes.shape[0] - 1]
    for j in range(X.shape[0]):
        _forward(theta, tT, sizes, woff, boff, uoff, X[j], a)
        _rforward(theta, tT, v, vT, sizes, woff, boff, uoff, a, ra)
        out[j] = ra[top]


@jit
def mlp_vjp(theta, sizes, woff, boff, uoff, X, g, out):
    """out = sum_j g[j] d f(X[j]) / d theta (out zeroed here), samples in order."""
    a, delta = np.empty(uoff[-1]), np.empty(uoff[-1])
    tT = np.empty(theta.shape[0])
    _transpose(theta, sizes, woff, tT)
    out[:] = 0.0
    for j in range(X.shape[0]):
        _forward(theta, tT, sizes, woff, boff, uoff, X[j], a)
        _backward(theta, sizes, woff, boff, uoff, a, g[j], delta, out)


@jit
def mlp_hvp(theta, v, sizes, woff, boff, uoff, X, d1, d2, out):
    """out = Hess_theta [sum_j l_j(f(X[j]))] v with l_j' = d1[j], l_j'' = d2[j] (exact, R-operator)."""
    n_units = uoff[-1]
    a, ra = np.empty(n_units), np.empty(n_units)
    delta, rdelta = np.empty(n_units), np.empty(n_units)
    tT, vT = np.empty(theta.shape[0]), np.empty(theta.shape[0])
    _transpose(theta, sizes, woff, tT)
    _transpose(v, sizes, woff, vT)
    top = uoff[sizes.shape[0] - 1]
    out[:] = 0.0
    for j in range(X.shape[0]):
        _forward(theta, tT, sizes, woff, boff, uoff, X[j], a)
        _rforward(theta, tT, v, vT, sizes, woff, boff, uoff, a, ra)
        _rbackward(theta, v, sizes, woff, boff, uoff, a, ra, d1[j], d2[j] * ra[top], delta, rdelta, out)


@jit
def _mlp_task(i, theta, tT, sizes, woff, boff, uoff, Xs, ys, offs, Xq, yq, offq, eta, loss, mode,
              task_loss, task_grad):
    """Task i: task_loss[i] and task_grad[i] = (I - eta H_i) grad R_i^q(theta_i)."""
    n_params = theta.shape[0]
    n_units = uoff[-1]
    top = uoff[sizes.shape[0] - 1]
    s0, s1 = offs[i], offs[i + 1]
    q0, q1 = offq[i], offq[i + 1]
    inv_s = 1.0 / (s1 - s0)
    inv_q = 1.0 / (q1 - q0)
    acts = np.empty((s1 - s0, n_units))   # support activations, reused by the HVP
    a = np.empty(n_units)
    delta, rdelta, ra = np.empty(n_units), np.empty(n_units), np.empty(n_units)
    g = np.zeros(n_params)
    # Inner step (4.3) on the support set.
    for j in range(s0, s1):
        aj = acts[j - s0]
        _forward(theta, tT, sizes, woff, boff, uoff, Xs[j], aj)
        _backward(theta, sizes, woff, boff, uoff, aj, loss_d1(aj[top], ys[j], loss) * inv_s, delta, g)
    ti = np.empty(n_params)
    for k in range(n_params):
        ti[k] = theta[k] - eta * g[k]
    tiT = np.empty(n_params)   # transposed weights of theta_i, then of v
    _transpose(ti, sizes, woff, tiT)
    # Query risk at theta_i and v = grad R_i^q(theta_i).
    v = task_grad[i]
    if mode != MODE_VALUE:
        v[:] = 0.0
    acc = 0.0
    for j in range(q0, q1):
        _forward(ti, tiT, sizes, woff, boff, uoff, Xq[j], a)
        acc += loss_value(a[top], yq[j], loss)
        if mode != MODE_VALUE:
            _backward(ti, sizes, woff, boff, uoff, a, loss_d1(a[top], yq[j], loss) * inv_q, delta, v)
    task_loss[i] = acc * inv_q
    if mode != MODE_EXACT:
        return
    # (I - eta H) v with the exact support-risk Hessian (R-operator); g is reused as H v.
    g[:] = 0.0
    _transpose(v, sizes, woff, tiT)
    for j in range(s0, s1):
        aj = acts[j - s0]
        f = aj[top]
        _rforward(theta, tT, v, tiT, sizes, woff, boff, uoff, aj, ra)
        _rbackward(theta, v, sizes, woff, boff, uoff, aj, ra, loss_d1(f, ys[j], loss) * inv_s,
                   loss_d2(f, ys[j], loss) * inv_s * ra[top], delta, rdelta, g)
    for k in range(n_params):
        v[k] -= eta * g[k]


@sized
def mlp_meta(theta, sizes, woff, boff, uoff, Xs, ys, offs, Xq, yq, offq, eta, loss, mode,
             task_loss, task_grad):
    """Fill task_loss (n,) and, unless MODE_VALUE, task_grad (n, d); one task per iteration."""
    n = offs.shape[0] - 1
    tT = np.empty(theta.shape[0])
    _transpose(theta, sizes, woff, tT)
    for i in prange(n):
        _mlp_task(i, theta, tT, sizes, woff, boff, uoff, Xs, ys, offs, Xq, yq, offq, eta, loss, mode,
                  task_loss, task_grad)
