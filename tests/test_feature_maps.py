"""Feature maps computed on the fly against the stored (S, A, d) arrays."""
from __future__ import annotations

import numpy as np
import pytest

import fastmeta
from fastmeta.tasks import GridRBFFeatureMap, OneHotFeatureMap


@pytest.mark.parametrize("size,d", [(1, 4), (5, 8), (9, 32), (12, 36)])
def test_grid_rbf_map_matches_the_array(size, d):
    fmap = GridRBFFeatureMap(size, 4, d)
    phi = fastmeta.tasks.grid_rbf_features(size, 4, d)
    rng = np.random.default_rng(size)
    theta = rng.normal(size=d)
    g = rng.normal(size=(size * size, 4))
    np.testing.assert_allclose(fmap.apply(theta), np.einsum("sad,d->sa", phi, theta), rtol=0, atol=1e-13)
    np.testing.assert_allclose(fmap.apply_transpose(g), np.einsum("sad,sa->d", phi, g), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(fmap.dense(), phi)
    assert (fmap.n_states, fmap.n_actions, fmap.n_features) == phi.shape


def test_one_hot_map_matches_the_array():
    fmap = OneHotFeatureMap(6, 3)
    phi = fastmeta.tasks.one_hot_features(6, 3)
    theta = np.arange(18.0)
    g = np.random.default_rng(0).normal(size=(6, 3))
    np.testing.assert_array_equal(fmap.apply(theta), np.einsum("sad,d->sa", phi, theta))
    np.testing.assert_array_equal(fmap.apply_transpose(g), np.einsum("sad,sa->d", phi, g))
    np.testing.assert_array_equal(fmap.dense(), phi)


@pytest.mark.parametrize("features", ["rbf", "onehot"])
def test_meta_gradient_is_the_same_with_a_feature_map(features):
    tasks, phi = fastmeta.tasks.gridworld_goals(3, 6, features=features, n_features=16, seed=1)
    tasks_m, fmap = fastmeta.tasks.gridworld_goals(3, 6, features=features, n_features=16, seed=1,
                                                   feature_map=True)
    assert not isinstance(fmap, np.ndarray)
    np.testing.assert_array_equal(fmap.dense(), phi)
    a = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=1.0, eta=1.0)
    b = fastmeta.MetaRL(tasks_m, fastmeta.LinearEnergy(fmap), tau=1.0, eta=1.0)
    theta = 0.5 * np.random.default_rng(2).normal(size=a.model.n_params)
    La, ga = a.value_and_grad(theta)
    Lb, gb = b.value_and_grad(theta)
    assert Lb == pytest.approx(La, rel=1e-12)
    np.testing.assert_allclose(gb, ga, rtol=1e-10, atol=1e-13)
    assert fastmeta.LinearEnergy(fmap).tag() != fastmeta.LinearEnergy(GridRBFFeatureMap(7, 4, 16)).tag()


def test_feature_map_bad_inputs():
    with pytest.raises(ValueError, match="multiple of n_actions"):
        GridRBFFeatureMap(5, 4, 10)
    with pytest.raises(ValueError, match="'feature_map'.*random"):
        fastmeta.tasks.gridworld_goals(2, 4, features="random", feature_map=True)
    with pytest.raises(TypeError, match="'feature_map'"):
        fastmeta.tasks.gridworld_goals(2, 4, feature_map="yes")
    with pytest.raises(ValueError, match="'size'"):
        GridRBFFeatureMap(0, 4, 8)
