import numpy as np
import pytest

from fastmeta import visitation as vis

from . import naive
from .conftest import random_dense_tasks


@pytest.fixture
def task_and_policy():
    (task,), ((P, r, g, init),) = random_dense_tasks(S=5, A=3, gammas=(0.85,))
    pi = naive.softmax(np.random.default_rng(0).normal(size=(5, 3)))
    return task, P, pi


def test_explicit_family_matches_oracle_and_sums_to_one(task_and_policy):
    task, P, pi = task_and_policy
    F = vis.explicit_family(task, pi)
    np.testing.assert_allclose(F, naive.family(P, task.gamma, pi), rtol=1e-11)
    np.testing.assert_allclose(F.sum(axis=(2, 3)), 1.0, rtol=1e-12)


@pytest.mark.parametrize("solver", ["dense", "splu", "krylov"])
def test_family_expectation_and_mixture_without_the_family(task_and_policy, solver):
    task, P, pi = task_and_policy
    F = naive.family(P, task.gamma, pi)
    g = np.random.default_rng(1).normal(size=(5, 3, 4))
    np.testing.assert_allclose(vis.family_expectation(task, pi, g, solver=solver),
                               np.einsum("sauv,uvk->sak", F, g), rtol=1e-9)
    np.testing.assert_allclose(vis.family_expectation(task, pi, g[:, :, 0], solver=solver),
                               np.einsum("sauv,uv->sa", F, g[:, :, 0]), rtol=1e-9)
    w = np.random.default_rng(2).normal(size=(5, 3))
    np.testing.assert_allclose(vis.family_mixture(task, pi, w, solver=solver),
                               np.einsum("sa,sauv->uv", w, F), rtol=1e-9, atol=1e-14)


