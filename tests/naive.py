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
    """The corrected Proposition 3.2 (docs/formulas.md section 3) with the explicit family."""
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


# ----------------------------------------------------------------------------- meta-SL
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


def sl_meta_objective(theta, tasks, predict, jacobian, kind, eta):
    """L(theta) = 1/n sum_i R_i^q(theta - eta grad R_i^s(theta)); tasks = [(Xs, ys, Xq, yq)]."""
    total = 0.0
    for Xs, ys, Xq, yq in tasks:
        theta_i = theta - eta * risk_grad(theta, Xs, ys, predict, jacobian, kind)
        total += risk(theta_i, Xq, yq, predict, kind)
    return total / len(tasks)


def sl_meta_gradient(theta, tasks, predict, jacobian, kind, eta, first_order=False):
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


# ============================================================================ theory (issue 7)
# Oracles for fastmeta.theory: Definition 3.3, Theorem 3.5 and Theorem 4.4 built from the
# explicit (S*A)^2 family and explicit sums over every atom, nothing shared with the package.


def meta_visitation(tasks, phi, theta, tau, eta):
    """varsigma_i (3.10) = E_{(s,a) ~ sigma_i}[sigma^{(s,a)}] with the explicit family; varrho (3.11)."""
    pi = softmax(phi @ theta / tau)
    out = []
    for P, r, gamma, init in tasks:
        _, Q, _ = values(P, r, gamma, pi)
        pi_i = softmax(phi @ theta / tau + eta * Q)
        _, sigma_i = visitation(P, gamma, init, pi_i)
        out.append(np.einsum("sa,sauv->uv", sigma_i, family(P, gamma, pi)))
    varsigma = np.array(out)
    return varsigma, varsigma.mean(axis=0)


def theorem_3_5_terms(tasks, phi, omega, comparator, tau, eta):
    """gbar, f_omega (exact g~) and the printed f_omega, literally from (3.14)-(3.15) and g~.

    Returns (gbar, f_omega, f_printed, varrho), with the 0/0 = 0 convention of the package
    and only on pairs with varrho > 0 (elsewhere NaN).
    """
    S, A, _ = phi.shape
    n = len(tasks)
    pi = softmax(phi @ omega / tau)
    pi_c = softmax(phi @ comparator / tau)
    varsigma, varrho = meta_visitation(tasks, phi, omega, tau, eta)
    gbar = np.zeros((S, A))
    num = np.zeros((S, A))
    den_printed = np.zeros((S, A))
    for i, (P, r, gamma, init) in enumerate(tasks):
        _, Q, Adv = values(P, r, gamma, pi)
        pi_i = softmax(phi @ omega / tau + eta * Q)
        _, _, A_i = values(P, r, gamma, pi_i)
        _, sigma_i = visitation(P, gamma, init, pi_i)
        F = family(P, gamma, pi)
        rho = np.einsum("sauv,sa->uvsa", F, sigma_i)            # joint measure (3.9)
        G_i = np.einsum("uvsa,sa->uv", rho, A_i) / varsigma[i]   # (3.15), conditional expectation
        g_tilde = (A_i * sigma_i / varsigma[i] / tau
                   + gamma * eta / ((1 - gamma) * tau) * G_i * Adv) / (1 - gamma)
        g_printed = A_i * sigma_i / varsigma[i] / tau + gamma * eta / tau * G_i * Adv
        gbar += g_tilde * varsigma[i] / varrho / n
        den_printed += g_printed * varsigma[i] / varrho
        _, Qc, _ = values(P, r, gamma, pi_c)
        pi_ic = softmax(phi @ comparator / tau + eta * Qc)
        _, sigma_ic = visitation(P, gamma, init, pi_ic)
        num += A_i / (1 - gamma) * sigma_ic / varrho
    return gbar, num / n / gbar, num / den_printed, varrho


