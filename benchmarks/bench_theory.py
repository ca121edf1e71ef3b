"""Cost of the theory reports, as ratios measured side by side in one process.

    PYTHONPATH=. python benchmarks/bench_theory.py              # prints, writes to $TMPDIR/fastmeta-bench
    PYTHONPATH=. python benchmarks/bench_theory.py --publish    # also writes bench_results/theory.md
    PYTHONPATH=. python benchmarks/bench_theory.py --sizes 10000 --repeats 3

Meta-RL (issue target: the report costs <= 3x one meta-gradient): the gridworld goal family
of benchmarks/rl_problems.py (A = 4, n = 4 tasks, d = 32 RBF features, gamma = 0.99,
tau = eta = 1) at 10^4 and 10^5 states, omega = theta0 of rl_problems, comparator
0.5 N(0, I) from seed 1, R = 1. Each repeat times one ``value_and_grad`` and then one
``rl_gap`` back to back; the figure is the ratio of the medians. The number of
factorisations of I - gamma P_pi (the dominant cost of both) is counted too.

Meta-SL (target <= 50 ms): n = 32 linear-Gaussian tasks on 20 shared design points,
x in R^10 with affine features (d = 11), squared loss, eta = 0.1; ``sl_gap`` with the
default comparator (the exact minimiser, one least-squares solve) and R = 1.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import rl_problems as rp  # noqa: E402


def count_factorisations():
    """Wrap fastmeta.linalg.factorize to count its calls; returns (counter dict, undo)."""
    from fastmeta import linalg

    original = linalg.factorize
    counter = {"n": 0}

    def counted(*args, **kwargs):
        counter["n"] += 1
        return original(*args, **kwargs)

    linalg.factorize = counted
    return counter, lambda: setattr(linalg, "factorize", original)


def bench_rl(n_states: int, repeats: int) -> dict:
    from fastmeta import theory

    tasks, phi = rp.gridworld(n_states)
    meta = rp.fastmeta_model(tasks, phi)
    omega = rp.theta0()
    comparator = 0.5 * np.random.default_rng(1).standard_normal(phi.shape[2])
    meta.value_and_grad(omega)
    theory.rl_gap(meta, omega, comparator)  # warm-up: compilation and caches
    counter, undo = count_factorisations()
    try:
        meta.value_and_grad(omega)
        fac_grad = counter["n"]
        counter["n"] = 0
        theory.rl_gap(meta, omega, comparator)
        fac_report = counter["n"]
    finally:
        undo()
    t_grad, t_report = [], []
    for _ in range(repeats):
        t_grad += rp.timeit(lambda: meta.value_and_grad(omega), 1)
        t_report += rp.timeit(lambda: theory.rl_gap(meta, omega, comparator), 1)
    g, r = rp.median(t_grad), rp.median(t_report)
    return {"states": phi.shape[0], "solver": rp.solver_of(meta), "gradient_s": g, "report_s": r,
            "ratio": r / g, "fac_gradient": fac_grad, "fac_report": fac_report,
            "min_ratio": min(t_report) / min(t_grad)}


def bench_sl(repeats: int) -> dict:
    import fastmeta
    from fastmeta import theory

    rng = np.random.default_rng(0)
    n, m, p = 32, 20, 10
    X = rng.standard_normal((m, p))
    beta0 = rng.standard_normal(p + 1)
    model = fastmeta.LinearModel("affine")
    F = model.transform(X)
    tasks = [fastmeta.SLTask(X, F @ (beta0 + 0.5 * rng.standard_normal(p + 1)) + 0.1 * rng.standard_normal(m))
             for _ in range(n)]
    meta = fastmeta.MetaSL(tasks, model, eta=0.1)
    omega = meta.fit(steps=50, lr=0.1, progress=False).theta
    theory.sl_gap(meta, omega)
    times = rp.timeit(lambda: theory.sl_gap(meta, omega), repeats)
    return {"tasks": n, "points": m, "d": p + 1, "median_ms": 1e3 * rp.median(times), "min_ms": 1e3 * min(times)}


def conditions() -> str:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    import numba
    return (f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
            f"Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
            f"NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}; warm numba cache (kernels compiled or loaded "
            f"before timing); `uptime`: {load}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--publish", action="store_true", help="write bench_results/theory.md")
    args = parser.parse_args(argv)
    rp.warm_up_kernels()
    before = conditions()
    rl = [bench_rl(s, args.repeats) for s in args.sizes]
    sl = bench_sl(max(args.repeats, 20))
    after = conditions()
    lines = ["# Cost of the theory reports (fastmeta.theory)", "",
             f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with "
             f"`PYTHONPATH=. python benchmarks/bench_theory.py{' --publish' if args.publish else ''}"
             f"{'' if args.sizes == [10_000, 100_000] else ' --sizes ' + ' '.join(map(str, args.sizes))}"
             f"{'' if args.repeats == 5 else ' --repeats ' + str(args.repeats)}`.", "",
             f"Before: {before}", "", f"After: {after}", "",
             "## Meta-RL: `rl_gap` (all terms, one R) against one `value_and_grad`", "",
             "Gridworld goal family, A = 4, n = 4, d = 32, gamma = 0.99, tau = eta = 1; medians of "
             f"{args.repeats} interleaved repeats. Target: ratio <= 3.", "",
             "| states | solver | gradient (s) | report (s) | ratio of medians | ratio of minima | "
             "factorisations gradient / report |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for row in rl:
        lines.append(f"| {row['states']} | {row['solver']} | {row['gradient_s']:.3f} | {row['report_s']:.3f} | "
                     f"{row['ratio']:.2f} | {row['min_ratio']:.2f} | {row['fac_gradient']} / {row['fac_report']} |")
    lines += ["", "The report runs the adjoint pass at omega (1 + n factorisations, as the gradient), one more "
              "main-effect factorisation per group for the n meta-visitation columns, and the adapted visitations "
              "at the comparator (1 + n); then a d x d Gram eigenproblem for the projections.", "",
              "## Meta-SL: `sl_gap` with the exact comparator", "",
              f"n = {sl['tasks']} tasks on {sl['points']} shared design points, d = {sl['d']}, squared loss. "
              "Target: <= 50 ms.", "",
              f"median {sl['median_ms']:.1f} ms, min {sl['min_ms']:.1f} ms", ""]
    text = "\n".join(lines)
    print(text)
    out = (ROOT / "bench_results" if args.publish else Path(tempfile.gettempdir()) / "fastmeta-bench") / "theory.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
