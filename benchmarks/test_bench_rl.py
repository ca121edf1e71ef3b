"""pytest-benchmark suite of the exact meta-RL gradient and its baselines, side by side.

    PYTHONPATH=. python -m pytest benchmarks/test_bench_rl.py --benchmark-only
    PYTHONPATH=. python -m pytest benchmarks/test_bench_rl.py --benchmark-only -m huge   # 10^6 only

Tests are grouped per problem (``benchmark.group``), so each table compares fastmeta's
gradient and objective with the SciPy splu baseline (10^4, 10^5) or with dense JAX /
PyTorch reverse-mode autodiff (S = 100, 400, 1600). Problems: :mod:`benchmarks.rl_problems`.
Every timed callable is called once before timing (numba compilation, jax.jit, lazy
solver plans); MetaRL construction is not timed. Without ``--benchmark-only`` the
project's default ``--benchmark-skip`` (pyproject.toml) skips them all; the agreement of
the baselines with fastmeta is checked in ``test_baselines.py``. The 10^6 case is marked
``huge`` and runs only with ``-m huge`` or FASTMETA_BENCH_HUGE=1 (see conftest.py);
the 10^5 cases are marked ``slow`` (deselect with ``-m "not slow"``).
"""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import rl_problems as rp
from benchmarks.baselines import problem_arrays, scipy_rl

THETA = rp.theta0()
LABEL = {10_000: "1e4", 100_000: "1e5", 1_000_000: "1e6"}


def _run(benchmark, fn, group, rounds, name=None):
    """Time fn(THETA) for ``rounds`` rounds after one warm-up call; returns its last result."""
    fn(THETA)
    benchmark.group = group
    if name:
        benchmark.name = name
    return benchmark.pedantic(fn, args=(THETA,), rounds=rounds, iterations=1, warmup_rounds=0)


_CACHE: dict = {}


def _fastmeta(family, n_states):
    key = ("fastmeta", family, n_states)
    if key not in _CACHE:
        _CACHE.clear()   # keep one large problem alive at a time
        tasks, phi = rp.PROBLEMS[family](n_states)
        _CACHE[key] = (rp.fastmeta_model(tasks, phi), problem_arrays(tasks, phi))
    return _CACHE[key]


# ---------------------------------------------------------------- sparse: fastmeta vs SciPy splu
# (family, nominal S, rounds, marks); problem-major order so each problem is built once.
SPARSE = [("grid", 10_000, 7, ()), ("grid", 100_000, 5, (pytest.mark.slow,)),
          ("random", 100_000, 5, (pytest.mark.slow,)), ("grid", 1_000_000, 3, (pytest.mark.huge,))]
SCIPY_CASES = {("grid", 10_000), ("grid", 100_000)}
SPARSE_PARAMS = [pytest.param(impl, fam, n, rounds, what, marks=marks, id=f"{fam}-{LABEL[n]}-{what}-{impl}")
                 for fam, n, rounds, marks in SPARSE
                 for what in ("gradient", "objective")
                 for impl in ("fastmeta", "scipy") if impl == "fastmeta" or (fam, n) in SCIPY_CASES]


@pytest.mark.parametrize("impl,family,n_states,rounds,what", SPARSE_PARAMS)
def test_sparse(benchmark, impl, family, n_states, rounds, what):
    meta, prob = _fastmeta(family, n_states)
    group = f"{family}-{LABEL[n_states]} ({what})"
    if impl == "fastmeta":
        benchmark.extra_info["solver"] = rp.solver_of(meta)
        _run(benchmark, getattr(meta, what), group, rounds, name=f"fastmeta-{what}")
    else:
        fn = (lambda th: scipy_rl.value_and_grad(th, prob, rp.TAU, rp.ETA, method="splu")) if what == "gradient" \
            else (lambda th: scipy_rl.objective(th, prob, rp.TAU, rp.ETA, method="splu"))
        _run(benchmark, fn, group, min(rounds, 5), name=f"scipy-splu-{what}")


# ---------------------------------------------------------------- dense: fastmeta vs jax / torch autodiff
DENSE_SIZES = [100, 400, 1600]


@pytest.fixture(scope="module")
def dense_problems():
    return {S: rp.gridworld(S) for S in DENSE_SIZES}


@pytest.mark.parametrize("n_states", DENSE_SIZES)
@pytest.mark.parametrize("impl", ["fastmeta", "scipy", "jax", "torch"])
def test_dense_gradient(benchmark, dense_problems, impl, n_states):
    tasks, phi = dense_problems[n_states]
    if impl == "fastmeta":
        meta = rp.fastmeta_model(tasks, phi)
        benchmark.extra_info["solver"] = rp.solver_of(meta)
        fn = meta.gradient
    elif impl == "scipy":
        prob = problem_arrays(tasks, phi)
        fn = lambda th: scipy_rl.gradient(th, prob, rp.TAU, rp.ETA)  # noqa: E731
    elif impl == "jax":
        pytest.importorskip("jax")
        from benchmarks.baselines.jax_rl import JaxMetaRL
        fn = JaxMetaRL(problem_arrays(tasks, phi), tau=rp.TAU, eta=rp.ETA).gradient
    else:
        pytest.importorskip("torch")
        from benchmarks.baselines.torch_rl import TorchMetaRL
        fn = TorchMetaRL(problem_arrays(tasks, phi), tau=rp.TAU, eta=rp.ETA).gradient
    rounds = 10 if n_states <= 400 else 5
    g = _run(benchmark, fn, f"grid-S{n_states} (gradient, dense baselines)", rounds, name=f"{impl}-S{n_states}")
    assert np.all(np.isfinite(g))
