"""The exact meta-RL objective and gradient in plain NumPy/SciPy.

This is the code a competent user would write from docs/formulas.md section 3 (the adjoint
meta-gradient) without fastmeta: P_pi built with scipy.sparse products, one
factorisation of M = I - gamma P_pi per policy (``scipy.sparse.linalg.splu`` with
``permc_spec="MMD_AT_PLUS_A"``, or dense LAPACK LU for small S), ``solve`` and
``solve(trans="T")``, and the chain rule through the linear energy as
``phi.reshape(S*A, d).T @ g``.  Like fastmeta it factorises the main effect's matrix
once for the tasks that share a kernel object and a discount (an obvious saving on
goal families), so both do the same linear-algebra work and the comparison measures
the implementation, not the algorithm.

Per task (pi = softmax(f / tau), f = phi theta):

    V = (1-g) M^{-1} r_pi,  Q = (1-g) r + g P V,  A = Q - V
    pi_i = softmax(f / tau + eta Q),  V_i, Q_i, A_i likewise,  J_i = zeta^T V_i
    nu_i = (1-g) M_i^{-T} zeta,  sigma_i = nu_i pi_i,  mu_i = P^T (sigma_i A_i)
    xi_i = (1-g) M^{-T} mu_i
    dL_i/df = 1/(1-g) [ sigma_i A_i / tau + eta g / ((1-g) tau) xi_i pi A ]
"""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

#: Below this many states the dense LU is used (method="auto").
DENSE_MAX_S = 300


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def policy_matrix(P, pi):
    """P_pi = Pi @ P with Pi the (S, S*A) block-diagonal policy matrix (sparse, CSR)."""
    S, A = pi.shape
    Pi = sp.csr_matrix((pi.ravel(), np.arange(S * A), np.arange(0, S * A + 1, A)), shape=(S, S * A))
    return (Pi @ P).tocsr()


class _Dense:
    def __init__(self, M):
        self.lu = sla.lu_factor(M.toarray(), check_finite=False)

    def solve(self, b, trans="N"):
        return sla.lu_solve(self.lu, b, trans=0 if trans == "N" else 1, check_finite=False)


class _Splu:
    def __init__(self, M):
        self.lu = spla.splu(M.tocsc(), permc_spec="MMD_AT_PLUS_A")

    def solve(self, b, trans="N"):
        return self.lu.solve(b, trans=trans)


def factorize(P, pi, gamma, method="auto"):
    S = pi.shape[0]
    M = sp.identity(S, format="csr") - gamma * policy_matrix(P, pi)
    if method == "auto":
        method = "dense" if S <= DENSE_MAX_S else "splu"
    return _Dense(M) if method == "dense" else _Splu(M)


def value_and_grad(theta, prob, tau=1.0, eta=1.0, method="auto", want_grad=True):
    """Meta-objective L(theta) = 1/n sum_i J_i and its exact gradient (shape (d,)).

    ``prob`` is :func:`benchmarks.baselines.problem_arrays` output; ``method`` is
    "auto" | "dense" | "splu".
    """
    phi = prob["phi"]
    S, A, d = phi.shape
    Phi = phi.reshape(S * A, d)
    f = (Phi @ theta).reshape(S, A)
    pi = softmax(f / tau)
    n = len(prob["P"])
    total = 0.0
    g_f = np.zeros((S, A))
    main = {}
    for P, r, gamma, zeta in zip(prob["P"], prob["r"], prob["gamma"], prob["init"]):
        key = (id(P), gamma)
        if key not in main:
            main[key] = factorize(P, pi, gamma, method)
        lu = main[key]
        V = (1 - gamma) * lu.solve((pi * r).sum(axis=1))
        Q = (1 - gamma) * r + gamma * (P @ V).reshape(S, A)
        pi_i = softmax(f / tau + eta * Q)
        lu_i = factorize(P, pi_i, gamma, method)
        V_i = (1 - gamma) * lu_i.solve((pi_i * r).sum(axis=1))
        total += zeta @ V_i
        if not want_grad:
            continue
        A_adv = Q - V[:, None]
        Q_i = (1 - gamma) * r + gamma * (P @ V_i).reshape(S, A)
        A_i = Q_i - V_i[:, None]
        nu_i = (1 - gamma) * lu_i.solve(zeta, trans="T")
        w = nu_i[:, None] * pi_i * A_i                      # sigma_i * A_i
        mu_i = P.T @ w.ravel()
        xi_i = (1 - gamma) * lu.solve(mu_i, trans="T")
        g_f += (w / tau + eta * gamma / ((1 - gamma) * tau) * xi_i[:, None] * pi * A_adv) / (1 - gamma)
    if not want_grad:
        return total / n, None
    return total / n, Phi.T @ g_f.ravel() / n


def objective(theta, prob, tau=1.0, eta=1.0, method="auto"):
    return value_and_grad(theta, prob, tau, eta, method, want_grad=False)[0]


def gradient(theta, prob, tau=1.0, eta=1.0, method="auto"):
    return value_and_grad(theta, prob, tau, eta, method)[1]
