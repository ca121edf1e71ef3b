"""Where one meta-gradient spends its time: every linear solve, every set-up, and the rest.

    PYTHONPATH=. python benchmarks/solver_profile.py --side 1000 --features map --repeats 2
    PYTHONPATH=. python benchmarks/solver_profile.py --side 316                 # PARDISO at 10^5

The benchmark problem (gridworld goals, n = 4, d = 32 RBF features, gamma 0.99, tau =
eta = 1, theta = 0.5 N(0, I), seed 0). ``MetaRL.value_and_grad`` is run once untimed
(compilation, plan), then ``repeats`` times with ``linalg.factorize`` and the solver
objects' ``solve``/``solve_transposed`` wrapped (and, for the Krylov method, the AMG
hierarchy's construction): one line per factorisation/set-up and per solve (matrix,
columns, transposed or not, warm start or not, iterations, seconds), then the total,
the time in solver calls and the time outside them (policies, features, dL/df). The
wrappers add a few microseconds per call. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def profile(meta, theta):
    """(events, total seconds) of one ``meta.value_and_grad(theta)``."""
    from fastmeta import linalg
    events = []
    orig_factorize = linalg.factorize
    orig_hier = linalg._Hierarchy.__init__
    count = [0]

    def hier(self, *a, **k):
        t = time.perf_counter()
        orig_hier(self, *a, **k)
        events.append(dict(kind="AMG set-up", levels=len(self.levels), seconds=time.perf_counter() - t))

    def factorize(M, *a, **k):
        t = time.perf_counter()
        fac = orig_factorize(M, *a, **k)
        idx = count[0]
        count[0] += 1
        name = "M" if idx == 0 else f"M_{idx}"
        events.append(dict(kind="factorize", matrix=name, seconds=time.perf_counter() - t))
        solve, solve_t = fac.solve, fac.solve_transposed

        def wrap(fn, trans):
            def call(b, x0=None):
                t = time.perf_counter()
                x = fn(b, x0)
                its = getattr(fac, "iterations_transposed" if trans else "iterations", None)
                events.append(dict(kind="solve", matrix=name + ("^T" if trans else ""),
                                   columns=1 if np.ndim(b) == 1 else np.shape(b)[1],
                                   warm=x0 is not None, iterations=its, seconds=time.perf_counter() - t))
                return x
            return call

        fac.solve, fac.solve_transposed = wrap(solve, False), wrap(solve_t, True)
        return fac

    linalg.factorize, linalg._Hierarchy.__init__ = factorize, hier
    try:
        t0 = time.perf_counter()
        meta.value_and_grad(theta)
        total = time.perf_counter() - t0
    finally:
        linalg.factorize, linalg._Hierarchy.__init__ = orig_factorize, orig_hier
    return events, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1000)
    ap.add_argument("--features", choices=("map", "array"), default="map")
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    import numba
    import fastmeta
    tasks, phi = fastmeta.tasks.gridworld_goals(4, args.side, slip=0.1, gamma=0.99, features="rbf",
                                                n_features=32, feature_map=args.features == "map", seed=0)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=1.0, eta=1.0, solver=args.solver)
    theta = 0.5 * np.random.default_rng(0).standard_normal(32)
    t0 = time.perf_counter()
    meta.value_and_grad(theta)
    print(f"S = {args.side ** 2}, solver {meta.solver_methods}, numba threads {numba.get_num_threads()}, "
          f"first call {time.perf_counter() - t0:.2f} s, load {os.getloadavg()}", flush=True)
    for r in range(args.repeats):
        events, total = profile(meta, theta)
        print(f"\nrepeat {r + 1}: load {os.getloadavg()}\n")
        print("| step | matrix | columns | warm start | iterations | s |\n|---|---|---|---|---|---|")
        for e in events:
            if e["kind"] == "solve":
                print(f"| solve | {e['matrix']} | {e['columns']} | {'yes' if e['warm'] else 'no'} | "
                      f"{e['iterations'] if e['iterations'] is not None else '-'} | {e['seconds']:.3f} |")
            elif e["kind"] == "factorize":
                print(f"| factorize / set-up | {e['matrix']} | | | | {e['seconds']:.3f} |")
            else:
                print(f"| {e['kind']} ({e['levels']} levels) | | | | | {e['seconds']:.3f} |")
        in_solver = sum(e["seconds"] for e in events if e["kind"] in ("solve", "factorize"))
        its = sum(e["iterations"] or 0 for e in events if e["kind"] == "solve")
        print(f"\ntotal {total:.3f} s; in factorize + solves {in_solver:.3f} s "
              f"(AMG set-ups {sum(e['seconds'] for e in events if e['kind'] == 'AMG set-up'):.3f} s, "
              f"inside those: M^T's is built in its first transposed solve); outside {total - in_solver:.3f} s; "
              f"iterations {its}", flush=True)


if __name__ == "__main__":
    main()
