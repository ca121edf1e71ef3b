"""DaskMetaRL (2 workers) against one-process MetaRL, side by side in one run.

    PYTHONPATH=. python benchmarks/bench_distributed.py              # results in a scratch dir
    PYTHONPATH=. python benchmarks/bench_distributed.py --publish    # write bench_results/distributed.md
    PYTHONPATH=. python benchmarks/bench_distributed.py --fastmath [--publish]   # kernels with / without reassoc

Two measurements, each a median over repeats with the two sides alternating:

* speed-up per gradient: n = 64 gridworld tasks of 100 x 100 = 10^4 states, every
  task with its own kernel (built separately, slip 0.05 + 0.002 i, so no two share);
  one process (all Numba threads) against a LocalCluster of 2 worker processes with
  one thread each (NUMBA_NUM_THREADS=1 on the workers);
* overhead per call where distribution cannot pay: n = 8 tasks of 10 x 10 = 100 states.

Every distributed result is checked equal, bit for bit, to the one-process one.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def tasks_with_own_kernels(n: int, size: int) -> list:
    import fastmeta
    from fastmeta.tasks.gridworld import gridworld_kernel

    S = size * size
    tasks = []
    for i in range(n):
        P = gridworld_kernel(size, slip=0.05 + 0.002 * i)  # built per task, and different
        r = np.zeros((S, 4))
        r[(37 * i + 11) % S] = 1.0
        tasks.append(fastmeta.TabularMDP(P, r, 0.95, np.full(S, 1.0 / S)))
    return tasks


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _timed_partials(shard, f, want_grad):
    """A shard's partials on its worker, with that worker's wall and CPU seconds."""
    from fastmeta.distributed import _rl_partials

    wall, cpu = time.perf_counter(), time.process_time()
    _rl_partials(shard, f, want_grad)
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(client, n: int, size: int, repeats: int, rounds: int) -> dict:
    import fastmeta
    import numba

    from fastmeta.distributed import DaskMetaRL

    tasks = tasks_with_own_kernels(n, size)
    model = fastmeta.LinearEnergy(fastmeta.tasks.random_features(size * size, 4, 16, seed=0))
    theta = np.full(model.n_params, 0.1)
    one = fastmeta.MetaRL(tasks, model)
    t0 = time.perf_counter()
    dist = DaskMetaRL(client, tasks, model)
    setup = time.perf_counter() - t0
    serial = fastmeta.MetaRL(tasks, model, task_workers=1)  # what one worker does: one core

    def one_core():
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return serial.value_and_grad(theta)
        finally:
            numba.set_num_threads(threads)

    ref = one.value_and_grad(theta)  # also warms every side
    for got in (dist.value_and_grad(theta), one_core()):
        assert got[0] == ref[0] and np.array_equal(got[1], ref[1]), "distributed != one process"
    t_one, t_dist, t_core = [], [], []
    for _ in range(rounds):  # alternate, so a change of load hits every side
        t_one += timed(lambda: one.value_and_grad(theta), repeats)[0]
        t_dist += timed(lambda: dist.value_and_grad(theta), repeats)[0]
        t_core += timed(one_core, repeats)[0]
    cpu0 = time.process_time()
    one.value_and_grad(theta)
    one_cpu = time.process_time() - cpu0
    shard_times = dist._cluster.map(_timed_partials, model.energy(theta), True)
    # The part of a call that no worker can share: f and the vector-Jacobian product on the client.
    client_side = statistics.median(timed(lambda: model.energy_vjp(theta, model.energy(theta)), 20)[0])
    round_trip = statistics.median(timed(lambda: client.submit(_noop, pure=False).result(), 20)[0])
    S, A = size * size, 4
    units = len(dist._unit_tasks)
    shards = len(dist._cluster.shards)
    return {"n": n, "S": S, "one": statistics.median(t_one), "dist": statistics.median(t_dist),
            "core": statistics.median(t_core),
            "one_all": t_one, "dist_all": t_dist, "setup": setup, "units": units, "shards": shards,
            "bytes_out": shards * S * A * 8, "bytes_back": S * A * 8, "bytes_between": (shards - 1) * S * A * 8,
            "solvers": one.solver_methods, "one_cpu": one_cpu, "shard_times": shard_times, "memory": dist.memory_report(),
            "client_side": client_side, "round_trip": round_trip}


def _noop() -> None:
    return None


FASTMATH_SETS = {"with reassoc, contract": "nsz,arcp,afn,reassoc,contract", "without": "nsz,arcp,afn"}


def _fastmath_child(flags: str) -> None:
    """Time a few gradients with the kernels compiled under ``flags``; print medians (wall, CPU) as JSON."""
    import json

    from fastmeta._kernels import _config

    _config.FASTMATH.clear()  # before any kernel compiles: the jit options hold this very set
    _config.FASTMATH.update(flags.split(","))
    import fastmeta
    from fastmeta.sl import MetaSL, SLTask

    problems = {}
    for S in (16, 64):
        tasks, phi = fastmeta.tasks.random_mdps(n_tasks=64, n_states=S, n_actions=4, k=4, gamma=0.99,
                                                n_features=16, seed=0)
        meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi))
        problems[f"meta-RL, RL^2 S = {S}, n = 64"] = (meta, 0.5 * np.random.default_rng(0).standard_normal(16))
    tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=4, size=100, seed=0)
    problems["meta-RL, gridworld 10^4, 4 goals"] = (fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi)),
                                                    np.full(phi.shape[-1], 0.1))
    rng = np.random.default_rng(0)
    sl = [SLTask(rng.normal(size=(10, 8)), rng.normal(size=10), rng.normal(size=(10, 8)), rng.normal(size=10))
          for _ in range(32)]
    for name, model in (("TwoLayerReLU 1024", fastmeta.TwoLayerReLU(8, 1024, seed=0)),
                        ("MLP 64 x 64", fastmeta.models.MLP(8, hidden=(64, 64))), ("LinearModel", fastmeta.LinearModel())):
        meta = MetaSL(sl, model, eta=0.1)
        problems[f"meta-SL, {name}, 32 tasks"] = (meta, meta.init_params() + 0.01)
    out = {}
    for name, (meta, theta) in problems.items():
        meta.value_and_grad(theta)
        once = timed(lambda: meta.value_and_grad(theta), 1)[0][0]
        walls, cpus = [], []
        for _ in range(max(3, min(200, int(1.0 / max(once, 1e-5))))):
            cpu = time.process_time()
            walls += timed(lambda: meta.value_and_grad(theta), 1)[0]
            cpus.append(time.process_time() - cpu)
        out[name] = (statistics.median(walls), statistics.median(cpus))
    print(json.dumps(out))


def fastmath_study(rounds: int) -> str:
    """The cost of compiling without reassoc/contract: each flag set in its own process and Numba cache."""
    import json
    import subprocess
    import sys

    runs: dict[str, list[dict]] = {name: [] for name in FASTMATH_SETS}
    loads = [os.getloadavg()[0]]
    scratch = Path(tempfile.gettempdir()) / "fastmeta-bench"
    for _ in range(rounds):  # alternate, so a change of load hits both
        for name, flags in FASTMATH_SETS.items():
            env = dict(os.environ, NUMBA_CACHE_DIR=str(scratch / f"numba-{flags.replace(',', '-')}"))
            done = subprocess.run([sys.executable, __file__, "--fastmath-child", flags], env=env, check=True,
                                  capture_output=True, text=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            loads.append(os.getloadavg()[0])
    a, b = FASTMATH_SETS
    lines = [f"| problem | {a} (ms) | {b} (ms) | ratio | CPU {a} | CPU {b} | CPU ratio |", "|---|---|---|---|---|---|---|"]
    for problem in runs[a][0]:
        wa, ca = (statistics.median(r[problem][k] for r in runs[a]) for k in (0, 1))
        wb, cb = (statistics.median(r[problem][k] for r in runs[b]) for k in (0, 1))
        lines.append(f"| {problem} | {wa * 1e3:.3g} | {wb * 1e3:.3g} | {wb / wa:.2f}x | {ca * 1e3:.3g} | {cb * 1e3:.3g} "
                     f"| {cb / ca:.2f}x |")
    import numba

    lines.append(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
                 f"Python {platform.python_version()}, numba {numba.__version__} ({numba.get_num_threads()} threads); "
                 f"{rounds} rounds alternating, each flag set in its own process and Numba cache (the first "
                 f"round compiles, every timing is after a warm-up call); medians over all rounds; load average "
                 f"(1-minute) {min(loads):.1f} to {max(loads):.1f}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publish", action="store_true", help="write bench_results/distributed.md")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--size", type=int, default=100, help="grid side (S = size^2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fastmath", action="store_true",
                        help="instead: the cost of compiling the kernels without reassoc/contract")
    parser.add_argument("--fastmath-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fastmath_child:
        _fastmath_child(args.fastmath_child)
        return
    if args.fastmath:
        text = "# Kernels with and without reassoc/contract\n\nCommand: `PYTHONPATH=. python " \
               "benchmarks/bench_distributed.py --fastmath [--publish]`\n\n" + fastmath_study(args.rounds) + "\n"
        out = Path("bench_results") if args.publish else Path(tempfile.gettempdir()) / "fastmeta-bench"
        out.mkdir(parents=True, exist_ok=True)
        (out / "distributed_fastmath.md").write_text(text)
        print(text)
        return

    import numba
    from distributed import Client, LocalCluster

    load_before = os.getloadavg()
    # No thread settings: DaskMetaRL runs each worker's kernels on its Dask threads (here 1).
    cluster = LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0")
    client = Client(cluster)
    try:
        big = compare(client, args.tasks, args.size, repeats=1, rounds=args.rounds)
        small = compare(client, 8, 10, repeats=20, rounds=3)
    finally:
        client.close()
        cluster.close()
    load_after = os.getloadavg()

    def row(r: dict) -> str:
        return (f"| {r['n']} | {r['S']} | {', '.join(r['solvers'])} | {r['core'] * 1e3:.1f} | {r['one'] * 1e3:.1f} "
                f"| {r['dist'] * 1e3:.1f} | {r['core'] / r['dist']:.2f}x | {r['one'] / r['dist']:.2f}x "
                f"| {r['units']} / {r['shards']} "
                f"| {r['bytes_out'] / 1e6:.3g} / {r['bytes_between'] / 1e6:.3g} / {r['bytes_back'] / 1e6:.3g} |")

    mem = "\n".join(f"| {w} | {e['n_tasks']} | {e['shard_bytes'] / 2**20:.1f} | {e['rss_bytes'] / 2**20:.0f} |"
                    for w, e in sorted(big["memory"].items()))
    text = f"""# DaskMetaRL: 2 workers against one process

