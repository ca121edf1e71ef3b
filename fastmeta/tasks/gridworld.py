"""Gridworld goal families: shared slippery dynamics, a goal per task."""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import check_choice, check_int, check_real_scalar, check_seed
from ..mdp import TabularMDP
from .features import GridRBFFeatureMap, OneHotFeatureMap, grid_rbf_features, one_hot_features, random_features

ACTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))
"""Moves of the four actions: up, down, left, right (row, column offsets)."""


def gridworld_kernel(size: int, slip: float = 0.1) -> sp.csr_matrix:
    """Transition kernel of a size x size slippery gridworld, CSR (S*4, S).

    With probability 1 - slip the agent moves in the chosen direction, with
    probability slip in a direction drawn uniformly from the four; a move into a
    wall leaves it in place. State s is the cell (s // size, s % size).
    Built with vectorised NumPy in O(S) memory (16 entries per state before
    merging), so 1000 x 1000 grids take about a second.
    """
    owner = "gridworld_kernel"
    N = check_int(size, "size", owner, low=1)
    slip = check_real_scalar(slip, "slip", owner, low=0.0, high=1.0, low_open=False, high_open=False)
    S, A = N * N, len(ACTIONS)
    itype = np.int32 if S * A * A < np.iinfo(np.int32).max else np.int64
    row, col = np.divmod(np.arange(S, dtype=itype), N)
    dest = np.empty((A, S), dtype=itype)
    for b, (dr, dc) in enumerate(ACTIONS):
        dest[b] = np.clip(row + dr, 0, N - 1) * N + np.clip(col + dc, 0, N - 1)
    # Entries (s, a) -> dest[b][s] with prob (1-slip)[a == b] + slip/4, laid out per (s, a) row.
    cols = np.empty((S, A, A), dtype=itype)
    vals = np.empty((S, A, A))
    for a in range(A):
        for b in range(A):
            cols[:, a, b] = dest[b]
            vals[:, a, b] = (1.0 - slip) * (a == b) + slip / A
    indptr = np.arange(0, S * A * A + 1, A, dtype=itype)
    P = sp.csr_matrix((vals.ravel(), cols.ravel(), indptr), shape=(S * A, S))
    P.sum_duplicates()
    P.eliminate_zeros()
    return P


def gridworld_goals(n_tasks: int = 4, size: int = 10, *, slip: float = 0.1, gamma: float = 0.99,
                    goal_region: tuple[float, float, float, float] | None = None,
                    start: str = "uniform", features: str = "rbf", n_features: int = 32,
                    feature_map: bool = False,
                    seed: int | np.random.Generator = 0) -> tuple[list[TabularMDP], Any]:
    """A family of gridworld tasks that differ in their goal cell.

    All tasks share one kernel (one canonical copy in memory, and one main-effect
    factorisation per step); task i pays reward 1 in every step
    spent at its goal g_i: r_i(s, a) = 1[s = g_i]. With the paper's (1-gamma)
    normalisation J_i is then the discounted fraction of time spent at the goal.

    Parameters
    ----------
    n_tasks : int
        Number of tasks (goals are drawn without replacement when possible).
    size : int
        Side of the grid; S = size**2, A = 4.
    slip : float
        Probability that the move is replaced by a uniformly random one.
    gamma : float
        Discount factor shared by the tasks.
    goal_region : (r0, r1, c0, c1), optional
        Goals are drawn uniformly from rows [r0, r1) and columns [c0, c1), given as
        fractions of ``size``; default the whole grid.
    start : {"uniform", "center", "corner"}
        Initial distribution zeta: uniform over all cells, the central cell, or
        cell (0, 0).
    features : {"rbf", "random", "onehot"}
        Feature map: coordinate RBFs (:func:`grid_rbf_features`), Gaussian random
        features, or tabular one-hot (d = 4 S; ``n_features`` ignored).
    n_features : int
        Feature dimension d for "rbf" (a multiple of 4) and "random".
    feature_map : bool
        Return the features as an object that computes them on the fly
        (:class:`GridRBFFeatureMap` or :class:`OneHotFeatureMap`, for "rbf" and
        "onehot") instead of an (S, 4, d) array: no feature storage, which
        makes 10^7 states fit in memory.  Same energies and gradients.
    seed : int or numpy.random.Generator

    Returns
    -------
    tasks : list of TabularMDP
    phi : ndarray of shape (S, 4, d) or feature-map object
    """
    owner = "gridworld_goals"
    n = check_int(n_tasks, "n_tasks", owner, low=1)
    N = check_int(size, "size", owner, low=1)
    start = check_choice(start, "start", ("uniform", "center", "corner"), owner)
    features = check_choice(features, "features", ("rbf", "random", "onehot"), owner)
    if not isinstance(feature_map, (bool, np.bool_)):
        raise TypeError(f"The 'feature_map' parameter of {owner} must be a bool. Got {feature_map!r} instead.")
    if feature_map and features == "random":
        raise ValueError(f"The 'feature_map' parameter of {owner} needs features 'rbf' or 'onehot' "
                         "(random features must be stored). Got features='random'.")
    rng = check_seed(seed, "seed", owner)
    S, A = N * N, len(ACTIONS)
    r0, r1, c0, c1 = (0.0, 1.0, 0.0, 1.0) if goal_region is None else _check_region(goal_region, owner)
    rows = np.arange(int(np.floor(r0 * N)), max(int(np.ceil(r1 * N)), int(np.floor(r0 * N)) + 1))
    cols = np.arange(int(np.floor(c0 * N)), max(int(np.ceil(c1 * N)), int(np.floor(c0 * N)) + 1))
    if rows.min() < 0 or rows.max() >= N or cols.min() < 0 or cols.max() >= N:
        raise ValueError(f"The 'goal_region' parameter of {owner} must hold fractions in [0, 1] with r0 < r1 "
                         f"and c0 < c1. Got {goal_region!r} instead.")
    cells = (rows[:, None] * N + cols[None, :]).ravel()
    goals = rng.choice(cells, size=n, replace=n > cells.size)
    P = gridworld_kernel(N, slip)
    if start == "uniform":
        init = np.full(S, 1.0 / S)
    else:
        init = np.zeros(S)
        init[(N // 2) * N + N // 2 if start == "center" else 0] = 1.0
    tasks = []
    for g in goals:
        r = np.zeros((S, A))
        r[g, :] = 1.0
        tasks.append(TabularMDP(P, r, gamma, init))
    if feature_map:
        phi = GridRBFFeatureMap(N, A, n_features) if features == "rbf" else OneHotFeatureMap(S, A)
    elif features == "rbf":
        phi = grid_rbf_features(N, A, n_features)
    elif features == "random":
        phi = random_features(S, A, n_features, rng)
    else:
        phi = one_hot_features(S, A)
    return tasks, phi


def _check_region(region: object, owner: str) -> tuple[float, float, float, float]:
    """(r0, r1, c0, c1): four fractions in [0, 1] with r0 < r1 and c0 < c1."""
    message = (f"The 'goal_region' parameter of {owner} must be four fractions (r0, r1, c0, c1) in [0, 1] "
               f"with r0 < r1 and c0 < c1. Got {region!r} instead.")
    try:
        values = tuple(float(v) for v in region)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(message) from None
    if len(values) != 4 or not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(message)
    r0, r1, c0, c1 = values
    if not (r0 < r1 and c0 < c1):
        raise ValueError(message)
    return r0, r1, c0, c1
