"""Steps of Algorithm 1 with and without warm starts across outer steps (``MetaRL(warm_start=True)``).

    PYTHONPATH=. python benchmarks/solver_warm_fit.py --side 1000 --steps 3 --lr 1 1e6     # scratch dir
    flock /tmp/fastmeta-bench.lock env PYTHONPATH=. python benchmarks/solver_warm_fit.py --side 1000 --steps 3 --lr 1 1e6 --publish

The benchmark problem (gridworld goals, n = 4, d = 32 RBF features computed on the fly,
gamma 0.99, tau = eta = 1, ``solver="krylov"``), from theta_0 = 0.5 N(0, I) (seed 0), with
``MetaRL.fit``'s default step size (lr = 1; here grad L is about 1e-7, so theta hardly
moves: the best case for warm starts) and larger ones (lr = 1e6 moves theta by about 4% of
its norm per step). For each lr, two fresh MetaRL objects, cold and warm, take the same
steps: at every step both compute ``value_and_grad`` at the cold run's theta (so they solve
the same systems), timed one after the other (the order alternates between steps), with the
GMRES iterations of all solves counted. Step 0 of the warm object is a cold start (it has no
stored solution yet). Reports seconds and iterations per step, the relative difference of
the warm gradient from the cold one, the load average, and writes
``solver_warm_fit.{json,md}``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._output import add_publish_flag, output_dir  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--lr", type=float, nargs="+", default=[1.0])
    add_publish_flag(ap)
    args = ap.parse_args()
    import numba
    import fastmeta
    from fastmeta import linalg

    iterations = []
    orig = linalg.KrylovSolver._gmres

    def counted(self, *args, **kwargs):  # every block of every solve (solve, solve_transposed, solve_each)
        x, its, rel = orig(self, *args, **kwargs)
        iterations.append(its)
        return x, its, rel

    linalg.KrylovSolver._gmres = counted
    small, fmap = fastmeta.tasks.gridworld_goals(4, 20, feature_map=True, seed=0)
    fastmeta.MetaRL(small, fastmeta.LinearEnergy(fmap), solver="krylov").value_and_grad(np.zeros(32))
    tasks, fmap = fastmeta.tasks.gridworld_goals(4, args.side, slip=0.1, gamma=0.99, features="rbf",
                                                 n_features=32, feature_map=True, seed=0)
    summaries = []
    for lr in args.lr:
        metas = {w: fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(fmap), tau=1.0, eta=1.0, solver="krylov",
                                    warm_start=w) for w in (False, True)}
        theta = 0.5 * np.random.default_rng(0).standard_normal(32)
        rows = []
        for step in range(args.steps + 1):
            out = {}
            order = (False, True) if step % 2 == 0 else (True, False)
            for w in order:
                del iterations[:]
                t0 = time.perf_counter()
                L, g = metas[w].value_and_grad(theta)
                out[w] = (time.perf_counter() - t0, sum(iterations), L, g)
            (tc, ic, Lc, gc), (tw, iw, Lw, gw) = out[False], out[True]
            rows.append(dict(lr=lr, step=step, cold_s=tc, warm_s=tw, cold_iterations=ic, warm_iterations=iw,
                             objective=Lc, grad_norm=float(np.linalg.norm(gc)),
                             step_norm=float(lr * np.linalg.norm(gc)),
                             objective_rel_diff=abs(Lw - Lc) / abs(Lc),
                             grad_rel_diff=float(np.linalg.norm(gw - gc) / np.linalg.norm(gc)),
                             load=os.getloadavg()))
            print(json.dumps(rows[-1]), flush=True)
            theta = theta + lr * gc
        del metas
        later = rows[1:]
        summaries.append(dict(
            lr=lr, cold_median_s=statistics.median(r["cold_s"] for r in later),
            warm_median_s=statistics.median(r["warm_s"] for r in later),
            cold_median_iterations=statistics.median(r["cold_iterations"] for r in later),
            warm_median_iterations=statistics.median(r["warm_iterations"] for r in later), rows=rows))
    summary = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   states=args.side ** 2, steps=args.steps, numba_threads=numba.get_num_threads(),
                   runs=summaries)
    dest = output_dir(args.publish)
    (dest / "solver_warm_fit.json").write_text(json.dumps(summary, indent=1) + "\n")
    lrs = " ".join(f"{lr:g}" for lr in args.lr)
    lines = [
        "# Warm starts across the outer steps of Algorithm 1",
        "",
        f"Measured by `python benchmarks/solver_warm_fit.py --side {args.side} --steps {args.steps} --lr {lrs}"
        f"{' --publish' if args.publish else ''}` on {summary['date']} (numba threads "
        f"{summary['numba_threads']}, warm numba cache; machine: `machine.md`).",
        "",
        f"Gridworld goals, S = {args.side ** 2:,}, n = 4, d = 32 (features on the fly), gamma 0.99, "
        "tau = eta = 1, solver krylov (rtol 1e-10), theta_0 = 0.5 N(0, I), steps theta += lr grad L. "
        "Per step, `value_and_grad` of a cold MetaRL and of one with `warm_start=True` at the same theta, "
        "one after the other (order alternating); step 0 is a cold start for both.",
        "",
        "| lr | step | ‖lr grad L‖ | cold s | warm s | warm / cold | cold iterations | warm iterations "
        "| rel. diff of grad L, warm vs cold | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in summaries:
        for r in run["rows"]:
            lines.append(f"| {r['lr']:g} | {r['step']} | {r['step_norm']:.1e} | {r['cold_s']:.2f} | {r['warm_s']:.2f} | "
                         f"{r['warm_s'] / r['cold_s']:.2f} | {r['cold_iterations']} | {r['warm_iterations']} | "
                         f"{r['grad_rel_diff']:.1e} | {', '.join(f'{v:.1f}' for v in r['load'])} |")
    lines.append("")
    for run in summaries:
        lines.append(f"lr = {run['lr']:g}, steps 1-{args.steps}, medians: cold {run['cold_median_s']:.2f} s "
                     f"({run['cold_median_iterations']:g} iterations), warm {run['warm_median_s']:.2f} s "
                     f"({run['warm_median_iterations']:g} iterations).")
    (dest / "solver_warm_fit.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {dest / 'solver_warm_fit.md'}")


if __name__ == "__main__":
    main()
