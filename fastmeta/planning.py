"""Each task's own optimum: exact policy iteration on a TabularMDP.

Used to show what meta-learning bought (the demo compares the meta-objective
with the mean of the tasks' optimal values J_i*) and by the theory tools.
"""
from __future__ import annotations

import numpy as np

from ._kernels import rl as _k
from ._validation import check_choice, check_int
from .linalg import METHODS
from .mdp import TabularMDP


def optimal_policy(task: TabularMDP, *, solver: str = "auto", max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray, float]:
    """Deterministic optimal policy of ``task`` by policy iteration.

    Returns
    -------
    pi : ndarray of shape (S, A)
        One-hot optimal policy.
    V : ndarray of shape (S,)
        Its value, with the (1-gamma) normalisation.
    J : float
        zeta^T V, the task's optimal expected total reward J_i*.
    """
    from .rl import PolicyPattern

    owner = "optimal_policy"
    if not isinstance(task, TabularMDP):
        raise TypeError(f"The 'task' parameter of {owner} must be a TabularMDP. Got {type(task).__name__} instead.")
    solver = check_choice(solver, "solver", METHODS, owner)
    max_iter = check_int(max_iter, "max_iter", owner, low=1)
    S, A = task.shape
    pattern = PolicyPattern.build(task.P, S, A, solver, 1e-11, None)
    action = np.argmax(task.r, axis=1)
    r_pi, Q = np.empty(S), np.empty((S, A))
    for _ in range(max_iter):
        pi = np.zeros((S, A))
        pi[np.arange(S), action] = 1.0
        _k.policy_average(pi, task.r, r_pi)
        V = pattern.factorize(task.P, pi, task.gamma).solve(r_pi) * (1.0 - task.gamma)
        _k.bellman_q(task.P.indptr, task.P.indices, task.P.data, task.r, V, task.gamma, Q)
        # Keep the current action unless another is strictly better: guarantees termination.
        best = np.argmax(Q, axis=1)
        improve = Q[np.arange(S), best] > Q[np.arange(S), action] + 1e-12 * (1.0 + np.abs(V))
        if not improve.any():
            return pi, V, float(task.init @ V)
        action = np.where(improve, best, action)
    raise RuntimeError(f"{owner}: policy iteration did not converge in {max_iter} iterations.")
