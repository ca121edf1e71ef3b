"""TwoLayerReLU and NeuralEnergy: kernels against explicit Jacobians, the Gauss-Newton HVP
against finite differences away from kinks, thread-count independence, and the neural
energy inside MetaRL against finite differences of the meta-objective."""

import numpy as np
import pytest

from fastmeta.neural import NeuralEnergy, TwoLayerReLU
from fastmeta.sl import MetaSL, SLTask

from . import naive


def test_initialisation_and_attributes():
    net = TwoLayerReLU(4, 50, seed=3)
    assert net.b.shape == (50,) and set(np.unique(net.b)) <= {-1.0, 1.0}
    assert net.W0.shape == (50, 4) and net.n_params == 200
    assert np.array_equal(net.init_params(), net.W0.ravel())
    same = TwoLayerReLU(4, 50, seed=3)
    assert np.array_equal(same.b, net.b) and np.array_equal(same.W0, net.W0)
    assert not np.array_equal(TwoLayerReLU(4, 50, seed=4).W0, net.W0)
    big = TwoLayerReLU(5, 4000, seed=0)
    assert abs(big.W0.var() - 1 / 5) < 0.01 and abs(big.b.mean()) < 0.05


@pytest.mark.parametrize("width", [5, 300])
def test_forward_jvp_vjp_match_explicit_jacobian(width):
    rng = np.random.default_rng(0)
    net = TwoLayerReLU(3, width, seed=1)
    W = net.init_params() + 0.1 * rng.normal(size=net.n_params)
    X = rng.normal(size=(70, 3))
    v, g = rng.normal(size=net.n_params), rng.normal(size=70)
    J = naive.relu_jacobian(W.reshape(width, 3), net.b, X)
    np.testing.assert_allclose(net.forward(W, X), naive.relu_predict(W.reshape(width, 3), net.b, X), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(net.jvp(W, X, v), J @ v, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(net.vjp(W, X, g), J.T @ g, rtol=1e-11, atol=1e-13)


def test_kernels_do_not_depend_on_thread_count(numba_threads):
    rng = np.random.default_rng(2)
    net = TwoLayerReLU(3, 300, seed=3)
    W, X = net.init_params(), rng.normal(size=(200, 3))
    v, g = rng.normal(size=net.n_params), rng.normal(size=200)
    out = []
    for threads in (1, 2):
        numba_threads(threads)
        out.append((net.forward(W, X), net.jvp(W, X, v), net.vjp(W, X, g)))
    for a, b in zip(*out):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["squared", "logistic"])
def test_gauss_newton_hvp_matches_finite_differences_away_from_kinks(kind):
    rng = np.random.default_rng(4)
    net = TwoLayerReLU(3, 9, seed=5)
    X = rng.normal(size=(12, 3))
    y = (rng.random(12) < 0.5).astype(float) if kind == "logistic" else rng.normal(size=12)
    task = SLTask(X, y)
    meta = MetaSL([task], net, loss=kind, eta=0.1)
    W = net.init_params() + 0.2 * rng.normal(size=net.n_params)
    eps = 1e-6
    margin = np.abs(X @ W.reshape(9, 3).T).min()
    assert margin > 100 * eps          # no kink within the finite-difference stencil (||v|| = 1)
    v = rng.normal(size=net.n_params)
    v /= np.linalg.norm(v)
    fd = (meta.risk_grad(W + eps * v, task) - meta.risk_grad(W - eps * v, task)) / (2 * eps)
    np.testing.assert_allclose(meta.risk_hvp(W, task, v), fd, rtol=1e-6, atol=1e-9)
    H = naive.risk_hessian(W, X, y, lambda th, Z: naive.relu_predict(th.reshape(9, 3), net.b, Z),
                           lambda th, Z: naive.relu_jacobian(th.reshape(9, 3), net.b, Z), kind)
    np.testing.assert_allclose(meta.risk_hvp(W, task, v), H @ v, rtol=1e-11, atol=1e-14)


def test_projection_onto_ball_around_init():
    net = TwoLayerReLU(2, 6, radius=0.5, seed=0)
    far = net.init_params() + 3.0
    proj = net.project(far)
    np.testing.assert_allclose(np.linalg.norm(proj - net.init_params()), 0.5)
    np.testing.assert_allclose((proj - net.init_params()) / 0.5, (far - net.init_params()) / np.linalg.norm(far - net.init_params()))
    near = net.init_params() + 0.01
    assert np.array_equal(net.project(near), near)
    assert TwoLayerReLU(2, 6, seed=0).project(far) is not None
    assert np.array_equal(TwoLayerReLU(2, 6, seed=0).project(far), far)


# ----------------------------------------------------------------------------- NeuralEnergy
def test_neural_energy_protocol():
    rng = np.random.default_rng(6)
    phi = rng.normal(size=(5, 3, 4))
    en = NeuralEnergy(phi, width=20, radius=1.0, seed=7)
    net = TwoLayerReLU(4, 20, seed=7)
    assert (en.n_states, en.n_actions, en.n_params) == (5, 3, 80)
    assert np.array_equal(en.b, net.b) and np.array_equal(en.W0, net.W0)
    W = en.init_params() + 0.1 * rng.normal(size=80)
    f = en.energy(W)
    assert f.shape == (5, 3) and f.flags.c_contiguous and f.dtype == np.float64
    np.testing.assert_allclose(f.ravel(), naive.relu_predict(W.reshape(20, 4), net.b, phi.reshape(15, 4)), rtol=1e-12)
    g = rng.normal(size=(5, 3))
    J = naive.relu_jacobian(W.reshape(20, 4), net.b, phi.reshape(15, 4))
    np.testing.assert_allclose(en.energy_vjp(W, g), J.T @ g.ravel(), rtol=1e-11, atol=1e-14)
    assert np.linalg.norm(en.project(W + 10.0) - en.init_params()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'theta' parameter of MetaRL must have shape \\(80,\\)"):
        en.check_params(np.zeros(79), "MetaRL")
    with pytest.raises(ValueError, match="finite"):
        en.energy(np.full(80, np.nan))
    with pytest.raises(ValueError, match="shape \\(S, A, in_dim\\)"):
        NeuralEnergy(np.zeros((0, 3, 2)), width=3)
    with pytest.raises(ValueError, match="'width' parameter of NeuralEnergy must be an integer >= 1"):
        NeuralEnergy(phi, width=0)


def _random_mdps(S, A, n, seed):
    import fastmeta
    rng = np.random.default_rng(seed)
    tasks = []
    for gamma in (0.8, 0.6, 0.9)[:n]:
        P = rng.random((S, A, S)) ** 3
        P /= P.sum(axis=2, keepdims=True)
        tasks.append(fastmeta.TabularMDP(P, rng.normal(size=(S, A)), gamma, rng.dirichlet(np.ones(S))))
    return tasks


def test_neural_energy_in_metarl_matches_finite_differences():
    from fastmeta import MetaRL
    rng = np.random.default_rng(8)
    S, A = 5, 3
    tasks = _random_mdps(S, A, 3, seed=9)
    en = NeuralEnergy(rng.normal(size=(S, A, 3)), width=6, seed=10)
    meta = MetaRL(tasks, en, tau=1.0, eta=0.5)
    W = en.init_params() + 0.1 * rng.normal(size=en.n_params)
    eps = 1e-6
    margin = np.abs(en.phi.reshape(-1, 3) @ W.reshape(6, 3).T).min()
    assert margin > 1e3 * eps
    fd = naive.central_difference(meta.objective, W, eps)
    np.testing.assert_allclose(meta.gradient(W), fd, rtol=1e-6, atol=1e-9)
    value, grad = meta.value_and_grad(W)
    assert value == meta.objective(W) and np.array_equal(grad, meta.gradient(W))
