"""Tests for fastmeta.linalg (dense oracle: numpy.linalg.solve)."""
from __future__ import annotations

import re

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from fastmeta import linalg
from fastmeta.linalg import SolverError, analyse, choose_method, factorize


def random_M(n, gamma, seed=0, k=3, idx=np.int32):
    """M = I - gamma P with a random sparse row-stochastic P (diagonal stored)."""
    rng = np.random.default_rng(seed)
    kk = min(k, n)
    rows = np.repeat(np.arange(n), kk)
    cols = np.concatenate([rng.choice(n, size=kk, replace=False) for _ in range(n)])
    vals = rng.dirichlet(np.ones(kk), size=n).ravel()
    P = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    M = (sp.identity(n, format="csr") - gamma * P).tocsr()
    M = M + sp.csr_matrix((np.zeros(n), (np.arange(n), np.arange(n))), shape=(n, n))  # keep diag
    M = sp.csr_matrix(M)
    M.sum_duplicates()
    M.sort_indices()
    M.indices = M.indices.astype(idx)
    M.indptr = M.indptr.astype(idx)
    return M


def grid_M(N, gamma=0.99, slip=0.1, seed=0, drift=False):
    """Gridworld chain (4 moves, slip) under a random or drifting policy."""
    S = N * N
    x, y = np.divmod(np.arange(S), N)
    moves = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    rng = np.random.default_rng(seed)
    logits = np.tile([2.0, 0, 0, 2], (S, 1)) if drift else 3 * rng.normal(size=(S, 4))
    pi = np.exp(logits - logits.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    rows, cols, vals = [], [], []
    for a in range(4):
        for b, (ex, ey) in enumerate(moves):
            p = (1 - slip) * (a == b) + slip / 4
            d = np.clip(x + ex, 0, N - 1) * N + np.clip(y + ey, 0, N - 1)
            rows.append(np.arange(S)); cols.append(d); vals.append(pi[:, a] * p)
    P = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(S, S))
    P.sum_duplicates()
    M = (sp.identity(S, format="csr") - gamma * P).tocsr()
    M.sum_duplicates(); M.sort_indices()
    return M


CASES = [(1, 0.5), (2, 0.9), (7, 0.99), (40, 0.9), (150, 0.99), (600, 0.99)]


@pytest.mark.parametrize("method", ["dense", "splu", "krylov"])
@pytest.mark.parametrize("idx", [np.int32, np.int64])
@pytest.mark.parametrize("n,gamma", CASES)
def test_against_dense_oracle(method, idx, n, gamma):
    M = random_M(n, gamma, seed=n, idx=idx)
    A = M.toarray()
    rng = np.random.default_rng(1)
    b = rng.normal(size=n)
    f = factorize(M, method, tol=1e-12)
    assert f.method == method
    x, xt = f.solve(b), f.solve_transposed(b)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(xt, np.linalg.solve(A.T, b), rtol=1e-9, atol=1e-9)
    assert x is not b and xt is not b


@pytest.mark.parametrize("prec,drift", [("amg", False), ("amg", True), ("sgs", False),
                                        ("sgs", True)])
def test_krylov_grid_preconditioners(prec, drift):
    M = grid_M(24, drift=drift)  # 576 states: AMG has >= 2 levels
    A = M.toarray()
    b = np.random.default_rng(2).normal(size=M.shape[0])
    f = factorize(M, "krylov", tol=1e-10, preconditioner=prec)
    if prec == "amg":
        assert len(f._hier.levels) >= 2
    x, xt = f.solve(b), f.solve_transposed(b)
    assert np.linalg.norm(b - A @ x) <= 1e-10 * np.linalg.norm(b)
    assert np.linalg.norm(b - A.T @ xt) <= 1e-10 * np.linalg.norm(b)
    xd = np.linalg.solve(A, b)
    np.testing.assert_allclose(x, xd, rtol=0, atol=1e-7 * np.abs(xd).max())
    assert f.iterations > 0 and f.iterations_transposed > 0
    assert f.residual <= 1e-10 and f.residual_transposed <= 1e-10


