"""Visitation measures of Section 2 and expectations under the family (3.6).

sigma^{(s,a)} (Definition 3.1) is the state-action visitation of pi started from
s0 ~ P(.|s, a). The whole family is an (S*A) x (S*A) object, but every quantity
the paper uses is an expectation under it, and each such expectation is one linear
solve with M = I - gamma P_pi:

    E_{sigma^{(s,a)}}[g]            = (1-gamma) [P M^{-1} g_pi](s, a),    g_pi(s') = sum_a' pi(a'|s') g(s', a')
    sum_{s,a} w(s,a) sigma^{(s,a)}  = (1-gamma) [M^{-T} P^T w](s') pi(a'|s')

:func:`explicit_family` builds the family itself, for teaching and tests only.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from . import linalg
from ._kernels import rl as _k
from ._kernels import rl_batched as _kb
from ._validation import as_float_array, check_choice, check_int, check_real_scalar
from .mdp import TabularMDP

EXPLICIT_LIMIT = 4096
"""Largest S*A for which :func:`explicit_family` agrees to build the dense family."""

_SOLVER_DOC = """solver : {"auto", "dense", "splu", "pardiso", "krylov"}, default "auto"
        Linear solver for M = I - gamma P_pi (see :func:`fastmeta.linalg.choose_method`).
    rtol, atol : float, default 1e-11 and 0
        Tolerances of the iterative solver ("krylov"): it stops when
        ||b - M x|| <= max(rtol ||b||, atol); the direct solvers are exact to rounding.
    maxiter : int or None
        Iteration cap of the iterative solver (default 1000); exceeding it raises
        :class:`fastmeta.linalg.SolverError`."""


def _policy(task: TabularMDP, pi: Any, owner: str) -> np.ndarray:
    if not isinstance(task, TabularMDP):
        raise TypeError(f"The 'task' parameter of {owner} must be a TabularMDP. Got {type(task).__name__} instead.")
    pi = as_float_array(pi, "pi", owner, shape=task.shape, allow_negative=False)
    sums = pi.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > 1e-8:
        raise ValueError(f"The 'pi' parameter of {owner} must have rows pi(.|s) summing to 1. "
                         f"Row {worst} sums to {float(sums[worst])!r}.")
    return pi


def policy_matrix(task: TabularMDP, pi: Any) -> Any:
    """M = I - gamma P_pi as scipy CSR (S, S)."""
    from .rl import PolicyPattern  # the symbolic phase lives with the meta-RL core

    pi = _policy(task, pi, "policy_matrix")
    pattern = PolicyPattern.build(task.P, task.n_states, task.n_actions, "dense", 1e-11, None)
    return pattern.matrix(task.P, pi, task.gamma)


def _dense_enough(task: TabularMDP, solver: str) -> bool:
    """Whether M goes to a dense LU (the rule of ``linalg.choose_method``, decided from P alone).

    M has at least nnz(P) / A stored entries, so nnz(P) >= A S^2 / 10 makes it dense-ish.
    """
    S, A = task.shape
    if solver == "dense":
        return True
    return solver == "auto" and (S <= linalg.DENSE_MAX_N or
                                 (S <= linalg.DENSE_MAX_N_DENSEISH and 10 * task.P.nnz >= A * S * S))


def _solver(task: TabularMDP, owner: str, solver: Any, rtol: Any, atol: Any, maxiter: Any) -> Callable:
    """Validate the solver arguments of ``owner``; returns ``pi -> factorisation of I - gamma P_pi``.

    The pattern analysis is done once here, so policy iteration pays it once; a matrix
    that goes to a dense LU needs none (the sparse pattern of a dense S = 500 input alone
    costs 8x the whole solve), so M is then written densely straight from P's rows.
    """
    from .rl import PolicyPattern

    solver = check_choice(solver, "solver", linalg.METHODS, owner)
    rtol = check_real_scalar(rtol, "rtol", owner, low=0.0, high=1.0, low_open=False)
    atol = check_real_scalar(atol, "atol", owner, low=0.0, low_open=False)
    if rtol == 0.0 and atol == 0.0:
        raise ValueError(f"The 'rtol' and 'atol' parameters of {owner} must not both be 0. Got 0 and 0 instead.")
    maxiter = None if maxiter is None else check_int(maxiter, "maxiter", owner, low=1)
    if _dense_enough(task, solver):
        S = task.n_states

        def dense_factor(pi: np.ndarray) -> Any:
            M = np.empty((S, S))
            _kb.dense_policy_matrix(task.P.indptr, task.P.indices, task.P.data, 0, pi, task.gamma, M)
            return linalg.factorize(sp.csr_matrix(M), "dense")

        return dense_factor
    pattern = PolicyPattern.build(task.P, task.n_states, task.n_actions, solver, rtol, maxiter)

    def factor(pi: np.ndarray) -> Any:
        return linalg.factorize(pattern.matrix(task.P, pi, task.gamma), pattern.method, rtol=rtol, atol=atol,
                                maxiter=maxiter, plan=pattern.plan)

    return factor


def evaluate_policy(task: TabularMDP, pi: Any, *, solver: str = "auto", rtol: float = 1e-11,
                    atol: float = 0.0, maxiter: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """V (S,), Q (S, A) and A = Q - V of pi with the (1-gamma) normalisation (2.1)-(2.3).

    Parameters
    ----------
    task : TabularMDP
    pi : ndarray of shape (S, A)
    {solver}

    Returns
    -------
    V, Q, A : ndarray
    """
    pi = _policy(task, pi, "evaluate_policy")
    r_pi = np.empty(task.n_states)
    _k.policy_average(pi, task.r, r_pi)
    V = _solver(task, "evaluate_policy", solver, rtol, atol, maxiter)(pi).solve(r_pi) * (1.0 - task.gamma)
    Q = np.empty(task.shape)
    _k.bellman_q(task.P.indptr, task.P.indices, task.P.data, task.r, V, task.gamma, Q)
    return V, Q, Q - V[:, None]


def visitation(task: TabularMDP, pi: Any, *, init: Any = None, solver: str = "auto", rtol: float = 1e-11,
               atol: float = 0.0, maxiter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """State visitation nu (2.4) and state-action visitation sigma = nu pi.

    ``init`` replaces the task's zeta (e.g. by a signed measure: the result is then
    linear in it).

    Parameters
    ----------
    task : TabularMDP
    pi : ndarray of shape (S, A)
    init : ndarray of shape (S,), optional
    {solver}

    Returns
    -------
    nu : ndarray of shape (S,)
        nu(s) = (1 - gamma) sum_t gamma^t Pr(s_t = s); a distribution when ``init`` is one.
    sigma : ndarray of shape (S, A)
        sigma(s, a) = nu(s) pi(a|s).

    Examples
    --------
    >>> import numpy as np
    >>> import fastmeta
    >>> from fastmeta.visitation import visitation
    >>> tasks, _ = fastmeta.tasks.gridworld_goals(n_tasks=1, size=3, n_features=4, seed=0)
    >>> nu, sigma = visitation(tasks[0], np.full((9, 4), 0.25))
    >>> nu.shape, sigma.shape, round(float(sigma.sum()), 12)
    ((9,), (9, 4), 1.0)
    """
    pi = _policy(task, pi, "visitation")
    zeta = task.init if init is None else as_float_array(init, "init", "visitation", shape=(task.n_states,))
    nu = _solver(task, "visitation", solver, rtol, atol, maxiter)(pi).solve_transposed(zeta) * (1.0 - task.gamma)
    return nu, nu[:, None] * pi


def family_expectation(task: TabularMDP, pi: Any, g: Any, *, solver: str = "auto", rtol: float = 1e-11,
                       atol: float = 0.0, maxiter: int | None = None) -> np.ndarray:
    """E_{(s',a') ~ sigma^{(s,a)}}[g(s', a')] for every (s, a), without building the family.

    Parameters
    ----------
    task : TabularMDP
    pi : ndarray of shape (S, A)
        The policy generating the family.
    g : ndarray of shape (S, A) or (S, A, k)
        A scalar or vector-valued function of (s', a').
    {solver}

    Returns
    -------
    ndarray of shape (S, A) or (S, A, k)
        Costs k solves with one factorisation.

    Examples
    --------
    The same numbers as averaging g under the explicit family:

    >>> import numpy as np
    >>> import fastmeta
    >>> from fastmeta.visitation import explicit_family, family_expectation
    >>> tasks, _ = fastmeta.tasks.gridworld_goals(n_tasks=1, size=3, n_features=4, seed=0)
    >>> pi, g = np.full((9, 4), 0.25), np.arange(36.0).reshape(9, 4)
    >>> E = family_expectation(tasks[0], pi, g)
    >>> bool(np.allclose(E, np.einsum("sauv,uv->sa", explicit_family(tasks[0], pi), g)))
    True
    """
    owner = "family_expectation"
    pi = _policy(task, pi, owner)
    g = as_float_array(g, "g", owner)
    if g.shape[:2] != task.shape or g.ndim not in (2, 3) or (g.ndim == 3 and g.shape[2] == 0):
        raise ValueError(f"The 'g' parameter of {owner} must have shape (S, A) = {task.shape} or "
                         f"(S, A, k) = {task.shape + ('k',)} with k >= 1. "
                         f"Got shape {g.shape} instead.")
    G = g.reshape(task.n_states, task.n_actions, -1)
    fac = _solver(task, owner, solver, rtol, atol, maxiter)(pi)
    H = fac.solve(np.einsum("sa,sak->sk", pi, G))  # the k columns in one (S, k) solve
    out = (task.P @ H) * (1.0 - task.gamma)
    return out.reshape(g.shape)


def family_mixture(task: TabularMDP, pi: Any, w: Any, *, solver: str = "auto", rtol: float = 1e-11,
                   atol: float = 0.0, maxiter: int | None = None) -> np.ndarray:
    """The measure sum_{s,a} w(s, a) sigma^{(s,a)} on (s', a'), shape (S, A); one transposed solve.

    Parameters
    ----------
    task : TabularMDP
    pi : ndarray of shape (S, A)
    w : ndarray of shape (S, A)
    {solver}
    """
    owner = "family_mixture"
    pi = _policy(task, pi, owner)
    w = as_float_array(w, "w", owner, shape=task.shape)
    mu = np.empty(task.n_states)
    _k.kernel_transpose_apply(task.P.indptr, task.P.indices, task.P.data, w, mu)
    xi = _solver(task, owner, solver, rtol, atol, maxiter)(pi).solve_transposed(mu) * (1.0 - task.gamma)
    return xi[:, None] * pi


def explicit_family(task: TabularMDP, pi: Any) -> np.ndarray:
    """The whole family as a dense array F[s, a, s', a'] = sigma^{(s,a)}(s', a').

    For teaching and testing only: memory grows as (S*A)^2, so it refuses
    problems with S*A > ``EXPLICIT_LIMIT``.
    """
    pi = _policy(task, pi, "explicit_family")
    S, A = task.shape
    if S * A > EXPLICIT_LIMIT:
        raise ValueError(f"explicit_family builds an (S*A) x (S*A) array; S*A = {S * A} exceeds the limit "
                         f"{EXPLICIT_LIMIT}. Use family_expectation or family_mixture instead.")
    P = task.dense_P()
    P_pi = np.einsum("sa,sat->st", pi, P)
    resolvent = np.linalg.inv(np.eye(S) - task.gamma * P_pi)
    state = (1.0 - task.gamma) * np.einsum("sat,tu->sau", P, resolvent)
    return state[:, :, :, None] * pi[None, None, :, :]


for _fn in (evaluate_policy, visitation, family_expectation, family_mixture):
    _fn.__doc__ = _fn.__doc__.replace("{solver}", _SOLVER_DOC)
