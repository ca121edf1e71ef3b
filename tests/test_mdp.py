import numpy as np
import pytest
import scipy.sparse as sp

from fastmeta import TabularMDP


def _valid(S=4, A=2, seed=0):
    rng = np.random.default_rng(seed)
    P = rng.random((S, A, S))
    P /= P.sum(axis=2, keepdims=True)
    return P, rng.normal(size=(S, A)), 0.9, np.full(S, 1.0 / S)


def test_dense_and_sparse_inputs_give_the_same_canonical_kernel():
    P, r, g, init = _valid()
    a = TabularMDP(P, r, g, init)
    b = TabularMDP(sp.coo_matrix(P.reshape(8, 4)), r, g, init)
    assert a.P.shape == (8, 4)
    np.testing.assert_array_equal(a.P.toarray(), b.P.toarray())
    np.testing.assert_array_equal(a.dense_P(), P)
    assert a.P.has_canonical_format


def test_tasks_built_from_one_sparse_matrix_share_it():
    P, r, g, init = _valid()
    Ps = sp.csr_matrix(P.reshape(8, 4))
    assert TabularMDP(Ps, r, g, init).P is TabularMDP(Ps, -r, 0.5, init).P


@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.2, -0.1, float("nan")])
def test_gamma_outside_open_unit_interval(gamma):
    P, r, _, init = _valid()
    with pytest.raises(ValueError, match=r"'gamma' parameter of TabularMDP must be in \(0, 1\)"):
        TabularMDP(P, r, gamma, init)


def test_gamma_wrong_type():
    P, r, _, init = _valid()
    with pytest.raises(TypeError, match="'gamma'"):
        TabularMDP(P, r, "0.9", init)


def test_non_stochastic_row_reports_the_worst_row():
    P, r, g, init = _valid()
    P[2, 1] *= 1.5
    P[0, 0] *= 1.01
    with pytest.raises(ValueError, match=r"worst row is \(s, a\) = \(2, 1\).*2 row\(s\) fail"):
        TabularMDP(P, r, g, init)
    with pytest.raises(ValueError, match=r"worst row is \(s, a\) = \(2, 1\)"):
        TabularMDP(sp.csr_matrix(P.reshape(8, 4)), r, g, init)


@pytest.mark.parametrize("bad", [-0.1, np.nan, np.inf])
def test_negative_nan_inf_transition_entries(bad):
    P, r, g, init = _valid()
    P[1, 0, 2] = bad
    with pytest.raises(ValueError, match="'P' parameter of TabularMDP"):
        TabularMDP(P, r, g, init)
    with pytest.raises(ValueError, match=r"'P' parameter of TabularMDP.*\(s, a, s'\) = \(1, 0, 2\)"):
        TabularMDP(sp.csr_matrix(P.reshape(8, 4)), r, g, init)


def test_nan_reward():
    P, r, g, init = _valid()
    r[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"'r' parameter of TabularMDP must contain only finite values.*\(3, 1\)"):
        TabularMDP(P, r, g, init)


@pytest.mark.parametrize("init", [np.full(4, 0.3), np.array([1.2, -0.2, 0, 0]), np.ones(3) / 3])
def test_init_not_a_distribution(init):
    P, r, g, _ = _valid()
    with pytest.raises(ValueError, match="'init' parameter of TabularMDP"):
        TabularMDP(P, r, g, init)


def test_shape_mismatches():
    P, r, g, init = _valid()
    with pytest.raises(ValueError, match=r"'P' parameter of TabularMDP must have shape \(4, 2, 4\)"):
        TabularMDP(P[:, :, :3], r, g, init)
    with pytest.raises(ValueError, match=r"shape \(S\*A, S\) = \(8, 4\)"):
        TabularMDP(sp.csr_matrix(P.reshape(4, 8)), r, g, init)
    with pytest.raises(ValueError, match="'r' parameter"):
        TabularMDP(P, r.ravel(), g, init)


def test_non_numeric_input():
    P, r, g, init = _valid()
    with pytest.raises(TypeError, match="'r' parameter of TabularMDP must be an array of real numbers"):
        TabularMDP(P, "abc", g, init)


def test_repr_mentions_sizes():
    assert "S=4, A=2" in repr(TabularMDP(*_valid()))
