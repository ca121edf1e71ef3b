"""Each task's own optimum: exact policy iteration on a TabularMDP.

Used to show what meta-learning bought (the demo compares the meta-objective
with the mean of the tasks' optimal values J_i*) and by the theory tools.
"""
from __future__ import annotations

import numpy as np

from ._kernels import rl as _k
from ._validation import check_int
from .mdp import TabularMDP
from .visitation import _SOLVER_DOC, _solver


def optimal_policy(task: TabularMDP, *, solver: str = "auto", max_iter: int = 1000, rtol: float = 1e-11,
                   atol: float = 0.0, maxiter: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Deterministic optimal policy of ``task`` by policy iteration.

    Parameters
    ----------
    task : TabularMDP
    max_iter : int
        Maximum number of policy-iteration steps.
    {solver}

    Returns
    -------
    pi : ndarray of shape (S, A)
        One-hot optimal policy.
    V : ndarray of shape (S,)
        Its value, with the (1-gamma) normalisation.
    J : float
        zeta^T V, the task's optimal expected total reward J_i*.
    """
    owner = "optimal_policy"
    if not isinstance(task, TabularMDP):
        raise TypeError(f"The 'task' parameter of {owner} must be a TabularMDP. Got {type(task).__name__} instead.")
    max_iter = check_int(max_iter, "max_iter", owner, low=1)
    S, A = task.shape
    factor = _solver(task, owner, solver, rtol, atol, maxiter)
    action = np.argmax(task.r, axis=1)
    r_pi, Q = np.empty(S), np.empty((S, A))
    for _ in range(max_iter):
        pi = np.zeros((S, A))
        pi[np.arange(S), action] = 1.0
        _k.policy_average(pi, task.r, r_pi)
        V = factor(pi).solve(r_pi) * (1.0 - task.gamma)
        _k.bellman_q(task.P.indptr, task.P.indices, task.P.data, task.r, V, task.gamma, Q)
        # Keep the current action unless another is strictly better: guarantees termination.
        best = np.argmax(Q, axis=1)
        improve = Q[np.arange(S), best] > Q[np.arange(S), action] + 1e-12 * (1.0 + np.abs(V))
        if not improve.any():
            return pi, V, float(task.init @ V)
        action = np.where(improve, best, action)
    raise RuntimeError(f"{owner}: policy iteration did not converge in {max_iter} iterations.")


optimal_policy.__doc__ = optimal_policy.__doc__.replace("{solver}", _SOLVER_DOC)
