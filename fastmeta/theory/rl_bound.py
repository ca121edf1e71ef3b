"""Definition 3.3 (meta-visitation measures) and Theorem 3.5 (the meta-RL optimality gap).

Per task i, with pi the main effect at omega, M = I - gamma_i P_pi, sigma_i the visitation
of the adapted policy pi_i, and sigma^{(s,a)} the family (3.6) under pi:

    varsigma_i = sum_{s,a} sigma_i(s,a) sigma^{(s,a)}                         (3.10)
               = (1-gamma_i) [M^{-T} P^T sigma_i](s') pi(a'|s')               one transposed solve
    varrho     = 1/n sum_i varsigma_i                                         (3.11)
    varsigma_i G_i = sum_{s,a} sigma_i A_i sigma^{(s,a)} = xi_i(s') pi(a'|s')  (3.15), xi_i the adjoint state

With the exact gradient the paper's g_i becomes (our docs/formulas.md, "Theorem 3.5")

    g~_i = 1/(1-gamma_i) [ A_i dsigma_i/dvarsigma_i / tau + gamma_i eta / ((1-gamma_i) tau) G_i A ]

so g~_i varsigma_i = dL_i/df, the per-task energy gradient the adjoint method already
computes, and gbar = 1/n sum_i g~_i dvarsigma_i/dvarrho = (dL/df) / varrho. For a comparator
theta' with adapted visitations sigma'_i,

    f_omega = [1/n sum_i A_i sigma'_i / (1-gamma_i)] / varrho / gbar        (3.14) with g~

and then, exactly, L(theta') - L(omega) = E_varrho[f_omega gbar] (performance difference)
and grad L(omega) = E_varrho[phi gbar] (phi the energy's features, or for a network its
Jacobian at omega), whence the bound R ||grad L|| + ||gbar||_varrho inf_{||v||<=R} ||f_omega - phi^T v||_varrho.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validation import check_int, check_real_scalar
from ..energy import LinearEnergy
from ..neural import NeuralEnergy
from ..rl import MetaRL
from ..visitation import explicit_family
from .projection import BallLeastSquares, minimise_over_radius
from .report import TermReport, times
from .rl_units import GAP, VISITATION, LocalUnits, l2_of_density

_OWNER = "rl_gap"


def _check_meta(meta: Any, owner: str) -> MetaRL:
    if not isinstance(meta, MetaRL):
        raise TypeError(f"The 'meta' parameter of {owner} must be a fastmeta.MetaRL. "
                        f"Got {type(meta).__name__} instead.")
    return meta


def _units_of(meta: Any, owner: str) -> Any:
    """The per-unit computation of ``meta``: in this process, or on the workers of a DaskMetaRL."""
    if isinstance(meta, MetaRL):
        return LocalUnits(meta)
    from ..distributed import DaskMetaRL  # not at import time: fastmeta.distributed imports this package

    if isinstance(meta, DaskMetaRL):
        return meta._theory_units()
    raise TypeError(f"The 'meta' parameter of {owner} must be a fastmeta.MetaRL or a "
                    f"fastmeta.distributed.DaskMetaRL. Got {type(meta).__name__} instead.")


def meta_visitation(meta: MetaRL | Any, theta: Any, *, per_task: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """The meta-visitation measures of Definition 3.3 at theta.

    Parameters
    ----------
    meta : MetaRL or DaskMetaRL
        With a :class:`fastmeta.distributed.DaskMetaRL` the measures are computed on the
        workers, where the tasks live, with the same bits as one process.
    theta : array_like of shape (n_params,)
    per_task : bool, default True
        Return every varsigma_i. False returns only varrho (for a DaskMetaRL, the n x S x A
        per-task measures then never leave the workers).

    Returns
    -------
    varsigma : ndarray of shape (n, S, A), or None with ``per_task=False``
        varsigma_i (3.10): the visitation of the main effect pi_theta started from
        s0 ~ sum_{s,a} sigma_i(s,a) P_i(.|s,a), sigma_i the adapted policy's visitation.
        Each sums to 1.
    varrho : ndarray of shape (S, A)
        The mixture (3.11), the mean of the varsigma_i.

    Notes
    -----
    Costs one meta-gradient plus one transposed solve per task (sharing the main effect's
    factorisation within each group of tasks with one kernel and discount). The sum behind
    varrho runs over the gradient's units of work in their fixed order
    (:mod:`fastmeta.theory.rl_units`). The joint measure rho_i (3.9) is an (S*A)^2 object:
    see :func:`explicit_joint_measure`.
    """
    owner = "meta_visitation"
    units = _units_of(meta, owner)
    theta = meta.model.check_params(theta, owner)
    fs = (meta.model.energy(theta),)
    varrho = units.sums(VISITATION, fs, keep=bool(per_task))["varsigma"] / units.n_tasks
    varsigma = units.finish(VISITATION, fs, None, True)[1] if per_task else None
    return varsigma, varrho


def explicit_joint_measure(meta: MetaRL, theta: Any, task: int = 0) -> np.ndarray:
    """The joint meta-visitation measure rho_i (3.9) as a dense array rho[s', a', s, a].

    rho_i(s', a', s, a) = sigma^{(s,a)}(s', a') sigma_i(s, a). For teaching and testing
    only: it holds (S*A)^2 numbers, so it refuses problems with S*A above
    ``fastmeta.visitation.EXPLICIT_LIMIT``.
    """
    meta = _check_meta(meta, "explicit_joint_measure")
    trace = meta.trace(theta, task)
    F = explicit_family(meta.tasks[check_int(task, "task", "explicit_joint_measure", low=0)], trace.pi)
    return np.ascontiguousarray(F.transpose(2, 3, 0, 1) * trace.sigma_i[None, None, :, :])


def energy_features(meta: MetaRL, omega: np.ndarray):
    """Row generator of the features phi(s, a) (linear) or of the Jacobian df(s, a)/dW at omega (network)."""
    model = meta.model
    S, A = meta.n_states, meta.n_actions
    if isinstance(model, LinearEnergy):
        flat = model.phi.reshape(S * A, model.n_params)
        return (lambda a, b: flat[a:b]), model.n_params
    if isinstance(model, NeuralEnergy):
        X = model._rows
        net = model.net
        W = omega.reshape(net.width, net.in_dim)
        sb = net._sb

        def rows(a: int, b: int) -> np.ndarray:
            # du(x)/dW_r = b_r / sqrt(m) 1[W_r . x > 0] x, flattened row-major like the parameters.
            act = (X[a:b] @ W.T > 0.0) * sb
            return (act[:, :, None] * X[a:b, None, :]).reshape(b - a, net.n_params)

        return rows, net.n_params
    raise TypeError(f"The 'meta' parameter of {_OWNER} must use a LinearEnergy or a NeuralEnergy (the theorem "
                    f"needs features phi). Got a {type(model).__name__} energy instead.")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0/0 = 0 and x/0 = +-inf for x != 0 (never NaN)."""
    out = np.zeros_like(num)
    nz = den != 0.0
    with np.errstate(over="ignore"):  # a tiny denominator overflows to inf, which is the right answer
        out[nz] = num[nz] / den[nz]
    bad = ~nz & (num != 0.0)
    out[bad] = np.copysign(np.inf, num[bad])
    return out


