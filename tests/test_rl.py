"""MetaRL: objective and exact gradient against oracles, finite differences and each other."""
import numba
import numpy as np
import pytest

import fastmeta
from fastmeta import LinearEnergy, MetaRL

from . import naive
from .conftest import random_dense_tasks


@pytest.mark.parametrize("tau,eta", [(1.0, 0.5), (0.3, 2.0), (2.0, 0.0)])
def test_objective_and_gradient_match_the_oracle(small_problem, tau, eta):
    tasks, raw, phi, theta = small_problem
    meta = MetaRL(tasks, LinearEnergy(phi), tau=tau, eta=eta)
    L, g = meta.value_and_grad(theta)
    assert L == pytest.approx(naive.meta_objective(raw, phi, theta, tau, eta), rel=1e-12)
    np.testing.assert_allclose(g, naive.meta_gradient(raw, phi, theta, tau, eta), rtol=1e-9, atol=1e-12)
    assert meta.objective(theta) == L
    np.testing.assert_array_equal(meta.gradient(theta), g)


@pytest.mark.parametrize("solver", ["dense", "splu", "krylov"])
def test_gradient_matches_central_differences(small_problem, solver):
    tasks, raw, phi, theta = small_problem
    meta = MetaRL(tasks, LinearEnergy(phi), tau=0.7, eta=1.3, solver=solver)
    fd = naive.central_difference(meta.objective, theta, eps=1e-6)
    np.testing.assert_allclose(meta.gradient(theta), fd, rtol=1e-6, atol=1e-9)


def test_printed_formula_is_off_by_one_over_one_minus_gamma(small_problem):
    """The printed (3.7)-(3.8) lack factors 1/(1-gamma): check that ours is not the printed one."""
    tasks, raw, phi, theta = small_problem
    g = MetaRL(tasks[:1], LinearEnergy(phi), tau=1.0, eta=0.0).gradient(theta)
    P, r, gamma, init = raw[0]
    pi = naive.softmax(phi @ theta)
    _, _, A = naive.values(P, r, gamma, pi)
    _, sigma = naive.visitation(P, gamma, init, pi)
    printed = np.einsum("sa,sak->k", sigma * A, phi)
    np.testing.assert_allclose(g, printed / (1 - gamma), rtol=1e-10)


def test_dense_splu_and_krylov_agree_on_a_grid():
    tasks, phi = fastmeta.tasks.gridworld_goals(3, 12, gamma=0.95, seed=3)
    theta = np.random.default_rng(0).normal(size=phi.shape[2])
    results = {s: MetaRL(tasks, LinearEnergy(phi), tau=0.5, eta=2.0, solver=s).value_and_grad(theta)
               for s in ("dense", "splu", "krylov")}
    for s in ("splu", "krylov"):
        assert results[s][0] == pytest.approx(results["dense"][0], rel=1e-9)
        np.testing.assert_allclose(results[s][1], results["dense"][1], rtol=1e-7, atol=1e-12)


def test_sparse_and_dense_inputs_agree():
    tasks, phi = fastmeta.tasks.random_mdps(2, 30, 3, k=3, gamma=0.9, n_features=5, seed=1)
    dense_tasks = [fastmeta.TabularMDP(t.dense_P(), t.r, t.gamma, t.init) for t in tasks]
    theta = np.random.default_rng(1).normal(size=5)
    a = MetaRL(tasks, LinearEnergy(phi), solver="krylov").value_and_grad(theta)
    b = MetaRL(dense_tasks, LinearEnergy(phi), solver="dense").value_and_grad(theta)
    assert a[0] == pytest.approx(b[0], rel=1e-9)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-7)


