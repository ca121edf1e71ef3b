import numpy as np
import pytest

from fastmeta.tasks import gridworld_goals, gridworld_kernel, grid_rbf_features, random_mdps


def test_gridworld_kernel_moves_and_slips():
    P = gridworld_kernel(3, slip=0.2).toarray().reshape(9, 4, 9)
    np.testing.assert_allclose(P.sum(axis=2), 1.0)
    # centre cell 4, action "up" (0): 0.8 + 0.05 to cell 1, 0.05 to each other neighbour
    np.testing.assert_allclose(P[4, 0, [1, 7, 3, 5]], [0.85, 0.05, 0.05, 0.05])
    # corner 0, action "left" (2): wall -> stays with 0.8 + 0.05 (left) + 0.05 (up)
    assert P[0, 2, 0] == pytest.approx(0.9)


def test_goal_family_shares_dynamics_and_pays_at_the_goal():
    tasks, phi = gridworld_goals(5, 6, goal_region=(0.5, 1.0, 0.5, 1.0), seed=1)
    assert phi.shape == (36, 4, 32)
    assert all(t.P is tasks[0].P for t in tasks)
    goals = [int(np.flatnonzero(t.r[:, 0])[0]) for t in tasks]
    assert all(g // 6 >= 3 and g % 6 >= 3 for g in goals)
    assert len(set(goals)) == 5
    again, _ = gridworld_goals(5, 6, goal_region=(0.5, 1.0, 0.5, 1.0), seed=1)
    assert [int(np.flatnonzero(t.r[:, 0])[0]) for t in again] == goals


def test_rbf_features_are_block_per_action():
    phi = grid_rbf_features(10, 4, 32)
    assert phi.shape == (100, 4, 32)
    assert np.all(phi[:, 0, 8:] == 0) and np.all(phi[:, 0, :8] > 0)
    np.testing.assert_array_equal(phi[:, 1, 8:16], phi[:, 0, :8])
    with pytest.raises(ValueError, match="multiple of n_actions"):
        grid_rbf_features(10, 4, 30)


def test_random_mdps_have_k_successors_and_rl2_rewards():
    tasks, phi = random_mdps(3, 200, 4, k=4, seed=0)
    P = tasks[0].P
    assert np.diff(P.indptr).max() <= 4
    assert P.nnz > 0.95 * 200 * 4 * 4
    assert tasks[0].P is not tasks[1].P
    r = np.concatenate([t.r.ravel() for t in tasks])
    assert abs(r.mean() - 1.0) < 0.1 and abs(r.std() - 1.0) < 0.1
    assert phi.shape == (200, 4, 32)


def test_onehot_and_random_feature_options():
    tasks, phi = gridworld_goals(2, 3, features="onehot")
    assert phi.shape == (9, 4, 36)
    _, phi = gridworld_goals(2, 3, features="random", n_features=7, seed=3)
    assert phi.shape == (9, 4, 7)
    with pytest.raises(ValueError, match="'start' parameter of gridworld_goals"):
        gridworld_goals(2, 3, start="middle")
