"""Two versions of fastmeta side by side in one process: gradient time on RL^2 batches.

    PYTHONPATH=. python benchmarks/ab_versions.py --before 86e33e5 --cases 10x1 16x8 64x8 100x8 300x4

The package at ``--before`` (read with ``git archive``) and the working tree are copied to a
scratch directory as ``fm_before`` and ``fm_after`` (their own Numba caches there) and
imported next to each other. Each case (S x n RL^2 random MDPs, k = 4, A = 4, d = 16) is
built by both versions; the bits of their gradients are compared, then ``gradient`` is timed
in alternating rounds (order reversed every other round) and the medians are printed with
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
        S, n = map(int, case.split("x"))
        grads = []
        for fm in versions:
            tasks, phi = fm.tasks.random_mdps(n_tasks=n, n_states=S, n_actions=4, k=4, gamma=0.99,
                                              n_features=16, seed=0)
            theta = 0.5 * np.random.default_rng(0).standard_normal(16)
            meta = fm.MetaRL(tasks, fm.LinearEnergy(phi))
            grads.append(meta.gradient(theta))
            runs[case, fm.__name__] = (meta, theta)
        print(f"S = {S}, n = {n}: same bits {np.array_equal(*grads)}", flush=True)
    times = {key: [] for key in runs}
    for r in range(args.rounds):
        for key in (runs if r % 2 == 0 else list(runs)[::-1]):
            meta, theta = runs[key]
            t0, calls = time.perf_counter(), 0
            while time.perf_counter() - t0 < args.seconds:
                meta.gradient(theta)
                calls += 1
            times[key].append((time.perf_counter() - t0) / calls)
    print(f"\nload {os.getloadavg()[0]:.1f}; medians of {args.rounds} alternating rounds")
    print("| S | n | before | after | after / before |\n|---|---|---|---|---|")
    for case in args.cases:
        S, n = case.split("x")
        b, a = (float(np.median(times[case, name])) * 1e6 for name in ("fm_before", "fm_after"))
        print(f"| {S} | {n} | {b:.1f} us | {a:.1f} us | {a / b:.3f} |")


if __name__ == "__main__":
    main()
