"""One vocabulary for meta-RL and meta-SL: theta, init_params, predict."""
import warnings

import numpy as np
import pytest

import fastmeta
from fastmeta.tasks import linear_gaussian_tasks


@pytest.fixture(scope="module")
def sl():
    tasks = linear_gaussian_tasks(4, n_support=6, in_dim=3, seed=0)
    return fastmeta.MetaSL(tasks, fastmeta.LinearModel(), eta=0.1)


def test_metarl_init_params_is_the_models():
    tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=2, size=4, n_features=8, seed=0)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi))
    theta = meta.init_params()
    assert theta.shape == (8,) and np.array_equal(theta, meta.model.init_params())


def test_metasl_predict_matches_the_linear_model(sl):
    rng = np.random.default_rng(1)
    theta = rng.standard_normal(sl.n_params)
    X = rng.standard_normal((5, sl.in_dim))
    assert np.allclose(sl.predict(theta, X), X @ theta, rtol=1e-14, atol=0)


def test_metasl_predict_matches_the_network_and_the_risk():
    tasks = linear_gaussian_tasks(3, n_support=5, in_dim=2, seed=2)
    net = fastmeta.TwoLayerReLU(in_dim=2, width=16, seed=0)
    meta = fastmeta.MetaSL(tasks, net)
    theta = meta.init_params()
    task = tasks[0]
    h = meta.predict(theta, task.X)
    W = theta.reshape(16, 2)
    assert np.allclose(h, (np.maximum(task.X @ W.T, 0) @ net.b) / 4.0, rtol=1e-12)
    assert np.isclose(meta.risk(theta, task, "support"), np.mean((h - task.y) ** 2) / 2, rtol=1e-12)


def test_metasl_predict_checks_the_input_shape(sl):
    with pytest.raises(ValueError, match="'X' parameter of MetaSL.predict"):
        sl.predict(sl.init_params(), np.ones((4, sl.in_dim + 1)))


def test_metasl_theta_keyword_and_the_deprecated_params_keyword(sl):
    theta = sl.init_params() + 0.1
    expected = sl.objective(theta)
    assert sl.objective(theta=theta) == expected
    with pytest.warns(DeprecationWarning, match="'params' keyword of MetaSL.objective is now called 'theta'"):
        assert sl.objective(params=theta) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl.risk(theta, sl.tasks[0])                        # positional use never warns
    with pytest.raises(TypeError, match="both 'theta' and its old name 'params'"):
        sl.gradient(theta=theta, params=theta)
