"""Meta-SL: objective and exact meta-gradient against explicit-Hessian oracles and finite
differences, first-order option, fit/checkpoint, adaptation, task families, input errors."""
import math

import numpy as np
import pytest

from fastmeta._kernels import sl as ksl
from fastmeta.linear_model import LinearModel
from fastmeta.neural import TwoLayerReLU
from fastmeta.sl import MetaSL, SLTask
from fastmeta.tasks.linear_gaussian import linear_gaussian_tasks
from fastmeta.tasks.sinusoid import sinusoid_tasks

from . import naive


def make_tasks(n=4, p=3, loss="squared", query=True, seed=0, counts=(3, 4, 5, 6)):
    """Tasks with different sample counts; logistic labels in {0, 1}."""
    rng = np.random.default_rng(seed)
    tasks, raw = [], []
    for i in range(n):
        ns, nq = counts[i % len(counts)], counts[(i + 1) % len(counts)]
        Xs, Xq = rng.normal(size=(ns, p)), rng.normal(size=(nq, p))
        if loss == "logistic":
            ys, yq = (rng.random(ns) < 0.5).astype(float), (rng.random(nq) < 0.5).astype(float)
        else:
            ys, yq = rng.normal(size=ns), rng.normal(size=nq)
        if query:
            tasks.append(SLTask(Xs, ys, Xq, yq))
            raw.append((Xs, ys, Xq, yq))
        else:
            tasks.append(SLTask(Xs, ys))
            raw.append((Xs, ys, Xs, ys))
    return tasks, raw


def linear_oracle(model, raw):
    feats = [(model.transform(Xs), ys, model.transform(Xq), yq) for Xs, ys, Xq, yq in raw]
    return feats, naive.linear_predict, naive.linear_jacobian


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("kind", ["squared", "logistic"])
def test_loss_kernels_match_naive(kind):
    h = np.linspace(-30, 30, 61)
    y = (np.arange(61) % 2).astype(float)
    vals, d1, d2 = np.empty(61), np.empty(61), np.empty(61)
    ksl.risk_terms(h, y, ksl.SQUARED if kind == "squared" else ksl.LOGISTIC, vals, d1, d2)
    np.testing.assert_allclose(vals, naive.loss(h, y, kind), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d1, naive.dloss(h, y, kind), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d2, naive.d2loss(h, y, kind), rtol=1e-10, atol=1e-300)


def test_logistic_loss_is_stable_for_large_margins():
    h = np.array([800.0, 800.0, -800.0, -800.0, 40.0])
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    vals, d1, d2 = np.empty(5), np.empty(5), np.empty(5)
    ksl.risk_terms(h, y, ksl.LOGISTIC, vals, d1, d2)
    assert np.all(np.isfinite(vals)) and np.all(np.isfinite(d1)) and np.all(np.isfinite(d2))
    np.testing.assert_allclose(vals[[1, 2]], [800.0, 800.0])
    assert vals[0] == 0.0 and vals[3] == 0.0
    np.testing.assert_allclose(vals[4], np.exp(-40.0), rtol=1e-12)   # no cancellation h - h
    np.testing.assert_allclose(d1, [0.0, 1.0, -1.0, 0.0, -np.exp(-40.0) / (1 + np.exp(-40.0))], atol=1e-300)


# ------------------------------------------------------------------ linear model, oracles
@pytest.mark.parametrize("kind", ["squared", "logistic"])
@pytest.mark.parametrize("query", [True, False])
@pytest.mark.parametrize("features", [None, "affine", "polynomial"])
def test_linear_meta_gradient_matches_explicit_hessian(kind, query, features):
    tasks, raw = make_tasks(loss=kind, query=query, seed=1)
    model = LinearModel(features)
    meta = MetaSL(tasks, model, loss=kind, eta=0.3)
    feats, pred, jac = linear_oracle(model, raw)
    theta = np.random.default_rng(2).normal(size=meta.n_params)
    value, grad = meta.value_and_grad(theta)
    np.testing.assert_allclose(value, naive.sl_meta_objective(theta, feats, pred, jac, kind, 0.3), rtol=1e-12)
    np.testing.assert_allclose(grad, naive.sl_meta_gradient(theta, feats, pred, jac, kind, 0.3), rtol=1e-10, atol=1e-13)
    assert value == meta.objective(theta)
    assert np.array_equal(grad, meta.gradient(theta))


