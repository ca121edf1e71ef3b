"""Two versions of fastmeta side by side in one process: gradient time on RL^2 batches or gridworlds.

    PYTHONPATH=. python benchmarks/ab_versions.py --before 86e33e5 --cases 10x1 16x8 64x8 100x8 300x4
    PYTHONPATH=. python benchmarks/ab_versions.py --before 60419a1 --cases grid1000000 --rounds 3

The package at ``--before`` (read with ``git archive``) and the working tree are copied to a
scratch directory as ``fm_before`` and ``fm_after`` (their own Numba caches there) and
imported next to each other. Each case is built by both versions: ``SxN``, N RL^2 random MDPs
of S states (k = 4, A = 4, d = 16); ``gridS``, the targets' gridworld of about S states with
features on the fly (``rl_problems.gridworld_map``: n = 4, d = 32, gamma 0.99). The bits of
their gradients are compared, then ``gradient`` is timed in alternating rounds (order
reversed every other round; at least one call per round) and the medians are printed with
their ratio. Alternating in one process is what makes a few-percent difference visible on a
shared machine whose speed changes by 2x from one minute to the next.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _copy_versions(before: str, scratch: Path) -> None:
    for name in ("fm_before", "fm_after"):
        shutil.rmtree(scratch / name, ignore_errors=True)
    tar = subprocess.run(["git", "archive", before, "fastmeta"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(scratch / "_before", filter="data")
    shutil.move(str(scratch / "_before" / "fastmeta"), str(scratch / "fm_before"))
    shutil.rmtree(scratch / "_before")
    shutil.copytree(ROOT / "fastmeta", scratch / "fm_after", ignore=shutil.ignore_patterns("__pycache__"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git commit of the 'before' version")
    ap.add_argument("--cases", nargs="+", default=["10x1", "16x8", "64x8", "100x8", "300x4"], help="S x n")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.05, help="timed calls per case and round, in seconds")
    args = ap.parse_args(argv)
    scratch = Path(os.environ.get("FASTMETA_BENCH_SCRATCH", Path(tempfile.gettempdir()) / "fastmeta-bench")) / "ab"
    scratch.mkdir(parents=True, exist_ok=True)
    _copy_versions(args.before, scratch)
    sys.path.insert(0, str(scratch))
    versions = [importlib.import_module(name) for name in ("fm_before", "fm_after")]
    runs = {}
    for case in args.cases:
        grads = []
        for fm in versions:
            meta, theta = _problem(fm, case)
            grads.append(meta.gradient(theta))
            runs[case, fm.__name__] = (meta, theta)
        print(f"{case}: same bits {np.array_equal(*grads)}", flush=True)
    times = {key: [] for key in runs}
    for r in range(args.rounds):
        for key in (runs if r % 2 == 0 else list(runs)[::-1]):
            meta, theta = runs[key]
            t0, calls = time.perf_counter(), 0
            while calls == 0 or time.perf_counter() - t0 < args.seconds:
                meta.gradient(theta)
                calls += 1
            times[key].append((time.perf_counter() - t0) / calls)
    print(f"\nload {os.getloadavg()[0]:.1f}; medians of {args.rounds} alternating rounds")
    print("| case | before | after | after / before |\n|---|---|---|---|")
    for case in args.cases:
        b, a = (float(np.median(times[case, name])) for name in ("fm_before", "fm_after"))
        print(f"| {case} | {_seconds(b)} | {_seconds(a)} | {a / b:.3f} |")


def _seconds(t: float) -> str:
    return f"{t:.2f} s" if t >= 1.0 else f"{t * 1e3:.2f} ms" if t >= 1e-3 else f"{t * 1e6:.1f} us"


def _problem(fm, case):
    """(MetaRL, theta) of a case, built by the fastmeta module ``fm``."""
    from benchmarks import rl_problems as rp
    if case.startswith("grid"):
        tasks, phi = fm.tasks.gridworld_goals(n_tasks=rp.N_TASKS, size=rp.grid_side(int(case[4:])), slip=0.1,
                                              gamma=rp.GAMMA, features="rbf", n_features=rp.N_FEATURES,
                                              feature_map=True, seed=0)
        return fm.MetaRL(tasks, fm.LinearEnergy(phi), tau=rp.TAU, eta=rp.ETA), rp.theta0()
    S, n = map(int, case.split("x"))
    tasks, phi = fm.tasks.random_mdps(n_tasks=n, n_states=S, n_actions=4, k=4, gamma=0.99, n_features=16, seed=0)
    return fm.MetaRL(tasks, fm.LinearEnergy(phi)), 0.5 * np.random.default_rng(0).standard_normal(16)


if __name__ == "__main__":
    main()
