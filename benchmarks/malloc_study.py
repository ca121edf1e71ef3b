"""Page faults and CPU of one-process gradients under three glibc malloc settings.

    PYTHONPATH=. python benchmarks/malloc_study.py [--tasks 32] [--rounds 2]

Each setting runs in its own process (malloc settings cannot be undone), alternating, on one
Numba thread: a plain process; Dask's worker setting (``MALLOC_TRIM_THRESHOLD_=65536``, which
also freezes glibc's mmap threshold at 128 KiB); and Dask's setting followed by
``fastmeta.distributed.WORKER_MALLOC`` (what a DaskMetaRL worker runs with). Prints, per
setting and round, the median over 3 gradients of CPU (user + system), system CPU and minor
page faults for n gridworld tasks of 10^4 states with their own kernels. Writes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {"plain": {}, "dask": {"MALLOC_TRIM_THRESHOLD_": "65536"},
            "dask + WORKER_MALLOC": {"MALLOC_TRIM_THRESHOLD_": "65536"}}


def child(n: int, tune: bool) -> None:
    import resource
    import statistics

    if tune:
        from fastmeta.distributed import WORKER_MALLOC, _set_malloc_thresholds

        _set_malloc_thresholds(*WORKER_MALLOC)
    import numba
    import numpy as np

    import fastmeta
    from benchmarks.bench_distributed import tasks_with_own_kernels

    numba.set_num_threads(1)
    model = fastmeta.LinearEnergy(fastmeta.tasks.random_features(10_000, 4, 16, seed=0))
    theta = np.full(model.n_params, 0.1)
    meta = fastmeta.MetaRL(tasks_with_own_kernels(n, 100), model, task_workers=1)
    meta.value_and_grad(theta)
    runs = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF)
        meta.value_and_grad(theta)
        after = resource.getrusage(resource.RUSAGE_SELF)
        sys_cpu = after.ru_stime - before.ru_stime
        runs.append((after.ru_utime - before.ru_utime + sys_cpu, sys_cpu, after.ru_minflt - before.ru_minflt))
    print(json.dumps([statistics.median(r[k] for r in runs) for k in range(3)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=["plain", "tuned"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.tasks, args.child == "tuned")
        return
    print(f"{args.tasks} tasks of 10^4 states, one Numba thread; load average {os.getloadavg()[0]:.1f}")
    for r in range(args.rounds):
        for name, env in SETTINGS.items():
            mode = "tuned" if "WORKER_MALLOC" in name else "plain"
            done = subprocess.run([sys.executable, __file__, "--tasks", str(args.tasks), "--child", mode],
                                  env={**os.environ, **env}, check=True, capture_output=True, text=True)
            cpu, sys_cpu, faults = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {r}  {name:<22} CPU {cpu:.2f} s  system {sys_cpu:.2f} s  page faults {faults:.0f}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
