"""Slow, obvious NumPy oracles. Dense matrices, explicit inverses, plain loops.

Nothing here is clever; every compiled kernel and every fast path of fastmeta is
checked against these.
"""
from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------- meta-RL


def softmax(z):
    """Row-wise softmax with plain loops (stable by the max shift)."""
    out = np.empty_like(z, dtype=float)
    for s in range(z.shape[0]):
        e = np.exp(z[s] - z[s].max())
        out[s] = e / e.sum()
    return out


def policy_transition(P, pi):
    """P_pi[s, s'] = sum_a pi(a|s) P(s'|s, a) with P dense (S, A, S)."""
    S, A, _ = P.shape
    P_pi = np.zeros((S, S))
    for s in range(S):
        for a in range(A):
            P_pi[s] += pi[s, a] * P[s, a]
    return P_pi


def values(P, r, gamma, pi):
    """V, Q, A of (2.1)-(2.3) with the (1 - gamma) factor, by an explicit inverse."""
    S = P.shape[0]
    r_pi = (pi * r).sum(axis=1)
    V = (1 - gamma) * np.linalg.inv(np.eye(S) - gamma * policy_transition(P, pi)) @ r_pi
    Q = (1 - gamma) * r + gamma * np.einsum("sat,t->sa", P, V)
    return V, Q, Q - V[:, None]


def values_by_iteration(P, r, gamma, pi, iters=20000):
    """V by summing the discounted series (1-gamma) sum_t gamma^t P_pi^t r_pi."""
    P_pi = policy_transition(P, pi)
    r_pi = (pi * r).sum(axis=1)
    V = np.zeros(P.shape[0])
    term = r_pi.copy()
    for t in range(iters):
        V += (1 - gamma) * gamma ** t * term
        term = P_pi @ term
    return V


def visitation(P, gamma, init, pi):
    """nu (2.4) and sigma = nu pi, by an explicit inverse."""
    S = P.shape[0]
    nu = (1 - gamma) * np.linalg.inv(np.eye(S) - gamma * policy_transition(P, pi)).T @ init
    return nu, nu[:, None] * pi


def family(P, gamma, pi):
    """F[s, a, s', a'] = sigma^{(s,a)}(s', a') of (3.6), state by state."""
    S, A, _ = P.shape
    F = np.zeros((S, A, S, A))
    for s in range(S):
        for a in range(A):
            nu, sigma = visitation(P, gamma, P[s, a], pi)
            F[s, a] = sigma
    return F


def meta_objective(tasks, phi, theta, tau, eta):
    """L(theta) of (3.4); tasks are tuples (P dense, r, gamma, init)."""
    f = phi @ theta
    pi = softmax(f / tau)
    total = 0.0
    for P, r, gamma, init in tasks:
        _, Q, _ = values(P, r, gamma, pi)
        pi_i = softmax(f / tau + eta * Q)
        V_i, _, _ = values(P, r, gamma, pi_i)
        total += init @ V_i
    return total / len(tasks)


def meta_gradient(tasks, phi, theta, tau, eta):
    """The corrected Proposition 3.2 (ERRATA.md section 2) with the explicit family."""
    f = phi @ theta
    pi = softmax(f / tau)
    grad = np.zeros(phi.shape[2])
    for P, r, gamma, init in tasks:
        _, Q, A = values(P, r, gamma, pi)
        pi_i = softmax(f / tau + eta * Q)
        _, _, A_i = values(P, r, gamma, pi_i)
        _, sigma_i = visitation(P, gamma, init, pi_i)
        F = family(P, gamma, pi)
        inner = np.einsum("sauv,uvk->sak", F, phi * A[:, :, None])
        h = phi / tau + eta * gamma / ((1 - gamma) * tau) * inner
        grad += np.einsum("sa,sak->k", sigma_i * A_i, h) / (1 - gamma)
    return grad / len(tasks)


def central_difference(fun, x, eps=1e-6):
    """Central finite differences of a scalar function, coordinate by coordinate."""
    g = np.zeros_like(x)
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = eps
        g[j] = (fun(x + e) - fun(x - e)) / (2 * eps)
    return g
