"""MLP (every layer trained): forward, vjp, jvp and the R-operator HVP against tests/naive.py
and central differences; the full exact meta-gradient against an explicit-Hessian oracle and
against central differences of the meta-objective; thread independence; input errors."""
import numba
import numpy as np
import pytest

from fastmeta._kernels import mlp as kmlp
from fastmeta.models import MLP
from fastmeta.sl import MetaSL, SLTask

from . import naive

# Layers narrower than kmlp.AXPY_MIN_OUT (8) run their forward passes as dot products, wider
# ones as axpys over transposed weights: the last two cases take both paths, with and
# without a tail after the dot product's blocks of eight.
SIZES_CASES = [(2, (5,)), (3, (4, 6)), (1, (7, 5, 3)), (3, (9, 12)), (10, (8, 3))]


def _net(in_dim, hidden, seed=0, scale=0.5):
    net = MLP(in_dim, hidden, seed=seed)
    # Move off the initialisation so biases and weights are generic.
    theta = net.init_params() + scale * np.random.default_rng(seed + 1).normal(size=net.n_params)
    return net, theta


def _tasks(in_dim, loss="squared", n=3, seed=0):
    rng = np.random.default_rng(seed)
    tasks, raw = [], []
    for i in range(n):
        ns, nq = 3 + i, 4 + (i % 2)
        Xs, Xq = rng.normal(size=(ns, in_dim)), rng.normal(size=(nq, in_dim))
        if loss == "logistic":
            ys, yq = (rng.random(ns) < 0.5).astype(float), (rng.random(nq) < 0.5).astype(float)
        else:
            ys, yq = rng.normal(size=ns), rng.normal(size=nq)
        tasks.append(SLTask(Xs, ys, Xq, yq))
        raw.append((Xs, ys, Xq, yq))
    return tasks, raw


@pytest.mark.parametrize("in_dim, hidden", SIZES_CASES)
def test_layout_and_predict_match_naive(in_dim, hidden):
    net, theta = _net(in_dim, hidden)
    sizes = (in_dim, *hidden, 1)
    assert net.sizes == sizes
    assert net.n_params == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    for (W, b), (Wn, bn) in zip(net.unflatten(theta), naive.mlp_layers(theta, sizes)):
        np.testing.assert_array_equal(W, Wn)
        np.testing.assert_array_equal(b, bn)
    X = np.random.default_rng(3).normal(size=(9, in_dim))
    np.testing.assert_allclose(net.predict(theta, X), naive.mlp_predict(theta, X, sizes), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(net.forward(list(theta), X.tolist()), net.predict(theta, X), rtol=0, atol=0)


@pytest.mark.parametrize("in_dim, hidden", SIZES_CASES)
def test_vjp_jvp_match_naive_jacobian_and_central_differences(in_dim, hidden):
    net, theta = _net(in_dim, hidden, seed=2)
    sizes = (in_dim, *hidden, 1)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(6, in_dim))
    g, v = rng.normal(size=6), rng.normal(size=net.n_params)
    J = naive.mlp_jacobian(theta, X, sizes)
    np.testing.assert_allclose(net.vjp(theta, X, g), J.T @ g, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(net.jvp(theta, X, v), J @ v, rtol=1e-11, atol=1e-12)
    # and the chain-rule Jacobian itself against central differences of the forward pass
    fd = np.array([naive.central_difference(lambda t: net.predict(t, X[j:j + 1])[0], theta) for j in range(6)])
    np.testing.assert_allclose(J, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["squared", "logistic"])
@pytest.mark.parametrize("in_dim, hidden", SIZES_CASES)
def test_hvp_is_the_exact_hessian(kind, in_dim, hidden):
    net, theta = _net(in_dim, hidden, seed=5)
    sizes = (in_dim, *hidden, 1)
    rng = np.random.default_rng(6)
    X = rng.normal(size=(5, in_dim))
    y = (rng.random(5) < 0.5).astype(float) if kind == "logistic" else rng.normal(size=5)
    h = net.predict(theta, X)
    d1, d2 = naive.dloss(h, y, kind) / 5, naive.d2loss(h, y, kind) / 5
    H = naive.mlp_risk_hessian(theta, X, y, sizes, kind)
    J = naive.mlp_jacobian(theta, X, sizes)
    for _ in range(3):
        v = rng.normal(size=net.n_params)
        hv = net.hvp(theta, X, v, d1, d2)
        np.testing.assert_allclose(hv, H @ v, rtol=1e-5, atol=1e-7)
        # The curvature term is really there: the Gauss-Newton part alone differs.
        gn = J.T @ (d2 * (J @ v))
        assert np.linalg.norm(hv - gn) > 1e-3 * np.linalg.norm(hv)


@pytest.mark.parametrize("kind", ["squared", "logistic"])
@pytest.mark.parametrize("in_dim, hidden", [(2, (6, 5)), (2, (9, 10))])
def test_meta_gradient_matches_full_hessian_oracle_and_finite_differences(kind, in_dim, hidden):
    sizes = (in_dim, *hidden, 1)
    net, theta = _net(in_dim, hidden, seed=7)
    tasks, raw = _tasks(in_dim, kind, seed=8)
    eta = 0.3
    meta = MetaSL(tasks, net, loss=kind, eta=eta)
    value, grad = meta.value_and_grad(theta)

    def rg(t, X, y):
        return naive.mlp_risk_grad(t, X, y, sizes, kind)

    def rh(t, X, y):
        return naive.mlp_risk_hessian(t, X, y, sizes, kind)

    oracle = naive.sl_meta_gradient_full(theta, raw, rg, rh, eta)
    np.testing.assert_allclose(grad, oracle, rtol=1e-5, atol=1e-7)
    obj = naive.sl_meta_objective(theta, raw, lambda t, X: naive.mlp_predict(t, X, sizes),
                                  lambda t, X: naive.mlp_jacobian(t, X, sizes), kind, eta)
    np.testing.assert_allclose(value, obj, rtol=1e-12)
    fd = naive.central_difference(meta.objective, theta)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)
    # first order drops the Hessian term
    fo = MetaSL(tasks, net, loss=kind, eta=eta, first_order=True).gradient(theta)
    np.testing.assert_allclose(fo, naive.sl_meta_gradient_full(theta, raw, rg, lambda t, X, y: 0 * rh(t, X, y), eta),
                               rtol=1e-9, atol=1e-11)


