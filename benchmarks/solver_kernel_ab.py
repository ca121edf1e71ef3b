"""The AMG cycle's kernels before and after round 6 of the solver study, side by side in one process.

    PYTHONPATH=. python benchmarks/solver_kernel_ab.py [--side 1000] [--rounds 7] [--synthetic]

Before (``fastmeta/_kernels/krylov.py`` at ``BEFORE_COMMIT``, read from git into a scratch
module): the first Gauss-Seidel sweep from zero tests every entry of a row (``j < i``, in
the block), and the residual is computed aggregate by aggregate while restricting it
(``residual_restrict``, rows read through ``members``); coarse rows are in the Galerkin
product's order of first appearance. After: the sweep from zero reads only the strictly
lower part of sorted rows (``gs_sweep_zero`` with diagonal positions), the residual is
computed in row order (``csr_residual``) and then summed over the aggregates
(``restrict_sum``). Both run on the same hierarchy (the main effect's M of the benchmark
problem, captured from one gradient unless ``--synthetic``), coarse levels unsorted for
"before", sorted for "after" (the aggregates are the same). Each kernel is timed serial
(CPU time of the calling thread: insensitive to other jobs taking the second core) and
parallel (wall time), interleaved round-robin; medians.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.old_kernels import kernel_module_at  # noqa: E402
from benchmarks.solver_kernels import main_matrix  # noqa: E402
from fastmeta import linalg  # noqa: E402
from fastmeta._kernels import krylov as after  # noqa: E402

BEFORE_COMMIT = "86e33e5"


def before_module():
    """The kernel module at BEFORE_COMMIT."""
    return kernel_module_at(BEFORE_COMMIT, "krylov_before_round6")


def hierarchies(M):
    """(sorted, unsorted) hierarchies of M with the same aggregates."""
    plan = linalg.analyse(M)
    data = np.ascontiguousarray(M.data)
    new = linalg._Hierarchy(plan.indptr, plan.indices, data, plan.diag)
    sort_rows = after.sort_rows
    after.sort_rows = lambda indptr, indices, data, diag: None  # keep the Galerkin order
    try:
        old = linalg._Hierarchy(plan.indptr, plan.indices, data, plan.diag)
    finally:
        after.sort_rows = sort_rows
    return new, old


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--synthetic", action="store_true")
    args = ap.parse_args()
    import numba
    from benchmarks.solver_comparison import stream_bandwidth
    bef = before_module()
    M = main_matrix(args.side, args.synthetic)
    new, old = hierarchies(M)
    print(f"S = {M.shape[0]}, numba threads {numba.get_num_threads()}, load {os.getloadavg()}")
    print(f"STREAM-like triad: {stream_bandwidth():.1f} GB/s")
    work = {}
    for l in range(min(3, len(new.levels) - 1)):
        a, b = new.levels[l], old.levels[l]
        for k in (1, 4):
            rng = np.random.default_rng(k)
            B = rng.standard_normal((a.n, k)).astype(new.dtype)
            X, S = np.zeros_like(B), np.zeros_like(B)
            nc = a.ptr.shape[0] - 1
            Rc = np.empty((nc, k), new.dtype)
            for side in ("serial", "parallel"):
                fam = lambda f: getattr(f.at(k), side)  # noqa: E731
                work[(l, k, side, "sweep from zero", "before")] = (
                    lambda b=b, B=B, X=X, f=fam(bef.gs_sweep_zero):
                        f(b.indptr, b.indices, b.data, b.invd, B, X, b.nblk))
                work[(l, k, side, "sweep from zero", "after")] = (
                    lambda a=a, B=B, X=X, f=fam(after.gs_sweep_zero):
                        f(a.indptr, a.indices, a.data, a.diag, a.invd, B, X, a.nblk, a.interior))
                work[(l, k, side, "residual + restriction", "before")] = (
                    lambda b=b, B=B, X=X, Rc=Rc, f=fam(bef.residual_restrict):
                        f(b.ptr, b.members, b.indptr, b.indices, b.data, X, B, Rc))
                work[(l, k, side, "residual + restriction", "after")] = (
                    lambda a=a, B=B, X=X, S=S, Rc=Rc, r=fam(after.csr_residual), s=fam(after.restrict_sum):
                        (r(a.indptr, a.indices, a.data, X, B, S), s(a.ptr, a.members, S, Rc)))
                work[(l, k, side, "full sweep", "before")] = (
                    lambda b=b, B=B, X=X, S=S, f=fam(after.gs_sweep):
                        f(b.indptr, b.indices, b.data, b.invd, B, X, S, b.nblk, b.interior, True))
                work[(l, k, side, "full sweep", "after")] = (
                    lambda a=a, B=B, X=X, S=S, f=fam(after.gs_sweep):
                        f(a.indptr, a.indices, a.data, a.invd, B, X, S, a.nblk, a.interior, True))
    times = {key: [] for key in work}
    for fn in work.values():
        fn()
    for _ in range(args.rounds):
        for key, fn in work.items():
            clock = time.thread_time if key[2] == "serial" else time.perf_counter
            t = clock()
            fn()
            times[key].append(clock() - t)
    print("\n| level | K | kernel | serial before ms | serial after ms | after/before | "
          "2 threads before ms | 2 threads after ms | after/before |\n|---|---|---|---|---|---|---|---|---|")
    for (l, k, side, name, when) in work:
        if side != "serial" or when != "before":
            continue
        med = {(s, w): 1e3 * float(np.median(times[(l, k, s, name, w)]))
               for s in ("serial", "parallel") for w in ("before", "after")}
        print(f"| {l} | {k} | {name} | {med['serial', 'before']:.2f} | {med['serial', 'after']:.2f} | "
              f"{med['serial', 'after'] / med['serial', 'before']:.2f} | {med['parallel', 'before']:.2f} | "
              f"{med['parallel', 'after']:.2f} | {med['parallel', 'after'] / med['parallel', 'before']:.2f} |")
    print(f"\nload {os.getloadavg()}")


if __name__ == "__main__":
    main()
