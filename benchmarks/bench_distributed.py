"""DaskMetaRL (2 workers) against one-process MetaRL, side by side in one run.

    PYTHONPATH=. python benchmarks/bench_distributed.py              # results in a scratch dir
    PYTHONPATH=. python benchmarks/bench_distributed.py --publish    # write bench_results/distributed.md
    PYTHONPATH=. python benchmarks/bench_distributed.py --fastmath [--publish]   # kernels with / without reassoc

Two measurements, each a median over repeats with the two sides alternating:

* speed-up per gradient: n = 64 gridworld tasks of 100 x 100 = 10^4 states, every
  task with its own kernel (built separately, slip 0.05 + 0.002 i, so no two share);
  one process (all Numba threads, and one thread) against a LocalCluster of 2 worker
  processes with one thread each; then again with the client's malloc set as the
  workers' (``fastmeta.distributed.WORKER_MALLOC``), to separate what distribution gains
  from what the malloc settings gain;
* overhead per call where distribution cannot pay: n = 8 tasks of 10 x 10 = 100 states;
* a timeline of one distributed call: when each shard started and finished its units,
  with its CPU time and page faults, and when the sum reached the client.

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
    """A shard's partials, computed as a call computes them; the timing stays on the shard for :func:`_timing`."""
    import resource

    from fastmeta.distributed import _rl_partials

    start, before = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    out = _rl_partials(shard, f, want_grad)
    after = resource.getrusage(resource.RUSAGE_SELF)
    shard._bench_timing = {"start": start, "end": time.time(), "user": after.ru_utime - before.ru_utime,
                           "sys": after.ru_stime - before.ru_stime, "faults": after.ru_minflt - before.ru_minflt}
    return out


def _timing(shard):
    return shard._bench_timing


def timeline(dist, f) -> dict:
    """One call through the same chain as ``value_and_grad``, its shards timed on their workers."""
    from fastmeta.rl import add_partials

    sent = time.time()
    dist._cluster.chain(_timed_partials, add_partials, f, True)
    received = time.time()
    shards = [{k: (v - sent if k in ("start", "end") else v) for k, v in t.items()}
              for t in dist._cluster.map(_timing)]
    return {"shards": shards, "received": received - sent}


