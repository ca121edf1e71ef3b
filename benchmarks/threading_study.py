"""Threads under load: BLAS threads for the small dense solves, and Numba's threading layer.

Two questions, each answered by ratios measured side by side (medians of interleaved
repeats), under the machine's current load plus ``--load N`` busy-looping processes
that this script starts and stops:

1. BLAS. fastmeta runs its dense LU calls with one BLAS thread
   (``fastmeta._blas.single_threaded_blas``). In this process: one meta-gradient of the
   S = 100 gridworld family and one ``fastmeta demo`` (300 steps, no plot), with the
   limit and with it replaced by a no-op.
2. Numba's parallel kernels. In fresh subprocesses (the setting must precede the
   thread pool's start): the OpenMP layer with GNU OpenMP's default wait policy (the
   pool started before fastmeta is imported, so fastmeta cannot choose), with passive
   waiting for Numba's pool only (what ``import fastmeta`` does, ``fastmeta._threads``),
   with ``OMP_WAIT_POLICY=PASSIVE`` exported for the whole process, and Numba's
   ``workqueue`` layer; one gradient of the 10^4-state gridworld family (parallel
   kernels) and of S = 100 (mostly serial kernels).

    PYTHONPATH=. python benchmarks/threading_study.py --load 2            # scratch output
    PYTHONPATH=. python benchmarks/threading_study.py --load 2 --publish  # bench_results/threading.md
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._output import add_publish_flag, output_dir  # noqa: E402

# name -> (environment, start Numba's threads before importing fastmeta)
LAYERS = {
    "OpenMP, GNU default wait (pool started before fastmeta)": ({"NUMBA_THREADING_LAYER": "omp"}, True),
    "OpenMP, passive for Numba's pool only (fastmeta's default)": ({"NUMBA_THREADING_LAYER": "omp"}, False),
    "OpenMP, OMP_WAIT_POLICY=PASSIVE exported": ({"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "PASSIVE"},
                                                False),
    "workqueue": ({"NUMBA_THREADING_LAYER": "workqueue"}, False),
}

WORKER = r"""
import json, statistics, sys, time
import numpy as np
sys.path.insert(0, {root!r})
import numba
if {prelaunch}:
    from numba.np.ufunc import parallel
    parallel._launch_threads()
import fastmeta
from benchmarks import rl_problems as rp
out = {{}}
for S in (100, 10_000):
    tasks, phi = rp.gridworld(S)
    meta = rp.fastmeta_model(tasks, phi)
    theta = rp.theta0()
    meta.gradient(theta)
    times = []
    for _ in range({repeats}):
        t = time.perf_counter(); meta.gradient(theta); times.append(time.perf_counter() - t)
    out[S] = statistics.median(times)