class RLGapReport(TermReport):
    """Theorem 3.5 evaluated at omega against one comparator theta'.

    Attributes
    ----------
    gap : float
        L(theta') - L(omega) (the meta-objective is maximised).
    L_omega, L_comparator : float
    grad_norm : float
        ||grad L(omega)||_2, the epsilon of (3.16).
    varsigma : ndarray (n, S, A) or None, varrho : ndarray (S, A)
        The meta-visitation measures (3.10), (3.11) at omega (``varsigma`` is None when
        ``rl_gap`` was called with ``per_task=False``).
    gbar : ndarray (S, A)
        1/n sum_i g~_i dvarsigma_i/dvarrho, with the g~ of the exact gradient.
    f_omega, f_omega_printed : ndarray (S, A)
        (3.14) with g~ and with the printed g.
    projection, projection_printed : float
        inf over ||v|| <= R of ||f - phi^T v||_varrho for the two f.
    v : ndarray or None
        The minimiser of ``projection``.
    gbar_norm : float
        ||gbar||_varrho.
    C0 : float
        The smallest constant of Assumption 3.4 at omega: max over i of the L2(varrho)
        norms of dsigma_i/dvarrho and dvarsigma_i/dvarrho. The assumption asks for a C0
        valid at every theta; this is its value at omega only.
    Q_max : float
        max_i max_{s,a} |r_i(s, a)|, which bounds |V|, |Q| (hence |A|, |G_i| <= 2 Q_max).
    C_printed, C_consistent : float
        The printed C = 2 C0 Q_max / tau (1 + 2 Q_max gammabar eta) and the C' that bounds
        ||gbar||_varrho with the exact gradient.
    printed_gradient_error : float
        ||E_varrho[phi gbar_printed] - grad L(omega)|| / ||grad L(omega)||: how far the printed
        g is from reproducing the gradient (the identity the proof needs; 0 for g~).
    bound_printed, bound_consistent, bound_sharp : float
        R grad_norm + {C with f_printed, C' with f, gbar_norm with f} x projection.
    R : float
        The radius used (for ``R=None``, the sharp bound's minimising radius).
    R_opt : dict
        The radius of each bound ("printed", "consistent", "sharp").
    notes : list of str
        Why a term is infinite, if one is.
    """

    title = "Theorem 3.5 at omega (meta-RL; gap = L(comparator) - L(omega))"

    def _rows(self) -> list[tuple[str, str, float]]:
        rows = [
            ("gap", "L(comparator) - L(omega)", self.gap),
            ("L_comparator", "meta-objective at the comparator", self.L_comparator),
            ("L_omega", "meta-objective at omega", self.L_omega),
            ("grad_norm", "epsilon = ||grad L(omega)||_2", self.grad_norm),
            ("R", "radius of the ball B_R", self.R),
            ("projection", "inf_{|v|<=R} ||f_omega - phi^T v||_varrho (exact g~)", self.projection),
            ("projection_printed", "the same with f_omega built on the printed g", self.projection_printed),
            ("gbar_norm", "||gbar||_varrho", self.gbar_norm),
            ("C0", "Assumption 3.4 constant, at omega", self.C0),
            ("Q_max", "max |r_i|", self.Q_max),
            ("C_printed", "2 C0 Q_max / tau (1 + 2 Q_max gammabar eta)", self.C_printed),
            ("C_consistent", "C' (bounds ||gbar||_varrho for the exact gradient)", self.C_consistent),
            ("printed_gradient_error", "|E_varrho[phi gbar_printed] - grad L| / |grad L| (0 if exact)",
             self.printed_gradient_error),
            ("bound_printed", "Theorem 3.5 as printed", self.bound_printed),
            ("bound_consistent", "R eps + C' projection", self.bound_consistent),
            ("bound_sharp", "R eps + ||gbar||_varrho projection", self.bound_sharp),
        ]
        return rows


