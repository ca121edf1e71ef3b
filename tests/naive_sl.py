"""Slow, obvious NumPy oracles for meta-SL: explicit Jacobians and Hessians, plain loops.

Self-contained (imports only numpy) so it can be merged into tests/naive.py.
A "model" here is a pair of plain functions: predict(theta, X) -> (N,) and
jacobian(theta, X) -> (N, d). The Hessian of a risk is formed explicitly as
J^T diag(l''/N) J plus, when given, the curvature term sum_j l'_j/N d2h_j/dtheta2
(zero for the linear model, and for the ReLU network away from its kinks).
"""
from __future__ import annotations

import numpy as np


def loss(h, y, kind):
    """Elementwise loss: squared 1/2 (h - y)^2 or logistic log(1 + e^h) - y h."""
    h = np.asarray(h, dtype=float)
    if kind == "squared":
        return 0.5 * (h - y) ** 2
    return np.logaddexp(0.0, h) - y * h


def dloss(h, y, kind):
    h = np.asarray(h, dtype=float)
    if kind == "squared":
        return h - y
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-h)) - y                 # sigmoid(h) - y


def d2loss(h, y, kind):
    h = np.asarray(h, dtype=float)
    if kind == "squared":
        return np.ones_like(h)
    with np.errstate(over="ignore"):
        return 1.0 / ((1.0 + np.exp(-h)) * (1.0 + np.exp(h)))   # sigmoid(h) sigmoid(-h)


# ------------------------------------------------------------------------- models
def linear_predict(theta, F):
    return F @ theta


def linear_jacobian(theta, F):
    return np.array(F, dtype=float)


def relu_predict(W, b, X):
    """u(x; W) = m^{-1/2} sum_r b_r max(W_r . x, 0), one sample at a time."""
    m = b.shape[0]
    out = np.zeros(X.shape[0])
    for j in range(X.shape[0]):
        for r in range(m):
            out[j] += b[r] * max(W[r] @ X[j], 0.0)
    return out / np.sqrt(m)


def relu_jacobian(W, b, X):
    """du(x_j)/dW flattened row-major (row r of W first), shape (N, m * in_dim)."""
    m, p = W.shape
    J = np.zeros((X.shape[0], m * p))
    for j in range(X.shape[0]):
        for r in range(m):
            if W[r] @ X[j] > 0.0:
                J[j, r * p:(r + 1) * p] = b[r] * X[j] / np.sqrt(m)
    return J


# ------------------------------------------------------------------------- risks
def risk(theta, X, y, predict, kind):
    return float(np.mean(loss(predict(theta, X), y, kind)))


def risk_grad(theta, X, y, predict, jacobian, kind):
    J = jacobian(theta, X)
    return J.T @ dloss(predict(theta, X), y, kind) / X.shape[0]


def risk_hessian(theta, X, y, predict, jacobian, kind):
    """Explicit d x d Hessian J^T diag(l''/N) J (the model's own curvature is zero here)."""
    J = jacobian(theta, X)
    w = d2loss(predict(theta, X), y, kind) / X.shape[0]
    H = np.zeros((J.shape[1], J.shape[1]))
    for j in range(J.shape[0]):
        H += w[j] * np.outer(J[j], J[j])
    return H


def meta_objective(theta, tasks, predict, jacobian, kind, eta):
    """L(theta) = 1/n sum_i R_i^q(theta - eta grad R_i^s(theta)); tasks = [(Xs, ys, Xq, yq)]."""
    total = 0.0
    for Xs, ys, Xq, yq in tasks:
        theta_i = theta - eta * risk_grad(theta, Xs, ys, predict, jacobian, kind)
        total += risk(theta_i, Xq, yq, predict, kind)
    return total / len(tasks)


def meta_gradient(theta, tasks, predict, jacobian, kind, eta, first_order=False):
    """1/n sum_i (I - eta H_i) grad R_i^q(theta_i) with explicit H_i (or without it, first order)."""
    d = theta.shape[0]
    total = np.zeros(d)
    for Xs, ys, Xq, yq in tasks:
        theta_i = theta - eta * risk_grad(theta, Xs, ys, predict, jacobian, kind)
        g = risk_grad(theta_i, Xq, yq, predict, jacobian, kind)
        if first_order:
            total += g
        else:
            H = risk_hessian(theta, Xs, ys, predict, jacobian, kind)
            total += (np.eye(d) - eta * H) @ g
    return total / len(tasks)


def central_difference(f, x, eps=1e-6):
    """Gradient of a scalar f by central differences, one coordinate at a time."""
    g = np.zeros_like(x)
    for k in range(x.shape[0]):
        e = np.zeros_like(x)
        e[k] = eps
        g[k] = (f(x + e) - f(x - e)) / (2.0 * eps)
    return g