Command: `PYTHONPATH=. python benchmarks/bench_distributed.py --publish`
(benchmarks/bench_distributed.py). Every distributed gradient was checked equal, bit for bit,
to the one-process gradient.

Conditions: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},
machine shared with other jobs: load average {load_before[0]:.1f} before, {load_after[0]:.1f} after
(1-minute). One process: MetaRL with {numba.get_num_threads()} Numba threads (at S = 10^4 and A = 4 the
tasks are below the kernels' parallel threshold, so MetaRL computes {numba.get_num_threads()} tasks at once on
{numba.get_num_threads()} threads: it already uses both cores), and the same with 1 thread (`task_workers=1`,
`numba.set_num_threads(1)`: what each worker does). Distributed: LocalCluster of
2 worker processes, 1 thread each (DaskMetaRL sets each call's Numba threads to the worker's). Numba cache warm (one
untimed call on each side first). Medians over {len(big['one_all'])} gradients (big problem) and
{len(small['one_all'])} (small), the two sides alternating in rounds.

| n tasks | S | solver | one process, 1 core (ms) | one process, {numba.get_num_threads()} threads (ms) | 2 workers (ms) | speed-up vs 1 core | vs {numba.get_num_threads()} threads | units / shards | MB per call: out / between workers / back |
|---|---|---|---|---|---|---|---|---|---|
{row(big)}
{row(small)}

