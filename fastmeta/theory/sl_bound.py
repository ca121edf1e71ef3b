"""Theorem 4.4 (the meta-SL optimality gap), evaluated exactly on a shared input design.

Tasks i = 1..n observe labels y_ij at the same design points x_1..x_m, so D_i is the
empirical law of {(x_j, y_ij)}, the mixture M (4.11) puts mass 1/(n m) on every atom
(x_j, y_kj), and every integral of the theorem is a finite sum. With rho a law on the
design points (default: the x-marginal of M, uniform) and l', l'' the loss derivatives:

    dD_i/dM (x_j, y_kj)        = n 1[y_ij = y_kj] / #{l : y_lj = y_kj}
    dR_i/dh (x_l)  at h        = l'(h(x_l), y_il) / (m rho_l)            the Riesz representer in L2(rho)
    w(x, y, x')                = 1/n sum_i dR_i/dh_{omega_i}(x') dD_i/dM(x, y)                    (4.13)
    u(x, y, x')                = 1/n sum_i dR_i/dh_{omega_i}(x') (h_{omega_i} - h_{theta*_i})(x') / w  (4.14)
    phi_{l,omega}(x, y, x')    = (I - eta l''(phi(x)^T omega, y) phi(x) phi(x)^T) phi(x')           (4.15)

and then, exactly, E_{M x rho}[phi_{l,omega} w] = grad L(omega), and by convexity of each
R_i in h, L(omega) - L(theta*) <= E_{M x rho}[u w]; Cauchy-Schwarz gives (4.16).

With y = h_i(x) + N(0, s^2) (``noise=s``), dD_i/dM(x, y) is a ratio of Gaussian densities that
depends on y, and the integrals over y in terms (ii) and (iii) are taken by seeded Monte Carlo.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import as_float_array, check_int, check_real_scalar
from ..linear_model import LinearModel
from ..neural import TwoLayerReLU
from ..sl import MetaSL
from .projection import BallLeastSquares, minimise_over_radius
from .report import TermReport, times
from .rl_bound import _ratio

_OWNER = "sl_gap"
_MC_BATCHES = 10


class SLGapReport(TermReport):
    """Theorem 4.4 evaluated at omega against a comparator.

    Attributes
    ----------
    gap : float
        L(omega) - L(comparator) (the meta-objective is minimised).
    term_i : float
        R ||grad L(omega)||_2.
    term_ii : float
        ||w||_{M, rho}.
    term_iii : float
        inf over ||v|| <= R of ||u - phi_{l,omega}^T v||_{M, rho}.
    bound : float
        term_i + term_ii * term_iii.
    linearised_gap : float
        E_{M x rho}[u w] = 1/n sum_i <dR_i/dh_{omega_i}, h_{omega_i} - h_{theta*_i}>_rho,
        the convexity step: gap <= linearised_gap <= bound.
    comparator : ndarray
        The theta used in place of theta*.
    grad_norm, R, L_omega, L_comparator : float
    w, u : ndarray of shape (n_atoms, m)
        w and u on the atoms of M (x_j, y_kj), ordered (k, j) (Monte Carlo draws (x_j, y_js),
        ordered (j, s), in population mode) and the points x' = x_l.
    rho : ndarray of shape (m,)
    standard_errors : dict
        Monte Carlo standard errors of term_ii, term_iii and bound (population mode; else empty).
    notes : list of str
    """

    title = "Theorem 4.4 at omega (meta-SL; gap = L(omega) - L(comparator))"

    def _rows(self) -> list[tuple[str, str, float]]:
        return [
            ("gap", "L(omega) - L(comparator)", self.gap),
            ("L_omega", "meta-objective at omega", self.L_omega),
            ("L_comparator", "meta-objective at the comparator", self.L_comparator),
            ("linearised_gap", "E[u w] (convexity step, >= gap)", self.linearised_gap),
            ("grad_norm", "epsilon = ||grad L(omega)||_2", self.grad_norm),
            ("R", "radius of the ball B_R", self.R),
            ("term_i", "R epsilon", self.term_i),
            ("term_ii", "||w||_{M,rho}", self.term_ii),
            ("term_iii", "inf_{|v|<=R} ||u - phi_l^T v||_{M,rho}", self.term_iii),
            ("bound", "term_i + term_ii term_iii", self.bound),
        ]


def _shared_design(meta: MetaSL) -> tuple[np.ndarray, np.ndarray]:
    """The common inputs X (m, p) and the label matrix Y (n, m), or a clear error."""
    X = meta.tasks[0].X
    for i, task in enumerate(meta.tasks):
        if task.has_query:
            raise ValueError(f"The 'meta' parameter of {_OWNER} must hold tasks without query sets: Theorem 4.4 "
                             f"takes the inner step and the risk on the same data (4.3)-(4.4). Task {i} has a "
                             "query set.")
        if task.X.shape != X.shape or not np.array_equal(task.X, X):
            raise ValueError(f"The 'meta' parameter of {_OWNER} must hold tasks on one shared input design (the "
                             "same X in every task): only then are dD_i/dM and dR_i/dh finite sums. "
                             f"Task {i} has other inputs than task 0.")
    if np.unique(X, axis=0).shape[0] != X.shape[0]:
        raise ValueError(f"The 'meta' parameter of {_OWNER} must hold a design of distinct input points. "
                         f"Got {X.shape[0]} rows with repeats.")
    return X, np.stack([task.y for task in meta.tasks])


def _loss_derivatives(meta: MetaSL, H: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, d1, d2 = meta._loss_terms(np.ascontiguousarray(H.ravel()), np.ascontiguousarray(Y.ravel()))
    return d1.reshape(H.shape), d2.reshape(H.shape)


def _design_features(meta: MetaSL, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """phi(x_j) on the design: the features (linear) or the Jacobian du(x_j)/dW at theta (network)."""
    model = meta.model
    if isinstance(model, LinearModel):
        return meta._inputs(X)
    W = theta.reshape(model.width, model.in_dim)
    act = (X @ W.T > 0.0) * model._sb
    return (act[:, :, None] * X[:, None, :]).reshape(X.shape[0], model.n_params)


def _adapted_predictions(meta: MetaSL, X: np.ndarray, Y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """h_{theta_i}(x_j) for every task i after one inner step (4.12), shape (n, m)."""
    if isinstance(meta.model, LinearModel):
        Z = meta._inputs(X)
        h = Z @ theta
        d1, _ = _loss_derivatives(meta, np.broadcast_to(h, Y.shape), Y)
        thetas = theta[None, :] - meta.eta * (d1 @ Z) / X.shape[0]
        return thetas @ Z.T
    return np.stack([meta.model.forward(meta.adapt(theta, task), X) for task in meta.tasks])


def exact_minimiser(meta: MetaSL) -> np.ndarray:
    """The global minimiser of L for a linear model with the squared loss (L is quadratic).

    With theta_i = B_i theta + c_i, B_i = I - eta F_i^T F_i / N_i, c_i = eta F_i^T y_i / N_i,
    L(theta) = 1/n sum_i 1/(2 N_q) ||F^q_i (B_i theta + c_i) - y^q_i||^2 is a least-squares
    problem in theta: one solve (the minimum-norm minimiser if it is not unique).
    """
    if not isinstance(meta.model, LinearModel) or meta.loss != "squared":
        raise ValueError("exact_minimiser needs a LinearModel with the squared loss (then L is quadratic). "
                         f"Got {meta.model!r} with loss={meta.loss!r}.")
    blocks, targets = [], []
    n = meta.n_tasks
    for task in meta.tasks:
        F = meta._inputs(task.X)
        Fq, yq = (meta._inputs(task.X_query), task.y_query) if task.has_query else (F, task.y)
        N = F.shape[0]
        B = np.eye(F.shape[1]) - meta.eta * F.T @ F / N
        c = meta.eta * F.T @ task.y / N
        scale = 1.0 / np.sqrt(n * Fq.shape[0])
        blocks.append(scale * Fq @ B)
        targets.append(scale * (yq - Fq @ c))
    return np.linalg.lstsq(np.vstack(blocks), np.concatenate(targets), rcond=None)[0]


def _empirical_atoms(meta: MetaSL, Y: np.ndarray, h_omega: np.ndarray) -> tuple[np.ndarray, ...]:
    """Atoms (x_j, y_kj) of M, ordered (k, j): dD_i/dM, design point, mass, l'' at omega."""
    n, m = Y.shape
    same = Y[:, None, :] == Y[None, :, :]                      # [i, k, j]: y_ij == y_kj
    RN = (n * same / same.sum(axis=0)[None]).reshape(n, n * m).T
    _, d2 = _loss_derivatives(meta, np.broadcast_to(h_omega, Y.shape), Y)
    return RN, np.tile(np.arange(m), n), np.full(n * m, 1.0 / (n * m)), d2.ravel()


def _gaussian_atoms(Y: np.ndarray, noise: float, n_mc: int, seed: int) -> tuple[np.ndarray, ...]:
    """Monte Carlo atoms of M when y = h_i(x) + N(0, noise^2): y_js ~ M(.|x_j), ordered (j, s).

    dD_i/dM(x, y) = N(y; h_i(x), noise^2) / (1/n sum_k N(y; h_k(x), noise^2)), computed in
    log space so that far tails do not underflow to 0/0.
    """
    n, m = Y.shape
    rng = np.random.default_rng(seed)
    k = rng.integers(0, n, size=(m, n_mc))
    y = Y[k, np.arange(m)[:, None]] + noise * rng.standard_normal((m, n_mc))
    logp = -0.5 * ((y[None, :, :] - Y[:, :, None]) / noise) ** 2          # [i, j, s]
    logp -= logp.max(axis=0, keepdims=True)
    p = np.exp(logp)
    RN = (n * p / p.sum(axis=0, keepdims=True)).reshape(n, m * n_mc).T
    return RN, np.repeat(np.arange(m), n_mc), np.full(m * n_mc, 1.0 / (m * n_mc)), np.ones(m * n_mc)


def sl_gap(meta: MetaSL, omega: Any, comparator: Any = None, R: float | None = 1.0,
           rho: Any = None, *, noise: float | None = None, n_mc: int = 200, seed: int = 0) -> SLGapReport:
    """Evaluate Theorem 4.4 at omega: the gap, the three terms and the bound (4.16).

    Parameters
    ----------
    meta : MetaSL
        Tasks on one shared input design (the same X in every task, distinct points,
        no query sets), a :class:`fastmeta.LinearModel` (squared or logistic loss) or a
        :class:`fastmeta.TwoLayerReLU` (features: its Jacobian at omega, Hessian the
        Gauss-Newton one, exact away from kinks).
    omega : array_like of shape (n_params,)
    comparator : array_like, optional
        theta in place of the global minimiser theta*. Default: for the linear model with
        the squared loss the exact minimiser (:func:`exact_minimiser`); otherwise the best
        point of :func:`best_found` with ``seed``.
    R : float or None, default 1.0
        Radius of B_R (> 0); ``None`` minimises the bound over R.
    rho : array_like of shape (m,), optional
        The law on the design points defining L2(rho); default the x-marginal of M
        (uniform). Every point needs rho > 0, else dR_i/dh does not exist.
    noise : float, optional
        Population mode: read each task's labels as the noise-free means h_i(x_j) of
        y = h_i(x) + N(0, noise^2) (squared loss only). L, its gradient and dR_i/dh are then
        exact (the noise integrates out), while dD_i/dM depends on y and terms (ii)-(iii)
        are integrals over y, computed by seeded Monte Carlo with standard errors in
        ``report.standard_errors`` (batch means over 10 batches).
    n_mc : int, default 200
        Monte Carlo draws of y per design point (>= 20), population mode only.
    seed : int, default 0
        Seed of the comparator search (when one is needed) and of the Monte Carlo draws.

    Returns
    -------
    SLGapReport

    Notes
    -----
    For the network, E[phi_{l,omega} w] equals grad L(omega) when the inner step keeps
    the ReLU activation pattern on the design (the Jacobian at omega_i is then the one at
    omega); a note counts the activations that flip.
    """
    if not isinstance(meta, MetaSL):
        raise TypeError(f"The 'meta' parameter of {_OWNER} must be a fastmeta.MetaSL. "
                        f"Got {type(meta).__name__} instead.")
    if meta.first_order:
        raise ValueError(f"The 'meta' parameter of {_OWNER} must use the exact meta-gradient (first_order=False): "
                         "Theorem 4.4 bounds the gap of a stationary point of L itself.")
    X, Y = _shared_design(meta)
    n, m = Y.shape
    omega = meta._check_params(omega, _OWNER)
    if R is not None:
        R = check_real_scalar(R, "R", _OWNER, low=0.0)
    if noise is not None:
        noise = check_real_scalar(noise, "noise", _OWNER, low=0.0)
        n_mc = check_int(n_mc, "n_mc", _OWNER, low=2 * _MC_BATCHES)
        if meta.loss != "squared":
            raise ValueError(f"The 'noise' parameter of {_OWNER} needs the squared loss (then the Gaussian noise "
                             f"integrates out of the risk). Got loss={meta.loss!r} instead.")
    if rho is None:
        rho = np.full(m, 1.0 / m)
    else:
        rho = as_float_array(rho, "rho", _OWNER, shape=(m,), allow_negative=False)
        if abs(rho.sum() - 1.0) > 1e-10:
            raise ValueError(f"The 'rho' parameter of {_OWNER} must be a probability vector over the {m} design "
                             f"points. Got entries summing to {float(rho.sum())!r} instead.")
        if np.any(rho == 0.0):
            raise ValueError(f"The 'rho' parameter of {_OWNER} must be positive at every design point: where "
                             f"rho = 0 the Frechet derivative dR_i/dh in L2(rho) does not exist. Got rho = 0 at "
                             f"point {int(np.flatnonzero(rho == 0.0)[0])}.")
    if comparator is None:
        if isinstance(meta.model, LinearModel) and meta.loss == "squared":
            comparator = exact_minimiser(meta)
        else:
            from .search import best_found
            comparator = best_found(meta, seed=seed).theta
    comparator = meta._check_params(comparator, _OWNER)
    notes: list[str] = []

    L_omega, grad = meta.value_and_grad(omega)
    L_comp = meta.objective(comparator)
    grad_norm = float(np.linalg.norm(grad))
    H_omega = _adapted_predictions(meta, X, Y, omega)
    H_comp = _adapted_predictions(meta, X, Y, comparator)
    d1_adapted, _ = _loss_derivatives(meta, H_omega, Y)
    a = d1_adapted / (m * rho[None, :])                        # dR_i/dh_{omega_i}(x_l), (n, m)
    numerator = np.mean(a * (H_omega - H_comp), axis=0)        # of u, independent of (x, y); (m,)
    Z = _design_features(meta, X, omega)
    K = Z @ Z.T
    h_omega = Z @ omega if isinstance(meta.model, LinearModel) else meta.model.forward(omega, X)
    if noise is None:
        atoms = _empirical_atoms(meta, Y, h_omega)
    else:
        atoms = _gaussian_atoms(Y, noise, n_mc, seed)
        L_omega, L_comp = L_omega + 0.5 * noise ** 2, L_comp + 0.5 * noise ** 2

    def evaluate(subset: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, BallLeastSquares]:
        RN, point, mass, d2 = (arr[subset] for arr in atoms)
        w = RN @ a / n                                                 # (4.13) on (atom, x_l)
        u = _ratio(np.broadcast_to(numerator, w.shape).copy(), w)      # (4.14)
        weight = mass[:, None] * rho[None, :]

        def rows(start: int, stop: int) -> np.ndarray:
            # (4.15): phi_l((x_j, y), x_l) = z_l - eta l''(h(x_j), y) z_j (z_j . z_l), rows ordered (atom, l).
            atom, l = np.divmod(np.arange(start, stop), m)
            j = point[atom]
            return Z[l] - (meta.eta * d2[atom] * K[j, l])[:, None] * Z[j]

        problem = BallLeastSquares(rows, w.size, Z.shape[1], weight.ravel(), u.ravel()[:, None])
        return w, u, float(np.sqrt(np.sum(weight * w * w))), problem

    w, u, term_ii, problem = evaluate(np.arange(atoms[0].shape[0]))
    if np.any(np.isinf(u)):
        notes.append(f"w vanishes at {int(np.isinf(u).sum())} points where the numerator of u does not: "
                     "u is not in L2(M x rho), term_iii = inf")
    if R is None:
        bound, R_used = minimise_over_radius(problem, 0, grad_norm, term_ii)
    else:
        R_used = R
    proj = problem.solve(0, R_used)
    term_i = R_used * grad_norm
    if R is not None:
        bound = term_i + times(term_ii, proj.value)
    se = {}
    if noise is not None:
        # Standard errors from batch means: the terms recomputed on disjoint batches of the samples.
        batch_of = np.arange(atoms[0].shape[0]) % n_mc * _MC_BATCHES // n_mc
        per_batch = []
        for b in range(_MC_BATCHES):
            _, _, t2, prob = evaluate(np.flatnonzero(batch_of == b))
            t3 = prob.solve(0, R_used).value
            per_batch.append((t2, t3, term_i + times(t2, t3)))
        spread = np.std(np.array(per_batch), axis=0, ddof=1) / np.sqrt(_MC_BATCHES)
        se = dict(zip(("term_ii", "term_iii", "bound"), (float(x) for x in spread)))
        notes.append(f"y integrated by Monte Carlo ({n_mc} draws per design point, seed {seed}): standard errors "
                     f"term_ii {se['term_ii']:.3g}, term_iii {se['term_iii']:.3g}, bound {se['bound']:.3g} "
                     f"(batch means); L includes the noise floor noise^2/2")
    if isinstance(meta.model, TwoLayerReLU):
        flips = sum(int(np.sum((X @ meta.adapt(omega, t).reshape(meta.model.width, -1).T > 0)
                               != (X @ omega.reshape(meta.model.width, -1).T > 0))) for t in meta.tasks)
        if flips:
            notes.append(f"the inner step flips {flips} ReLU activations on the design: the linearised features "
                         "make E[phi_l w] differ from grad L(omega), so the bound is approximate")

    rep = SLGapReport()
    rep.gap, rep.L_omega, rep.L_comparator = L_omega - L_comp, L_omega, L_comp
    rep.grad_norm, rep.grad, rep.R = grad_norm, grad, R_used
    rep.term_i, rep.term_ii, rep.term_iii, rep.bound = term_i, term_ii, proj.value, bound
    rep.linearised_gap = float(np.sum(rho * numerator))
    rep.comparator, rep.omega, rep.rho, rep.w, rep.u, rep.v = comparator, omega, rho, w, u, proj.v
    rep.notes, rep.standard_errors = notes, se
    return rep