@pytest.mark.parametrize("kind", ["squared", "logistic"])
@pytest.mark.parametrize("query", [True, False])
def test_linear_meta_gradient_matches_finite_differences(kind, query):
    tasks, _ = make_tasks(loss=kind, query=query, seed=3)
    meta = MetaSL(tasks, LinearModel("affine"), loss=kind, eta=0.5)
    theta = np.random.default_rng(4).normal(size=meta.n_params)
    fd = naive.central_difference(meta.objective, theta, eps=1e-6)
    np.testing.assert_allclose(meta.gradient(theta), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["squared", "logistic"])
def test_first_order_matches_its_definition(kind):
    tasks, raw = make_tasks(loss=kind, seed=5)
    model = LinearModel()
    exact = MetaSL(tasks, model, loss=kind, eta=0.4)
    fo = MetaSL(tasks, model, loss=kind, eta=0.4, first_order=True)
    theta = np.random.default_rng(6).normal(size=exact.n_params)
    # Definition: 1/n sum_i grad R_i^q(theta_i), theta_i one inner step from theta.
    by_hand = np.mean([fo.risk_grad(fo.adapt(theta, t, steps=1), t, split="query") for t in tasks], axis=0)
    np.testing.assert_allclose(fo.gradient(theta), by_hand, rtol=1e-12, atol=1e-14)
    feats, pred, jac = linear_oracle(model, raw)
    np.testing.assert_allclose(fo.gradient(theta), naive.sl_meta_gradient(theta, feats, pred, jac, kind, 0.4,
                                                                       first_order=True), rtol=1e-10)
    assert fo.objective(theta) == exact.objective(theta)
    assert not np.allclose(fo.gradient(theta), exact.gradient(theta))


def test_eta_zero_is_the_average_risk():
    tasks, raw = make_tasks(query=False, seed=7)
    meta = MetaSL(tasks, LinearModel(), eta=0.0)
    theta = np.random.default_rng(8).normal(size=3)
    avg = np.mean([naive.risk(theta, X, y, naive.linear_predict, "squared") for X, y, _, _ in raw])
    np.testing.assert_allclose(meta.objective(theta), avg, rtol=1e-13)


def test_linear_parallel_and_serial_kernels_agree_bitwise(numba_threads):
    tasks, _ = make_tasks(n=6, p=5, seed=9)
    meta = MetaSL(tasks, LinearModel(), eta=0.2)
    theta = np.random.default_rng(10).normal(size=5)
    p = meta.pack(tasks)
    args = (theta, p.Zs, p.ys, p.offs, p.Zq, p.yq, p.offq, 0.2, 0, ksl.MODE_EXACT)
    out = []
    for kernel, threads in ((ksl.linear_meta.serial, 1), (ksl.linear_meta.parallel, 1), (ksl.linear_meta.parallel, 2)):
        numba_threads(threads)
        tl, tg = np.empty(6), np.empty((6, 5))
        kernel(*args, tl, tg)
        out.append((tl, tg))
    for tl, tg in out[1:]:
        assert np.array_equal(tl, out[0][0]) and np.array_equal(tg, out[0][1])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 64, 1027])
def test_dot_sums_in_its_documented_fixed_order(n):
    """Eight lane sums (lane l takes k = l mod 8, in order), a fixed tree, then the tail:
    bit for bit, since the kernels' thread and compilation independence rests on it."""
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=n), rng.normal(size=n)
    full = 8 * (n // 8)
    s = [0.0] * 8
    for k in range(full):
        s[k % 8] += float(a[k] * b[k])
    expected = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))
    for k in range(full, n):
        expected += float(a[k] * b[k])
    got = ksl.dot(a, b)
    assert got == expected
    assert got == pytest.approx(math.fsum(a * b), rel=1e-12, abs=1e-12)


def test_risk_hvp_linear_is_exact_hessian():
    tasks, raw = make_tasks(loss="logistic", seed=11)
    meta = MetaSL(tasks, LinearModel(), loss="logistic", eta=0.1)
    rng = np.random.default_rng(12)
    theta, v = rng.normal(size=3), rng.normal(size=3)
    Xs, ys = raw[0][0], raw[0][1]
    H = naive.risk_hessian(theta, Xs, ys, naive.linear_predict, naive.linear_jacobian, "logistic")
    np.testing.assert_allclose(meta.risk_hvp(theta, tasks[0], v), H @ v, rtol=1e-12)


# ------------------------------------------------------------------------ ReLU network
def _min_margin(net, W, tasks, eta, meta):
    """Smallest |W_r . x| over support inputs at W and query inputs at every theta_i."""
    Wm = W.reshape(net.width, net.in_dim)
    margin = min(np.abs(t.X @ Wm.T).min() for t in tasks)
    for t in tasks:
        Wi = meta.adapt(W, t, steps=1).reshape(net.width, net.in_dim)
        margin = min(margin, np.abs(t.split("query")[0] @ Wi.T).min())
    return margin


