"""The adapted systems of a meta-gradient in lockstep against one by one, side by side in one process.

    PYTHONPATH=. python benchmarks/lockstep_ab.py --states 1000000 --rounds 2            # gridworld, features on the fly
    PYTHONPATH=. python benchmarks/lockstep_ab.py --states 100000 --rounds 4 --family random

One problem of ``rl_problems`` (n = 4 tasks, d = 32, gamma 0.99), one MetaRL; each round calls
``value_and_grad`` at theta_0 once with ``fastmeta.rl.LOCKSTEP_ADAPTED`` True and once False (the
order alternates between rounds), after an untimed warm-up round. Prints wall and process CPU
seconds per call, the gradient's relative difference between the two paths and the load average,
then the medians and their ratio. Writes nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=1_000_000)
    ap.add_argument("--family", choices=("gridmap", "grid", "random"), default="gridmap")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import rl_problems as rp
    from fastmeta import rl

    tasks, phi = rp.PROBLEMS[args.family](args.states)
    meta = rp.fastmeta_model(tasks, phi)
    theta = rp.theta0()
    wall = {True: [], False: []}
    cpu = {True: [], False: []}
    reference = None
    for r in range(args.rounds + 1):
        for lockstep in ((True, False) if r % 2 == 0 else (False, True)):
            rl.LOCKSTEP_ADAPTED = lockstep
            t, c = time.perf_counter(), time.process_time()
            _, g = meta.value_and_grad(theta)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            reference = g if reference is None else reference
            diff = np.abs(g - reference).max() / np.abs(reference).max()
            print(f"round {r}{' (warm-up)' if r == 0 else ''} {'lockstep' if lockstep else 'one by one'}: "
                  f"{dt:.2f} s, CPU {dc:.1f} s, gradient rel. diff {diff:.1e}, load {os.getloadavg()[0]:.1f}",
                  flush=True)
            if r:
                wall[lockstep].append(dt)
                cpu[lockstep].append(dc)
    rl.LOCKSTEP_ADAPTED = True
    lock, one = statistics.median(wall[True]), statistics.median(wall[False])
    print(f"median: lockstep {lock:.2f} s (CPU {statistics.median(cpu[True]):.1f} s), one by one {one:.2f} s "
          f"(CPU {statistics.median(cpu[False]):.1f} s), lockstep / one by one {lock / one:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
