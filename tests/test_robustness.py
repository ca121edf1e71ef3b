"""Saturated policies, overflow, and the validation gaps of the adversarial review."""
import numpy as np
import pytest
import scipy.sparse as sp

import fastmeta
from fastmeta import LinearEnergy, LinearModel, MetaRL, MetaSL, SLTask, TabularMDP

from . import naive


@pytest.fixture(scope="module")
def grid():
    return fastmeta.tasks.gridworld_goals(3, 5, gamma=0.9, seed=0)


def _central(f, theta, h):
    return np.array([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in np.eye(theta.size)])


@pytest.mark.parametrize("tau, eta", [(1e-8, 1.0), (1e-12, 1.0), (1e-16, 1.0), (1.0, 1e15)])
def test_flat_objectives_have_an_exactly_zero_gradient(grid, tau, eta):
    # Saturated policies: L does not change under small moves of theta (central differences
    # are exactly 0), so the gradient must be 0, not rounding noise amplified by 1/tau.
    tasks, phi = grid
    meta = MetaRL(tasks, LinearEnergy(phi), tau=tau, eta=eta)
    theta = np.random.default_rng(0).normal(size=phi.shape[2])
    assert np.array_equal(_central(meta.objective, theta, 1e-6), np.zeros(theta.size))
    L, g = meta.value_and_grad(theta)
    assert np.isfinite(L) and np.abs(g).max() == 0.0


def test_saturated_states_contribute_nothing_but_the_rest_is_exact(grid):
    # Half of the states saturated, half not: the gradient still matches the oracle.
    tasks, phi = grid
    raw = [(t.dense_P(), t.r, t.gamma, t.init) for t in tasks]
    rng = np.random.default_rng(3)
    phi = rng.normal(size=phi.shape[:2] + (3,))
    phi[::2] *= 1e6
    meta = MetaRL(tasks, LinearEnergy(phi), tau=0.5, eta=0.7)
    theta = rng.normal(size=3)
    grad_f = meta.grad_energy(theta)
    assert np.array_equal(grad_f[::2], np.zeros_like(grad_f[::2])) and np.abs(grad_f[1::2]).min() > 0
    oracle = naive.meta_gradient(raw, phi, theta, 0.5, 0.7)
    # the oracle's own saturated states carry its rounding noise times |phi| = 1e6
    np.testing.assert_allclose(meta.gradient(theta), oracle, rtol=1e-6, atol=1e-8)


def test_huge_logits_give_the_limiting_policy_not_nan():
    tasks, _ = fastmeta.tasks.random_mdps(2, 6, 3, k=3, seed=1)
    phi = fastmeta.tasks.random_features(6, 3, 2, seed=2)
    meta = MetaRL(tasks, LinearEnergy(phi), tau=1e-10, eta=1.0)
    L, g = meta.value_and_grad(np.array([1e300, -1e300]))
    greedy = MetaRL(tasks, LinearEnergy(phi), tau=1e-3, eta=1.0).objective(np.array([1e6, -1e6]))
    assert L == pytest.approx(greedy, rel=1e-12) and np.array_equal(g, np.zeros(2))


def test_an_energy_beyond_float64_is_a_named_error():
    tasks, _ = fastmeta.tasks.random_mdps(1, 6, 3, k=3, seed=1)
    phi = np.ones((6, 3, 2))
    meta = MetaRL(tasks, LinearEnergy(phi), tau=1.0, eta=1.0)
    with pytest.raises(FloatingPointError, match=r"LinearEnergy.energy: the energy f = phi\^T theta overflowed"):
        meta.value_and_grad(np.array([1.7e308, 1.7e308]))


def test_rewards_scale_exactly(grid):
    # L(k r, eta / k) = k L(r, eta) and likewise the gradient: exact for k a power of two,
    # and finite even where k^2 is beyond float64.
    tasks, phi = grid
    theta = np.random.default_rng(4).normal(size=phi.shape[2]) * 0.3
    k = 2.0 ** 660
    big = [TabularMDP(t.P, t.r * k, t.gamma, t.init) for t in tasks]
    L, g = MetaRL(tasks, LinearEnergy(phi), tau=1.0, eta=0.5).value_and_grad(theta)
    Lk, gk = MetaRL(big, LinearEnergy(phi), tau=1.0, eta=0.5 / k).value_and_grad(theta)
    assert Lk == pytest.approx(k * L, rel=1e-12)
    np.testing.assert_allclose(gk, k * g, rtol=1e-9, atol=1e-12 * k * np.abs(g).max())
    L0, g0 = MetaRL(tasks, LinearEnergy(phi), tau=1.0, eta=0.0).value_and_grad(theta)
    Lk0, gk0 = MetaRL(big, LinearEnergy(phi), tau=1.0, eta=0.0).value_and_grad(theta)
    assert Lk0 == pytest.approx(k * L0, rel=1e-12)
    np.testing.assert_allclose(gk0, k * g0, rtol=1e-9, atol=1e-12 * k * np.abs(g0).max())


