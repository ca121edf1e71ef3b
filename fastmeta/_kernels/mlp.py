"""Multi-layer ReLU network kernels: forward, vjp, the R-operator Hessian-vector product
and the fused meta-SL task loop.

Layout. Layer l = 0..L maps sizes[l] inputs to sizes[l+1] outputs, z_l = W_l h_{l-1} + b_l,
h_l = ReLU(z_l) for the hidden layers and the scalar output f = z_L. The flat theta holds
W_l (row-major, sizes[l+1] x sizes[l]) at woff[l] and b_l at boff[l]. A sample's
pre-activations of every layer live side by side in one vector, layer l at uoff[l].

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
from .sl import MODE_EXACT, MODE_VALUE, loss_d1, loss_d2, loss_value


@jit
def _forward(theta, sizes, woff, boff, uoff, x, z):
    """Pre-activations z of every layer for one input x; the output is z[uoff[-2]]."""
    n_layers = sizes.shape[0] - 1
    for l in range(n_layers):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0, b0, u = woff[l], boff[l], uoff[l]
        for o in range(n_out):
            acc = theta[b0 + o]
            row = w0 + o * n_in
            if l == 0:
                for i in range(n_in):
                    acc += theta[row + i] * x[i]
            else:
                up = uoff[l - 1]
                for i in range(n_in):
                    zi = z[up + i]
                    if zi > 0.0:
                        acc += theta[row + i] * zi
            z[u + o] = acc


@jit
def _rforward(theta, v, sizes, woff, boff, uoff, x, z, rz):
    """R{z} = d z / d theta [v] for one input: the forward pass of directional derivatives."""
    n_layers = sizes.shape[0] - 1
    for l in range(n_layers):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0, b0, u = woff[l], boff[l], uoff[l]
        for o in range(n_out):
            acc = v[b0 + o]
            row = w0 + o * n_in
            if l == 0:
                for i in range(n_in):
                    acc += v[row + i] * x[i]
            else:
                up = uoff[l - 1]
                for i in range(n_in):
                    if z[up + i] > 0.0:
                        acc += v[row + i] * z[up + i] + theta[row + i] * rz[up + i]
            rz[u + o] = acc


@jit
def _backward(theta, sizes, woff, boff, uoff, x, z, gf, delta, grad):
    """grad += gf * d f / d theta for one input (z from ``_forward``)."""
    n_layers = sizes.shape[0] - 1
    delta[uoff[n_layers - 1]] = gf
    for l in range(n_layers - 1, -1, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0, b0, u = woff[l], boff[l], uoff[l]
        for o in range(n_out):
            d = delta[u + o]
            grad[b0 + o] += d
            row = w0 + o * n_in
            if l == 0:
                for i in range(n_in):
                    grad[row + i] += d * x[i]
            else:
                up = uoff[l - 1]
                for i in range(n_in):
                    zi = z[up + i]
                    if zi > 0.0:
                        grad[row + i] += d * zi
        if l > 0:
            up = uoff[l - 1]
            for i in range(n_in):
                delta[up + i] = 0.0
            for o in range(n_out):
                d = delta[u + o]
                row = w0 + o * n_in
                for i in range(n_in):
                    delta[up + i] += theta[row + i] * d
            for i in range(n_in):
                if z[up + i] <= 0.0:
                    delta[up + i] = 0.0


@jit
def _rbackward(theta, v, sizes, woff, boff, uoff, x, z, rz, gf, rgf, delta, rdelta, out):
    """out += R{gf * d f / d theta}: the Hessian-vector product term of one input.

    gf is l'(f) and rgf = l''(f) R{f}; delta and rdelta are scratch of the units' size.
    """
    n_layers = sizes.shape[0] - 1
    top = uoff[n_layers - 1]
    delta[top] = gf
    rdelta[top] = rgf
    for l in range(n_layers - 1, -1, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0, b0, u = woff[l], boff[l], uoff[l]
        for o in range(n_out):
            d, rd = delta[u + o], rdelta[u + o]
            out[b0 + o] += rd
            row = w0 + o * n_in
            if l == 0:
                for i in range(n_in):
                    out[row + i] += rd * x[i]
            else:
                up = uoff[l - 1]
                for i in range(n_in):
                    if z[up + i] > 0.0:
                        out[row + i] += rd * z[up + i] + d * rz[up + i]
        if l > 0:
            up = uoff[l - 1]
            for i in range(n_in):
                delta[up + i] = 0.0
                rdelta[up + i] = 0.0
            for o in range(n_out):
                d, rd = delta[u + o], rdelta[u + o]
                row = w0 + o * n_in
                for i in range(n_in):
                    delta[up + i] += theta[row + i] * d
                    rdelta[up + i] += v[row + i] * d + theta[row + i] * rd
            for i in range(n_in):
                if z[up + i] <= 0.0:
                    delta[up + i] = 0.0
                    rdelta[up + i] = 0.0


@jit
def mlp_forward(theta, sizes, woff, boff, uoff, X, out):
    """out[j] = f(X[j])."""
    z = np.empty(uoff[-1])
    top = uoff[sizes.shape[0] - 2]
    for j in range(X.shape[0]):
        _forward(theta, sizes, woff, boff, uoff, X[j], z)
        out[j] = z[top]


@jit
def mlp_jvp(theta, v, sizes, woff, boff, uoff, X, out):
    """out[j] = d f(X[j]) / d theta [v]."""
    z = np.empty(uoff[-1])
    rz = np.empty(uoff[-1])
    top = uoff[sizes.shape[0] - 2]
    for j in range(X.shape[0]):
        _forward(theta, sizes, woff, boff, uoff, X[j], z)
        _rforward(theta, v, sizes, woff, boff, uoff, X[j], z, rz)
        out[j] = rz[top]


@jit
def mlp_vjp(theta, sizes, woff, boff, uoff, X, g, out):
    """out = sum_j g[j] d f(X[j]) / d theta (out zeroed here), samples in order."""
    z = np.empty(uoff[-1])
    delta = np.empty(uoff[-1])
    out[:] = 0.0
    for j in range(X.shape[0]):
        _forward(theta, sizes, woff, boff, uoff, X[j], z)
        _backward(theta, sizes, woff, boff, uoff, X[j], z, g[j], delta, out)


@jit
def mlp_hvp(theta, v, sizes, woff, boff, uoff, X, d1, d2, out):
    """out = Hess_theta [sum_j l_j(f(X[j]))] v with l_j' = d1[j], l_j'' = d2[j] (exact, R-operator)."""
    n_units = uoff[-1]
    z, rz = np.empty(n_units), np.empty(n_units)
    delta, rdelta = np.empty(n_units), np.empty(n_units)
    top = uoff[sizes.shape[0] - 2]
    out[:] = 0.0
    for j in range(X.shape[0]):
        _forward(theta, sizes, woff, boff, uoff, X[j], z)
        _rforward(theta, v, sizes, woff, boff, uoff, X[j], z, rz)
        _rbackward(theta, v, sizes, woff, boff, uoff, X[j], z, rz, d1[j], d2[j] * rz[top], delta, rdelta, out)


