"""MetaRL(warm_start=True): iterative solves started from the previous call's solutions."""
import numpy as np
import pytest

import fastmeta
from fastmeta import LinearEnergy, MetaRL, linalg


def _grid(size=30, n_tasks=3):
    tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks, size, gamma=0.95, seed=2)
    theta = 0.5 * np.random.default_rng(0).standard_normal(phi.shape[2])
    return tasks, phi, theta


@pytest.fixture
def iterations(monkeypatch):
    """Total GMRES iterations of the Krylov solves made while the test runs (a list to read)."""
    counted = []
    orig = linalg.KrylovSolver._gmres

    def gmres(self, *args, **kwargs):  # every block of every solve (solve, solve_transposed, solve_each)
        x, its, rel = orig(self, *args, **kwargs)
        counted.append(its)
        return x, its, rel

    monkeypatch.setattr(linalg.KrylovSolver, "_gmres", gmres)
    return counted


def test_warm_and_cold_agree_to_the_tolerance_and_warm_needs_fewer_iterations(iterations):
    tasks, phi, theta = _grid()
    cold = MetaRL(tasks, LinearEnergy(phi), solver="krylov", tol=1e-11)
    warm = MetaRL(tasks, LinearEnergy(phi), solver="krylov", tol=1e-11, warm_start=True)
    exact = MetaRL(tasks, LinearEnergy(phi), solver="dense")
    warm.value_and_grad(theta)  # fills the stored solutions
    its_cold, its_warm = 0, 0
    for step in range(3):  # a few small steps, as in Algorithm 1
        theta = theta + 0.05 * exact.gradient(theta)
        del iterations[:]
        Lc, gc = cold.value_and_grad(theta)
        its_cold += sum(iterations)
        del iterations[:]
        Lw, gw = warm.value_and_grad(theta)
        its_warm += sum(iterations)
        Le, ge = exact.value_and_grad(theta)
        for L, g in ((Lc, gc), (Lw, gw)):
            assert L == pytest.approx(Le, rel=1e-9)
            np.testing.assert_allclose(g, ge, rtol=1e-7, atol=1e-10 * np.abs(ge).max())
        assert Lw == pytest.approx(Lc, rel=1e-9)
        np.testing.assert_allclose(gw, gc, rtol=1e-7, atol=1e-10 * np.abs(gc).max())
    assert its_warm < 0.8 * its_cold, (its_warm, its_cold)


def test_the_same_theta_again_needs_no_iteration(iterations):
    tasks, phi, theta = _grid(size=20, n_tasks=2)
    warm = MetaRL(tasks, LinearEnergy(phi), solver="krylov", warm_start=True)
    first = warm.value_and_grad(theta)
    del iterations[:]
    again = warm.value_and_grad(theta)
    # every stored solution already meets the tolerance for the same matrices
    assert sum(iterations) == 0
    # a converged start is returned as it is, so every later quantity repeats exactly
    assert again[0] == first[0]
    np.testing.assert_array_equal(again[1], first[1])
    # one block of each main-effect system for the group, one vector per task and adapted system
    assert sorted(k[0] for k in warm._solutions) == ["U", "V_i", "V_i", "XI", "nu_i", "nu_i"]


def test_direct_solvers_ignore_warm_start_bit_for_bit():
    tasks, phi, theta = _grid(size=12, n_tasks=2)
    cold = MetaRL(tasks, LinearEnergy(phi), solver="splu")
    warm = MetaRL(tasks, LinearEnergy(phi), solver="splu", warm_start=True)
    for t in (theta, 1.1 * theta):
        a, b = cold.value_and_grad(t), warm.value_and_grad(t)
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
    assert warm._solutions == {}


def test_warm_start_must_be_a_bool():
    tasks, phi, _ = _grid(size=5, n_tasks=1)
    with pytest.raises(TypeError, match="'warm_start' parameter of MetaRL must be a bool. Got str"):
        MetaRL(tasks, LinearEnergy(phi), warm_start="yes")


def test_fit_with_warm_start_agrees_with_cold_and_resumes(tmp_path):
    tasks, phi, theta = _grid(size=16, n_tasks=2)
    settings = dict(steps=5, lr=2.0, progress=False)
    cold = MetaRL(tasks, LinearEnergy(phi), solver="krylov").fit(theta, **settings)
    make = lambda: MetaRL(tasks, LinearEnergy(phi), solver="krylov", warm_start=True)  # noqa: E731
    warm = make().fit(theta, **settings)
    np.testing.assert_allclose(warm.theta, cold.theta, rtol=1e-8)
    np.testing.assert_allclose(warm.objective, cold.objective, rtol=1e-9)
    # resumed in a fresh object (no stored solutions): agrees to the tolerance too
    ckpt = tmp_path / "warm.npz"
    make().fit(theta, checkpoint=ckpt, **dict(settings, steps=2))
    rest = make().fit(theta, checkpoint=ckpt, resume=True, **settings)
    assert rest.extra["resumed_from"] == 2
    np.testing.assert_allclose(rest.theta, warm.theta, rtol=1e-8)
    np.testing.assert_allclose(rest.objective, warm.objective, rtol=1e-9)
    # a cold run's checkpoint is another setting
    with pytest.raises(ValueError, match="warm start"):
        MetaRL(tasks, LinearEnergy(phi), solver="krylov").fit(theta, checkpoint=ckpt, resume=True, **settings)


def test_without_warm_start_a_call_does_not_depend_on_the_calls_before():
    tasks, phi, theta = _grid(size=20, n_tasks=2)
    meta = MetaRL(tasks, LinearEnergy(phi), solver="krylov")
    first = meta.value_and_grad(theta)
    meta.value_and_grad(1.3 * theta)
    again = meta.value_and_grad(theta)
    assert again[0] == first[0]
    np.testing.assert_array_equal(again[1], first[1])
    assert meta._solutions == {}