def one_process_cpu(meta, theta) -> dict:
    """CPU (user, sys) and page faults of one one-process gradient."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF)
    meta.value_and_grad(theta)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt}


def compare(client, n: int, size: int, repeats: int, rounds: int, tuned_malloc: bool = False) -> dict:
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

    def rounds_of_three() -> dict:
        times = {"one": [], "dist": [], "core": []}
        for _ in range(rounds):  # alternate, so a change of load hits every side
            times["one"] += timed(lambda: one.value_and_grad(theta), repeats)[0]
            times["dist"] += timed(lambda: dist.value_and_grad(theta), repeats)[0]
            times["core"] += timed(one_core, repeats)[0]
        return times

    loads = [os.getloadavg()[0]]
    plain = rounds_of_three()
    loads.append(os.getloadavg()[0])
    one_cpu = one_process_cpu(one, theta)
    trace = timeline(dist, model.energy(theta))
    out = {"plain": plain, "one_cpu": one_cpu, "timeline": trace}
    if tuned_malloc:
        # The same three, with this process's malloc set as the workers' (it cannot be unset: last).
        from fastmeta.distributed import WORKER_MALLOC, _set_malloc_thresholds

        if _set_malloc_thresholds(*WORKER_MALLOC):
            out["tuned"] = rounds_of_three()
            loads.append(os.getloadavg()[0])
            out["one_cpu_tuned"] = one_process_cpu(one, theta)
    # The part of a call that no worker can share: f and the vector-Jacobian product on the client.
    client_side = statistics.median(timed(lambda: model.energy_vjp(theta, model.energy(theta)), 20)[0])
    round_trip = statistics.median(timed(lambda: client.submit(_noop, pure=False).result(), 20)[0])
    S, A = size * size, 4
    units = len(dist._unit_tasks)
    shards = len(dist._cluster.shards)
    med = {k: statistics.median(v) for k, v in plain.items()}
    out.update({"n": n, "S": S, **med, "setup": setup, "units": units, "shards": shards, "loads": loads,
                "bytes_out": shards * S * A * 8, "bytes_back": S * A * 8, "bytes_between": (shards - 1) * S * A * 8,
                "solvers": one.solver_methods, "memory": dist.memory_report(),
                "client_side": client_side, "round_trip": round_trip})
    return out


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
    parser.add_argument("--rounds", type=int, default=5)
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

    import json

    import numba
    from distributed import Client, LocalCluster

    load_before = os.getloadavg()
    # No thread settings: DaskMetaRL runs each worker's kernels on its Dask threads (here 1).
    cluster = LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0")
    client = Client(cluster)
    try:
        small = compare(client, 8, 10, repeats=20, rounds=3)
        big = compare(client, args.tasks, args.size, repeats=1, rounds=args.rounds, tuned_malloc=True)
    finally:
        client.close()
        cluster.close()
    load_after = os.getloadavg()
    threads = numba.get_num_threads()
    out = Path("bench_results") if args.publish else Path(tempfile.gettempdir()) / "fastmeta-bench"
    out.mkdir(parents=True, exist_ok=True)
    text = report(big, small, threads, load_before[0], load_after[0])
    (out / "distributed.md").write_text(text)
    record = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "numba_threads": threads,
              "load_before": load_before[0], "load_after": load_after[0], "big": big, "small": small}
    (out / "distributed.json").write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(text)
    print(f"written to {out / 'distributed.md'} and {out / 'distributed.json'}")


def report(big: dict, small: dict, threads: int, load_before: float, load_after: float) -> str:
    """bench_results/distributed.md from the two comparisons."""
    def row(r: dict, times: dict, label: str) -> str:
        core, one, dist = (statistics.median(times[k]) for k in ("core", "one", "dist"))
        return (f"| {r['n']} | {r['S']} | {label} | {core * 1e3:.1f} | {one * 1e3:.1f} | {dist * 1e3:.1f} "
                f"| {core / dist:.2f}x | {one / dist:.2f}x | {one / (core / 2):.2f}x | {r['units']} / {r['shards']} |")

    rows = [row(big, big["plain"], "as started")]
    if "tuned" in big:
        rows.append(row(big, big["tuned"], "client's malloc as the workers'"))
    rows.append(row(small, small["plain"], "as started"))
    trace = big["timeline"]
    first_start = min(t["start"] for t in trace["shards"])
    last_start = max(t["start"] for t in trace["shards"])
    ends = [t["end"] for t in trace["shards"]]
    shard_lines = "\n".join(
        f"| {k} | {t['start'] * 1e3:.0f} | {t['end']:.3f} | {t['user']:.2f} | {t['sys']:.2f} | {t['faults']} |"
        for k, t in enumerate(trace["shards"]))
    cpu = big["one_cpu"]
    tuned_cpu = big.get("one_cpu_tuned")
    tuned_text = ("" if tuned_cpu is None else
                  f" With the workers' malloc settings the same gradient took {tuned_cpu['user']:.2f} s user + "
                  f"{tuned_cpu['sys']:.2f} s system, {tuned_cpu['faults']} page faults.")
    mem = "\n".join(f"| {w} | {e['n_tasks']} | {e['shard_bytes'] / 2**20:.1f} | {e['rss_bytes'] / 2**20:.0f} |"
                     for w, e in sorted(big["memory"].items()))
    S, A = big["S"], 4
    return f"""# DaskMetaRL: 2 workers against one process

Command: `PYTHONPATH=. python benchmarks/bench_distributed.py --publish`
(benchmarks/bench_distributed.py; the raw figures are in distributed.json). Every distributed
gradient was checked equal, bit for bit, to the one-process gradient.