def test_one_huge_reward_gives_a_finite_answer_or_a_named_error(grid):
    tasks, phi = grid
    theta = np.zeros(phi.shape[2])
    r = tasks[0].r.copy()
    r[0, 0] = 1e200
    # L is exact (linear in r). eta Q ~ 1e199 saturates the adapted policy except at exact
    # ties, where the rounding of A (~1e183) times eta r / tau is beyond float64: never inf/NaN.
    meta = MetaRL([TabularMDP(tasks[0].P, r, 0.9, tasks[0].init)], LinearEnergy(phi), tau=1.0, eta=1.0)
    L = meta.objective(theta)
    assert 1e190 < L < 1e200
    try:
        L2, g = meta.value_and_grad(theta)
    except FloatingPointError as exc:
        assert "MetaRL.value_and_grad: the gradient of L overflowed" in str(exc)
    else:
        assert L2 == L and np.isfinite(g).all()
    # The gradient grows like r / tau: with r = 1e306 and tau = 1e-4 it is beyond float64.
    meta = MetaRL([TabularMDP(tasks[0].P, tasks[0].r * 1e306, 0.9, tasks[0].init)], LinearEnergy(phi), tau=1e-4, eta=1e-306)
    assert np.isfinite(meta.objective(theta))
    with pytest.raises(FloatingPointError, match="MetaRL.value_and_grad: the gradient of L overflowed"):
        meta.value_and_grad(theta)
    with pytest.raises(FloatingPointError, match="gradient of L overflowed") as info:
        meta.fit(steps=3, progress=False)
    assert "step size" not in str(info.value)


@pytest.mark.parametrize("loss, scale_x, scale_y", [("squared", 1.0, 1e200), ("logistic", 1e300, 1.0)])
def test_meta_sl_overflow_is_a_named_error(loss, scale_x, scale_y):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 2)) * scale_x
    y = (rng.random(6) < 0.5).astype(float) * scale_y if loss == "logistic" else rng.normal(size=6) * scale_y
    meta = MetaSL([SLTask(X, y)], LinearModel(), loss=loss, eta=0.1)
    with pytest.raises(FloatingPointError, match=r"MetaSL: the meta-(objective L|gradient) overflowed"):
        meta.value_and_grad(np.zeros(2))
    with pytest.raises(FloatingPointError, match="overflowed") as info:
        meta.fit(steps=2, progress=False)
    assert "step size" not in str(info.value)


# ------------------------------------------------------------------ validation gaps
def test_metarl_model_must_be_an_energy_instance(grid):
    tasks, phi = grid
    with pytest.raises(TypeError, match="must be an energy object, e.g. LinearEnergy\\(phi\\). Got the class"):
        MetaRL(tasks, LinearEnergy)

    class NoSizes:
        def energy(self, theta): ...
        def energy_vjp(self, theta, g): ...
        def init_params(self): ...
        def check_params(self, theta, owner): ...
        def project(self, theta): ...

    with pytest.raises(TypeError, match="positive integer attribute 'n_states'. NoSizes has n_states=None"):
        MetaRL(tasks, NoSizes())


def test_sltask_info_must_be_a_dict():
    with pytest.raises(TypeError, match="'info' parameter of SLTask must be a dict"):
        SLTask(np.ones((2, 1)), np.ones(2), info=[1, 2, 3])


def test_meta_sl_fit_names_theta0():
    meta = MetaSL([SLTask(np.ones((2, 3)), np.ones(2))], LinearModel(), eta=0.1)
    with pytest.raises(ValueError, match=r"'theta0' parameter of MetaSL.fit must have shape \(n_params,\) = \(3,\)"):
        meta.fit(np.zeros(2), steps=1, progress=False)


def test_error_messages_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"'X' parameter of SLTask must have shape \(N, p\). Got shape \(5,\)"):
        SLTask(np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match=r"'phi' parameter of LinearEnergy must have shape \(S, A, d\)"):
        LinearEnergy(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"'r' parameter of TabularMDP must have shape \(S, A\). Got shape \(5,\)"):
        TabularMDP(np.ones((5, 1, 5)) / 5, np.ones(5), 0.9, np.ones(5) / 5)


def test_sparse_kernel_other_formats_are_checked():
    P = sp.random(8, 4, density=0.5, random_state=0, format="csr")
    with pytest.raises(ValueError, match="rows P"):
        TabularMDP(P.tocsc(), np.zeros((4, 2)), 0.9, np.ones(4) / 4)


def test_task_generators_check_their_arguments():
    from fastmeta.tasks import gridworld_goals, random_kernel

    for region in [(0.9, 0.1, 0, 1), (0, 1, 0.5, 0.5), (0, 1.5, 0, 1), (0, 1, 0)]:
        with pytest.raises(ValueError, match="'goal_region' parameter of gridworld_goals must be four fractions"):
            gridworld_goals(2, 4, goal_region=region)
    with pytest.raises(ValueError, match="'k' parameter of random_kernel must be an integer >= 1"):
        random_kernel(5, 2, 0, np.random.default_rng(0))
    P = random_kernel(5, 2, 2, 7)  # an int seed works like default_rng(7)
    Q = random_kernel(5, 2, 2, np.random.default_rng(7))
    assert (P != Q).nnz == 0
    with pytest.raises(TypeError, match="'rng' parameter of random_kernel must be an int seed or a numpy.random.Generator"):
        random_kernel(5, 2, 2, "seed")
    with pytest.raises(TypeError, match="'seed' parameter of gridworld_goals must be an int seed"):
        gridworld_goals(2, 4, seed=1.5)


def test_polynomial_features_are_sized_before_they_are_built():
    model = LinearModel("polynomial", degree=25)
    with pytest.raises(ValueError, match=r"'degree' parameter of LinearModel is too large .* = 1.84e\+08 monomials"):
        model.n_params(10)
    with pytest.raises(ValueError, match="'degree' parameter of LinearModel is too large"):
        MetaSL([SLTask(np.ones((2, 10)), np.ones(2))], model)
    assert LinearModel("polynomial", degree=3).n_params(4) == 35


def test_family_expectation_needs_at_least_one_function():
    from fastmeta import visitation

    tasks, _ = fastmeta.tasks.random_mdps(1, 5, 2, k=2, seed=0)
    with pytest.raises(ValueError, match=r"'g' parameter of family_expectation must have shape .* with k >= 1"):
        visitation.family_expectation(tasks[0], np.full((5, 2), 0.5), np.zeros((5, 2, 0)))