def test_invariants_of_a_trace(small_problem):
    tasks, raw, phi, theta = small_problem
    meta = MetaRL(tasks, LinearEnergy(phi), tau=0.8, eta=1.5)
    for i, (P, r, gamma, init) in enumerate(raw):
        tr = meta.trace(theta, task=i)
        assert tr.sigma_i.sum() == pytest.approx(1.0, abs=1e-12)
        assert tr.J_i == pytest.approx(init @ tr.V_i, rel=1e-12)
        assert tr.J_i == pytest.approx(np.sum(tr.sigma_i * r), rel=1e-10)
        np.testing.assert_allclose(tr.V, naive.values_by_iteration(P, r, gamma, tr.pi, iters=2000), atol=1e-10)
        # Performance difference (docs/formulas.md section 1): J(pi_i) - J(pi) = E_{sigma_pi_i}[A^pi] / (1-gamma)
        J_main = init @ tr.V
        assert tr.J_i - J_main == pytest.approx(np.sum(tr.sigma_i * tr.A) / (1 - gamma), rel=1e-10)
        # E_pi[A(s, .)] = 0 for the main effect's advantage
        np.testing.assert_allclose((tr.pi * tr.A).sum(axis=1), 0.0, atol=1e-13)


def test_grad_energy_maps_to_the_parameter_gradient(small_problem):
    tasks, raw, phi, theta = small_problem
    meta = MetaRL(tasks, LinearEnergy(phi), tau=0.9, eta=0.4)
    np.testing.assert_allclose(np.einsum("sa,sak->k", meta.grad_energy(theta), phi), meta.gradient(theta),
                               rtol=1e-12)


def test_results_do_not_depend_on_the_number_of_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    tasks, phi = fastmeta.tasks.gridworld_goals(2, 40, gamma=0.97, seed=2)
    theta = np.random.default_rng(2).normal(size=phi.shape[2])
    out = {}
    old = numba.get_num_threads()
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            for solver in ("splu", "krylov"):
                out[n, solver] = MetaRL(tasks, LinearEnergy(phi), solver=solver).value_and_grad(theta)
    finally:
        numba.set_num_threads(old)
    for solver in ("splu", "krylov"):
        assert out[1, solver][0] == out[2, solver][0]
        np.testing.assert_array_equal(out[1, solver][1], out[2, solver][1])


@pytest.mark.parametrize("solver", ["auto", "splu"])
def test_tasks_with_equal_kernels_share_the_main_factorisation(solver):
    """Sharing is by content: a copy of the kernel (another object) joins the same group."""
    tasks, phi = fastmeta.tasks.gridworld_goals(4, 6, seed=0)
    copy = fastmeta.TabularMDP(tasks[1].P.copy(), tasks[1].r, tasks[1].gamma, tasks[1].init)
    other_gamma = fastmeta.TabularMDP(tasks[0].P, tasks[0].r, 0.5, tasks[0].init)
    meta = MetaRL(tasks + [copy, other_gamma], LinearEnergy(phi), solver=solver)
    # equal kernels from different objects: one canonical copy (interned by content) and one group
    assert copy.kernel_fingerprint == tasks[1].kernel_fingerprint and copy.P is tasks[1].P
    assert sorted(len(g) for g in meta._groups) == [1, 5]
    assert len({id(p) for p in meta._task_pattern}) == 1
    assert len(meta._patterns) == 1


# ----------------------------------------------------------------------------- bad input

def test_bad_hyperparameters(small_problem):
    tasks, raw, phi, theta = small_problem
    model = LinearEnergy(phi)
    for tau in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"'tau' parameter of MetaRL must be in \(0, inf\)"):
            MetaRL(tasks, model, tau=tau)
    with pytest.raises(ValueError, match="'eta' parameter of MetaRL"):
        MetaRL(tasks, model, eta=-0.1)
    with pytest.raises(ValueError, match="'solver' parameter of MetaRL must be one of"):
        MetaRL(tasks, model, solver="cholesky")