def test_krylov_unpreconditioned():
    M = grid_M(12)
    b = np.random.default_rng(7).normal(size=M.shape[0])
    f = factorize(M, "krylov", tol=1e-10, preconditioner="none")
    A = M.toarray()
    np.testing.assert_allclose(f.solve(b), np.linalg.solve(A, b), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(f.solve_transposed(b), np.linalg.solve(A.T, b), rtol=1e-7, atol=1e-8)
    assert f.iterations > 1


def test_plan_reuse_and_mismatch():
    M = grid_M(20)
    plan = analyse(M)
    b = np.ones(M.shape[0])
    for seed in range(3):
        M2 = grid_M(20, seed=seed)
        for method in ("dense", "splu", "krylov"):
            f = factorize(M2, method, plan=plan)
            np.testing.assert_allclose(M2 @ f.solve(b), b, atol=1e-8)
            np.testing.assert_allclose(M2.T @ f.solve_transposed(b), b, atol=1e-8)
    with pytest.raises(ValueError, match="pattern"):
        factorize(random_M(400, 0.9), "krylov", plan=plan)


def test_warm_start():
    M = grid_M(30, drift=True)
    b = np.random.default_rng(3).normal(size=M.shape[0])
    f = factorize(M, "krylov", tol=1e-10, preconditioner="sgs")
    x = f.solve(b)
    cold = f.iterations
    xt = f.solve_transposed(b)
    coldt = f.iterations_transposed
    x0 = x + 1e-6 * np.random.default_rng(4).normal(size=x.shape)
    x0_given = x0.copy()
    x2 = f.solve(b, x0=x0)
    assert f.iterations < cold
    np.testing.assert_allclose(x2, x, rtol=1e-7, atol=1e-9)
    f.solve_transposed(b, x0=xt)  # exact warm start: zero iterations
    assert f.iterations_transposed == 0 < coldt
    # the warm start is read, never written
    assert np.array_equal(x0, x0_given)


def test_maxiter_raises():
    M = grid_M(30, drift=True)
    b = np.random.default_rng(6).normal(size=M.shape[0])
    f = factorize(M, "krylov", tol=1e-12, maxiter=3, preconditioner="sgs")
    with pytest.raises(SolverError) as ei:
        f.solve(b)
    msg = str(ei.value)
    for word in ("krylov", "3 iterations", "relative residual", "tol 1.0e-12", "maxiter", "splu"):
        assert word in msg, word
    with pytest.raises(SolverError, match="M\\^T"):
        f.solve_transposed(b)
    assert isinstance(ei.value, RuntimeError)


@pytest.mark.parametrize("method", ["dense", "splu", "krylov"])
@pytest.mark.parametrize("n", [1, 50])
def test_zero_rhs(method, n):
    M = random_M(n, 0.99)
    f = factorize(M, method)
    for x in (f.solve(np.zeros(n)), f.solve_transposed(np.zeros(n))):
        assert x.shape == (n,) and not np.any(x)
    if method == "krylov":
        assert f.iterations == 0


def test_choose_method(monkeypatch):
    monkeypatch.setattr(linalg, "PARDISO_MIN_N", 5000)
    for have_pardiso, lu in ((False, "splu"), (True, "pardiso")):
        monkeypatch.setattr(linalg._pardiso, "available", lambda: have_pardiso)
        assert choose_method(grid_M(60)) == "splu"  # 3600 states < PARDISO_MIN_N
        assert choose_method(random_M(100, 0.9)) == "dense"
        assert choose_method(grid_M(100)) == lu  # 10^4-state grid
        assert choose_method(random_M(10_000, 0.9, k=8)) == "krylov"  # expander
        M = random_M(10_000, 0.9, k=8)
        assert choose_method((M.indptr, M.indices, M.shape[0])) == "krylov"
        plan = analyse(grid_M(100))
        assert plan.method == lu and choose_method(plan) == lu
        assert factorize(random_M(100, 0.9)).method == "dense"
    assert set(linalg.METHODS) == {"auto", "dense", "splu", "pardiso", "krylov"}


def test_choose_method_large_is_krylov(monkeypatch):
    monkeypatch.setattr(linalg._pardiso, "available", lambda: False)
    M = grid_M(40)  # 1600 states, grid-like
    assert choose_method(M) == "splu"
    monkeypatch.setattr(linalg, "SPLU_MAX_N", 1000)
    assert choose_method(M) == "krylov"
    assert linalg.SPLU_MAX_N == 1000 and choose_method(analyse(M)) == "krylov"


def test_bad_inputs():
    M = random_M(5, 0.9)
    with pytest.raises(ValueError):
        factorize(M, "lu")
    f = factorize(M, "krylov")
    with pytest.raises(ValueError):
        f.solve(np.ones(4))
    Mbad = sp.csr_matrix(np.array([[0.0, -0.5], [-0.5, 1.0]]))
    Mbad.eliminate_zeros()
    with pytest.raises(ValueError, match="diagonal"):
        factorize(Mbad, "krylov")


def test_thread_invariance():
    """Bit-identical results for 1 and 2 Numba threads.

    12 100 states: the fine AMG levels use the parallel kernels and the block
    Gauss-Seidel smoother (several row blocks); one and four right-hand sides.
    """
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    M = grid_M(110, drift=True)
    n = M.shape[0]
    rng = np.random.default_rng(5)
    b = rng.normal(size=n)
    B = rng.normal(size=(n, 4))
    old = numba.get_num_threads()
    out = []
    try:
        for t in (1, 2):
            numba.set_num_threads(t)
            for prec in ("amg", "sgs"):
                f = factorize(M, "krylov", tol=1e-10, preconditioner=prec)
                if prec == "amg":
                    assert f._hier.levels[0].nblk > 1 and f._hier.levels[0].par == "parallel"
                    res = (f.solve(b), f.solve_transposed(b), f.solve(B), f.solve_transposed(B))
                else:
                    res = (f.solve(b), f.solve_transposed(b))
                out.append((res, f.iterations, f.iterations_transposed))
    finally:
        numba.set_num_threads(old)
    for a, c in zip(out[:2], out[2:]):
        assert all(np.array_equal(u, v) for u, v in zip(a[0], c[0]))
        assert a[1:] == c[1:]


@pytest.mark.parametrize("method", ["dense", "splu", "krylov"])
@pytest.mark.parametrize("trans", [False, True])
def test_multi_rhs_matches_columns(method, trans):
    """solve(B) with B (n, k) equals column-by-column solves, for both orientations."""
    M = grid_M(24, drift=True)  # 576 states
    n = M.shape[0]
    rng = np.random.default_rng(8)
    B = rng.normal(size=(n, 6))  # > KRYLOV_BLOCK: two lockstep groups
    B[:, 2] = 0.0  # a zero column
    B[:, 4] *= 1e-3  # a badly scaled column
    f = factorize(M, method, tol=1e-12)
    solve = f.solve_transposed if trans else f.solve
    X = solve(B)
    assert X.shape == B.shape and X is not B
    cols = np.column_stack([solve(np.ascontiguousarray(B[:, j])) for j in range(B.shape[1])])
    A = M.toarray().T if trans else M.toarray()
    ref = np.linalg.solve(A, B)
    if method == "krylov":
        np.testing.assert_allclose(X, cols, rtol=0, atol=1e-9 * np.abs(cols).max())
        assert not np.any(X[:, 2])
        res = np.linalg.norm(B - A @ X, axis=0) / np.maximum(np.linalg.norm(B, axis=0), 1e-300)
        assert np.all(res <= 1e-12)
        assert (f.iterations_transposed if trans else f.iterations) > 0
    else:
        np.testing.assert_allclose(X, cols, rtol=0, atol=1e-12 * np.abs(cols).max())
    np.testing.assert_allclose(X, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    # single column as (n, 1) keeps its shape; non-contiguous input is accepted
    assert solve(B[:, :1]).shape == (n, 1)
    np.testing.assert_allclose(solve(B[:, ::2]), X[:, ::2], rtol=0, atol=1e-9 * np.abs(X).max())


def test_multi_rhs_krylov_warm_start_and_errors():
    M = grid_M(30, drift=True)
    n = M.shape[0]
    B = np.random.default_rng(9).normal(size=(n, 3))
    f = factorize(M, "krylov", tol=1e-10)
    X = f.solve(B)
    cold = f.iterations
    X0 = X.copy()
    X2 = f.solve(B, x0=X0)
    assert f.iterations == 0 and np.array_equal(X0, X) and np.array_equal(X2, X)
    XT = f.solve_transposed(B, x0=X)  # a poor but valid warm start
    np.testing.assert_allclose(M.T @ XT, B, atol=1e-8 * np.abs(B).max())
    assert cold > 0
    with pytest.raises(ValueError, match="x0"):
        f.solve(B, x0=X[:, :2])
    with pytest.raises(ValueError):
        f.solve(np.ones((n + 1, 2)))
    with pytest.raises(ValueError):
        f.solve(np.ones((n, 2, 1)))
    Bbad = B.copy()
    Bbad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        f.solve(Bbad)
    g = factorize(M, "krylov", tol=1e-12, maxiter=2)
    with pytest.raises(SolverError, match="2 iterations"):
        g.solve(B)
    with pytest.raises(SolverError, match="M\\^T"):
        g.solve_transposed(B)


def test_multi_rhs_zero_block():
    M = random_M(50, 0.9)
    for method in ("dense", "splu", "krylov"):
        f = factorize(M, method)
        X = f.solve(np.zeros((50, 3)), x0=np.ones((50, 3)) if method == "krylov" else None)
        assert X.shape == (50, 3) and not np.any(X)


def test_auto_preconditioner_follows_the_structure():
    import fastmeta
    from fastmeta.rl import PolicyPattern

    grid, _ = fastmeta.tasks.gridworld_goals(1, 30, seed=0)
    rand, _ = fastmeta.tasks.random_mdps(1, 900, 4, k=4, seed=0)
    for task, expected in ((grid[0], "amg"), (rand[0], "sgs")):
        pattern = PolicyPattern.build(task.P, task.n_states, 4, "krylov", 1e-10, None)
        assert pattern.plan.preconditioner == expected
        M = pattern.matrix(task.P, np.full((task.n_states, 4), 0.25), task.gamma)
        fac = linalg.factorize(M, "krylov", plan=pattern.plan)
        assert fac.preconditioner == expected
        b = np.random.default_rng(0).random(task.n_states)
        assert np.linalg.norm(M @ fac.solve(b) - b) <= 1e-9 * np.linalg.norm(b)


def test_a_bad_warm_start_is_dropped():
    rng = np.random.default_rng(3)
    n = 400
    P = sp.random(n, n, density=0.02, random_state=4, format="csr") + sp.eye(n)
    P = sp.diags(1.0 / np.asarray(P.sum(axis=1)).ravel()) @ P
    M = (sp.eye(n) - 0.95 * P).tocsr()
    M.sort_indices()
    b = rng.random(n)
    fac = factorize(M, "krylov", plan=analyse(M))
    x_cold = fac.solve(b)
    its_cold = fac.iterations
    x_bad = fac.solve(b, x0=1e6 * rng.standard_normal(n))
    assert fac.iterations <= its_cold
    assert np.linalg.norm(M @ x_bad - b) <= 1e-9 * np.linalg.norm(b)
    fac.solve(b, x0=x_cold)
    assert fac.iterations <= 1


@pytest.mark.parametrize("trans", [False, True])
def test_the_best_of_several_starts_is_taken_column_by_column(trans):
    M = grid_M(40, drift=True)
    n = M.shape[0]
    rng = np.random.default_rng(17)
    B = rng.normal(size=(n, 3))
    fac = factorize(M, "krylov", rtol=1e-11)
    solve = fac.solve_transposed if trans else fac.solve
    its = lambda: fac.iterations_transposed if trans else fac.iterations  # noqa: E731
    X = solve(B)
    near = X * (1 + 1e-6 * rng.standard_normal(X.shape))  # a good start for every column
    far = 1e3 * rng.standard_normal(X.shape)              # worse than none
    solve(B, x0=near)
    its_near = its()
    # a good start for column 0 only, in the second candidate: each column takes its best
    mixed = far.copy()
    mixed[:, 0] = near[:, 0]
    X1 = solve(B, x0=[far, mixed])
    np.testing.assert_allclose(X1, X, rtol=1e-8, atol=1e-8 * np.abs(X).max())
    for order in ([far, near], [near, far], [far, far, near]):
        X2 = solve(B, x0=order)
        assert its() == its_near
        np.testing.assert_array_equal(X2, solve(B, x0=near))
    # one column: candidates of shape (n,)
    x = solve(B[:, 1], x0=[far[:, 1], near[:, 1]])
    np.testing.assert_array_equal(x, solve(B[:, 1], x0=near[:, 1]))
    with pytest.raises(ValueError, match=r"x0 must have the shape of b \(1600, 3\), got \(1600, 2\)"):
        solve(B, x0=[near, near[:, :2]])


# --------------------------------------------------------------------------
# SciPy-aligned solver API: rtol/atol, callback, LinearOperator, iterations
# --------------------------------------------------------------------------
@pytest.mark.parametrize("rtol,atol", [(1e-6, 0.0), (1e-11, 0.0), (0.0, 1e-7), (1e-3, 1e-9)])
def test_krylov_rtol_atol_honoured(rtol, atol):
    """The true residual meets max(rtol ||b||, atol), and a looser tolerance stops earlier."""
    M = grid_M(30, drift=True)
    A = M.toarray()
    b = np.random.default_rng(11).normal(size=(M.shape[0], 2))
    f = factorize(M, "krylov", rtol=rtol, atol=atol)
    X, XT = f.solve(b), f.solve_transposed(b)
    bound = np.maximum(rtol * np.linalg.norm(b, axis=0), atol)
    assert np.all(np.linalg.norm(b - A @ X, axis=0) <= bound)
    assert np.all(np.linalg.norm(b - A.T @ XT, axis=0) <= bound)
    tight = factorize(M, "krylov", rtol=1e-12)
    tight.solve(b)
    assert 0 < f.iterations <= tight.iterations
    if max(rtol, atol) >= 1e-7:
        assert f.iterations < tight.iterations


def test_tol_is_the_former_name_of_rtol():
    M = grid_M(20)
    b = np.ones(M.shape[0])
    a, c = factorize(M, "krylov", tol=1e-6), factorize(M, "krylov", rtol=1e-6)
    np.testing.assert_array_equal(a.solve(b), c.solve(b))
    assert a.rtol == 1e-6 and a.iterations == c.iterations
    with pytest.raises(ValueError, match="rtol"):
        factorize(M, "krylov", tol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="rtol and atol"):
        factorize(M, "krylov", rtol=0.0, atol=0.0)


def test_krylov_callback_reports_every_iteration():
    M = grid_M(24, drift=True)
    b = np.random.default_rng(12).normal(size=M.shape[0])
    seen = []
    f = factorize(M, "krylov", rtol=1e-10, callback=seen.append)
    x = f.solve(b)
    assert len(seen) == f.iterations > 0
    assert all(isinstance(r, float) for r in seen)
    assert seen[-1] <= 1.1e-10 * 10 and seen[0] > seen[-1]  # estimate of the relative residual
    blk = []
    g = factorize(M, "krylov", rtol=1e-10, callback=blk.append)
    g.solve(np.column_stack([b, 2 * b]))
    assert blk[0].shape == (2,)
    np.testing.assert_allclose(blk[-1][0], blk[-1][1], rtol=1e-6)  # 2b: same relative residual
    with pytest.raises(TypeError, match="callback"):
        factorize(M, "krylov", callback=3)
    np.testing.assert_allclose(M @ x, b, atol=1e-8)


def test_krylov_accepts_a_linear_operator():
    """A LinearOperator M, unpreconditioned or with a preconditioner operator, against the dense oracle."""
    from scipy.sparse.linalg import LinearOperator, aslinearoperator

    M = grid_M(12, gamma=0.9)  # unpreconditioned GMRES(12) stagnates on slow chains
    A = M.toarray()
    n = M.shape[0]
    b = np.random.default_rng(13).normal(size=(n, 2))
    op = aslinearoperator(M)
    f = factorize(op, "krylov", rtol=1e-11, maxiter=5000)
    assert f.preconditioner == "none"
    np.testing.assert_allclose(f.solve(b), np.linalg.solve(A, b), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(f.solve_transposed(b[:, 0]), np.linalg.solve(A.T, b[:, 0]), rtol=1e-8, atol=1e-9)
    # Jacobi preconditioner as an operator: fewer iterations than none
    d = 1.0 / M.diagonal()
    jac = LinearOperator((n, n), matvec=lambda v: d * v.ravel(), rmatvec=lambda v: d * v.ravel(),
                         matmat=lambda V: d[:, None] * V, rmatmat=lambda V: d[:, None] * V)
    g = factorize(M, "krylov", rtol=1e-11, preconditioner=jac, maxiter=5000)
    np.testing.assert_allclose(g.solve(b), np.linalg.solve(A, b), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(g.solve_transposed(b), np.linalg.solve(A.T, b), rtol=1e-8, atol=1e-9)
    with pytest.raises(ValueError, match="krylov"):
        factorize(op, "splu")
    with pytest.raises(ValueError, match="preconditioner"):
        factorize(op, "krylov", preconditioner="amg")
    with pytest.raises(TypeError, match="LinearOperator"):
        factorize(A, "krylov")


def test_krylov_restart_fits_the_basis_budget(monkeypatch):
    assert linalg.KRYLOV_BASIS_DTYPE == np.float64
    assert linalg.krylov_restart(12, 1000, 4) == 12
    assert linalg.krylov_restart(12, 10**6, 4) == 4   # float64: 9 blocks of 32 MB <= 320 MiB
    assert linalg.krylov_restart(12, 10**7, 4) == 2   # never below 2
    assert linalg.krylov_restart(1, 10**7, 4) == 1
    monkeypatch.setattr(linalg, "KRYLOV_BASIS_DTYPE", np.float32)
    assert linalg.krylov_restart(12, 2 * 10**6, 4) == 4   # 9 float32 blocks of 32 MB
    # a solve under a tiny budget still converges (restart 2)
    monkeypatch.setattr(linalg, "KRYLOV_BASIS_DTYPE", np.float64)
    monkeypatch.setattr(linalg, "KRYLOV_BASIS_BYTES", 8 * 576 * 5)
    M = grid_M(24)
    b = np.random.default_rng(14).normal(size=M.shape[0])
    f = factorize(M, "krylov", rtol=1e-10)
    np.testing.assert_allclose(M @ f.solve(b), b, atol=1e-8 * np.abs(b).max())
    with pytest.raises(SolverError, match="GMRES\\(2\\)"):
        factorize(M, "krylov", rtol=1e-14, maxiter=2).solve(b)


@pytest.mark.parametrize("trans", [False, True])
def test_pardiso_against_dense_oracle(trans):
    pytest.importorskip("pypardiso")  # optional extra fastmeta[pardiso]
    M = grid_M(30, drift=True)
    A = M.toarray().T if trans else M.toarray()
    plan = analyse(M)
    B = np.random.default_rng(15).normal(size=(M.shape[0], 3))
    for seed in range(3):  # one analysis, several numerical factorisations, two alive at once
        M2 = grid_M(30, seed=seed)
        A2 = M2.toarray().T if trans else M2.toarray()
        f = factorize(M, "pardiso", plan=plan)
        f2 = factorize(M2, "pardiso", plan=plan)
        assert f.method == "pardiso"
        solve, solve2 = (f.solve_transposed, f2.solve_transposed) if trans else (f.solve, f2.solve)
        np.testing.assert_allclose(solve(B), np.linalg.solve(A, B), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(solve2(B[:, 0]), np.linalg.solve(A2, B[:, 0]), rtol=1e-10, atol=1e-10)
        del f, f2
    assert len(plan._pardiso_pool) == 2  # handles are reused, not re-analysed


def test_float32_preconditioner_keeps_the_float64_accuracy(monkeypatch):
    """AMG hierarchy and Krylov basis stored in float32: GMRES on the float64 M still reaches rtol 1e-13."""
    M = grid_M(40, drift=True)  # 1600 states, several levels
    A = M.toarray()
    rng = np.random.default_rng(21)
    b, B = rng.normal(size=M.shape[0]), rng.normal(size=(M.shape[0], 3))
    monkeypatch.setattr(linalg, "KRYLOV_BASIS_DTYPE", np.float32)
    f32 = factorize(M, "krylov", rtol=1e-13)
    assert all(lv.data.dtype == np.float32 and lv.invd.dtype == np.float32 for lv in f32._hier.levels)
    assert f32.data.dtype == np.float64 and len(f32._hier.levels) >= 2
    monkeypatch.setattr(linalg, "AMG_DTYPE", np.float64)
    monkeypatch.setattr(linalg, "KRYLOV_BASIS_DTYPE", np.float64)
    f64 = factorize(M, "krylov", rtol=1e-13)
    assert f64._hier.levels[0].data is f64.data
    for f in (f32, f64):
        x, xt, X = f.solve(b), f.solve_transposed(b), f.solve(B)
        assert np.linalg.norm(b - A @ x) <= 1e-13 * np.linalg.norm(b)
        assert np.linalg.norm(b - A.T @ xt) <= 1e-13 * np.linalg.norm(b)
        assert np.all(np.linalg.norm(B - A @ X, axis=0) <= 1e-13 * np.linalg.norm(B, axis=0))
    # the preconditioner's precision does not change the iteration counts (1e-7 vs 1e-16 perturbation)
    assert abs(f32.iterations - f64.iterations) <= 1
    assert abs(f32.iterations_transposed - f64.iterations_transposed) <= 1


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_column_kernels_against_numpy(k, dtype):
    """Every column count K (one compiled body each) and both storage precisions."""
    from fastmeta._kernels import krylov as kk
    M = random_M(300, 0.9, seed=3, k=5)
    ip, ix, dv = M.indptr.astype(np.int64), M.indices, M.data.astype(dtype)
    A = sp.csr_matrix((dv.astype(np.float64), ix, ip), shape=M.shape)
    n = M.shape[0]
    rng = np.random.default_rng(k)
    X, B = rng.normal(size=(n, k)).astype(dtype), rng.normal(size=(n, k)).astype(dtype)
    tol = dict(rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-12)
    Y = np.empty_like(X)
    kk.csr_matvec(ip, ix, dv, X, Y)
    np.testing.assert_allclose(Y, A @ X.astype(np.float64), **tol)
    kk.csr_residual(ip, ix, dv, X, B, Y)
    np.testing.assert_allclose(Y, B - A @ X.astype(np.float64), **tol)
    # forward Gauss-Seidel (one block): (D + L) x_new = b - U x
    invd = (1.0 / A.diagonal()).astype(dtype)
    Xg = X.copy()
    kk.gs_sweep(ip, ix, dv, invd, B, Xg, Xg, 1, np.ones(n, dtype=np.bool_), True)
    DL, U = sp.tril(A, format="csr"), sp.triu(A, 1, format="csr")
    ref = sp.linalg.spsolve_triangular(DL, B - U @ X.astype(np.float64), lower=True)
    np.testing.assert_allclose(Xg, ref.reshape(n, k), **tol)
    diag = np.flatnonzero(np.repeat(np.arange(n), np.diff(ip)) == ix).astype(ix.dtype)
    kk.gs_sweep_zero(ip, ix, dv, diag, invd, B, Xg, 1, np.ones(n, dtype=np.bool_))
    ref = sp.linalg.spsolve_triangular(DL, B.astype(np.float64), lower=True)
    np.testing.assert_allclose(Xg, ref.reshape(n, k), **tol)
    # residual, then restriction over aggregates (members taken out of row order)
    agg = (np.random.default_rng(k).permutation(n) // 3).astype(ix.dtype)
    nc = int(agg.max()) + 1
    ptr, members = np.empty(nc + 1, dtype=np.int64), np.empty(n, dtype=agg.dtype)
    kk.agg_members(agg, ptr, members)
    R = np.empty_like(X)
    kk.csr_residual(ip, ix, dv, X, B, R)
    Rc = np.empty((nc, k), dtype=dtype)
    kk.restrict_sum(ptr, members, R, Rc)
    ref = np.zeros((nc, k))
    np.add.at(ref, agg, B - A @ X.astype(np.float64))
    np.testing.assert_allclose(Rc, ref, **tol)
    # Gram-Schmidt pair on a basis of 3 vectors per column
    V = rng.normal(size=(4, n, k))
    W = rng.normal(size=(n, k))
    part, h, nrm = np.empty((64, 5, k)), np.empty((5, k)), np.empty(k)
    kk.col_dots(V, 3, W, part, h)
    np.testing.assert_allclose(h[:3], np.einsum("int,nt->it", V[:3], W), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(h[3], (W * W).sum(0), rtol=1e-12)
    Wref = W - np.einsum("it,int->nt", h[:3], V[:3])
    kk.col_lincomb_sub(V, 3, h, W, part, nrm)
    np.testing.assert_allclose(W, Wref, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(nrm, (Wref * Wref).sum(0), rtol=1e-12)


def _column_kernel_calls(k, dtype):
    """(kernel family, arguments, indices of the arguments it writes) for every column kernel."""
    from fastmeta._kernels import krylov as kk
    M = random_M(300, 0.9, seed=3, k=5)
    n, ip, ix, dv = M.shape[0], M.indptr, M.indices, M.data.astype(dtype)
    rng = np.random.default_rng(k)
    X, B, Y = (rng.normal(size=(n, k)).astype(dtype) for _ in range(3))
    invd, interior = (1.0 / M.diagonal()).astype(dtype), np.ones(n, dtype=np.bool_)
    diag = np.flatnonzero(np.repeat(np.arange(n), np.diff(ip)) == ix).astype(ix.dtype)
    agg = (rng.permutation(n) // 3).astype(ix.dtype)
    ptr, members = np.empty(agg.max() + 2, dtype=np.int64), np.empty(n, dtype=agg.dtype)
    kk.agg_members(agg, ptr, members)
    V, part, h = rng.normal(size=(4, n, k)).astype(dtype), np.empty((64, 5, k)), rng.normal(size=(5, k))
    values = rng.normal(size=(M.nnz, k))
    return [(kk.csr_matvec, (ip, ix, dv, X, Y), [4]), (kk.csr_residual, (ip, ix, dv, X, B, Y), [5]),
            (kk.csr_matvec_add, (ip, ix, dv, X, Y), [4]),
            (kk.csr_matvec_each, (ip, ix, values, X, Y), [4]),
            (kk.csr_residual_each, (ip, ix, values, X, B, Y), [5]),
            (kk.gs_sweep, (ip, ix, dv, invd, B, X, X.copy(), 4, interior, False), [5]),
            (kk.gs_sweep_zero, (ip, ix, dv, diag, invd, B, X, 1, interior), [6]),
            (kk.restrict_sum, (ptr, members, X, np.empty((len(ptr) - 1, k), dtype)), [3]),
            (kk.col_dots, (V, 3, X, part, np.empty((5, k))), [4]),
            (kk.col_lincomb_sub, (V, 3, h, B, part, np.empty(k)), [3, 5]),
            # GMRES's mixed signatures: float64 M times, and x += Z y from, float32 vectors Z
            (kk.csr_matvec, (ip, ix, M.data, X.astype(np.float32), np.empty((n, k))), [4]),
            (kk.col_lincomb_sub, (V.astype(np.float32), 3, h, B.astype(np.float64), part, np.empty(k)), [3, 5])]


@pytest.mark.parametrize("k, dtype", [(1, np.float64), (2, np.float32), (3, np.float64), (4, np.float32)])
def test_vectorized_column_kernels_give_the_bits_of_scalar_code(k, dtype):
    """The column kernels are compiled with LLVM's SLP vectorizer (``_config.vectorized``):
    the same bits as the scalar code Numba compiles by default. (Numba
    left SLP off after miscompilations in other code; this checks ours on this machine.
    Every K and both precisions, not every pair: each scalar reference is a compilation.)"""
    from fastmeta._kernels._config import ERROR_MODEL, FASTMATH
    for family, args, written in _column_kernel_calls(k, dtype):
        kernel = family.at(k)
        scalar = numba.njit(fastmath=FASTMATH, error_model=ERROR_MODEL)(kernel.serial.py_func)
        assert not numba.config.SLP_VECTORIZE  # (the default: the reference is scalar code)
        expected = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        scalar(*expected)
        # the parallel twins (same body, prange for range) of the cycle's blocks only: each
        # compilation of one costs seconds in a cold cache
        for side in (kernel.serial, kernel.parallel) if (k, dtype) == (4, np.float32) else (kernel.serial,):
            got = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            side(*got)
            for w in written:
                np.testing.assert_array_equal(got[w], expected[w], err_msg=family.__name__)


def test_the_column_kernels_are_vectorized_across_columns():
    """Compiled through ``vectorized``, the 4-column float32 residual (the multigrid cycle's)
    loads, multiplies and subtracts 4-wide, and the setting it needed is put back. (The
    kernels themselves may come from the disk cache, whose code Numba does not show.)"""
    from fastmeta._kernels import krylov as kk
    from fastmeta._kernels._config import ERROR_MODEL, FASTMATH, vectorized
    calls = {family.__name__: args for family, args, _ in _column_kernel_calls(4, np.float32)}
    py_func = kk.csr_residual.at(4).serial.py_func
    for slp in (False, True):
        kernel = numba.njit(fastmath=FASTMATH, error_model=ERROR_MODEL)(py_func)
        if slp:
            kernel = vectorized(kernel)
        kernel(*calls["csr_residual"])
        ir = kernel.inspect_llvm(kernel.signatures[0])
        wide = [re.search(rf"{op}( \w+)* <4 x float>", ir) is not None for op in ("fmul", "fsub")]
        assert wide == [slp, slp]
        assert not numba.config.SLP_VECTORIZE


def test_float32_preconditioned_vectors_are_stored_exactly(monkeypatch):
    """GMRES keeps the cycle's float32 output as it is: the same bits as with a float64 copy."""
    M = grid_M(40, drift=True)
    B = np.random.default_rng(3).normal(size=(M.shape[0], 3))
    acquire = linalg._acquire_workspace
    seen = []

    def spy(plan, n, k, m, z_dtype, widen=False):
        ws = acquire(plan, n, k, m, np.float64 if widen else z_dtype)
        seen.append(ws.Zs.dtype)
        return ws

    monkeypatch.setattr(linalg, "_acquire_workspace", spy)
    f = factorize(M, "krylov")
    X, XT = f.solve(B), f.solve_transposed(B)
    monkeypatch.setattr(linalg, "_acquire_workspace", lambda *a: spy(*a, widen=True))
    f = factorize(M, "krylov")
    np.testing.assert_array_equal(f.solve(B), X)
    np.testing.assert_array_equal(f.solve_transposed(B), XT)
    assert seen == [np.float32, np.float32, np.float64, np.float64]


def test_a_level_with_few_interior_rows_is_swept_as_one_block(monkeypatch):
    """Row blocks pay where most couplings stay inside a block (a grid); on a random chain
    almost none do, and the level is swept by plain Gauss-Seidel instead of Jacobi-coupled
    blocks (fewer iterations for the same matrix and right-hand side)."""
    grid, rand = grid_M(110), random_M(20_000, 0.99, seed=1, k=5)
    b = np.random.default_rng(0).normal(size=rand.shape[0])
    for M, blocked in ((grid, True), (rand, False)):
        lv = factorize(M, "krylov", preconditioner="sgs")._hier.levels[0]
        assert (lv.nblk > 1) == blocked
        assert lv.nblk == 1 or np.count_nonzero(lv.interior) >= linalg.GS_MIN_INTERIOR * lv.n
        assert lv.nblk > 1 or (lv.interior.all() and lv.halo is None)
    its = {}
    for rule in (linalg.GS_MIN_INTERIOR, 0.0):  # 0.0: blocked whatever the couplings
        monkeypatch.setattr(linalg, "GS_MIN_INTERIOR", rule)
        f = factorize(rand, "krylov", rtol=1e-10, preconditioner="sgs")
        x = f.solve(b)
        assert np.linalg.norm(b - rand @ x) <= 1e-10 * np.linalg.norm(b)
        its[rule > 0] = (f._hier.levels[0].nblk, f.iterations)
    assert its[False][0] > 1 and its[True][0] == 1
    assert its[True][1] < its[False][1], its


@pytest.mark.parametrize("nblk", [1, 4])
@pytest.mark.parametrize("k", [1, 4])
def test_gs_sweep_zero_is_the_blockwise_forward_substitution(nblk, k):
    """From X = 0, one forward sweep solves (D + L_block) x = b, L_block the strictly
    lower part inside each row block (couplings to other blocks multiply zeros)."""
    from fastmeta._kernels import krylov as kk
    A = random_M(4000, 0.9, seed=5, k=5).tocsr()
    n = A.shape[0]
    ip, ix, dv = A.indptr.astype(np.int64), A.indices, A.data
    diag = np.flatnonzero(np.repeat(np.arange(n), np.diff(ip)) == ix).astype(ix.dtype)
    interior, mark = np.ones(n, dtype=np.bool_), np.empty(n, dtype=np.int8)
    if nblk > 1:
        kk.block_halo(ip, ix, nblk, interior, mark)
        assert not interior.all()
    B = np.random.default_rng(1).normal(size=(n, k))
    X = np.full((n, k), np.nan)  # not read
    kk.gs_sweep_zero(ip, ix, dv, diag, 1.0 / A.diagonal(), B, X, nblk, interior)
    bs = -(-n // nblk)
    rows = np.repeat(np.arange(n), np.diff(ip))
    keep = (ix <= rows) & (ix // bs == rows // bs)
    DL = sp.csr_matrix((dv * keep, ix, ip), shape=A.shape)
    ref = sp.linalg.spsolve_triangular(DL, B, lower=True)
    np.testing.assert_allclose(X, ref, rtol=1e-12, atol=1e-12)


def test_sort_rows_sorts_each_row_and_finds_the_diagonal():
    from fastmeta._kernels import krylov as kk
    A = random_M(200, 0.9, seed=2, k=6).tocsr()
    A.sort_indices()
    rng = np.random.default_rng(0)
    ip, ix, dv = A.indptr, A.indices.copy(), A.data.copy()
    for i in range(A.shape[0]):  # shuffle every row
        order = ip[i] + rng.permutation(ip[i + 1] - ip[i])
        ix[ip[i]:ip[i + 1]], dv[ip[i]:ip[i + 1]] = ix[order], dv[order]
    assert kk.rows_sorted(A.indptr, A.indices) and not kk.rows_sorted(ip, ix)
    diag = np.empty(A.shape[0], dtype=ix.dtype)
    kk.sort_rows(ip, ix, dv, diag)
    np.testing.assert_array_equal(ix, A.indices)
    np.testing.assert_array_equal(dv, A.data)
    np.testing.assert_array_equal(ix[diag], np.arange(A.shape[0]))


def test_unsorted_pattern_gives_the_sorted_solution():
    """The AMG smoother needs sorted rows: an unsorted M is sorted into the hierarchy's copy."""
    M = random_M(3000, 0.95, seed=4, k=5).tocsr()
    M.sort_indices()
    rng = np.random.default_rng(0)
    ip, ix, dv = M.indptr, M.indices.copy(), M.data.copy()
    for i in range(M.shape[0]):
        order = ip[i] + rng.permutation(ip[i + 1] - ip[i])
        ix[ip[i]:ip[i + 1]], dv[ip[i]:ip[i + 1]] = ix[order], dv[order]
    U = sp.csr_matrix((dv, ix, ip), shape=M.shape)
    U.has_sorted_indices = False
    b = rng.normal(size=M.shape[0])
    for pre in ("amg", "sgs"):
        fs = factorize(M, "krylov", rtol=1e-12, preconditioner=pre)
        fu = factorize(U, "krylov", rtol=1e-12, preconditioner=pre)
        x, xt = fu.solve(b), fu.solve_transposed(b)
        assert np.linalg.norm(b - M @ x) <= 1e-12 * np.linalg.norm(b)
        assert np.linalg.norm(b - M.T @ xt) <= 1e-12 * np.linalg.norm(b)
        np.testing.assert_allclose(x, fs.solve(b), rtol=1e-9)
        assert np.array_equal(U.indices, ix) and np.array_equal(U.data, dv)  # the caller's arrays


def test_column_kernels_take_one_to_four_columns():
    from fastmeta._kernels import krylov as kk
    X = np.zeros((3, 5))
    with pytest.raises(ValueError, match="1 to 4 columns, got 5"):
        kk.csr_matvec(np.zeros(4, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0), X, X)


def test_pardiso_gives_the_same_bits_every_time():
    """Repeated factorisations and solves of one matrix: identical results (two-level
    factorisation; the classic one differed in the last bits from run to run)."""
    pytest.importorskip("pypardiso")  # optional extra fastmeta[pardiso]
    M = grid_M(200, drift=True)  # 40 000 states: PARDISO's parallel code paths run
    plan = analyse(M)
    B = np.random.default_rng(16).normal(size=(M.shape[0], 4))
    first = None
    for _ in range(4):
        f = factorize(M, "pardiso", plan=plan)
        out = (f.solve(B[:, 0]), f.solve_transposed(B[:, 1]), f.solve(B), f.solve_transposed(B))
        if first is None:
            first = out
            np.testing.assert_allclose(M.T @ out[3], B, atol=1e-10)
        assert all(np.array_equal(u, v) for u, v in zip(out, first))
        del f


def test_arnoldi_step_against_numpy():
    """The compiled GMRES step bookkeeping against the NumPy statements it replaced:
    one system continues, one converges, one breaks down, one hits maxiter, one was stopped."""
    from fastmeta._kernels import krylov as kk
    rng = np.random.default_rng(21)
    k, m, j = 5, 4, 2
    H = rng.normal(size=(k, m + 1, m))
    cs, sn = rng.normal(size=(k, m)), rng.normal(size=(k, m))
    g = rng.normal(size=(k, m + 1))
    g[1, j] = 1e-6  # system 1's new residual estimate falls below its target
    h = rng.normal(size=(m + 2, k))
    nrm = np.array([4.0, 1.0, 0.0, 2.0, 3.0])  # |w|^2: system 2 breaks down
    live = np.array([True, True, True, True, False])
    total = np.array([3, 3, 3, 9, 7])  # system 3 reaches maxiter
    ks = np.array([2, 2, 2, 2, 1])
    beta = np.full(k, 1.0)
    target = np.array([1e-30, 1e-3, 1e-30, 1e-30, 1e-30])
    maxiter = 10
    rH, rcs, rsn, rg, rh, rlive, rtotal, rks = (a.copy() for a in (H, cs, sn, g, h, live, total, ks))
    hnext = np.sqrt(nrm)
    rh[j + 1] = hnext
    kk.arnoldi_givens(rH, rcs, rsn, rg, j, rh, rlive)
    rtotal += rlive
    rks[rlive] = j + 1
    breakdown = ~(hnext > 1e-14 * beta)
    stop = rlive & (breakdown | (np.abs(rg[:, j + 1]) <= target) | (rtotal >= maxiter))
    rlive &= ~stop
    ralpha = np.where(rlive, 1.0 / np.where(rlive, hnext, 1.0), 0.0)
    alpha = np.empty(k)
    nlive = kk.arnoldi_step(H, cs, sn, g, j, h, nrm, live, total, ks, beta, target, maxiter, alpha)
    for got, want in zip((H, cs, sn, g, h, live, total, ks, alpha),
                         (rH, rcs, rsn, rg, rh, rlive, rtotal, rks, ralpha)):
        np.testing.assert_array_equal(got, want)
    assert list(live) == [True, False, False, False, False]  # converged, breakdown, maxiter, stopped before
    assert nlive == 1 and alpha[0] == 0.5 and list(total) == [4, 4, 4, 10, 7] and ks[4] == 1


def test_dgks_redo_flags_live_columns_that_lost_most_of_their_norm():
    from fastmeta._kernels import krylov as kk
    h = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]])  # |w|^2 before the orthogonalisation (row j + 1)
    nrm = np.array([1.0, 3.0, 1.0])  # after: columns 0 and 2 lost more than half
    eta2 = 0.5  # the classical DGKS threshold 1/sqrt(2), squared
    redo = np.empty(3, dtype=np.bool_)
    assert kk.dgks_redo(h, 0, nrm, np.array([True, True, False]), eta2, redo)
    assert list(redo) == [True, False, False]  # column 2 is not live
    assert not kk.dgks_redo(h, 0, nrm, np.array([False, True, False]), eta2, redo)
    assert not redo.any()
    assert not kk.dgks_redo(h, 0, nrm, np.array([True, True, True]), 0.0, redo)  # DGKS_ETA = 0: never


@pytest.mark.parametrize("eta", [0.0, 0.7071067811865476])
def test_solves_reach_the_tolerance_with_and_without_reorthogonalisation(monkeypatch, eta):
    """A second Gram-Schmidt pass (DGKS_ETA > 0) or none (the default): the true residual
    decides convergence either way, so both reach rtol 1e-13 with a similar number of steps."""
    monkeypatch.setattr(linalg, "DGKS_ETA", eta)
    A = random_M(1500, 0.99, seed=8, k=4)
    b = np.random.default_rng(0).normal(size=(1500, 3))
    for pre in ("amg", "sgs", "none"):
        f = factorize(A, "krylov", rtol=1e-13, preconditioner=pre, maxiter=3000)
        X, Y = f.solve(b), f.solve_transposed(b)
        assert np.all(np.linalg.norm(b - A @ X, axis=0) <= 1e-13 * np.linalg.norm(b, axis=0))
        assert np.all(np.linalg.norm(b - A.T @ Y, axis=0) <= 1e-13 * np.linalg.norm(b, axis=0))


def test_gmres_restart_starts_the_unconverged_systems_and_names_the_first_failure():
    from fastmeta._kernels import krylov as kk
    beta = np.array([2.0, 1e-12, 4.0, 0.0])  # system 1 converged, 3 is a zero right-hand side
    target = np.full(4, 1e-10)
    zero = np.array([False, False, False, True])
    total = np.array([3, 3, 3, 0])
    g, live, ks, alpha = np.ones((4, 6)), np.zeros(4, dtype=np.bool_), np.ones(4, dtype=np.int64), np.empty(4)
    assert kk.gmres_restart(beta, target, zero, total, 10, g, live, ks, alpha) == 2
    np.testing.assert_array_equal(live, [True, False, True, False])
    np.testing.assert_array_equal(g[:, 0], [2.0, 0.0, 4.0, 0.0])
    assert not g[:, 1:].any() and not ks.any()
    np.testing.assert_array_equal(alpha, [0.5, 0.0, 0.25, 0.0])
    assert kk.gmres_restart(np.array([1e-12, 1e-12, 1e-12, 0.0]), target, zero, total, 10, g, live, ks, alpha) == 0
    # maxiter reached (system 2) and a NaN residual (system 0): the first one is named
    assert kk.gmres_restart(beta, target, zero, np.array([3, 3, 10, 0]), 10, g, live, ks, alpha) == -3
    assert kk.gmres_restart(np.array([np.nan, 1.0, 1.0, 0.0]), target, zero, total, 10, g, live, ks, alpha) == -1


def test_fine_level_pre_sweeps_are_a_setting(monkeypatch):
    """AMG_NSWEEP_PRE changes only the finest level's pre-smoothing: another (weaker)
    preconditioner, the same tolerance reached."""
    side = 70
    M = grid_M(side)
    b = np.random.default_rng(0).normal(size=(side * side, 2))
    out = {}
    for pre in (2, 1):
        monkeypatch.setattr(linalg, "AMG_NSWEEP_PRE", pre)
        f = factorize(M, "krylov", rtol=1e-12, preconditioner="amg")
        assert len(f._hier.levels) >= 3 and f._hier.nsweep_pre == pre
        x = f.solve(b)
        assert np.all(np.linalg.norm(b - M @ x, axis=0) <= 1e-12 * np.linalg.norm(b, axis=0))
        z = np.empty_like(b)
        f._hier.apply(b, z)
        out[pre] = z
    assert not np.allclose(out[1], out[2], rtol=1e-3)


def _sharp_gridworld_M(seed=0):
    """M = I - 0.99 P_pi of a 100 x 100 gridworld under a sharp smooth policy (mean max_a pi = 0.89),
    on which the aggregation multigrid cycle of M^T does not converge (GMRES stays at ~0.9)."""
    import fastmeta
    tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=1, size=100, slip=0.1, gamma=0.99, features="rbf",
                                                n_features=16, seed=0)
    f = phi @ (5.0 * np.random.default_rng(seed).standard_normal(16))
    pi = np.exp(f - f.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    S, A = pi.shape
    W = sp.csr_matrix((pi.ravel(), (np.repeat(np.arange(S), A), np.arange(S * A))), shape=(S, S * A))
    M = (sp.identity(S, format="csr") - 0.99 * (W @ tasks[0].P)).tocsr()
    M.sort_indices()
    return M


def test_a_stalled_multigrid_solve_is_finished_with_gauss_seidel(monkeypatch):
    """The piecewise-constant cycle of M^T stalls here (the smoothed one converges, see
    test_linalg_smoothed); the fallback must finish the solve with Gauss-Seidel."""
    monkeypatch.setattr(linalg, "AMG_INTERPOLATION", "constant")
    M = _sharp_gridworld_M()
    b = np.random.default_rng(1).random(M.shape[0])
    plan = analyse(M)
    with pytest.raises(SolverError):  # the multigrid cycle alone: stuck
        s = linalg.KrylovSolver(M, plan, maxiter=300)
        s._solve_with(b, None, True, watch=False)
    s = linalg.KrylovSolver(M, plan)
    x = s.solve_transposed(b)
    assert s.fallbacks == ["M^T"]
    assert np.linalg.norm(b - M.T @ x) <= 1e-10 * np.linalg.norm(b)
    np.testing.assert_allclose(x, sp.linalg.spsolve(M.T.tocsc(), b), rtol=1e-8)
    y = s.solve_transposed(2 * b)  # later solves on that side go straight to Gauss-Seidel
    assert s.fallbacks == ["M^T"] and s.iterations_transposed < linalg.STALL_ITERATIONS
    np.testing.assert_allclose(y, 2 * x, rtol=1e-8)
    s.solve(b)  # the forward side keeps its multigrid cycle, which converges there
    assert s.fallbacks == ["M^T"]


def test_meta_gradient_on_a_sharp_policy_converges_with_krylov():
    """The whole meta-gradient where the multigrid cycle of some M^T stalls: krylov against splu."""
    import fastmeta
    tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=2, size=100, slip=0.1, gamma=0.99, features="rbf",
                                                n_features=16, seed=0)
    theta = 5.0 * np.random.default_rng(0).standard_normal(16)
    L, g = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), solver="krylov").value_and_grad(theta)
    L0, g0 = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), solver="splu").value_and_grad(theta)
    assert L == pytest.approx(L0, rel=1e-8)
    np.testing.assert_allclose(g, g0, rtol=1e-7, atol=1e-9 * np.abs(g0).max())


def _nearby(M, gamma, scale, seed):
    """``I - gamma P'`` on M's pattern, P' = P = (I - M) / gamma with its entries reweighted
    by exp(scale N(0, 1)) and its rows normalised again (stochastic)."""
    n = M.shape[0]
    rows = np.repeat(np.arange(n), np.diff(M.indptr))
    diag = rows == M.indices
    p = (np.where(diag, 1.0, 0.0) - M.data) / gamma
    w = p * np.exp(scale * np.random.default_rng(seed).normal(size=M.nnz))
    w /= np.bincount(rows, weights=w, minlength=n)[rows]
    return sp.csr_matrix((np.where(diag, 1.0, 0.0) - gamma * w, M.indices, M.indptr), shape=M.shape)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_each_column_kernels_against_numpy(k):
    """One matrix per column on a shared pattern (``solve_each``'s operator)."""
    from fastmeta._kernels import krylov as kk
    M = random_M(300, 0.9, seed=3, k=5)
    n = M.shape[0]
    rng = np.random.default_rng(k)
    values = rng.normal(size=(M.nnz, k))
    X, B = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    ref = np.column_stack([sp.csr_matrix((values[:, c], M.indices, M.indptr), shape=M.shape) @ X[:, c]
                           for c in range(k)])
    Y = np.empty_like(X)
    for side in ("serial", "parallel"):  # the block of values, column by column
        block = np.empty_like(values)
        perm = np.random.default_rng(k).permutation(M.nnz)
        for c in range(k):
            getattr(kk.set_column, side)(values[:, c].copy(), block, c)
        np.testing.assert_array_equal(block, values)
        getattr(kk.gather_column, side)(values[:, 0].copy(), perm, block, k - 1)
        np.testing.assert_array_equal(block[:, k - 1], values[perm, 0])
    for side in ("serial", "parallel"):
        getattr(kk.csr_matvec_each, side)(M.indptr, M.indices, values, X, Y)
        np.testing.assert_allclose(Y, ref, rtol=1e-12, atol=1e-12)
        getattr(kk.csr_residual_each, side)(M.indptr, M.indices, values, X, B, Y)
        np.testing.assert_allclose(Y, B - ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("trans", [False, True])
def test_solve_each_solves_every_matrix_with_the_shared_preconditioner(trans):
    M = grid_M(30, seed=0)
    Ms = [_nearby(M, 0.99, 0.2, seed=c) for c in range(6)]  # 6 columns: blocks of 4 and 2
    b = np.random.default_rng(1).random((M.shape[0], 6))
    s = linalg.KrylovSolver(M, analyse(M))
    x = s.solve_each(Ms, b, transposed=trans)
    for c, Mc in enumerate(Ms):
        A = (Mc.T if trans else Mc).tocsc()
        assert np.linalg.norm(b[:, c] - A @ x[:, c]) <= 1e-10 * np.linalg.norm(b[:, c])
        np.testing.assert_allclose(x[:, c], sp.linalg.spsolve(A, b[:, c]), rtol=1e-8)
    assert s.residual_each <= 1e-10
    # M's preconditioner serves these M_c about as well as their own would
    own = []
    for c, Mc in enumerate(Ms):
        o = linalg.KrylovSolver(Mc, analyse(M))
        (o.solve_transposed if trans else o.solve)(b[:, c])
        own.append(o.iterations_transposed if trans else o.iterations)
    assert 0 < s.iterations_each <= 1.3 * max(own)
    assert s._hier_t is (None if not trans else s._hierarchy(True))  # nothing built for the M_c
    # a good start is taken (the solution itself: no iteration left)
    y = s.solve_each(Ms, b, x0=[np.zeros_like(b), x], transposed=trans)
    np.testing.assert_allclose(y, x, rtol=1e-9)
    assert s.iterations_each <= 1


def test_solve_each_falls_back_to_preconditioners_of_their_own(monkeypatch):
    """Where the shared preconditioner does not make progress, each matrix gets its own solver."""
    M = grid_M(30, seed=0)
    Ms = [_nearby(M, 0.99, 2.0, seed=c) for c in range(3)]
    b = np.random.default_rng(2).random((M.shape[0], 3))
    s = linalg.KrylovSolver(M, analyse(M))
    own = []
    solve = linalg.KrylovSolver._solve

    def counted(self, *args):
        own.append(self)
        return solve(self, *args)

    monkeypatch.setattr(linalg.KrylovSolver, "_solve", counted)
    monkeypatch.setattr(linalg, "EACH_STALL_ITERATIONS", 2)
    monkeypatch.setattr(linalg, "STALL_FACTOR", 1e-30)  # no progress is enough: always falls back
    x = s.solve_each(Ms, b)
    assert len(own) == 3 and all(o is not s for o in own)
    for c, Mc in enumerate(Ms):
        np.testing.assert_allclose(x[:, c], sp.linalg.spsolve(Mc.tocsc(), b[:, c]), rtol=1e-8)


def test_solve_each_rejects_what_it_cannot_solve():
    M = grid_M(10, seed=0)
    s = linalg.KrylovSolver(M, analyse(M))
    b = np.ones((M.shape[0], 2))
    with pytest.raises(ValueError, match="one column per matrix"):
        s.solve_each([M], b)
    with pytest.raises(ValueError, match=r"Ms\[1\] must be a CSR matrix with the pattern"):
        s.solve_each([M, random_M(M.shape[0], 0.9, seed=1)], b)
    op = sp.linalg.aslinearoperator(M)
    with pytest.raises(TypeError, match="LinearOperator"):
        linalg.KrylovSolver(op, None, preconditioner="none").solve_each([M], b[:, :1])


def test_a_released_preconditioner_is_built_again_the_same():
    M = grid_M(30, seed=0)
    b = np.random.default_rng(3).random(M.shape[0])
    s = linalg.KrylovSolver(M, analyse(M))
    x, y = s.solve(b), s.solve_transposed(b)
    for transposed in (False, True):
        s.release_preconditioner(transposed)
        assert (s._hier_t if transposed else s._hier) is None
    np.testing.assert_array_equal(s.solve(b), x)
    np.testing.assert_array_equal(s.solve_transposed(b), y)
    # a side that fell back to Gauss-Seidel keeps it when built again
    sharp = _sharp_gridworld_M()
    c = np.random.default_rng(1).random(sharp.shape[0])
    s = linalg.KrylovSolver(sharp, analyse(sharp), preconditioner="amg")
    s._sgs_instead_of_multigrid(True)
    s.release_preconditioner(True)
    s.solve_transposed(c)
    assert len(s._hier_t.levels) == 1 and len(s._hier.levels) > 1
