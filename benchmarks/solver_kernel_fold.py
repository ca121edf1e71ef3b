"""The folded Krylov kernels (one body per column count K, K a compile-time constant)
against the hand-unrolled k = 1..4 kernels they replaced, side by side in one process.

    PYTHONPATH=. python benchmarks/solver_kernel_fold.py [--side 1000] [--rounds 5]

The unrolled kernels are read from git (``fastmeta/_kernels/krylov.py`` at commit
``UNROLLED_COMMIT``, the last commit that had them), written into a scratch package and
imported from there (Numba caches them in that scratch directory). Both versions then
run the same work, interleaved round-robin: whole GMRES + AMG solves (``linalg`` bound
to one kernel module or the other: a 4-column block, one column, one transposed column)
on M = I - 0.99 P_pi of the benchmark gridworld (slip 0.1, random policy; linalg's
storage precisions as configured, the same for both), and single float64 kernels (SpMV
and a Gauss-Seidel sweep with 1 and 4 columns, the Gram-Schmidt pair).
Prints the median time of each and the ratio folded / unrolled (below 1: the fold is
faster). Min-of-rounds is printed too: on a shared machine it is the steadier figure.
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
from benchmarks.solver_study import build_M, gridworld, policies  # noqa: E402
from fastmeta import linalg  # noqa: E402
from fastmeta._kernels import krylov as folded  # noqa: E402

UNROLLED_COMMIT = "db4e858"


def unrolled_module():
    """The pre-fold kernel module, imported from a scratch copy of its source at UNROLLED_COMMIT."""
    module = kernel_module_at(UNROLLED_COMMIT, "krylov_unrolled")
    # kernels added after the fold (no k = 1..4 loops in them) come from the current module
    for name in set(dir(folded)) - set(dir(module)):
        setattr(module, name, getattr(folded, name))
    return module


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1000, help="grid side (S = side^2)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    unrolled = unrolled_module()
    N = args.side
    M = build_M(gridworld(N), policies(N * N, 4)["random3"], 0.99)
    plan = linalg.analyse(M)
    n = M.shape[0]
    rng = np.random.default_rng(0)
    B4, b1 = rng.random((n, 4)), rng.random(n)
    X4, X1 = rng.random((n, 4)), rng.random((n, 1))
    Y4, Y1 = np.empty_like(X4), np.empty_like(X1)
    m = 7
    V = rng.random((m + 1, n, 4))
    part = np.empty((64, m + 2, 4))
    h = np.empty((m + 2, 4))
    nrm = np.empty(4)
    mods = {"unrolled": unrolled, "folded": folded}
    facs = {}
    for name, mod in mods.items():
        linalg._k = mod
        facs[name] = linalg.factorize(M, "krylov", plan=plan)
    linalg._k = folded
    lv = facs["folded"]._hier.levels[0]  # its block structure; float64 values for the single kernels
    ip, ix, dv = plan.indptr, plan.indices, facs["folded"].data
    invd = 1.0 / dv[plan.diag]

    def work(mod, fac):
        def solves():
            linalg._k = mod
            try:
                fac.solve(B4)
                fac.solve(b1)
                fac.solve_transposed(b1)
            finally:
                linalg._k = folded
        return {
            "3 solves (4 col, 1 col, 1 col transposed)": solves,
            "csr_matvec k=1": lambda: mod.csr_matvec(ip, ix, dv, X1, Y1),
            "csr_matvec k=4": lambda: mod.csr_matvec(ip, ix, dv, X4, Y4),
            "gs_sweep k=1": lambda: mod.gs_sweep(ip, ix, dv, invd, X1, Y1, Y1, lv.nblk, lv.interior, True),
            "gs_sweep k=4": lambda: mod.gs_sweep(ip, ix, dv, invd, B4, Y4, Y4, lv.nblk, lv.interior, True),
            "col_dots j=7 k=4": lambda: mod.col_dots(V, m, X4, part, h),
            "col_lincomb_sub j=7 k=4": lambda: mod.col_lincomb_sub(V, m, h * 1e-3, Y4, part, nrm),
        }

    jobs = {name: work(mod, facs[name]) for name, mod in mods.items()}
    for name in mods:  # compile / load every kernel before timing
        for fn in jobs[name].values():
            fn()
    times = {name: {k: [] for k in jobs[name]} for name in mods}
    for r in range(args.rounds):
        for key in jobs["folded"]:
            for name in (("unrolled", "folded") if r % 2 == 0 else ("folded", "unrolled")):
                times[name][key].append(timed(jobs[name][key]))
    print(f"S = {n}, nnz = {M.nnz}, rounds {args.rounds}, load {os.getloadavg()}, "
          f"iterations (folded) {facs['folded'].iterations}/{facs['folded'].iterations_transposed}")
    print("| work | unrolled median (min) | folded median (min) | ratio of medians | ratio of mins |")
    print("|---|---|---|---|---|")
    for key in jobs["folded"]:
        u, f = np.array(times["unrolled"][key]), np.array(times["folded"][key])
        print(f"| {key} | {np.median(u) * 1e3:.1f} ms ({u.min() * 1e3:.1f}) | {np.median(f) * 1e3:.1f} ms "
              f"({f.min() * 1e3:.1f}) | {np.median(f) / np.median(u):.3f} | {f.min() / u.min():.3f} |", flush=True)


if __name__ == "__main__":
    main()
