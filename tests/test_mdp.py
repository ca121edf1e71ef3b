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


def test_tasks_built_from_equal_kernels_share_one_read_only_copy():
    P, r, g, init = _valid()
    Ps = sp.csr_matrix(P.reshape(8, 4))
    a, b = TabularMDP(Ps, r, g, init), TabularMDP(Ps, -r, 0.5, init)
    c = TabularMDP(P.copy(), r, g, init)  # another object, equal content
    assert a.P is b.P is c.P
    assert a.kernel_fingerprint == c.kernel_fingerprint
    assert a.P is not Ps
    for arr in (a.P.data, a.P.indices, a.P.indptr, a.r, a.init):
        assert not arr.flags.writeable
    other = P.copy()
    other[0, 0] = other[0, 0, ::-1]
    d = TabularMDP(other, r, g, init)
    assert d.kernel_fingerprint != a.kernel_fingerprint and d.P is not a.P


def test_dense_kernel_in_the_sparse_layout_is_accepted():
    P, r, g, init = _valid()
    a, b = TabularMDP(P, r, g, init), TabularMDP(P.reshape(8, 4), r, g, init)
    assert a.P is b.P


def test_reusing_a_sparse_object_with_another_shape_is_refused():
    # An id()-keyed cache used to hand back the first canonical kernel here, unchecked,
    # and value_and_grad then crashed the process.
    P, r, g, init = _valid(S=4, A=2)
    Ps = sp.csr_matrix(P.reshape(8, 4))
    TabularMDP(Ps, r, g, init)
    with pytest.raises(ValueError, match=r"shape \(S\*A, S\) = \(8, 2\)"):
        TabularMDP(Ps, np.zeros((2, 4)), g, np.full(2, 0.5))


@pytest.mark.parametrize("change", ["nan", "scale", "csc"])
def test_a_kernel_changed_in_place_is_validated_again_and_built_tasks_keep_theirs(change):
    P, r, g, init = _valid()
    Ps = sp.csr_matrix(P.reshape(8, 4)) if change != "csc" else sp.csc_matrix(P.reshape(8, 4))
    task = TabularMDP(Ps, r, g, init)
    before = task.P.toarray().copy()
    if change == "nan":
        Ps.data[3] = np.nan
    elif change == "scale":
        Ps.data *= 3.0
    else:
        Ps.data[:] = np.random.default_rng(5).random(Ps.data.size)
    with pytest.raises(ValueError, match="'P' parameter of TabularMDP"):
        TabularMDP(Ps, r, g, init)
    np.testing.assert_array_equal(task.P.toarray(), before)


def test_out_of_range_or_inconsistent_sparse_indices_are_refused():
    P, r, g, init = _valid()
    Ps = sp.csr_matrix(P.reshape(8, 4))
    bad = sp.csr_matrix((Ps.data.copy(), Ps.indices.copy(), Ps.indptr.copy()), shape=(8, 4))
    bad.indices[5] = 40
    with pytest.raises(ValueError, match="'P' parameter of TabularMDP must be a well-formed sparse matrix"):
        TabularMDP(bad, r, g, init)
    bad = sp.csr_array((Ps.data.copy(), Ps.indices.copy(), Ps.indptr.copy()), shape=(8, 4))
    bad.indices[0] = -3
    with pytest.raises(ValueError, match="'P' parameter of TabularMDP must be a well-formed sparse matrix"):
        TabularMDP(bad, r, g, init)
    bad = sp.csr_matrix((Ps.data.copy(), Ps.indices.copy(), Ps.indptr.copy()), shape=(8, 4))
    bad.indptr[3] = 1000
    with pytest.raises(ValueError, match="'P' parameter of TabularMDP must be a well-formed sparse matrix"):
        TabularMDP(bad, r, g, init)


def test_float32_rounding_is_renormalised_and_larger_errors_refused():
    P, r, g, init = _valid()
    P32 = P.astype(np.float32)
    P32[1, 1] *= np.float32(1 + 3e-8)
    init32 = init.astype(np.float32) * np.float32(1 + 3e-8)
    task = TabularMDP(P32, r, g, init32)
    np.testing.assert_allclose(task.P.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert abs(task.init.sum() - 1.0) < 1e-15
    np.testing.assert_allclose(task.dense_P(), P, rtol=1e-6)
    P[1, 1] *= 1 + 1e-5
    with pytest.raises(ValueError, match=r"worst row is \(s, a\) = \(1, 1\)"):
        TabularMDP(P, r, g, init)


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
    with pytest.raises(ValueError, match=r"'P' parameter of TabularMDP must have shape "
                                         r"\(S, A, S\) = \(4, 2, 4\) or \(S\*A, S\) = \(8, 4\)"):
        TabularMDP(P[:, :, :3], r, g, init)
    with pytest.raises(ValueError, match=r"shape \(S\*A, S\) = \(8, 4\)"):
        TabularMDP(sp.csr_matrix(P.reshape(4, 8)), r, g, init)
    with pytest.raises(ValueError, match=r"'r' parameter of TabularMDP must have shape \(S, A\)"):
        TabularMDP(P, r.ravel(), g, init)
    with pytest.raises(ValueError, match=r"'init' parameter of TabularMDP must have shape \(S,\) = \(4,\)"):
        TabularMDP(P, r, g, init[:3])


def test_non_numeric_input():
    P, r, g, init = _valid()
    with pytest.raises(TypeError, match="'r' parameter of TabularMDP must be an array of real numbers"):
        TabularMDP(P, "abc", g, init)


def test_repr_mentions_sizes():
    assert "S=4, A=2" in repr(TabularMDP(*_valid()))


def test_the_callers_arrays_stay_writable_and_cannot_change_the_task():
    P, r, g, init = _valid()
    task = TabularMDP(P, r, g, init)
    r0 = r[0, 0]
    r[0, 0] += 1.0
    init[0] = 5.0
    P[0, 0, 0] = 7.0
    assert task.r[0, 0] == r0 and task.init[0] == 0.25 and task.P[0, 0] != 7.0
