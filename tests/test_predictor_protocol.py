"""The predictor protocol of meta-SL: the built-in models implement it, a user's own NumPy
predictor plugs in (against tests/naive.py and central differences), the compiled fast
paths agree with MetaSL's protocol loop, and non-predictors are refused clearly."""

import numpy as np
import pytest

from fastmeta import LinearModel, MetaSL, SLTask, TwoLayerReLU
from fastmeta.models import MLP, Predictor

from . import naive


class RandomFeatures:
    """A user's predictor in plain NumPy: h(x) = phi(x)^T theta, phi random Fourier features.

    No ``prepare`` and no compiled fast path: MetaSL calls predict / vjp / hvp on raw inputs.
    """

    def __init__(self, in_dim, n_features=30, seed=0):
        rng = np.random.default_rng(seed)
        self.in_dim, self.n_params = in_dim, n_features
        self.omega = rng.normal(size=(in_dim, n_features))
        self.c = rng.uniform(0, 2 * np.pi, n_features)

    def _phi(self, X):
        return np.sqrt(2.0 / self.n_params) * np.cos(X @ self.omega + self.c)

    def predict(self, theta, X):
        return self._phi(X) @ theta

    def vjp(self, theta, X, g):
        return self._phi(X).T @ g

    def hvp(self, theta, X, v, d1, d2):
        F = self._phi(X)
        return F.T @ (d2 * (F @ v))

    def init_params(self):
        return np.zeros(self.n_params)

    def project(self, theta):
        return theta

    def config(self):
        return f"RandomFeatures(in_dim={self.in_dim}, n_features={self.n_params})"


def _tasks(p, loss="squared", n=5, seed=0, query=True):
    rng = np.random.default_rng(seed)
    tasks, raw = [], []
    for i in range(n):
        ns, nq = 2 + i, 3 + (i % 3)
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


def _plain(model, dim=None):
    """The same model seen only through the required protocol members (no fast path, no prepare)."""
    class Plain:
        n_params = model.n_params
        in_dim = model.in_dim if dim is None else dim
        predict, vjp, hvp = model.predict, model.vjp, model.hvp
        init_params, project, config = model.init_params, model.project, model.config
    return Plain()


def test_builtin_models_follow_the_protocol():
    for model in (LinearModel(in_dim=3), LinearModel("rff", in_dim=2), TwoLayerReLU(3, 8), MLP(3, (4, 4)),
                  RandomFeatures(3)):
        assert isinstance(model, Predictor)
        assert isinstance(model.n_params, int) and model.n_params >= 1
        assert model.init_params().shape == (model.n_params,)


@pytest.mark.parametrize("kind", ["squared", "logistic"])
@pytest.mark.parametrize("query", [True, False])
def test_user_random_features_predictor_matches_naive_and_finite_differences(kind, query):
    model = RandomFeatures(3, n_features=20, seed=1)
    tasks, raw = _tasks(3, kind, seed=2, query=query)
    meta = MetaSL(tasks, model, loss=kind, eta=0.4)
    theta = np.random.default_rng(3).normal(size=model.n_params)
    feats = [(naive.random_features(Xs, model.omega, model.c), ys, naive.random_features(Xq, model.omega, model.c), yq)
             for Xs, ys, Xq, yq in raw]
    value, grad = meta.value_and_grad(theta)
    np.testing.assert_allclose(value, naive.sl_meta_objective(theta, feats, naive.linear_predict,
                                                              naive.linear_jacobian, kind, 0.4), rtol=1e-12)
    np.testing.assert_allclose(grad, naive.sl_meta_gradient(theta, feats, naive.linear_predict,
                                                            naive.linear_jacobian, kind, 0.4), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grad, naive.central_difference(meta.objective, theta), rtol=1e-6, atol=1e-8)
    # single-task tools go through the same protocol
    H = naive.risk_hessian(theta, feats[0][0], feats[0][1], naive.linear_predict, naive.linear_jacobian, kind)
    v = np.random.default_rng(4).normal(size=model.n_params)
    np.testing.assert_allclose(meta.risk_hvp(theta, tasks[0], v), H @ v, rtol=1e-10, atol=1e-13)
    res = meta.fit(steps=5, lr=0.1, progress=False)
    assert res.objective[-1] < res.objective[0]


@pytest.mark.parametrize("make", [lambda: LinearModel("affine", in_dim=3), lambda: TwoLayerReLU(3, 16, seed=1),
                                  lambda: MLP(3, (6, 5), seed=1)])
@pytest.mark.parametrize("first_order", [False, True])
def test_compiled_fast_paths_agree_with_the_protocol_loop(make, first_order):
    model = make()
    tasks, _ = _tasks(3, seed=5)
    theta = model.init_params() + 0.2 * np.random.default_rng(6).normal(size=model.n_params)
    fast = MetaSL(tasks, model, eta=0.3, first_order=first_order)
    if isinstance(model, LinearModel):   # the plain twin has no prepare: give it the features
        slow = MetaSL([SLTask(model.transform(t.X), t.y, model.transform(t.X_query), t.y_query) for t in tasks],
                      _plain(model, dim=model.n_params), eta=0.3, first_order=first_order)
    else:
        slow = MetaSL(tasks, _plain(model), eta=0.3, first_order=first_order)
    v0, g0 = slow.value_and_grad(theta)
    v1, g1 = fast.value_and_grad(theta)
    np.testing.assert_allclose(v1, v0, rtol=1e-13)
    np.testing.assert_allclose(g1, g0, rtol=1e-11, atol=1e-14)
    assert fast.objective(theta) == v1


def test_linear_model_binds_to_the_tasks_dimension():
    tasks, _ = _tasks(4, seed=7)
    free = LinearModel("polynomial", degree=2)
    assert free.in_dim is None
    with pytest.raises(ValueError, match="needs the input dimension"):
        free.n_params
    meta = MetaSL(tasks, free)
    assert meta.model.in_dim == 4 and free.in_dim is None           # the user's object is untouched
    assert meta.n_params == meta.model.n_params == 15
    assert free.bind(4).config() == free.config()
    assert LinearModel(in_dim=4).bind(4).in_dim == 4
    with pytest.raises(ValueError, match="must match the model's input dimension 4"):
        LinearModel(in_dim=4).bind(3)
    with pytest.raises(ValueError, match="must take inputs of the tasks' dimension 4"):
        MetaSL(tasks, LinearModel(in_dim=3))


def test_non_predictors_are_refused_with_the_missing_members():
    tasks, _ = _tasks(3, seed=8)

    class Half:
        in_dim, n_params = 3, 3

        def predict(self, theta, X):
            return X @ theta

    with pytest.raises(TypeError, match=r"predictor protocol.*Half, which lacks vjp, hvp, init_params, project, config"):
        MetaSL(tasks, Half())
    with pytest.raises(TypeError, match="predictor protocol"):
        MetaSL(tasks, object())