@jit
def _mlp_task(i, theta, sizes, woff, boff, uoff, Xs, ys, offs, Xq, yq, offq, eta, loss, mode,
              task_loss, task_grad):
    """Task i: task_loss[i] and task_grad[i] = (I - eta H_i) grad R_i^q(theta_i)."""
    n_params = theta.shape[0]
    n_units = uoff[-1]
    top = uoff[sizes.shape[0] - 2]
    s0, s1 = offs[i], offs[i + 1]
    q0, q1 = offq[i], offq[i + 1]
    inv_s = 1.0 / (s1 - s0)
    inv_q = 1.0 / (q1 - q0)
    zs = np.empty((s1 - s0, n_units))   # support pre-activations, reused by the HVP
    z = np.empty(n_units)
    delta, rdelta, rz = np.empty(n_units), np.empty(n_units), np.empty(n_units)
    g = np.zeros(n_params)
    # Inner step (4.3) on the support set.
    for j in range(s0, s1):
        _forward(theta, sizes, woff, boff, uoff, Xs[j], zs[j - s0])
        c = loss_d1(zs[j - s0, top], ys[j], loss) * inv_s
        _backward(theta, sizes, woff, boff, uoff, Xs[j], zs[j - s0], c, delta, g)
    ti = np.empty(n_params)
    for k in range(n_params):
        ti[k] = theta[k] - eta * g[k]
    # Query risk at theta_i and v = grad R_i^q(theta_i).
    v = task_grad[i]
    if mode != MODE_VALUE:
        v[:] = 0.0
    acc = 0.0
    for j in range(q0, q1):
        _forward(ti, sizes, woff, boff, uoff, Xq[j], z)
        acc += loss_value(z[top], yq[j], loss)
        if mode != MODE_VALUE:
            _backward(ti, sizes, woff, boff, uoff, Xq[j], z, loss_d1(z[top], yq[j], loss) * inv_q, delta, v)
    task_loss[i] = acc * inv_q
    if mode != MODE_EXACT:
        return
    # (I - eta H) v with the exact support-risk Hessian (R-operator); g is reused as H v.
    g[:] = 0.0
    for j in range(s0, s1):
        zj = zs[j - s0]
        f = zj[top]
        _rforward(theta, v, sizes, woff, boff, uoff, Xs[j], zj, rz)
        _rbackward(theta, v, sizes, woff, boff, uoff, Xs[j], zj, rz, loss_d1(f, ys[j], loss) * inv_s,
                   loss_d2(f, ys[j], loss) * inv_s * rz[top], delta, rdelta, g)
    for k in range(n_params):
        v[k] -= eta * g[k]


@sized
def mlp_meta(theta, sizes, woff, boff, uoff, Xs, ys, offs, Xq, yq, offq, eta, loss, mode,
             task_loss, task_grad):
    """Fill task_loss (n,) and, unless MODE_VALUE, task_grad (n, d); one task per iteration."""
    n = offs.shape[0] - 1
    for i in prange(n):
        _mlp_task(i, theta, sizes, woff, boff, uoff, Xs, ys, offs, Xq, yq, offq, eta, loss, mode,
                  task_loss, task_grad)