def ball_least_squares_scipy(Phi, w, b, R):
    """inf over ||v|| <= R of ||b - Phi v||_w by a generic constrained optimiser (SLSQP)."""
    from scipy.optimize import minimize
    sw = np.sqrt(w)
    A, y = Phi * sw[:, None], b * sw
    fun = lambda v: 0.5 * np.sum((A @ v - y) ** 2)
    jac = lambda v: A.T @ (A @ v - y)
    cons = {"type": "ineq", "fun": lambda v: R ** 2 - v @ v, "jac": lambda v: -2 * v}
    best = None
    for v0 in (np.zeros(Phi.shape[1]), np.linalg.lstsq(A, y, rcond=None)[0]):
        v0 = v0 if np.linalg.norm(v0) <= R else v0 * (R / np.linalg.norm(v0))
        res = minimize(fun, v0, jac=jac, constraints=[cons], method="SLSQP",
                       options={"ftol": 1e-15, "maxiter": 1000})
        if best is None or res.fun < best.fun:
            best = res
    return float(np.sqrt(2 * best.fun)), best.x


def theorem_4_4_terms(Z, Y, omega, comparator, eta, kind, rho):
    """w (4.13), u (4.14), phi_l (4.15) and the weights of M x rho, atom by atom, for a linear model.

    Z (m, d) are the shared design's features, Y (n, m) the labels. Atoms of M are listed
    once per distinct (x_j, y) pair with their mixture mass; returns (w, u, phi_l, weight)
    as flat arrays over (atom, x') and the convexity term 1/n sum_i <dR_i/dh, h_wi - h_ti>_rho.
    """
    n, m = Y.shape
    atoms = sorted({(j, float(Y[i, j])) for i in range(n) for j in range(m)})

    def D(i, atom):                      # task i's empirical law
        j, y = atom
        return float(Y[i, j] == y) / m

    def adapted(theta, i):
        h = Z @ theta
        return theta - eta * Z.T @ dloss(h, Y[i], kind) / m

    h_w = [Z @ adapted(omega, i) for i in range(n)]
    h_t = [Z @ adapted(comparator, i) for i in range(n)]
    frechet = [dloss(h_w[i], Y[i], kind) / (m * rho) for i in range(n)]   # Riesz representer in L2(rho)
    w, u, feats, weight = [], [], [], []
    for atom in atoms:
        M = np.mean([D(i, atom) for i in range(n)])
        j, y = atom
        hess = d2loss(Z[j] @ omega, y, kind) * np.outer(Z[j], Z[j])
        for l in range(m):
            wv = sum(frechet[i][l] * D(i, atom) / M for i in range(n)) / n
            num = sum(frechet[i][l] * (h_w[i][l] - h_t[i][l]) for i in range(n)) / n
            w.append(wv)
            u.append(num / wv)
            feats.append((np.eye(Z.shape[1]) - eta * hess) @ Z[l])
            weight.append(M * rho[l])
    convex = sum(rho @ (frechet[i] * (h_w[i] - h_t[i])) for i in range(n)) / n
    return np.array(w), np.array(u), np.array(feats), np.array(weight), convex


# ============================================================ issue 12: MLP and predictor protocol
# (one block, appended; oracles for tests/test_mlp.py and tests/test_predictor_protocol.py)
def mlp_layers(theta, sizes):
    """[(W_l, b_l)] of the flat MLP layout: per layer W_l row-major (out, in), then b_l."""
    out, pos = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        W = theta[pos:pos + n_in * n_out].reshape(n_out, n_in)
        pos += n_in * n_out
        out.append((W, theta[pos:pos + n_out]))
        pos += n_out
    return out


def mlp_predict(theta, X, sizes):
    """f(x) = W_L relu(... relu(W_0 x + b_0) ...) + b_L, one sample at a time."""
    layers = mlp_layers(theta, sizes)
    out = np.zeros(X.shape[0])
    for j in range(X.shape[0]):
        h = X[j]
        for l, (W, b) in enumerate(layers):
            z = W @ h + b
            h = z if l == len(layers) - 1 else np.maximum(z, 0.0)
        out[j] = h[0]
    return out


