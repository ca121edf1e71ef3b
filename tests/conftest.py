import numba
import numpy as np
import pytest

import fastmeta


def random_dense_tasks(S=6, A=3, gammas=(0.8, 0.5, 0.95), seed=0, sparse_rows=False):
    """Random MDPs with per-task gamma; returns (TabularMDP list, oracle tuples)."""
    rng = np.random.default_rng(seed)
    tasks, raw = [], []
    for g in gammas:
        P = rng.random((S, A, S)) ** 3
        if sparse_rows:
            P[P < 0.3] = 0.0
            P[:, :, 0] += 1e-3
        P /= P.sum(axis=2, keepdims=True)
        r = rng.normal(size=(S, A))
        init = rng.dirichlet(np.ones(S))
        tasks.append(fastmeta.TabularMDP(P, r, g, init))
        raw.append((P, r, g, init))
    return tasks, raw


@pytest.fixture
def small_problem():
    tasks, raw = random_dense_tasks()
    rng = np.random.default_rng(1)
    phi = rng.normal(size=(6, 3, 4))
    theta = rng.normal(size=4)
    return tasks, raw, phi, theta


@pytest.fixture
def force_parallel(monkeypatch):
    """Make every size-dispatched RL kernel (and batches of any size) run its parallel twin."""
    from fastmeta._kernels import _config

    monkeypatch.setattr(_config, "PARALLEL_MIN_SIZE", 0)
    monkeypatch.setattr(_config, "BATCH_PARALLEL_MIN_WORK", 0)


@pytest.fixture
def numba_threads():
    """``numba_threads(n)`` sets the Numba thread count; the count in force before the
    test is restored however the test ends. Skips where fewer than 2 threads exist."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    old = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(old)


# Property tests: a fixed, deterministic and fast profile, so CI runs the same examples
# every time (derandomize) and a slow first call (Numba compiling) is not a failure.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is in the `test` extra; only test_properties.py needs it
    pass
else:
    settings.register_profile("fastmeta", derandomize=True, max_examples=25, deadline=None,
                              print_blob=True, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("fastmeta")