def test_empty_and_mismatched_tasks(small_problem):
    tasks, raw, phi, theta = small_problem
    with pytest.raises(ValueError, match="'tasks' parameter of MetaRL must be a non-empty list"):
        MetaRL([], LinearEnergy(phi))
    other, _ = random_dense_tasks(S=5, A=3, gammas=(0.9,))
    with pytest.raises(ValueError, match=r"one \(S, A\)"):
        MetaRL(tasks + other, LinearEnergy(phi))
    with pytest.raises(TypeError, match="TabularMDP objects"):
        MetaRL([tasks[0], "task"], LinearEnergy(phi))
    with pytest.raises(ValueError, match="'model' parameter of MetaRL must be defined on"):
        MetaRL(other, LinearEnergy(phi))
    with pytest.raises(TypeError, match="'model' parameter of MetaRL must be an energy"):
        MetaRL(tasks, phi)


def test_bad_theta(small_problem):
    tasks, raw, phi, theta = small_problem
    meta = MetaRL(tasks, LinearEnergy(phi))
    with pytest.raises(ValueError, match=r"'theta' parameter of MetaRL must have shape \(4,\)"):
        meta.objective(np.zeros(5))
    with pytest.raises(ValueError, match="'theta' parameter of MetaRL must contain only finite values"):
        meta.gradient(np.array([0.0, np.nan, 0.0, 0.0]))


def test_bad_features():
    with pytest.raises(ValueError, match="'phi' parameter of LinearEnergy must contain only finite"):
        LinearEnergy(np.full((2, 2, 2), np.inf))
    with pytest.raises(ValueError, match=r"'phi' parameter of LinearEnergy must have shape"):
        LinearEnergy(np.zeros((2, 2)))


@pytest.mark.parametrize("eta", [1.0, 2e3])
def test_adapted_systems_in_lockstep_agree_with_one_by_one(monkeypatch, eta):
    """Krylov groups solve the adapted systems together with M's preconditioner (eta = 2e3: adapted
    policies far from pi, max_s ||pi_i(s) - pi(s)||_1 ~ 1); one by one, each with its own, and splu agree."""
    from fastmeta import linalg, rl
    tasks, phi = fastmeta.tasks.gridworld_goals(3, 20, gamma=0.95, seed=3)
    theta = np.random.default_rng(0).normal(size=phi.shape[2])
    calls = []
    for name in ("solve_each", "_solve"):
        orig = getattr(linalg.KrylovSolver, name)
        monkeypatch.setattr(linalg.KrylovSolver, name,
                            lambda self, *a, name=name, orig=orig, **k: calls.append(name) or orig(self, *a, **k))
    results = {}
    for lockstep in (True, False):
        monkeypatch.setattr(rl, "LOCKSTEP_ADAPTED", lockstep)
        del calls[:]
        results[lockstep] = MetaRL(tasks, LinearEnergy(phi), eta=eta, solver="krylov").value_and_grad(theta)
        if lockstep:  # values and visitations of the 3 tasks in two calls; M's own two solves
            # (eta = 2e3: M's preconditioner stalls on the M_i, which then get solvers of their own)
            assert calls.count("solve_each") == 2 and calls.count("_solve") == (2 if eta == 1.0 else 8)
        else:
            assert calls.count("solve_each") == 0 and calls.count("_solve") == 8
    L0, g0 = MetaRL(tasks, LinearEnergy(phi), eta=eta, solver="splu").value_and_grad(theta)
    for L, g in results.values():
        assert L == pytest.approx(L0, rel=1e-9)
        np.testing.assert_allclose(g, g0, rtol=1e-7, atol=1e-9 * np.abs(g0).max())
    # expander-like chains (Gauss-Seidel preconditioner): one by one, nothing to share
    monkeypatch.setattr(rl, "LOCKSTEP_ADAPTED", True)
    tasks, phi = fastmeta.tasks.random_mdps(3, 200, 4, k=4, gamma=0.9, n_features=5, seed=1)
    del calls[:]
    MetaRL(tasks, LinearEnergy(phi), eta=eta, solver="krylov").value_and_grad(np.ones(5))
    assert calls.count("solve_each") == 0 and calls.count("_solve") == 12  # 3 kernels: 3 groups of 4