out["layer"] = numba.threading_layer()
print(json.dumps(out))
"""


def _median_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Medians of ``fn_a`` and ``fn_b`` timed alternately."""
    a, b = [], []
    for _ in range(repeats):
        for fn, acc in ((fn_a, a), (fn_b, b)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return statistics.median(a), statistics.median(b)


def blas_study(repeats: int, demo_repeats: int) -> dict:
    """Time S = 100 gradients and the demo with and without the one-BLAS-thread limit."""
    import fastmeta.linalg as linalg
    from benchmarks import rl_problems as rp
    from fastmeta.cli import run_rl_demo

    limited = linalg.single_threaded_blas

    def variant(on: bool):
        def wrap(fn):
            def run():
                linalg.single_threaded_blas = limited if on else contextlib.nullcontext
                try:
                    fn()
                finally:
                    linalg.single_threaded_blas = limited
            return run
        return wrap

    tasks, phi = rp.gridworld(100)
    meta = rp.fastmeta_model(tasks, phi)
    theta = rp.theta0()
    meta.gradient(theta)
    grad = _median_pair(variant(True)(lambda: meta.gradient(theta)), variant(False)(lambda: meta.gradient(theta)),
                        repeats)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        run_rl_demo(steps=5, plot=None, progress=False)          # compile / load the kernels
        demo = _median_pair(variant(True)(lambda: run_rl_demo(plot=None, progress=False)),
                            variant(False)(lambda: run_rl_demo(plot=None, progress=False)), demo_repeats)
    from threadpoolctl import threadpool_info

    blas = [{k: lib.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return {"gradient_S100": grad, "demo": demo, "blas": blas}


def layer_study(repeats: int, rounds: int) -> dict:
    """Per threading layer, median gradient seconds at S = 100 and 10^4.

    Each round runs every layer once, in a fresh subprocess, one after the other, so
    a change of the machine's load hits all layers alike; the result is the median
    over rounds of each subprocess's median.
    """
    root = str(Path(__file__).resolve().parent.parent)
    runs: dict[str, list[dict]] = {name: [] for name in LAYERS}
    for _ in range(rounds):
        for name, (env, prelaunch) in LAYERS.items():
            full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER")}
            full.update(env)
            code = WORKER.format(root=root, repeats=repeats, prelaunch=prelaunch)
            proc = subprocess.run([sys.executable, "-c", code], env=full,
                                  capture_output=True, text=True, check=True)
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {name: {"layer": rows[0]["layer"], "100": statistics.median(r["100"] for r in rows),
                   "10000": statistics.median(r["10000"] for r in rows)} for name, rows in runs.items()}


def _loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--load", type=int, default=0, help="busy-looping processes to start for the run")
    parser.add_argument("--repeats", type=int, default=21, help="timed gradients per variant")
    parser.add_argument("--demo-repeats", type=int, default=3, help="timed demos per variant")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of threading-layer subprocesses")
    add_publish_flag(parser)
    args = parser.parse_args()
    if args.load < 0 or args.repeats < 1 or args.demo_repeats < 1 or args.rounds < 1:
        parser.error("--load must be >= 0 and --repeats, --demo-repeats, --rounds >= 1")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        time.sleep(1.0 if hogs else 0.0)
        load_before = _loadavg()
        blas = blas_study(args.repeats, args.demo_repeats)
        layers = layer_study(args.repeats, args.rounds)
        load_after = _loadavg()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    lines = [
        "# Threads under load",
        "",
        f"`PYTHONPATH=. python benchmarks/threading_study.py --load {args.load} --repeats {args.repeats} "
        f"--demo-repeats {args.demo_repeats} --rounds {args.rounds}` on {os.cpu_count()} cores, {args.load} extra busy-looping "
        f"processes, load average (1, 5, 15 min) {load_before} at the start and {load_after} at the end "
        "(the machine is shared with other work). Warm Numba cache; medians of interleaved repeats.",
        "",
        "## BLAS threads around the dense LU (one process, side by side)",
        "",
        f"BLAS: {blas['blas']}",
        "",
        "| measurement | one BLAS thread (fastmeta) | BLAS default | ratio default / one |",
        "| --- | --- | --- | --- |",
    ]
    for label, key, unit, scale in (("gradient, gridworld S = 100", "gradient_S100", "ms", 1e3),
                                    ("`fastmeta demo` (300 steps, no plot)", "demo", "s", 1.0)):
        on, off = blas[key]
        lines.append(f"| {label} | {on * scale:.3g} {unit} | {off * scale:.3g} {unit} | {off / on:.2f} |")
    lines += ["", "## Numba threading layer (fresh process each, rounds interleaved, median of round medians)", "",
              "| layer | layer in use | gradient S = 100 | gradient S = 10^4 |", "| --- | --- | --- | --- |"]
    for name, row in layers.items():
        lines.append(f"| {name} | {row['layer']} | {row['100'] * 1e3:.3g} ms | {row['10000'] * 1e3:.3g} ms |")
    text = "\n".join(lines) + "\n"
    path = output_dir(args.publish) / "threading.md"
    path.write_text(text)
    print(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