@pytest.mark.parametrize("kind", ["squared", "logistic"])
@pytest.mark.parametrize("query", [True, False])
@pytest.mark.parametrize("width", [7, 19])   # sums over hidden units: tail only; two blocks of 8 and a tail
def test_relu_meta_gradient_matches_oracle_and_finite_differences(kind, query, width):
    tasks, raw = make_tasks(loss=kind, query=query, seed=13)
    net = TwoLayerReLU(3, width, seed=14)
    meta = MetaSL(tasks, net, loss=kind, eta=0.5)
    W = net.init_params() + 0.1 * np.random.default_rng(15).normal(size=net.n_params)
    pred = lambda th, X: naive.relu_predict(th.reshape(width, 3), net.b, X)       # noqa: E731
    jac = lambda th, X: naive.relu_jacobian(th.reshape(width, 3), net.b, X)       # noqa: E731
    value, grad = meta.value_and_grad(W)
    np.testing.assert_allclose(value, naive.sl_meta_objective(W, raw, pred, jac, kind, 0.5), rtol=1e-12)
    np.testing.assert_allclose(grad, naive.sl_meta_gradient(W, raw, pred, jac, kind, 0.5), rtol=1e-10, atol=1e-13)
    # Finite differences are valid only if no pre-activation crosses zero within eps.
    eps = 1e-6
    assert _min_margin(net, W, tasks, 0.5, meta) > 100 * eps
    np.testing.assert_allclose(grad, naive.central_difference(meta.objective, W, eps), rtol=1e-5, atol=1e-8)


def test_relu_results_do_not_depend_on_thread_count(numba_threads):
    tasks, _ = make_tasks(n=5, seed=16)
    net = TwoLayerReLU(3, 300, seed=17)           # > 2 blocks of hidden units
    meta = MetaSL(tasks, net, eta=0.3)
    W = net.init_params()
    res = []
    for threads in (1, 2):
        numba_threads(threads)
        res.append((meta.value_and_grad(W), meta.objective(W)))
    (v1, g1), o1 = res[0]
    (v2, g2), o2 = res[1]
    assert v1 == v2 and o1 == o2 and np.array_equal(g1, g2)


def test_relu_projection_in_fit_keeps_the_ball():
    tasks, _ = make_tasks(seed=18)
    net = TwoLayerReLU(3, 8, radius=0.05, seed=19)
    meta = MetaSL(tasks, net, eta=0.3)
    seen = []
    orig = meta.value_and_grad
    meta.value_and_grad = lambda th: (seen.append(th.copy()), orig(th))[1]   # record every iterate
    res = meta.fit(steps=20, lr=2.0, progress=False)
    dists = [np.linalg.norm(th - net.init_params()) for th in seen + [res.theta]]
    assert max(dists) <= 0.05 * (1 + 1e-12)
    assert dists[-1] == pytest.approx(0.05)      # the step is large enough to reach the boundary


def test_linear_model_projection():
    model = LinearModel(radius=2.0)
    np.testing.assert_allclose(np.linalg.norm(model.project(np.array([3.0, 4.0]))), 2.0)
    assert np.array_equal(model.project(np.array([0.3, 0.4])), [0.3, 0.4])


# ------------------------------------------------------------------------- fit / adapt
def test_fit_descends_and_resumes_bit_for_bit(tmp_path):
    tasks, _ = make_tasks(seed=20)
    meta = MetaSL(tasks, TwoLayerReLU(3, 16, seed=21), eta=0.3)
    full = meta.fit(steps=12, lr=0.5, progress=False)
    assert full.objective[-1] < full.objective[0]
    ck = tmp_path / "ck.npz"
    part = meta.fit(steps=5, lr=0.5, progress=False, checkpoint=ck)
    assert part.steps == 5
    rest = meta.fit(steps=12, lr=0.5, progress=False, checkpoint=ck, resume=True)
    assert np.array_equal(rest.theta, full.theta) and np.array_equal(rest.objective, full.objective)
    other = MetaSL(tasks, TwoLayerReLU(3, 16, seed=21), eta=0.31)
    with pytest.raises(ValueError, match="different problem"):
        other.fit(steps=12, lr=0.5, progress=False, checkpoint=ck, resume=True)