def rl_gap(meta: MetaRL | Any, omega: Any, comparator: Any, R: float | None = 1.0, *,
           per_task: bool | None = None) -> RLGapReport:
    """Evaluate Theorem 3.5 at omega: the true gap, every term, and three bounds side by side.

    Parameters
    ----------
    meta : MetaRL or DaskMetaRL
        With a :class:`fastmeta.LinearEnergy` (features phi) or a
        :class:`fastmeta.NeuralEnergy` (features: the Jacobian df(s,a)/dW at omega,
        the neural tangent class). With a :class:`fastmeta.distributed.DaskMetaRL` the
        per-task work runs on the workers, where the tasks live, with the same bits as
        one process (docs/scaling.md lists what moves).
    omega : array_like of shape (n_params,)
        The (approximately) stationary point, e.g. the output of ``meta.fit``.
    comparator : array_like of shape (n_params,)
        theta' in place of the global maximiser theta*; any theta' works (the identities
        behind the bound hold for every comparator). See :func:`best_found`.
    R : float or None, default 1.0
        Radius of the ball B_R (> 0). ``None`` minimises each bound over R.
    per_task : bool, optional
        Whether the report keeps every varsigma_i (n x S x A floats). Default: True for a
        MetaRL, False for a DaskMetaRL (the per-task measures then stay on the workers and
        ``report.varsigma`` is None).

    Returns
    -------
    RLGapReport
        Prints as a table of terms; see its attributes.

    Notes
    -----
    ``bound_printed`` is (3.17) exactly as printed: f_omega built with the printed g and
    the printed C. The printed g rests on the printed gradient (3.7)-(3.8), which misses
    factors 1/(1-gamma_i); this bound can fall below the gap. ``bound_consistent`` uses
    the exact g~ and C' = 1/n sum_i 2 C0 Q_max / (tau (1-gamma_i)) (1 + 2 Q_max gamma_i eta
    / (1-gamma_i)) >= ||gbar||_varrho, and ``bound_sharp`` uses ||gbar||_varrho itself, so
    gap <= bound_sharp <= bound_consistent. Where varrho = 0 while a measure or the
    gradient is not, or where gbar = 0 while the numerator of f_omega is not, the affected
    term is ``inf`` with a note.

    Costs two meta-gradients (at omega and at the comparator) plus one transposed solve
    per task and the d x d Gram matrix of the varrho-weighted features. The sums over
    tasks (varrho, dL/df, the numerator of f_omega, L) are added unit by unit in the
    gradient's fixed unit order (:mod:`fastmeta.theory.rl_units`), so ``L_omega`` is
    ``meta.objective(omega)`` to the bit on the sparse path.
    """
    units = _units_of(meta, _OWNER)
    model = meta.model
    omega = model.check_params(omega, _OWNER)
    comparator = model.check_params(comparator, _OWNER)
    if R is not None:
        R = check_real_scalar(R, "R", _OWNER, low=0.0)
    rows, n_feat = energy_features(meta, omega)
    if per_task is None:
        per_task = isinstance(meta, MetaRL)

    # Every sum over tasks below is added unit by unit in the gradient's unit order (rl_units).
    fs = (model.energy(omega), model.energy(comparator))
    sums = units.sums(GAP, fs, keep=True)
    n, tau, eta, gammas = units.n_tasks, meta.tau, meta.eta, units.gammas
    varrho = sums["varsigma"] / n
    pos = varrho > 0.0
    C0, varsigma = units.finish(GAP, fs, varrho, bool(per_task))
    notes: list[str] = []

    G = sums["G"] / n                                            # dL/df = gbar * varrho
    grad = model.energy_vjp(omega, G)
    grad_norm = float(np.linalg.norm(grad))
    L_omega = sums["J"] / n
    L_comp = sums["J_comparator"] / n
    # Numerator of (3.14) times varrho: 1/n sum_i A_i^{pi_i,omega} sigma_{pi_i,theta'} / (1-gamma_i).
    N = sums["N"] / n
    # The printed g_i times varsigma_i (no 1/(1-gamma_i) factors).
    Gp = sums["G_printed"] / n

    # What the printed theorem rests on: E_varrho[phi gbar_printed] should be grad L(omega) and is not.
    printed_grad = model.energy_vjp(omega, Gp)
    printed_error = float(np.linalg.norm(printed_grad - grad) / max(grad_norm, np.finfo(float).tiny))
    gbar = _ratio(G, varrho)
    f_omega = _ratio(N, G)
    f_printed = _ratio(N, Gp)
    gbar_norm = l2_of_density(G, varrho, pos)
    if math.isinf(gbar_norm):
        notes.append(f"the gradient dL/df is non-zero at {int(np.sum(~pos & (G != 0)))} state-action pairs where "
                     "varrho = 0: gbar is not in L2(varrho), gbar_norm = inf")
    continuous = not np.any(N[~pos] != 0.0)
    if not continuous:
        notes.append(f"the comparator's adapted visitations charge {int(np.sum(~pos & (N != 0)))} state-action "
                     "pairs where varrho = 0: dsigma/dvarrho does not exist, the projections are inf")
    for name, f in (("f_omega", f_omega), ("f_omega_printed", f_printed)):
        k = int(np.sum(pos & np.isinf(f)))
        if k:
            notes.append(f"{name} is infinite at {k} pairs with varrho > 0 (its denominator vanishes there while "
                         "its numerator does not): its projection is inf")

    if math.isinf(C0):
        notes.append("some sigma_i or varsigma_i charges pairs where varrho = 0: C0 = inf")
    Q_max = sums["Q_max"]
    C_printed = 2.0 * C0 * Q_max / tau * (1.0 + 2.0 * Q_max * float(gammas.mean()) * eta)
    C_cons = float(np.mean(2.0 * C0 * Q_max / (tau * (1.0 - gammas))
                           * (1.0 + 2.0 * Q_max * gammas * eta / (1.0 - gammas))))

    S, A = meta.n_states, meta.n_actions
    rhs = np.column_stack([f_omega.ravel(), f_printed.ravel()])
    if not continuous:
        rhs[:] = np.inf
    problem = BallLeastSquares(rows, S * A, n_feat, varrho.ravel(), rhs)
    R_opt: dict[str, float] = {}
    bounds: dict[str, float] = {}
    for name, k, scale in (("printed", 1, C_printed), ("consistent", 0, C_cons), ("sharp", 0, gbar_norm)):
        if R is None:
            bounds[name], R_opt[name] = minimise_over_radius(problem, k, grad_norm, scale)
        else:
            bounds[name] = R * grad_norm + times(scale, problem.solve(k, R).value)
            R_opt[name] = R
    R_used = R_opt["sharp"] if R is None else R
    R_printed = R_opt["printed"] if R is None else R
    proj, proj_p = problem.solve(0, R_used), problem.solve(1, R_printed)

    rep = RLGapReport()
    rep.gap, rep.L_omega, rep.L_comparator = L_comp - L_omega, L_omega, L_comp
    rep.grad_norm, rep.grad, rep.printed_gradient_error = grad_norm, grad, printed_error
    rep.varsigma, rep.varrho, rep.gbar = varsigma, varrho, gbar
    rep.f_omega, rep.f_omega_printed = f_omega, f_printed
    rep.projection, rep.projection_printed, rep.v = proj.value, proj_p.value, proj.v
    rep.gbar_norm, rep.C0, rep.Q_max = gbar_norm, C0, Q_max
    rep.C_printed, rep.C_consistent = C_printed, C_cons
    rep.bound_printed, rep.bound_consistent, rep.bound_sharp = bounds["printed"], bounds["consistent"], bounds["sharp"]
    rep.R, rep.R_opt, rep.notes = R_used, R_opt, notes
    rep.omega, rep.comparator = omega, comparator
    return rep