Where the time goes (big problem, one more gradient each): one process ({numba.get_num_threads()} threads) used {big['one_cpu']:.2f} s of CPU;
the workers' shards took {', '.join(f'{w:.2f} s wall / {c:.2f} s CPU' for w, c in big['shard_times'])}.
A shard's CPU time well below its wall time means its worker waited for a core taken by
other jobs; the split of the work itself is even. The speed-up the work split allows on
two free cores is one-process CPU / largest shard CPU =
{big['one_cpu'] / max(c for _, c in big['shard_times']):.2f}x.

Against the ideal: one process on one core over 2 = {big['core'] / 2 * 1e3:.0f} ms; 2 workers took
{big['dist'] * 1e3:.0f} ms, {(big['dist'] - big['core'] / 2) * 1e3:.0f} ms more. The largest shard's own work was
{max(w for w, _ in big['shard_times']) * 1e3:.0f} ms wall, so the call spent
{(big['dist'] - max(w for w, _ in big['shard_times'])) * 1e3:.0f} ms outside the shards' kernels (shipping f, the running
sum and the result; a bare Dask round trip took {big['round_trip'] * 1e3:.1f} ms). The client's own part of a call
(f = f_theta and the vector-Jacobian product, {big['client_side'] * 1e3:.1f} ms) cannot be shared: with it, Amdahl's
bound on 2 cores is {big['core'] / (big['client_side'] + (big['core'] - big['client_side']) / 2):.2f}x against one core.

The second row is the overhead of a call where distribution cannot pay (n = 8, S = 100):
{(small['dist'] - small['one']) * 1e3:.1f} ms per call more than one process (a Dask round trip:
submit, schedule, run, gather; a bare round trip took {small['round_trip'] * 1e3:.1f} ms). Shard set-up (scatter the tasks, build the
per-worker MetaRL): {big['setup']:.2f} s for the big problem, once.

All timings (s), big problem, one process: {', '.join(f'{t:.2f}' for t in big['one_all'])};
2 workers: {', '.join(f'{t:.2f}' for t in big['dist_all'])}.

Memory per worker after the big problem (`DaskMetaRL.memory_report()`):

| worker | tasks | shard arrays (MiB) | process RSS (MiB) |
|---|---|---|---|
{mem}
"""
    out = Path("bench_results") if args.publish else Path(tempfile.gettempdir()) / "fastmeta-bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.md").write_text(text)
    print(text)
    print(f"written to {out / 'distributed.md'}")


if __name__ == "__main__":
    main()