def test_fused_kernel_matches_the_protocol_loop_and_threads():
    net, theta = _net(3, (40, 40), seed=9, scale=0.1)
    tasks, _ = _tasks(3, n=12, seed=10)
    meta = MetaSL(tasks, net, eta=0.05)

    class Plain:      # the same network without its compiled meta_terms: MetaSL's NumPy loop
        in_dim, n_params = net.in_dim, net.n_params
        predict, vjp, hvp = net.predict, net.vjp, net.hvp
        init_params, project, config = net.init_params, net.project, net.config

    v0, g0 = MetaSL(tasks, Plain(), eta=0.05).value_and_grad(theta)
    v1, g1 = meta.value_and_grad(theta)
    np.testing.assert_allclose(v1, v0, rtol=1e-13)
    np.testing.assert_allclose(g1, g0, rtol=1e-11, atol=1e-14)
    p = meta.pack(tasks)
    out = []
    for kernel, threads in ((kmlp.mlp_meta.serial, 1), (kmlp.mlp_meta.parallel, 1), (kmlp.mlp_meta.parallel, 2)):
        numba.set_num_threads(threads)
        tl, tg = np.empty(12), np.empty((12, net.n_params))
        kernel(theta, net._sizes, net._woff, net._boff, net._uoff, p.Zs, p.ys, p.offs, p.Zq, p.yq, p.offq,
            0.05, 0, 1, tl, tg)
        out.append((tl, tg))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for tl, tg in out[1:]:
        assert np.array_equal(tl, out[0][0]) and np.array_equal(tg, out[0][1])


def test_init_is_seeded_like_torch_default_and_projection():
    a, b, c = MLP(3, (4,), seed=1), MLP(3, (4,), seed=1), MLP(3, (4,), seed=2)
    assert np.array_equal(a.init_params(), b.init_params()) and a.config() == b.config()
    assert not np.array_equal(a.init_params(), c.init_params()) and a.config() != c.config()
    (W0, b0), (W1, b1) = a.unflatten(a.init_params())
    assert np.abs(W0).max() <= 1 / np.sqrt(3) and np.abs(b0).max() <= 1 / np.sqrt(3)
    assert np.abs(W1).max() <= 1 / 2 and np.abs(b1).max() <= 1 / 2
    r = MLP(3, (4,), seed=1, radius=0.5)
    far = r.init_params() + 10.0
    np.testing.assert_allclose(np.linalg.norm(r.project(far) - r.init_params()), 0.5)
    near = r.init_params() + 0.01
    assert np.array_equal(r.project(near), near)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="'hidden' parameter of MLP"):
        MLP(2, ())
    with pytest.raises(ValueError, match="'hidden' parameter of MLP"):
        MLP(2, 40)
    with pytest.raises(ValueError, match="'hidden'"):
        MLP(2, (4, 0))
    with pytest.raises(ValueError, match="'in_dim'"):
        MLP(0)
    net = MLP(2, (3,))
    with pytest.raises(ValueError, match="'X' parameter of MLP.forward"):
        net.forward(net.init_params(), np.ones((4, 3)))
    with pytest.raises(ValueError, match="'theta' parameter of MLP.forward"):
        net.forward(np.ones(2), np.ones((4, 2)))
    with pytest.raises(ValueError, match="must take inputs of the tasks' dimension 3"):
        MetaSL([SLTask(np.ones((2, 3)), np.ones(2))], net)


def test_finn_initialisation_option():
    net = MLP(1, (40, 40), seed=0, init="normal")
    layers = net.unflatten(net.init_params())
    for W, b in layers:
        assert np.all(b == 0.0) and np.abs(W).max() <= 0.02
    assert 0.007 < layers[1][0].std() < 0.011
    assert net.config() != MLP(1, (40, 40), seed=0).config()
    with pytest.raises(ValueError, match="'init' parameter of MLP"):
        MLP(1, init="xavier")
