"""RL^2-style random MDPs (Duan et al. 2016)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._validation import check_int, check_real_scalar, check_seed
from ..mdp import TabularMDP
from .features import random_features


def random_kernel(n_states: int, n_actions: int, k: int,
                  rng: int | np.random.Generator) -> sp.csr_matrix:
    """Each (s, a) moves to k successors drawn uniformly with Dirichlet(1) probabilities.

    Successors are drawn with replacement and merged, so a row has at most k
    distinct entries (duplicates are rare when k << S). Chains like these are
    expanders: sparse LU fills in badly on them, Krylov solvers converge fast.
    ``rng`` is a numpy Generator (advanced by the draws) or an int seed.
    """
    owner = "random_kernel"
    S = check_int(n_states, "n_states", owner, low=1)
    A = check_int(n_actions, "n_actions", owner, low=1)
    k = min(check_int(k, "k", owner, low=1), S)
    rng = check_seed(rng, "rng", owner)
    itype = np.int32 if S * A * k < np.iinfo(np.int32).max else np.int64
    cols = rng.integers(0, S, size=(S * A, k)).astype(itype)
    probs = rng.dirichlet(np.ones(k), size=S * A) if k > 1 else np.ones((S * A, 1))
    indptr = np.arange(0, S * A * k + 1, k, dtype=itype)
    P = sp.csr_matrix((probs.ravel(), cols.ravel(), indptr), shape=(S * A, S))
    P.sum_duplicates()
    return P


def random_mdps(n_tasks: int = 4, n_states: int = 100, n_actions: int = 4, *, k: int = 4,
                gamma: float = 0.99, n_features: int = 32,
                seed: int | np.random.Generator = 0) -> tuple[list[TabularMDP], np.ndarray]:
    """Random tabular MDPs in the style of RL^2's tabular experiments.

    Every task draws its own kernel (k successors per (s, a), Dirichlet(1)
    probabilities) and mean rewards r(s, a) = mu(s, a) ~ N(1, 1). RL^2 samples
    rewards as N(mu, 1); since the objective is an expectation, only the means
    enter and the N(0, 1) noise is not simulated. zeta is uniform.

    Returns
    -------
    tasks : list of TabularMDP
    phi : ndarray of shape (S, A, d)
        Gaussian random features (seeded).
    """
    owner = "random_mdps"
    n = check_int(n_tasks, "n_tasks", owner, low=1)
    S = check_int(n_states, "n_states", owner, low=1)
    A = check_int(n_actions, "n_actions", owner, low=1)
    k = check_int(k, "k", owner, low=1)
    gamma = check_real_scalar(gamma, "gamma", owner, low=0.0, high=1.0)
    rng = check_seed(seed, "seed", owner)
    init = np.full(S, 1.0 / S)
    tasks = [TabularMDP(random_kernel(S, A, k, rng), rng.normal(1.0, 1.0, size=(S, A)), gamma, init)
             for _ in range(n)]
    return tasks, random_features(S, A, n_features, rng)
