"""One exact meta-gradient at a very large state count, with time and peak memory.

    PYTHONPATH=. python benchmarks/huge_gradient.py --states 10000000

The benchmark problem (gridworld goals, n = 4, d = 32 RBF features computed on the fly,
gamma 0.99, A = 4, theta = 0.5 N(0, I)); one ``MetaRL.value_and_grad`` call (cold: it
includes the lazily built solver plan and the first factorisations) after the kernels
were compiled on a small problem. Prints one JSON line: seconds per stage, peak RSS,
the load average before and after. For the repeated, warm measurements at 10^4-10^6
use ``run_rl_targets.py`` (its gridmap-1e7 case runs two gradients and an objective).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=10_000_000)
    args = ap.parse_args()
    import fastmeta
    load0 = os.getloadavg()
    small, fmap = fastmeta.tasks.gridworld_goals(4, 20, feature_map=True, seed=0)
    fastmeta.MetaRL(small, fastmeta.LinearEnergy(fmap), solver="krylov").value_and_grad(np.zeros(32))
    t0 = time.perf_counter()
    side = int(round(np.sqrt(args.states)))
    tasks, fmap = fastmeta.tasks.gridworld_goals(4, side, feature_map=True, seed=0)
    t_build = time.perf_counter() - t0
    rss_problem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(fmap), tau=1.0, eta=1.0)
    t_construct = time.perf_counter() - t0
    theta = 0.5 * np.random.default_rng(0).standard_normal(32)
    t0 = time.perf_counter()
    value, grad = meta.value_and_grad(theta)
    t_grad = time.perf_counter() - t0
    print(json.dumps(dict(states=side * side, solver=meta.solver_methods, build_s=t_build,
                          construct_s=t_construct, gradient_s=t_grad, value=float(value),
                          grad_norm=float(np.linalg.norm(grad)),
                          peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                          peak_rss_after_problem_gb=rss_problem, load_before=load0,
                          load_after=os.getloadavg())), flush=True)


if __name__ == "__main__":
    main()
