"""Problems and helpers shared by the meta-RL benchmark suites (asv, pytest-benchmark, targets).

The issue's benchmark point: gridworld goal families (A = 4, n = 4 tasks, d = 32 RBF
features, slip 0.1, gamma = 0.99) at about 10^4, 10^5, 10^6 states; RL^2-style random
MDPs (k = 4 successors, 4 tasks with their own kernels) at 10^5; theta =
0.5 * N(0, I_32) from ``default_rng(0)``; tau = eta = 1.
"""
from __future__ import annotations

import math
import os
import statistics
import time

import numpy as np

#: Nominal state counts -> side of the square grid (S = side^2).
GRID_SIDES = {100: 10, 400: 20, 1600: 40, 10_000: 100, 100_000: 316, 1_000_000: 1000}
N_TASKS = 4
N_FEATURES = 32
GAMMA = 0.99
TAU = 1.0
ETA = 1.0


def grid_side(n_states: int) -> int:
    """Side of the grid for a nominal state count; FASTMETA_BENCH_HUGE_SIDE overrides 10^6 (smoke tests)."""
    if n_states == 1_000_000 and os.environ.get("FASTMETA_BENCH_HUGE_SIDE"):
        return int(os.environ["FASTMETA_BENCH_HUGE_SIDE"])
    return GRID_SIDES.get(n_states, int(round(math.sqrt(n_states))))


def theta0(d: int = N_FEATURES) -> np.ndarray:
    return 0.5 * np.random.default_rng(0).standard_normal(d)


def gridworld(n_states: int, seed: int = 0):
    """(tasks, phi) of the gridworld goal family with about ``n_states`` states."""
    import fastmeta
    return fastmeta.tasks.gridworld_goals(n_tasks=N_TASKS, size=grid_side(n_states), slip=0.1, gamma=GAMMA,
                                          features="rbf", n_features=N_FEATURES, seed=seed)


def random_mdps(n_states: int, seed: int = 0):
    """(tasks, phi) of RL^2-style random MDPs (k = 4) with ``n_states`` states."""
    import fastmeta
    return fastmeta.tasks.random_mdps(n_tasks=N_TASKS, n_states=n_states, n_actions=4, k=4, gamma=GAMMA,
                                      n_features=N_FEATURES, seed=seed)


def gridworld_map(n_states: int, seed: int = 0):
    """:func:`gridworld` with the RBF features computed on the fly (no (S, A, d) array)."""
    import fastmeta
    return fastmeta.tasks.gridworld_goals(n_tasks=N_TASKS, size=grid_side(n_states), slip=0.1, gamma=GAMMA,
                                          features="rbf", n_features=N_FEATURES, feature_map=True, seed=seed)


PROBLEMS = {"grid": gridworld, "gridmap": gridworld_map, "random": random_mdps}


def fastmeta_model(tasks, phi, solver: str = "auto"):
    import fastmeta
    return fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=TAU, eta=ETA, solver=solver)


def solver_of(meta) -> str:
    """The linear solver fastmeta resolved for the first task (for labels only)."""
    try:
        return meta._task_pattern[0].method
    except Exception:  # private attribute; labels only
        return meta.solver


def warm_up_kernels() -> None:
    """Compile (or load from the numba cache) fastmeta's kernels on a tiny problem of each family."""
    th = theta0()
    for make in (gridworld, random_mdps):
        tasks, phi = make(100)
        meta = fastmeta_model(tasks, phi)
        meta.value_and_grad(th)
        meta.objective(th)


def timeit(fn, repeats: int, warmup: int = 0) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of fn() after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs) -> float:
    return float(statistics.median(xs))


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident set (bytes; Linux ru_maxrss is in KiB)."""
    import resource
    import sys
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
