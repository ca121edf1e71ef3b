"""Smoothed aggregation in the AMG of fastmeta.linalg: set-up and cycle kernels against
the dense formulas of tests/naive.py, the cycle against a two-grid oracle, convergence."""
from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from fastmeta import linalg
from fastmeta._kernels import krylov as kk
from fastmeta.linalg import factorize

from . import naive
from .test_linalg import grid_M, random_M


def _aggregates(n, size, seed):
    """Random aggregates of ``size`` nodes (members out of row order) and their member lists."""
    agg = (np.random.default_rng(seed).permutation(n) // size).astype(np.int32)
    nc = int(agg.max()) + 1
    ptr, members = np.empty(nc + 1, dtype=np.int64), np.empty(n, dtype=agg.dtype)
    kk.agg_members(agg, ptr, members)
    return agg, nc, ptr, members


def _dense(ip, ix, dv, shape):
    return sp.csr_matrix((dv, ix, ip), shape=shape).toarray()


def _diag_positions(A):
    rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    return np.flatnonzero(rows == A.indices).astype(A.indices.dtype)


@pytest.mark.parametrize("omega", [0.5, 0.66])
def test_smoothed_transfers_and_coarse_matrix_against_the_formulas(omega):
    """P = (I - w D^-1 A) T, R = ((I - w D^-1 A^T) T)^T and A_c = R A P (+ sorted rows, diagonal)."""
    A = random_M(240, 0.9, seed=4, k=4)
    n = A.shape[0]
    Ad = A.toarray()
    agg, nc, ptr, members = _aggregates(n, 4, seed=1)
    lv = linalg._Level(A.indptr.astype(np.int64), A.indices, A.data, _diag_positions(A))
    P, R, (cip, cix, cdv, cdg) = linalg._smoothed_galerkin(lv, agg, ptr, members, nc, omega)
    Pref = naive.smoothed_prolongator(Ad, agg, nc, omega)
    Rref = naive.smoothed_restrictor(Ad, agg, nc, omega)
    np.testing.assert_allclose(_dense(*P, (n, nc)), Pref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(_dense(*R, (nc, n)), Rref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(_dense(cip, cix, cdv, (nc, nc)), Rref @ Ad @ Pref, rtol=1e-12, atol=1e-14)
    assert kk.rows_sorted(cip, cix)
    np.testing.assert_array_equal(cix[cdg], np.arange(nc))
    # with omega = 0 the transfers are the piecewise-constant ones: the coarse matrix is T^T A T
    P0, R0, (c0ip, c0ix, c0dv, _) = linalg._smoothed_galerkin(lv, agg, ptr, members, nc, 0.0)
    T = naive.tentative_prolongator(agg, nc)
    np.testing.assert_array_equal(_dense(*P0, (n, nc)), T)
    np.testing.assert_allclose(_dense(c0ip, c0ix, c0dv, (nc, nc)), T.T @ Ad @ T, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("shape", [(40, 150, 90), (5_000, 40_000, 9_000)])
def test_triple_product_against_scipy(shape):
    """``R A P`` without the intermediate product: serial (small) and parallel (fixed chunks of
    rows), values and pattern against scipy's ``R @ A @ P``."""
    (nc, n, m), rng = shape, np.random.default_rng(3)
    R = sp.random(nc, n, density=12.0 / n, format="csr", random_state=rng)
    A = sp.random(n, n, density=5.0 / n, format="csr", random_state=rng)
    P = sp.random(n, m, density=3.0 / m, format="csr", random_state=rng)
    R, A, P = (X.astype(np.float64) for X in (R, A, P))
    trip = [(X.indptr.astype(np.int64), X.indices, X.data) for X in (R, A, P)]
    marker = np.empty((linalg.SETUP_CHUNKS, m), np.int64)
    cip = np.empty(nc + 1, np.int64)
    nnz = kk.triple_product_rows(trip[0][0], trip[0][1], trip[1][0], trip[1][1], trip[2][0], trip[2][1],
                                 marker, cip)
    cix, cdv = np.empty(nnz, np.int32), np.empty(nnz)
    kk.triple_product(*trip[0], *trip[1], *trip[2], marker, cip, cix, cdv)
    got, ref = sp.csr_matrix((cdv, cix, cip), shape=(nc, m)), (R @ A @ P).tocsr()
    assert abs(got - ref).max() <= 1e-14 * abs(ref).max()
    # no duplicate columns in a row, exactly the structural entries of the product
    keys = np.repeat(np.arange(nc), np.diff(cip)) * m + cix
    assert np.unique(keys).shape[0] == keys.shape[0]
    pattern = [X.astype(bool).astype(np.int64) for X in (R, A, P)]
    assert nnz == (pattern[0] @ pattern[1] @ pattern[2]).nnz


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_smoothed_cycle_kernels_against_numpy(k, dtype):
    """The restriction ``R r`` (csr_matvec with R's rows) and prolongation ``x += P e``
    (csr_matvec_add) in both storage precisions, K = 1..4 columns."""
    A = random_M(300, 0.9, seed=3, k=5)
    n = A.shape[0]
    agg, nc, ptr, members = _aggregates(n, 4, seed=k)
    lv = linalg._Level(A.indptr.astype(np.int64), A.indices, A.data, _diag_positions(A))
    P, R, _ = linalg._smoothed_galerkin(lv, agg, ptr, members, nc, 0.66)
    P, R = P[:2] + (P[2].astype(dtype),), R[:2] + (R[2].astype(dtype),)
    rng = np.random.default_rng(k)
    r, e = rng.normal(size=(n, k)).astype(dtype), rng.normal(size=(nc, k)).astype(dtype)
    x = rng.normal(size=(n, k)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    rc = np.empty((nc, k), dtype=dtype)
    kk.csr_matvec(*R, r, rc)
    Rd, Pd = _dense(*R, (nc, n)), _dense(*P, (n, nc))
    np.testing.assert_allclose(rc, Rd @ r.astype(np.float64), **tol)
    ref = x.astype(np.float64) + Pd @ e.astype(np.float64)
    kk.csr_matvec_add(*P, e, x)
    np.testing.assert_allclose(x, ref, **tol)


@pytest.mark.parametrize("interpolation", ["constant", "smoothed"])
def test_one_cycle_is_the_two_grid_cycle(interpolation, monkeypatch):
    """A two-level hierarchy (coarse level solved by the dense LU) applies exactly the two-grid
    cycle of naive.two_grid_cycle with its own P and R (float64, one Gauss-Seidel block)."""
    monkeypatch.setattr(linalg, "AMG_SA_LEVELS", 20)
    M = grid_M(20, drift=True)  # 400 states: one coarse level of ~100 rows
    A = M.toarray()
    h = linalg._Hierarchy(M.indptr.astype(np.int64), M.indices, M.data, _diag_positions(M), max_levels=2,
                          dtype=np.float64, interpolation=interpolation)
    assert len(h.levels) == 2 and h.lu is not None and h.levels[0].nblk == 1
    lv = h.levels[0]
    nc = h.levels[1].n
    if interpolation == "smoothed":
        P, R = _dense(*lv.P, (400, nc)), _dense(*lv.R, (nc, 400))
        np.testing.assert_allclose(P, naive.smoothed_prolongator(A, lv.agg, nc, linalg.AMG_SA_OMEGA), atol=1e-15)
    else:
        P = naive.tentative_prolongator(lv.agg, nc)
        R = P.T
    b = np.random.default_rng(0).normal(size=(400, 3))
    x = np.empty_like(b)
    h.apply(b, x)
    ref = naive.two_grid_cycle(A, b, P, R, h.nsweep_pre, h.nsweep)
    np.testing.assert_allclose(x, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("N", [40, 70])
def test_smoothed_aggregation_needs_fewer_iterations(N, monkeypatch):
    """A non-symmetric (drifting) gridworld chain: GMRES with either cycle reaches rtol 1e-10 on
    M and M^T, the smoothed interpolation in fewer iterations than the piecewise-constant one."""
    M = grid_M(N, drift=True)
    A = M.toarray()
    B = np.random.default_rng(N).normal(size=(M.shape[0], 4))
    its = {}
    for interpolation in ("constant", "smoothed"):
        monkeypatch.setattr(linalg, "AMG_INTERPOLATION", interpolation)
        f = factorize(M, "krylov", rtol=1e-10, preconditioner="amg")
        assert f._hier.interpolation == interpolation and len(f._hier.levels) >= 3
        X, XT = f.solve(B), f.solve_transposed(B)
        assert np.all(np.linalg.norm(B - A @ X, axis=0) <= 1e-10 * np.linalg.norm(B, axis=0))
        assert np.all(np.linalg.norm(B - A.T @ XT, axis=0) <= 1e-10 * np.linalg.norm(B, axis=0))
        assert not f.fallbacks
        its[interpolation] = (f.iterations, f.iterations_transposed)
    assert its["smoothed"][0] < its["constant"][0] and its["smoothed"][1] < its["constant"][1], its


def test_interpolation_is_checked():
    M = grid_M(10)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        linalg._Hierarchy(M.indptr.astype(np.int64), M.indices, M.data, _diag_positions(M), interpolation="linear")


@pytest.mark.parametrize("interpolation", ["constant", "smoothed"])
def test_thread_invariance_of_both_interpolations(interpolation, monkeypatch):
    """Bit-identical cycles for 1 and 2 Numba threads; 12 100 states, so that the fine level's
    transfers run the parallel kernels."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    monkeypatch.setattr(linalg, "AMG_INTERPOLATION", interpolation)
    M = grid_M(110, drift=True)
    B = np.random.default_rng(5).normal(size=(M.shape[0], 4))
    old = numba.get_num_threads()
    out = []
    try:
        for t in (1, 2):
            numba.set_num_threads(t)
            f = factorize(M, "krylov", rtol=1e-10, preconditioner="amg")
            assert f._hier.levels[0].par == "parallel"
            assert (f._hier.levels[0].P is not None) == (interpolation == "smoothed")
            out.append((f.solve(B), f.solve_transposed(B[:, 0]), f.iterations, f.iterations_transposed))
    finally:
        numba.set_num_threads(old)
    assert np.array_equal(out[0][0], out[1][0]) and np.array_equal(out[0][1], out[1][1])
    assert out[0][2:] == out[1][2:]


def test_smoothed_cycle_converges_where_the_constant_one_stalls(monkeypatch):
    """The sharp-policy gridworld of the stall fallback test: with smoothed interpolation the
    multigrid cycle of M^T converges by itself, in fewer iterations than Gauss-Seidel needs."""
    from .test_linalg import _sharp_gridworld_M
    monkeypatch.setattr(linalg, "AMG_INTERPOLATION", "smoothed")
    M = _sharp_gridworld_M()
    b = np.random.default_rng(1).random(M.shape[0])
    s = linalg.KrylovSolver(M, linalg.analyse(M), preconditioner="amg")
    assert s._hier.interpolation == "smoothed"
    x = s.solve_transposed(b)
    assert s.fallbacks == [] and len(s._hierarchy(True).levels) > 1
    assert np.linalg.norm(b - M.T @ x) <= 1e-10 * np.linalg.norm(b)
    sgs = linalg.KrylovSolver(M, linalg.analyse(M), preconditioner="sgs")
    sgs.solve_transposed(b)
    assert s.iterations_transposed < sgs.iterations_transposed


def test_a_bad_coarsest_pivot_leaves_the_level_smoothed_only(monkeypatch):
    """The coarsest LU has no pivoting: when a pivot is tiny the level is smoothed instead."""
    M = grid_M(40, drift=True)
    diag = _diag_positions(M)
    ok = linalg._Hierarchy(M.indptr.astype(np.int64), M.indices, M.data, diag)
    assert ok.lu is not None
    monkeypatch.setattr(linalg, "LU_PIVOT_MIN", 2.0)  # every pivot counts as bad
    h = linalg._Hierarchy(M.indptr.astype(np.int64), M.indices, M.data, diag)
    assert h.lu is None and len(h.levels) == len(ok.levels)
    b = np.random.default_rng(0).normal(size=(M.shape[0], 2))
    x = np.empty_like(b)
    h.apply(b, x)
    assert np.all(np.isfinite(x))