def test_adapt_path_and_steps():
    tasks, raw = make_tasks(seed=22)
    meta = MetaSL(tasks, LinearModel(), eta=0.2)
    theta = np.ones(3)
    path = meta.adapt(theta, tasks[1], steps=3, return_path=True)
    assert path.shape == (4, 3) and np.array_equal(path[0], theta)
    by_hand = theta.copy()
    for k in range(3):
        by_hand = by_hand - 0.2 * naive.risk_grad(by_hand, raw[1][0], raw[1][1], naive.linear_predict,
                                                  naive.linear_jacobian, "squared")
        np.testing.assert_allclose(path[k + 1], by_hand, rtol=1e-13)
    assert np.array_equal(meta.adapt(theta, tasks[1], steps=3), path[-1])
    assert np.array_equal(meta.adapt(theta, tasks[1], steps=0), theta)
    assert meta.risk(theta, tasks[1]) == pytest.approx(
        naive.risk(theta, raw[1][2], raw[1][3], naive.linear_predict, "squared"))


# -------------------------------------------------------------------------- features
def test_linear_model_features():
    X = np.array([[1.0, 2.0], [3.0, -1.0]])
    np.testing.assert_array_equal(LinearModel("affine").transform(X), [[1, 2, 1], [3, -1, 1]])
    poly = LinearModel("polynomial", degree=2).transform(X)
    np.testing.assert_array_equal(poly, [[1, 1, 2, 1, 2, 4], [1, 3, -1, 9, -3, 1]])
    assert LinearModel("polynomial", degree=3, in_dim=2).n_params == 10
    rff = LinearModel("rff", n_features=50, lengthscale=2.0, seed=3)
    F = rff.transform(X)
    assert F.shape == (2, 50) and np.array_equal(F, LinearModel("rff", n_features=50, lengthscale=2.0,
                                                                 seed=3).transform(X))
    assert not np.array_equal(F, LinearModel("rff", n_features=50, lengthscale=2.0, seed=4).transform(X))
    # RFF approximate the RBF kernel exp(-|x - x'|^2 / (2 l^2)).
    big = LinearModel("rff", n_features=20000, lengthscale=2.0, seed=0).transform(X)
    np.testing.assert_allclose(big[0] @ big[1], np.exp(-np.sum((X[0] - X[1]) ** 2) / 8.0), atol=0.03)


# ------------------------------------------------------------------------ task families
def test_sinusoid_family():
    tasks = sinusoid_tasks(6, k_shot=5, k_query=7, seed=0)
    again = sinusoid_tasks(6, k_shot=5, k_query=7, seed=0)
    assert len(tasks) == 6 and tasks[0].X.shape == (5, 1) and tasks[0].X_query.shape == (7, 1)
    for t, u in zip(tasks, again):
        assert np.array_equal(t.X, u.X) and np.array_equal(t.y_query, u.y_query)
        a, ph = t.info["amplitude"], t.info["phase"]
        assert 0.1 <= a <= 5.0 and 0.0 <= ph <= np.pi
        assert np.all(np.abs(t.X) <= 5.0)
        np.testing.assert_allclose(t.y, a * np.sin(t.X[:, 0] + ph))
    emb = sinusoid_tasks(2, k_shot=3, embedding="affine", seed=0)
    assert emb[0].X.shape == (3, 2) and np.all(emb[0].X[:, 1] == 1.0)
    assert not emb[0].has_query


def test_linear_gaussian_family():
    beta0 = np.array([1.0, -2.0, 0.5])
    tasks = linear_gaussian_tasks(400, n_support=5, n_query=5, beta0=beta0, cov=0.01, noise=0.0, seed=1)
    betas = np.array([t.info["beta"] for t in tasks])
    np.testing.assert_allclose(betas.mean(axis=0), beta0, atol=0.02)
    np.testing.assert_allclose(betas.std(axis=0), 0.1, rtol=0.15)
    t = tasks[0]
    np.testing.assert_allclose(t.y, t.X @ t.info["beta"], rtol=1e-12)
    model = LinearModel("affine")
    aff = linear_gaussian_tasks(3, n_support=4, beta0=np.zeros(3), noise=0.1, model=model, in_dim=2, seed=2)
    assert aff[0].X.shape == (4, 2) and aff[0].info["beta"].shape == (3,)


