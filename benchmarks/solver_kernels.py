"""Per-kernel time and achieved bandwidth of one GMRES iteration on the real 10^6 systems.

    PYTHONPATH=. python benchmarks/solver_kernels.py --side 1000            # captured M (one gradient)
    PYTHONPATH=. python benchmarks/solver_kernels.py --side 1000 --synthetic # M from a fixed policy (fast)

Builds the main effect's M of the benchmark problem (gridworld goals, n = 4, d = 32,
gamma 0.99, tau = eta = 1, theta = 0.5 N(0, I), seed 0; captured from one
``value_and_grad``), its AMG hierarchy as ``KrylovSolver`` does, and times every kernel
family of one preconditioned GMRES iteration in isolation, for 1 and 4 columns: median
of ``--reps`` calls, bytes counted from the array sizes (each array read or written
once per call; a read-modify-write counts twice), GB/s = bytes / time. The STREAM-like
triad of the same process is printed next to them, and one whole V-cycle and one
whole 4-column solve are timed for the Python and dispatch overhead between kernels.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.rl_problems import timeit  # noqa: E402


def median_time(fn, reps):
    """Median wall-clock seconds of ``reps`` calls after one untimed call."""
    return float(np.median(timeit(fn, reps, warmup=1)))


def main_matrix(side, synthetic):
    if synthetic:
        from benchmarks.solver_study import build_M, gridworld, policies
        return build_M(gridworld(side), policies(side * side, 4)["random3"], 0.99)
    from benchmarks.solver_study import capture_workload
    Ms, R, MU, per = capture_workload(side)
    return Ms[0]


def kernel_table(M, reps):
    from fastmeta import linalg
    from fastmeta._kernels import krylov as kk
    plan = linalg.analyse(M)
    fac = linalg.factorize(M, "krylov", plan=plan)
    hier = fac._hier
    rows = []

    def add(name, level, k, nbytes, fn):
        t = median_time(fn, reps)
        rows.append((name, level, k, t, nbytes / t / 1e9, nbytes))

    for k in (1, 4):
        for l, lv in enumerate(hier.levels):
            if lv.n < 10_000 and l > 0:
                continue
            w = lv.data.dtype.itemsize
            n, nnz = lv.n, lv.indices.shape[0]
            ip, ix, dv = lv.indptr, lv.indices, lv.data
            mat = ip.itemsize * (n + 1) + ix.itemsize * nnz + w * nnz
            B = np.random.default_rng(0).standard_normal((n, k)).astype(lv.data.dtype)
            X = np.zeros((n, k), lv.data.dtype)
            Xold = np.zeros_like(X)
            vec = w * n * k
            old = hasattr(lv, "res_restrict")  # the kernels before round 6 (run from a checkout of 86e33e5)
            if old:
                add("gs_sweep_zero", l, k, mat + w * n + 2 * vec,
                    lambda: lv.gs0(ip, ix, dv, lv.invd, B, X, lv.nblk))
            else:  # reads the strictly lower part only (half the matrix)
                add("gs_sweep_zero", l, k, mat + w * n + 2 * vec,
                    lambda: lv.gs0(ip, ix, dv, lv.diag, lv.invd, B, X, lv.nblk, lv.interior))
            for fwd in (True, False):
                add(f"gs_sweep {'fwd' if fwd else 'bwd'} (+halo copy)", l, k, mat + w * n + 3 * vec + n,
                    lambda fwd=fwd: hier._smooth(lv, (ip, ix, dv), B, X, Xold, fwd))
            if lv.nblk > 1:
                add("  gs_sweep fwd, 1 block (serial GS)", l, k, mat + w * n + 3 * vec,
                    lambda: kk.gs_sweep.serial(ip, ix, dv, lv.invd, B, X, X, 1, lv.interior, True))
                add("  copy_rows (halo)", l, k, 2 * w * lv.halo.shape[0] * k,
                    lambda: lv.copy(lv.halo, X, Xold))
            if getattr(lv, "P", None) is not None:  # smoothed aggregation: the transfers are sparse products
                nc = lv.ptr.shape[0] - 1
                Rc = np.empty((nc, k), lv.data.dtype)
                for name, (tp, tx, td), src, dst, fn in (("R r (csr_matvec)", lv.R, Xold, Rc, lv.to_coarse),
                                                       ("x += P e (csr_matvec_add)", lv.P, Rc, X, lv.from_coarse)):
                    nbytes = tp.itemsize * tp.shape[0] + (tx.itemsize + w) * tx.shape[0] + w * src.size
                    nbytes += w * dst.size * (2 if fn is lv.from_coarse else 1)
                    add(name, l, k, nbytes, lambda fn=fn, src=src, dst=dst: fn(src, dst))
                add("  csr_residual", l, k, mat + 3 * vec, lambda: lv.residual(ip, ix, dv, X, B, Xold))
            elif lv.agg is not None:
                nc = lv.ptr.shape[0] - 1
                Rc = np.empty((nc, k), lv.data.dtype)
                restr = w * nc * k + lv.members.itemsize * n + 8 * nc
                if old:
                    add("residual + restriction", l, k, mat + 2 * vec + restr,
                        lambda: lv.res_restrict(lv.ptr, lv.members, ip, ix, dv, X, B, Rc))
                else:
                    add("residual + restriction", l, k, mat + 2 * vec + restr + 2 * vec,
                        lambda: (lv.residual(ip, ix, dv, X, B, Xold), lv.restrict(lv.ptr, lv.members, Xold, Rc)))
                    add("  csr_residual", l, k, mat + 3 * vec, lambda: lv.residual(ip, ix, dv, X, B, Xold))
                    add("  restrict_sum", l, k, vec + restr, lambda: lv.restrict(lv.ptr, lv.members, Xold, Rc))
                add("prolong_add", l, k, 2 * vec + w * nc * k + lv.agg.itemsize * n,
                    lambda: lv.prolong(lv.agg, Rc, X))
            if l == 0:
                X64 = np.ones((n, k))
                add("cast_copy f64->f32", l, k, 12 * n * k, lambda: lv.cast(X64, X))
        if hier.lu is not None:
            nl = hier.lu.shape[0]
            bl = np.ones((nl, k), hier.dtype)
            xl = np.empty_like(bl)
            add(f"dense_lu_solve ({nl} rows)", len(hier.levels) - 1, k, 8 * nl * nl,
                lambda: kk.dense_lu_solve(hier.lu, bl, xl))
        n = M.shape[0]
        Z = np.ones((n, k), hier.dtype)  # GMRES multiplies the cycle's output as it is stored
        Y64 = np.empty((n, k))
        mv = kk.csr_matvec.at(k).for_size(M.nnz)
        add(f"csr_matvec (float64 M, {hier.dtype} Z)", 0, k, 8 * (n + 1) + 12 * M.nnz + (Z.itemsize + 8) * n * k,
            lambda: mv(plan.indptr, plan.indices, fac.data, Z, Y64))
        m = linalg.krylov_restart(linalg.KRYLOV_RESTART, n, k)
        V = np.random.default_rng(1).standard_normal((m + 1, n, k))
        W = V[m].copy()
        part = np.empty((64, m + 2, k))
        h = np.empty((m + 2, k))
        nrm = np.empty(k)
        j1 = (m + 1) // 2 + 1  # an average step of a restart cycle
        dots = kk.col_dots.at(k).for_size(8 * n * k)
        lin = kk.col_lincomb_sub.at(k).for_size(8 * n * k)
        add(f"col_dots (j1 = {j1})", 0, k, 8 * n * k * (j1 + 1), lambda: dots(V, j1, W, part, h))
        hs = np.full((m + 2, k), 1e-3)
        add(f"col_lincomb_sub (j1 = {j1})", 0, k, 8 * n * k * (j1 + 2), lambda: lin(V, j1, hs, W, part, nrm))
        b64 = np.random.default_rng(2).standard_normal((n, k))
        x64 = np.empty((n, k))
        add("V-cycle (whole, f64 in/out)", "all", k, float("nan"), lambda: hier.apply(b64, x64))
    return fac, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1000)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    import numba
    from benchmarks.solver_comparison import stream_bandwidth
    M = main_matrix(args.side, args.synthetic)
    print(f"S = {M.shape[0]}, nnz {M.nnz}, numba threads {numba.get_num_threads()} "
          f"({numba.threading_layer() if hasattr(numba, 'threading_layer') else ''}), load {os.getloadavg()}")
    stream = stream_bandwidth()
    print(f"STREAM-like triad: {stream:.1f} GB/s")
    fac, rows = kernel_table(M, args.reps)
    print("\n| kernel | level | K | ms | GB/s | of STREAM |\n|---|---|---|---|---|---|")
    for name, level, k, t, gbs, nbytes in rows:
        frac = "" if np.isnan(gbs) else f"{gbs / stream:.2f}"
        print(f"| {name} | {level} | {k} | {t * 1e3:.2f} | {'' if np.isnan(gbs) else f'{gbs:.1f}'} | {frac} |")
    b = np.random.default_rng(3).standard_normal((M.shape[0], 4))
    t = time.perf_counter()
    fac.solve(b)
    dt = time.perf_counter() - t
    print(f"\n4-column solve: {fac.iterations} iterations, {dt:.2f} s, {dt / fac.iterations * 1e3:.1f} ms per iteration")
    print(f"STREAM-like triad after: {stream_bandwidth():.1f} GB/s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