Conditions: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},
machine shared with other jobs: load average (1-minute) {load_before:.1f} before, {load_after:.1f} after,
{', '.join(f'{x:.1f}' for x in big['loads'])} around the big problem's rounds. One process: MetaRL with
{threads} Numba threads (at S = 10^4 and A = 4 the tasks are below the kernels' parallel threshold, so
MetaRL computes {threads} tasks at once on {threads} threads: it already uses both cores), and the same on
1 thread (`task_workers=1`, `numba.set_num_threads(1)`: what each worker does). Distributed:
LocalCluster of 2 worker processes, 1 thread each (DaskMetaRL sets each call's Numba threads to the
worker's, and the workers' malloc thresholds to `WORKER_MALLOC`). Numba cache warm (one untimed
call on each side first). Medians over {len(big['plain']['one'])} gradients (big problem) and
{len(small['plain']['one'])} (small), the three sides alternating in rounds. The second row repeats
the big problem after setting the client process's malloc thresholds as the workers' (glibc's
adaptive ceilings, which Dask's `MALLOC_TRIM_THRESHOLD_` disables in its workers): the one-process
columns then show what a plain process gains from the same setting.

| n tasks | S | client process | one process, 1 core (ms) | one process, {threads} threads (ms) | 2 workers (ms) | vs 1 core | vs {threads} threads | ceiling vs {threads} threads | units / shards |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

"Ceiling vs {threads} threads" is the best any 2 workers on these 2 cores can do against one process on
{threads} threads: that process's time over the ideal, one core's time / 2.

Bytes per call (big problem): f out to each shard ({big['shards']} x {S * A * 8 / 1e6:.2f} MB), the running sum
once between the workers ({big['bytes_between'] / 1e6:.2f} MB) and back to the client ({big['bytes_back'] / 1e6:.2f} MB).

**Timeline of one distributed call** (big problem, seconds after the client submitted it; user and
system CPU and minor page faults of each shard's units, on its worker):

| shard | started (ms) | finished (s) | user CPU (s) | system CPU (s) | page faults |
|---|---|---|---|---|---|
{shard_lines}

The sum reached the client {trace['received']:.3f} s after submission: {first_start * 1e3:.0f} to {last_start * 1e3:.0f} ms
before the shards started (shipping f, scheduling), {(trace['received'] - max(ends)) * 1e3:.0f} ms after the last one finished
(the last addition, the result back), and the shards finished {abs(ends[0] - ends[-1]) * 1e3:.0f} ms apart (imbalance).
One process ({threads} threads) used {cpu['user']:.2f} s user + {cpu['sys']:.2f} s system CPU for the same gradient,
{cpu['faults']} page faults.{tuned_text}

The client's own part of a call (f = f_theta and the vector-Jacobian product, {big['client_side'] * 1e3:.1f} ms)
cannot be shared: with it, Amdahl's bound on 2 cores is
{big['core'] / (big['client_side'] + (big['core'] - big['client_side']) / 2):.2f}x against one core. A bare Dask round
trip (submit, schedule, run, gather) took {big['round_trip'] * 1e3:.1f} ms.

The last row is the overhead of a call where distribution cannot pay (n = 8, S = 100):
{small['one'] * 1e3:.1f} ms for one process against {small['dist'] * 1e3:.1f} ms on the cluster (a bare round trip
took {small['round_trip'] * 1e3:.1f} ms). Shard set-up (scatter the tasks, build the per-worker MetaRL):
{big['setup']:.2f} s for the big problem, once.

All timings (s), big problem, as started: one process {', '.join(f'{t:.2f}' for t in big['plain']['one'])};
one core {', '.join(f'{t:.2f}' for t in big['plain']['core'])}; 2 workers {', '.join(f'{t:.2f}' for t in big['plain']['dist'])}.

Memory per worker after the big problem (`DaskMetaRL.memory_report()`):

| worker | tasks | shard arrays (MiB) | process RSS (MiB) |
|---|---|---|---|
{mem}
"""


if __name__ == "__main__":
    main()