# ------------------------------------------------------------------------------ errors
def test_bad_inputs_raise_clear_errors():
    X, y = np.ones((3, 2)), np.array([0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="labels in \\{0, 1\\}"):
        MetaSL([SLTask(X, np.array([0.0, 2.0, 1.0]))], LinearModel(), loss="logistic")
    with pytest.raises(ValueError, match="y_query\\[0\\]"):
        MetaSL([SLTask(X, y, X, np.array([0.5, 1.0, 0.0]))], LinearModel(), loss="logistic")
    with pytest.raises(ValueError, match="'y' parameter of SLTask must have shape \\(3,\\)"):
        SLTask(X, np.ones(4))
    with pytest.raises(ValueError, match="'X_query' parameter of SLTask must have shape \\(any, 2\\)"):
        SLTask(X, y, np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="given together"):
        SLTask(X, y, X)
    with pytest.raises(ValueError, match="one input dimension"):
        MetaSL([SLTask(X, y), SLTask(np.ones((3, 4)), y)], LinearModel())
    with pytest.raises(ValueError, match="TwoLayerReLU\\(in_dim=3"):
        MetaSL([SLTask(X, y)], TwoLayerReLU(3, 4))
    with pytest.raises(ValueError, match="'width' parameter of TwoLayerReLU must be an integer >= 1"):
        TwoLayerReLU(2, 0)
    with pytest.raises(ValueError, match="finite"):
        SLTask(np.array([[1.0, np.nan]]), [1.0])
    meta = MetaSL([SLTask(X, y)], LinearModel(), eta=0.1)
    with pytest.raises(ValueError, match="'theta' parameter of MetaSL.gradient must contain only finite"):
        meta.gradient(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="must have shape \\(n_params,\\) = \\(2,\\)"):
        meta.objective(np.zeros(3))
    with pytest.raises(ValueError, match="'eta' parameter of MetaSL must be in \\[0, inf\\)"):
        MetaSL([SLTask(X, y)], LinearModel(), eta=-1.0)
    with pytest.raises(ValueError, match="'loss' parameter of MetaSL must be one of"):
        MetaSL([SLTask(X, y)], LinearModel(), loss="hinge")
    with pytest.raises(TypeError, match="SLTask objects"):
        MetaSL([(X, y)], LinearModel())
    with pytest.raises(ValueError, match="'features' parameter of LinearModel"):
        LinearModel("fourier")
    with pytest.raises(ValueError, match="dimension 2"):
        meta.adapt(np.zeros(2), SLTask(np.ones((2, 3)), [1.0, 2.0]))


# ------------------------------------------------------------------------ demo (--sl)
def test_fourier_embedding_is_seeded_and_approximates_the_rbf_gram():
    from fastmeta.tasks.sinusoid import fourier_embedding
    x = np.array([-1.0, 0.0, 2.5])
    Z = fourier_embedding(16, lengthscale=2.0, constant=3.0, seed=4)(x)
    assert Z.shape == (3, 17) and np.all(Z[:, -1] == 3.0)
    assert np.array_equal(Z, fourier_embedding(16, lengthscale=2.0, constant=3.0, seed=4)(x))
    assert not np.array_equal(Z, fourier_embedding(16, lengthscale=2.0, constant=3.0, seed=5)(x))
    big = fourier_embedding(20000, lengthscale=2.0, constant=0.0, seed=0)(x)
    np.testing.assert_allclose(big @ big.T, np.exp(-np.subtract.outer(x, x) ** 2 / 8.0), atol=0.03)
    tasks = sinusoid_tasks(2, k_shot=4, k_query=3, embedding=fourier_embedding(8, seed=1), seed=0)
    assert tasks[0].X.shape == (4, 9) and tasks[0].X_query.shape == (3, 9)
    with pytest.raises(ValueError, match="'lengthscale' parameter of fourier_embedding"):
        fourier_embedding(8, lengthscale=0.0)


def test_sl_demo_quick_adapts_and_beats_pretraining(tmp_path):
    import io
    import json

    from fastmeta.demo_sl import EVAL_STEPS, run_sl_demo
    buf = io.StringIO()
    res = run_sl_demo(seed=0, quick=True, out=buf, progress=False)
    text = buf.getvalue()
    assert "MAML (this run)" in text and "random Fourier features" in text
    maml, pre = res["maml"], res["pretrained"]
    assert len(maml) == len(pre) == len(EVAL_STEPS)
    # Adaptation works: one step roughly halves the MSE, ten steps go further, and far below pretraining.
    assert maml[1] < 0.7 * maml[0] and maml[3] < maml[1] and maml[3] < 0.5 * pre[3]
    assert res["pretrained_eta"] <= res["settings"]["eta"]
    path = tmp_path / "sl.json"
    again = run_sl_demo(seed=0, quick=True, out=path, progress=False)
    assert again["maml"] == maml and json.loads(path.read_text())["maml"] == maml
