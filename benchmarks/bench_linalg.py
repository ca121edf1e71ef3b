"""asv benchmarks of fastmeta.linalg: set-up and solves of M = I - gamma P_pi per method.

The system is the gridworld benchmark's main-effect matrix at theta = 0.5 N(0, I)
(gamma 0.99) with the 4 task rewards as an (S, 4) block, solved with M and M^T to a
relative residual of 1e-10 (krylov). ``setup`` builds the matrix and the pattern plan
(and PARDISO's analysis), so only the per-matrix work is timed, as in one meta-gradient.
The full comparison with pyamg, SciPy's Krylov methods and value iteration is
``benchmarks/solver_comparison.py`` (bench_results/solver_study.md).
"""
from __future__ import annotations

import numpy as np

from . import rl_problems as rp


class LinalgMethods:
    params = ([10_000, 100_000], ["splu", "pardiso", "krylov"])
    param_names = ["n_states", "method"]
    number = 1
    warmup_time = 0.0
    timeout = 600

    def setup(self, n_states, method):
        import fastmeta
        from fastmeta import linalg
        from fastmeta.rl import PolicyPattern
        if method == "pardiso" and not linalg._pardiso.available():
            raise NotImplementedError("pypardiso not installed")  # asv: skipped
        tasks, phi = rp.PROBLEMS["grid"](n_states)
        f = fastmeta.LinearEnergy(phi).energy(rp.theta0())
        pi = np.exp(f - f.max(axis=1, keepdims=True))
        pi /= pi.sum(axis=1, keepdims=True)
        P, S, A = tasks[0].P, tasks[0].n_states, tasks[0].n_actions
        self.M = PolicyPattern.build(P, S, A, "krylov", 1e-10, None).matrix(P, pi, tasks[0].gamma)
        self.B = np.column_stack([t.r @ np.full(4, 0.25) for t in tasks])
        self.plan = linalg.analyse(self.M)
        self.plan.transpose_pattern
        self.linalg = linalg
        self.time_setup_and_solves(n_states, method)  # compile, analyse, pool

    def time_setup_and_solves(self, n_states, method):
        fac = self.linalg.factorize(self.M, method, rtol=1e-10, plan=self.plan)
        fac.solve(self.B)
        fac.solve_transposed(self.B)

    def peakmem_setup_and_solves(self, n_states, method):
        self.time_setup_and_solves(n_states, method)