def mlp_jacobian(theta, X, sizes):
    """df(x_j)/dtheta by the chain rule written out per sample, shape (N, n_params)."""
    layers = mlp_layers(theta, sizes)
    rows = []
    for j in range(X.shape[0]):
        hs, zs = [X[j]], []
        for l, (W, b) in enumerate(layers):
            z = W @ hs[-1] + b
            zs.append(z)
            hs.append(z if l == len(layers) - 1 else np.maximum(z, 0.0))
        grads = [None] * len(layers)
        delta = np.ones(1)
        for l in range(len(layers) - 1, -1, -1):
            grads[l] = (np.outer(delta, hs[l]).ravel(), delta.copy())
            if l > 0:
                delta = (layers[l][0].T @ delta) * (zs[l - 1] > 0.0)
        rows.append(np.concatenate([part for g in grads for part in g]))
    return np.array(rows)


def mlp_risk_grad(theta, X, y, sizes, kind):
    return mlp_jacobian(theta, X, sizes).T @ dloss(mlp_predict(theta, X, sizes), y, kind) / X.shape[0]


def mlp_risk_hessian(theta, X, y, sizes, kind, eps=1e-6):
    """The full d x d Hessian of the risk: central differences of the chain-rule gradient."""
    d = theta.size
    H = np.zeros((d, d))
    for k in range(d):
        e = np.zeros(d)
        e[k] = eps
        H[:, k] = (mlp_risk_grad(theta + e, X, y, sizes, kind) - mlp_risk_grad(theta - e, X, y, sizes, kind)) / (2 * eps)
    return 0.5 * (H + H.T)


def sl_meta_gradient_full(theta, tasks, risk_grad_fn, risk_hessian_fn, eta):
    """1/n sum_i (I - eta H_i) grad R_i^q(theta_i) with H_i the full Hessian from ``risk_hessian_fn``.

    ``risk_grad_fn(theta, X, y)`` and ``risk_hessian_fn(theta, X, y)``; tasks = [(Xs, ys, Xq, yq)].
    """
    total = np.zeros(theta.shape[0])
    for Xs, ys, Xq, yq in tasks:
        theta_i = theta - eta * risk_grad_fn(theta, Xs, ys)
        g = risk_grad_fn(theta_i, Xq, yq)
        total += g - eta * risk_hessian_fn(theta, Xs, ys) @ g
    return total / len(tasks)


def random_features(X, omega, c):
    """phi(x) = sqrt(2/D) cos(Omega^T x + c): the user's random-features predictor's features."""
    return np.sqrt(2.0 / omega.shape[1]) * np.cos(X @ omega + c)
# ============================================================ end of issue 12 block


# ----------------------------------------------------------------------------- multigrid


def tentative_prolongator(agg, nc):
    """Piecewise-constant T (n, nc): T[i, agg[i]] = 1."""
    T = np.zeros((len(agg), nc))
    for i, c in enumerate(agg):
        T[i, c] = 1.0
    return T


def smoothed_prolongator(A, agg, nc, omega):
    """Smoothed aggregation P = (I - omega D^-1 A) T, A dense."""
    D_inv = np.diag(1.0 / np.diag(A))
    return (np.eye(A.shape[0]) - omega * D_inv @ A) @ tentative_prolongator(agg, nc)


def smoothed_restrictor(A, agg, nc, omega):
    """Petrov-Galerkin R: the transpose of the smoothed prolongator of A^T."""
    return smoothed_prolongator(A.T, agg, nc, omega).T


def gauss_seidel(A, b, x, forward=True):
    """One Gauss-Seidel sweep for A x = b, row by row (ascending if forward)."""
    x = x.copy()
    order = range(A.shape[0]) if forward else range(A.shape[0] - 1, -1, -1)
    for i in order:
        x[i] += (b[i] - A[i] @ x) / A[i, i]
    return x


def two_grid_cycle(A, b, P, R, pre, post):
    """pre forward Gauss-Seidel sweeps from zero, exact coarse correction with R A P,
    post backward sweeps."""
    x = np.zeros_like(b)
    for _ in range(pre):
        x = gauss_seidel(A, b, x, True)
    x = x + P @ np.linalg.solve(R @ A @ P, R @ (b - A @ x))
    for _ in range(post):
        x = gauss_seidel(A, b, x, False)
    return x
