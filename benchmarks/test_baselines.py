"""The baselines compute the same meta-objective and exact meta-gradient as fastmeta.

Run: ``PYTHONPATH=. python -m pytest benchmarks/test_baselines.py -p no:cacheprovider``
(the jax/torch cases are skipped when those packages are absent).
"""
from __future__ import annotations

import numpy as np
import pytest

import fastmeta
from benchmarks.baselines import problem_arrays, scipy_rl

RTOL = 1e-8


def _theta(d=32):
    return 0.5 * np.random.default_rng(0).standard_normal(d)


def _gridworld(size):
    return fastmeta.tasks.gridworld_goals(n_tasks=4, size=size, slip=0.1, gamma=0.99, features="rbf",
                                          n_features=32, seed=0)


def _random(S):
    return fastmeta.tasks.random_mdps(n_tasks=3, n_states=S, n_actions=4, k=4, gamma=0.9, n_features=32, seed=1)


PROBLEMS = {
    "grid49": lambda: _gridworld(7),
    "grid144": lambda: _gridworld(12),
    "random60": lambda: _random(60),
}


def _reference(tasks, phi, theta, tau=1.0, eta=1.0):
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=tau, eta=eta, solver="dense")
    return meta.value_and_grad(theta)


def _close(g, ref):
    err = np.linalg.norm(g - ref) / np.linalg.norm(ref)
    assert err <= RTOL, f"relative error {err:.3e}"


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("method", ["dense", "splu"])
def test_scipy_baseline_matches_fastmeta(name, method):
    tasks, phi = PROBLEMS[name]()
    theta = _theta()
    L_ref, g_ref = _reference(tasks, phi, theta)
    prob = problem_arrays(tasks, phi)
    L, g = scipy_rl.value_and_grad(theta, prob, method=method)
    assert abs(L - L_ref) <= RTOL * abs(L_ref)
    _close(g, g_ref)
    assert scipy_rl.objective(theta, prob, method=method) == pytest.approx(L_ref, rel=RTOL)


def test_scipy_baseline_other_tau_eta():
    tasks, phi = _random(40)
    theta = _theta()
    L_ref, g_ref = _reference(tasks, phi, theta, tau=0.5, eta=3.0)
    L, g = scipy_rl.value_and_grad(theta, problem_arrays(tasks, phi), tau=0.5, eta=3.0, method="splu")
    assert L == pytest.approx(L_ref, rel=RTOL)
    _close(g, g_ref)


def test_scipy_baseline_gradient_is_the_derivative():
    """Independent of fastmeta: central finite differences of the baseline's own objective."""
    tasks, phi = _random(30)
    prob = problem_arrays(tasks, phi)
    theta = _theta()
    g = scipy_rl.gradient(theta, prob)
    h = 1e-5
    for k in (0, 7, 31):
        e = np.zeros_like(theta)
        e[k] = h
        fd = (scipy_rl.objective(theta + e, prob) - scipy_rl.objective(theta - e, prob)) / (2 * h)
        assert fd == pytest.approx(g[k], rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("name", ["grid49", "random60"])
def test_jax_baseline_matches_fastmeta(name):
    pytest.importorskip("jax")
    from benchmarks.baselines.jax_rl import JaxMetaRL
    tasks, phi = PROBLEMS[name]()
    theta = _theta()
    L_ref, g_ref = _reference(tasks, phi, theta)
    model = JaxMetaRL(problem_arrays(tasks, phi))
    L, g = model.value_and_grad(theta)
    assert L == pytest.approx(L_ref, rel=RTOL)
    _close(g, g_ref)
    _close(model.gradient(theta), g_ref)
    assert model.objective(theta) == pytest.approx(L_ref, rel=RTOL)


@pytest.mark.parametrize("name", ["grid49", "random60"])
def test_torch_baseline_matches_fastmeta(name):
    pytest.importorskip("torch")
    from benchmarks.baselines.torch_rl import TorchMetaRL
    tasks, phi = PROBLEMS[name]()
    theta = _theta()
    L_ref, g_ref = _reference(tasks, phi, theta)
    model = TorchMetaRL(problem_arrays(tasks, phi))
    L, g = model.value_and_grad(theta)
    assert L == pytest.approx(L_ref, rel=RTOL)
    _close(g, g_ref)
    assert model.objective(theta) == pytest.approx(L_ref, rel=RTOL)
