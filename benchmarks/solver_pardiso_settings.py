"""PARDISO settings on the 10^5-state meta-gradient, side by side in one process.

    PYTHONPATH=. python benchmarks/solver_pardiso_settings.py --side 316 --rounds 7

The benchmark problem (gridworld goals, n = 4, d = 32, gamma 0.99, tau = eta = 1,
theta = 0.5 N(0, I), seed 0) with ``solver="pardiso"``: one MetaRL per setting (each
with its own plan, so its own pool of analysed PARDISO handles), one untimed gradient
each, then ``rounds`` rounds of one ``value_and_grad`` per setting, the order reversed
every other round. Settings (``fastmeta._pardiso``):

* ``classic``: ``iparm[23] = 0``, the classic factorisation (before this study);
* ``two-level``: ``iparm[23] = 1``, two-level parallel factorisation (the default now);
* ``two-level+par-solve``: and ``iparm[24] = 1`` (parallel forward/backward solve);
* ``classic+CNR``: the classic one in conditional-numerical-reproducibility mode
  (``iparm[33] = 2``).

Checks too that repeated factorisations and solves of one matrix give the same bits.

Also times the pieces on the main effect's M alone (factorisation, 1 and 4 columns,
transposed or not). Prints medians and minima; the load average is printed beside.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {  # iparm entries changed from fastmeta._pardiso.IPARM
    "classic": {23: 0},
    "two-level": {},
    "two-level+par-solve": {24: 1},
    "classic+CNR": {23: 0, 33: 2},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=316)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    args = ap.parse_args()
    import fastmeta
    from fastmeta import _pardiso

    tasks, phi = fastmeta.tasks.gridworld_goals(4, args.side, slip=0.1, gamma=0.99, seed=0)
    theta = 0.5 * np.random.default_rng(0).standard_normal(32)
    metas = {}
    default = dict(_pardiso.IPARM)
    for name in args.settings:
        _pardiso.IPARM = {**default, **SETTINGS[name]}
        meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), solver="pardiso")
        meta.value_and_grad(theta)  # analyses (and pools) its handles with these settings
        metas[name] = meta
    # the pieces, on the main effect's M
    first = metas[args.settings[0]]
    M = first._task_pattern[0].matrix(tasks[0].P, first._main_policy(first.model.energy(theta)), 0.99)
    rng = np.random.default_rng(1)
    b, B = rng.random(M.shape[0]), rng.random((M.shape[0], 4))
    print(f"S = {M.shape[0]}, load {os.getloadavg()}")
    print("| setting | factorise | solve 1 | solve^T 1 | solve 4 | solve^T 4 | (ms, medians of 5) |\n|---|---|---|---|---|---|---|")
    for name, meta in metas.items():
        _pardiso.IPARM = {**default, **SETTINGS[name]}
        # this setting's own plan: its pooled handles were analysed with its iparm
        fac = fastmeta.linalg.factorize(M, "pardiso", plan=meta._task_pattern[0].plan)
        def med(fn):
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return 1e3 * statistics.median(ts)
        pieces = [med(lambda: fac._handle.factor(M.data)), med(lambda: fac.solve(b)),
                  med(lambda: fac.solve_transposed(b)), med(lambda: fac.solve(B)), med(lambda: fac.solve_transposed(B))]
        X = fac.solve_transposed(B)
        res = np.abs(M.T @ X - B).max()
        for _ in range(3):  # run-to-run reproducibility of the factorisation and the solves
            fac._handle.factor(M.data)
            if not (np.array_equal(fac.solve_transposed(B), X) and np.array_equal(fac.solve(b), fac.solve(b))):
                print(f"| {name} | NOT REPRODUCIBLE run to run |")
                break
        print(f"| {name} | " + " | ".join(f"{p:.1f}" for p in pieces) + f" | residual {res:.1e} |")
        del fac
    times = {name: [] for name in metas}
    grads = {}
    for r in range(args.rounds):
        order = list(metas) if r % 2 == 0 else list(metas)[::-1]
        for name in order:
            meta = metas[name]
            _pardiso.IPARM = {**default, **SETTINGS[name]}
            t0 = time.perf_counter()
            grads[name] = meta.value_and_grad(theta)[1]
            times[name].append(time.perf_counter() - t0)
    _pardiso.IPARM = default
    ref = grads[args.settings[0]]
    print(f"\nwhole gradients, {args.rounds} rounds, load {os.getloadavg()}\n")
    print("| setting | median s | min s | median / first | rel. diff of grad |\n|---|---|---|---|---|")
    base = statistics.median(times[args.settings[0]])
    for name, ts in times.items():
        diff = np.linalg.norm(grads[name] - ref) / np.linalg.norm(ref)
        print(f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} | {statistics.median(ts) / base:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
