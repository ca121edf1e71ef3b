"""import fastmeta leaves the process environment alone and respects the user's OpenMP choice."""
import os
import subprocess
import sys

import numpy as np
import pytest

CHECK = ("import os, fastmeta; from numba.np.ufunc import parallel; "
         "print(parallel._is_initialized, os.environ.get('OMP_WAIT_POLICY'))")


def _run(env_updates):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_updates)
    proc = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return proc.stdout.split()


def test_import_starts_numba_threads_without_leaving_omp_wait_policy_set():
    assert _run({}) == ["True", "None"]


def test_an_explicit_omp_wait_policy_is_left_alone():
    assert _run({"OMP_WAIT_POLICY": "ACTIVE"}) == ["False", "ACTIVE"]


def test_single_threaded_blas_restores_the_previous_counts():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fastmeta._blas import _controller, single_threaded_blas

    # The libraries the limit governs: the BLAS loaded when fastmeta first factorises
    # densely (SciPy's, which the dense LU calls). A BLAS loaded later by another package
    # (e.g. MKL with pypardiso) is that package's business and is left alone.
    governed = {lib.filepath for lib in _controller().lib_controllers if lib.user_api == "blas"}

    def counts():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "blas" and lib["filepath"] in governed]

    before = counts()
    with single_threaded_blas():
        assert all(n == 1 for n in counts())
        with single_threaded_blas():                 # re-entrant: the inner exit keeps the limit
            pass
        assert all(n == 1 for n in counts())
    assert counts() == before


def test_dense_solves_give_the_same_answer_under_the_limit():
    import scipy.sparse as sp

    from fastmeta.linalg import DenseFactorization

    rng = np.random.default_rng(0)
    M = sp.csr_matrix(np.eye(50) * 4 + rng.random((50, 50)))
    b = rng.standard_normal(50)
    fac = DenseFactorization(M)
    np.testing.assert_allclose(M @ fac.solve(b), b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(M.T @ fac.solve_transposed(b), b, rtol=0, atol=1e-12)
