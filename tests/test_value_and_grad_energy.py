"""MetaRL.value_and_grad_energy, the entry point of the bridges: L and dL/df from an energy
array, against the explicit oracle in tests/naive.py (one-hot features make dL/dtheta = dL/df)."""

import numpy as np
import pytest

import fastmeta

from . import naive


def test_matches_the_naive_oracle_with_one_hot_features():
    tasks, _ = fastmeta.tasks.random_mdps(n_tasks=3, n_states=6, n_actions=2, k=3, gamma=0.8, seed=4)
    phi = fastmeta.tasks.one_hot_features(6, 2)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=0.5, eta=2.0)
    f = np.random.default_rng(0).normal(size=(6, 2))
    dense = [(t.dense_P(), t.r, t.gamma, t.init) for t in tasks]
    value, grad = meta.value_and_grad_energy(f)
    assert grad.shape == (6, 2) and grad.dtype == np.float64
    assert value == pytest.approx(naive.meta_objective(dense, phi, f.ravel(), 0.5, 2.0), rel=1e-12)
    np.testing.assert_allclose(grad.ravel(), naive.meta_gradient(dense, phi, f.ravel(), 0.5, 2.0), rtol=1e-9, atol=1e-12)


def test_agrees_with_the_model_route():
    tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=3, size=5, seed=1)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi))
    theta = np.random.default_rng(2).normal(size=phi.shape[2])
    value, grad = meta.value_and_grad_energy(meta.model.energy(theta))
    want_value, want_grad = meta.value_and_grad(theta)
    assert value == want_value
    np.testing.assert_array_equal(grad, meta.grad_energy(theta))
    np.testing.assert_allclose(meta.model.energy_vjp(theta, grad), want_grad, rtol=1e-14)


def test_bad_energies_are_refused_before_any_kernel():
    tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=2, size=3, seed=0)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi))
    with pytest.raises(ValueError, match=r"'f' parameter of MetaRL.value_and_grad_energy must have shape \(S, A\) = \(9, 4\)"):
        meta.value_and_grad_energy(np.zeros((4, 9)))
    with pytest.raises(ValueError, match="must contain only finite values"):
        meta.value_and_grad_energy(np.full((9, 4), np.nan))
    with pytest.raises(TypeError, match="array of real numbers"):
        meta.value_and_grad_energy("energies")
