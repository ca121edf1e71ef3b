"""Each compiled kernel of the meta-RL core against the NumPy oracles."""
import numpy as np
import pytest

from fastmeta._kernels import rl as k
from fastmeta.rl import PolicyPattern

from . import naive
from .conftest import random_dense_tasks


def test_softmax_is_stable_for_huge_logits():
    f = np.array([[1e300, 1e300 - 1e290, -1e300], [0.0, 1.0, 2.0], [-800.0, -800.0, -801.0]])
    out = np.empty_like(f)
    k.softmax_policy(f, 1.0, f, 0.0, out)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[1], naive.softmax(f[1:2])[0], rtol=1e-14)
    np.testing.assert_allclose(out[2], naive.softmax(f[2:3])[0], rtol=1e-14)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-15)


def test_softmax_with_action_values_matches_oracle():
    rng = np.random.default_rng(0)
    f, Q = rng.normal(size=(5, 4)) * 30, rng.normal(size=(5, 4))
    out = np.empty_like(f)
    k.softmax_policy(f, 1 / 0.3, Q, 2.5, out)
    np.testing.assert_allclose(out, naive.softmax(f / 0.3 + 2.5 * Q), rtol=1e-12)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_policy_matrix_matches_oracle(index_dtype):
    (task,), ((P, r, g, init),) = random_dense_tasks(S=7, A=3, gammas=(0.9,), sparse_rows=True)
    Pc = task.P.copy()
    Pc.indices = Pc.indices.astype(index_dtype)
    Pc.indptr = Pc.indptr.astype(index_dtype)
    pi = naive.softmax(np.random.default_rng(2).normal(size=(7, 3)))
    pattern = PolicyPattern.build(Pc, 7, 3, "dense", 1e-10, None)
    M = pattern.matrix(Pc, pi, 0.9)
    np.testing.assert_allclose(M.toarray(), np.eye(7) - 0.9 * naive.policy_transition(P, pi), atol=1e-15)
    assert np.all(np.diff(M.indices[M.indptr[0]:M.indptr[1]]) > 0)
    assert all(s in M.indices[M.indptr[s]:M.indptr[s + 1]] for s in range(7))


def test_bellman_q_and_transpose_apply_match_oracle():
    (task,), ((P, r, g, init),) = random_dense_tasks(S=6, A=2, gammas=(0.7,))
    V = np.random.default_rng(3).normal(size=6)
    Q = np.empty((6, 2))
    k.bellman_q(task.P.indptr, task.P.indices, task.P.data, r, V, 0.7, Q)
    np.testing.assert_allclose(Q, 0.3 * r + 0.7 * np.einsum("sat,t->sa", P, V), rtol=1e-13)
    w = np.random.default_rng(4).normal(size=(6, 2))
    out = np.empty(6)
    k.kernel_transpose_apply(task.P.indptr, task.P.indices, task.P.data, w, out)
    np.testing.assert_allclose(out, np.einsum("sa,sat->t", w, P), rtol=1e-13)


def test_linear_energy_and_vjp_match_oracle():
    rng = np.random.default_rng(5)
    phi, theta, g = rng.normal(size=(300, 3, 5)), rng.normal(size=5), rng.normal(size=(300, 3))
    f = np.empty((300, 3))
    k.linear_energy(phi, theta, f)
    np.testing.assert_allclose(f, phi @ theta, rtol=1e-12)
    out = np.empty(5)
    k.linear_energy_vjp(phi, g, out)
    np.testing.assert_allclose(out, np.einsum("sa,sak->k", g, phi), rtol=1e-12)


def test_small_kernels_match_oracle():
    rng = np.random.default_rng(6)
    pi = naive.softmax(rng.normal(size=(9, 4)))
    x, nu, Q, V = rng.normal(size=(9, 4)), rng.normal(size=9), rng.normal(size=(9, 4)), rng.normal(size=9)
    out_s, out_sa = np.empty(9), np.empty((9, 4))
    k.policy_average(pi, x, out_s)
    np.testing.assert_allclose(out_s, (pi * x).sum(axis=1), rtol=1e-13)
    k.scale_rows(nu, pi, out_sa)
    np.testing.assert_allclose(out_sa, nu[:, None] * pi, rtol=1e-15)
    k.centred_advantage(Q, pi, out_sa)
    np.testing.assert_allclose(out_sa, Q - (pi * Q).sum(axis=1)[:, None], rtol=1e-13, atol=1e-15)
    saturated = np.zeros((9, 4))
    saturated[:, 2] = 1.0
    k.centred_advantage(Q, saturated, out_sa)
    assert np.all(out_sa[:, 2] == 0.0)           # exactly zero under a one-hot policy
    assert k.chunked_dot(nu, V) == pytest.approx(nu @ V, rel=1e-13)
    assert k.chunked_dot(np.ones(1), np.full(1, 3.0)) == 3.0