def test_visitation_and_values_match_oracle(task_and_policy):
    task, P, pi = task_and_policy
    nu, sigma = vis.visitation(task, pi)
    nu0, sigma0 = naive.visitation(P, task.gamma, task.init, pi)
    np.testing.assert_allclose(nu, nu0, rtol=1e-11)
    np.testing.assert_allclose(sigma, sigma0, rtol=1e-11)
    np.testing.assert_allclose(sigma, nu[:, None] * pi, rtol=1e-15)
    V, Q, A = vis.evaluate_policy(task, pi)
    V0, Q0, A0 = naive.values(P, task.r, task.gamma, pi)
    np.testing.assert_allclose(V, V0, rtol=1e-11)
    np.testing.assert_allclose(Q, Q0, rtol=1e-11)
    np.testing.assert_allclose(A, A0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose((pi * A).sum(axis=1), 0.0, atol=1e-13)
    np.testing.assert_allclose(vis.policy_matrix(task, pi).toarray(),
                               np.eye(5) - task.gamma * naive.policy_transition(P, pi), atol=1e-15)


def test_bad_policy_and_size_limit(task_and_policy):
    task, P, pi = task_and_policy
    with pytest.raises(ValueError, match=r"'pi' parameter of visitation must have rows"):
        vis.visitation(task, pi * 2)
    with pytest.raises(ValueError, match=r"'g' parameter of family_expectation must have shape"):
        vis.family_expectation(task, pi, np.zeros((4, 3)))
    big, _ = random_dense_tasks(S=70, A=60, gammas=(0.5,))
    with pytest.raises(ValueError, match="exceeds the limit"):
        vis.explicit_family(big[0], np.full((70, 60), 1 / 60))


def test_policy_iteration_finds_the_optimum():
    from fastmeta.planning import optimal_policy

    tasks, raw = random_dense_tasks(S=6, A=3, gammas=(0.9, 0.6))
    for task, (P, r, gamma, init) in zip(tasks, raw):
        pi, V, J = optimal_policy(task)
        # Value iteration with the (1-gamma) normalisation as the oracle
        V0 = np.zeros(6)
        for _ in range(3000):
            V0 = ((1 - gamma) * r + gamma * np.einsum("sat,t->sa", P, V0)).max(axis=1)
        np.testing.assert_allclose(V, V0, atol=1e-10)
        assert J == pytest.approx(init @ V0, abs=1e-10)


def _ring_task(S=500, gamma=0.99):
    """A sparse chain with one long cycle (forward/back/stay moves)."""
    import scipy.sparse as sp

    import fastmeta

    s = np.arange(S)
    rows = np.repeat(np.arange(3 * S), 1)
    cols = np.concatenate([[(i + 1) % S, (i - 1) % S, i] for i in range(S)])
    P = sp.csr_matrix((np.ones(3 * S), (rows, cols)), shape=(3 * S, S))
    r = np.zeros((S, 3))
    r[s % 7 == 0, 0] = 1.0
    return fastmeta.TabularMDP(P, r, gamma, np.full(S, 1.0 / S))


def test_solver_and_tolerances_reach_every_solving_function():
    """rtol/atol/maxiter reach the iterative solver: loose tolerances move the values, tight ones agree
    with the dense solve, and a too small maxiter raises."""
    from fastmeta.linalg import SolverError
    from fastmeta.planning import optimal_policy

    task = _ring_task()
    pi = naive.softmax(np.random.default_rng(3).normal(size=(500, 3)))
    V_dense = vis.evaluate_policy(task, pi, solver="dense")[0]
    nu_dense = vis.visitation(task, pi, solver="dense")[0]
    V_tight = vis.evaluate_policy(task, pi, solver="krylov", rtol=1e-13)[0]
    V_loose = vis.evaluate_policy(task, pi, solver="krylov", rtol=1e-4)[0]
    np.testing.assert_allclose(V_tight, V_dense, rtol=0, atol=1e-12)
    assert 1e-10 < np.abs(V_loose - V_dense).max() < 1e-2
    nu_tight = vis.visitation(task, pi, solver="krylov", rtol=1e-13)[0]
    np.testing.assert_allclose(nu_tight, nu_dense, rtol=0, atol=1e-13)
    nu_atol = vis.visitation(task, pi, solver="krylov", rtol=0.0, atol=1e-3)[0]
    assert np.abs(nu_atol - nu_dense).max() > 1e-12
    w = np.random.default_rng(4).normal(size=(500, 3))
    np.testing.assert_allclose(vis.family_mixture(task, pi, w, solver="krylov", rtol=1e-13),
                               vis.family_mixture(task, pi, w, solver="dense"), rtol=0, atol=1e-12)
    np.testing.assert_allclose(vis.family_expectation(task, pi, w, solver="krylov", rtol=1e-13),
                               vis.family_expectation(task, pi, w, solver="dense"), rtol=0, atol=1e-12)
    for fn in (lambda **k: vis.evaluate_policy(task, pi, **k), lambda **k: vis.visitation(task, pi, **k),
               lambda **k: vis.family_mixture(task, pi, w, **k), lambda **k: optimal_policy(task, **k)):
        with pytest.raises(SolverError, match="maxiter=1"):
            fn(solver="krylov", rtol=1e-13, maxiter=1)
        with pytest.raises(ValueError, match="'rtol'"):
            fn(rtol=-1.0)
        with pytest.raises(ValueError, match="'rtol' and 'atol'"):
            fn(rtol=0.0, atol=0.0)
        with pytest.raises(ValueError, match="'maxiter'"):
            fn(maxiter=0)
        with pytest.raises(ValueError, match="'solver'"):
            fn(solver="gmres")
    pi_d, V_d, J_d = optimal_policy(task, solver="dense")
    pi_k, V_k, J_k = optimal_policy(task, solver="krylov", rtol=1e-13)
    np.testing.assert_array_equal(pi_k, pi_d)
    np.testing.assert_allclose(V_k, V_d, rtol=0, atol=1e-12)
