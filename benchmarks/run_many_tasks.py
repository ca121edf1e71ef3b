"""Many small tasks: fastmeta next to JAX ``jit(value_and_grad(vmap))``, scaling in n, per-call overhead.

    PYTHONPATH=. python benchmarks/run_many_tasks.py                 # all parts, results in a scratch dir
    PYTHONPATH=. python benchmarks/run_many_tasks.py --parts table   # a subset (table grid scaling overhead)
    PYTHONPATH=. python benchmarks/run_many_tasks.py --publish       # write bench_results/many_tasks.{md,json}

Problem (issue "Many tasks at full speed"): RL^2-style random MDPs, k = 4 successors, A = 4,
d = 16 Gaussian features, gamma = 0.99, tau = eta = 1, each task its own kernel, theta =
0.5 N(0, I) (seed 0); the gridworld goal family 316 x 316, n = 4, d = 32, gamma = 0.99,
slip 0.1, with every task's kernel built separately (equal matrices, different objects).

Every part runs in its own child process with a timeout: JAX 0.10.2 sometimes never
returns from ``block_until_ready`` on this machine, and a hang is reported as a hang
(with whatever rounds finished before it), never waited out. In the side-by-side
table, fastmeta and JAX alternate in rounds inside one process (same load for both) and
the ratio is of the medians over all rounds. Times are wall-clock medians of
``value_and_grad``; the machine description and the load average (before and after
each part) are written next to the numbers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TABLE = [(16, 64), (64, 64), (100, 8), (300, 8), (1000, 8)]
TARGETS = {(16, 64): 5.0, (64, 64): 3.0, (100, 8): 2.0, (1000, 8): 10.0}  # JAX / fastmeta at least
SCALING_N = [1, 4, 16, 64, 256, 1024]
SCALING_S = [16, 1000]
GRID_TARGET_S, GRID_RATIO_TARGET = 2.0, 2.5


def _emit(**row) -> None:
    print(json.dumps(row), flush=True)


def _timed(fn, repeats, cpu=None):
    """Wall-clock seconds of ``repeats`` calls; the process CPU seconds of each go to ``cpu`` if given."""
    out = []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return out


def _random_problem(S, n, seed=0):
    import numpy as np

    import fastmeta
    tasks, phi = fastmeta.tasks.random_mdps(n_tasks=n, n_states=S, n_actions=4, k=4, gamma=0.99, n_features=16,
                                            seed=seed)
    return tasks, phi, 0.5 * np.random.default_rng(0).standard_normal(16)


# ---------------------------------------------------------------------------- workers (child processes)
def worker_table(S: int, n: int, rounds: int) -> None:
    import fastmeta
    from benchmarks.baselines import problem_arrays
    from benchmarks.baselines.jax_vmap_rl import JaxVmapMetaRL
    tasks, phi, theta = _random_problem(S, n)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi))
    t0 = time.perf_counter()
    L_fm, _ = meta.value_and_grad(theta)
    _emit(kind="setup", impl="fastmeta", first_call=time.perf_counter() - t0, solver=meta.solver_methods)
    t0 = time.perf_counter()
    jx = JaxVmapMetaRL(problem_arrays(tasks, phi))
    L_jx, _ = jx.value_and_grad(theta)
    _emit(kind="setup", impl="jax", first_call=time.perf_counter() - t0, rel_diff=abs(L_jx - L_fm) / abs(L_fm))
    per_round = max(1, min(20, int(0.3 / max(1e-4, _timed(lambda: meta.value_and_grad(theta), 1)[0]))))
    for r in range(rounds):
        for impl, fn in (("fastmeta", meta.value_and_grad), ("jax", jx.value_and_grad)):
            cpu: list[float] = []
            _emit(kind="round", impl=impl, times=_timed(lambda: fn(theta), per_round, cpu), cpu=cpu)


def worker_grid(repeats: int) -> None:
    import numpy as np

    import fastmeta
    from benchmarks import rl_problems as rp
    tasks, phi = rp.gridworld(100_000)
    separate = [fastmeta.TabularMDP(t.P.copy(), t.r, t.gamma, t.init) for t in tasks]
    theta = rp.theta0()
    t0 = time.perf_counter()
    meta = fastmeta.MetaRL(separate, fastmeta.LinearEnergy(phi))
    construct = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = meta.gradient(theta)
    first = time.perf_counter() - t0
    tg, to = [], []
    for _ in range(repeats):
        tg += _timed(lambda: meta.gradient(theta), 1)
        to += _timed(lambda: meta.objective(theta), 1)
    from fastmeta._fingerprint import csr_fingerprint

    t0 = time.perf_counter()
    for t in separate:  # what TabularMDP pays once per construction to key its kernel by content
        csr_fingerprint(t.P)
    fingerprint = (time.perf_counter() - t0) / len(separate)
    _emit(kind="grid", n_states=tasks[0].n_states, n_tasks=len(tasks), groups=len(meta._groups),
          solver=meta.solver_methods, construct=construct, first_call=first, grad_times=tg, obj_times=to,
          fingerprint_per_kernel=fingerprint, grad_norm=float(np.linalg.norm(g)))


def worker_scaling(S: int, ns: list[int]) -> None:
    import fastmeta
    for n in ns:
        tasks, phi, theta = _random_problem(S, n)
        t0 = time.perf_counter()
        meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi))
        construct = time.perf_counter() - t0
        first = _timed(lambda: meta.value_and_grad(theta), 1)[0]
        repeats = max(3, min(15, int(2.0 / max(first, 1e-4))))
        cpu: list[float] = []
        times = _timed(lambda: meta.value_and_grad(theta), repeats, cpu)
        _emit(kind="scaling", S=S, n=n, construct=construct, solver=meta.solver_methods, times=times, cpu=cpu)


def worker_overhead(repeats: int) -> None:
    """One task, S = 10: the call and its parts, interleaved in rounds (each figure a median of
    per-round medians, so a change in the machine's speed during the run hits every part alike)."""
    import numpy as np

    import fastmeta
    from benchmarks.baselines import problem_arrays
    from benchmarks.baselines.jax_vmap_rl import JaxVmapMetaRL
    tasks, phi, theta = _random_problem(10, 1)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi))
    meta.gradient(theta)
    runner = meta._fused_batch
    batch = runner.batch
    f = meta.model.energy(theta)
    pi = meta._main_policy(f)
    grad, out = np.empty(f.shape), np.empty(phi.shape[2])
    jx = JaxVmapMetaRL(problem_arrays(tasks, phi))
    jx.value_and_grad(theta)
    calls = {
        "fastmeta gradient": lambda: meta.gradient(theta),
        "fastmeta objective": lambda: meta.objective(theta),
        "fastmeta theta validation": lambda: meta.model.check_params(theta, "MetaRL"),
        # everything after the validation: energy, policy, the task, mean, vjp, finiteness check
        "fastmeta one compiled call (energy to vjp)": lambda: runner.one_call(
            phi, theta, *batch.data, 1.0, 1.0, True, 1, out),
        # the task's arithmetic alone, at the energy and policy of theta
        "fastmeta batch kernel alone (the task's arithmetic)": lambda: batch.kernel(
            *batch.data, f, pi, 1.0, 1.0, True, batch.n_workers(), grad),
        "jax value_and_grad": lambda: jx.value_and_grad(theta),
    }
    per_round = max(1, repeats // 20)
    medians = {name: [] for name in calls}
    for r in range(20):
        for name in (calls if r % 2 == 0 else list(calls)[::-1]):
            medians[name].append(float(np.median(_timed(calls[name], per_round))))
    for name, times in medians.items():
        _emit(kind="overhead", impl=name, times=times)


def worker_parallel_tasks(S: int, n: int, repeats: int) -> None:
    """Tasks-in-parallel (units on a thread pool) against units in sequence (each unit's own loops)."""
    import fastmeta
    tasks, phi, theta = _random_problem(S, n)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi))
    meta.value_and_grad(theta)
    for workers in (1, 2, 1, 2):
        meta.task_workers = workers
        _emit(kind="parallel", S=S, n=n, workers=workers, solver=meta.solver_methods,
              times=_timed(lambda: meta.value_and_grad(theta), repeats))


# ---------------------------------------------------------------------------- driver
def run_child(args: list[str], timeout: float) -> dict:
    """Run a worker; return its rows, and whether it finished, failed or hung (killed after ``timeout``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    load_before = os.getloadavg()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", *args], env=env,
                                stdout=out, stderr=err, text=True)
        try:
            proc.wait(timeout=timeout)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = f"hung: killed after {timeout:.0f} s"
        out.seek(0)
        err.seek(0)
        rows = [json.loads(line) for line in out if line.startswith("{")]
        tail = err.read()[-1500:]
    return dict(args=args, status=status, rows=rows, stderr=tail if status != "ok" else "",
                load_before=load_before, load_after=os.getloadavg())


def _median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


def _ms(x):
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def _load(res):
    return f"{res['load_before'][0]:.1f} / {res['load_after'][0]:.1f}"


def render(results: dict, info: dict) -> str:
    lines = [f"# Many small tasks: fastmeta and JAX side by side\n",
             f"Written by `benchmarks/run_many_tasks.py` on {info['date']} (fastmeta at {info['git']}).",
             f"Machine: {info['cpu']}; {info['cpu_count']} cores shared with other jobs; numba "
             f"{info['numba']} ({info['numba_threads']} threads), numpy {info['numpy']}, JAX {info['jax']}. "
             "Warm numba cache (kernels compiled before timing); times are wall-clock medians, "
             "ratios are of medians measured alternately in one process. Load = 1-minute load average "
             "before / after each part (2 cores: anything above 2 means the cores were shared).\n"]
    if "table" in results:
        lines += ["## JAX / fastmeta, RL^2 random MDPs (k = 4, A = 4, d = 16, gamma = 0.99)\n",
                  "Wall-clock medians and their ratio; then the same for the CPU time of the process "
                  "(all its threads: the work done, less sensitive to other jobs than wall-clock time on "
                  "a loaded machine).\n",
                  "| S | n tasks | fastmeta | JAX | JAX / fastmeta | target | fastmeta CPU | JAX CPU | ratio of CPU "
                  "| load | status |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for res in results["table"]:
            S, n = int(res["args"][1]), int(res["args"][2])
            fm = [t for r in res["rows"] if r["kind"] == "round" and r["impl"] == "fastmeta" for t in r["times"]]
            jx = [t for r in res["rows"] if r["kind"] == "round" and r["impl"] == "jax" for t in r["times"]]
            fm_s = _ms(_median(fm)) if fm else "-"
            jx_s = _ms(_median(jx)) if jx else "-"
            ratio = f"{_median(jx) / _median(fm):.1f}" if fm and jx else "-"
            target = f">= {TARGETS[S, n]:g}" if (S, n) in TARGETS else ""
            fc = [t for r in res["rows"] if r["kind"] == "round" and r["impl"] == "fastmeta" for t in r["cpu"]]
            jc = [t for r in res["rows"] if r["kind"] == "round" and r["impl"] == "jax" for t in r["cpu"]]
            cpu = (f"{_ms(_median(fc))} | {_ms(_median(jc))} | {_median(jc) / _median(fc):.1f}" if fc and jc
                   else "- | - | -")
            lines.append(f"| {S} | {n} | {fm_s} | {jx_s} | {ratio} | {target} | {cpu} | {_load(res)} "
                         f"| {res['status']} |")
        lines.append("")
    if "grid" in results:
        res = results["grid"]
        lines += ["## Gridworld 316 x 316, n = 4, d = 32, gamma = 0.99, each task's kernel built separately\n"]
        for r in res["rows"]:
            g, o = _median(r["grad_times"]), _median(r["obj_times"])
            lines += [f"- {r['n_states']} states, {r['n_tasks']} tasks in {r['groups']} group(s) "
                      f"(kernels shared by content), solver {r['solver']}",
                      f"- gradient {_ms(g)} (target <= {GRID_TARGET_S:g} s), objective {_ms(o)}, "
                      f"gradient / objective {g / o:.2f} (target <= {GRID_RATIO_TARGET:g})",
                      f"- fingerprint of one kernel {_ms(r['fingerprint_per_kernel'])}; MetaRL construction "
                      f"{_ms(r['construct'])}; first gradient {_ms(r['first_call'])}",
                      f"- load {_load(res)}; {res['status']}"]
        if not res["rows"]:
            lines.append(f"- {res['status']}")
        lines.append("")
    if "scaling" in results:
        lines += ["## Time per gradient against the number of tasks (RL^2, value_and_grad)\n",
                  "| S | n | time | time / n | CPU time | CPU time / n | solver | load |",
                  "|---|---|---|---|---|---|---|---|"]
        for res in results["scaling"]:
            for r in res["rows"]:
                t = _median(r["times"])
                c = f"{_ms(_median(r['cpu']))} | {_ms(_median(r['cpu']) / r['n'])}" if r.get("cpu") else "- | -"
                lines.append(f"| {r['S']} | {r['n']} | {_ms(t)} | {_ms(t / r['n'])} | {c} | {', '.join(r['solver'])} "
                             f"| {_load(res)} |")
            if res["status"] != "ok":
                lines.append(f"| {res['args'][1]} | | {res['status']} | | | |")
        lines.append("")
    if "overhead" in results:
        res = results["overhead"]
        lines += ["## Per-call overhead: one task, S = 10, A = 4, d = 16\n", "| call | median |", "|---|---|"]
        lines += [f"| {r['impl']} | {r['times'] and _median(r['times']) * 1e6:.1f} us |" for r in res["rows"]]
        med = {r["impl"]: _median(r["times"]) * 1e6 for r in res["rows"] if r["times"]}
        whole, one = med.get("fastmeta gradient"), med.get("fastmeta one compiled call (energy to vjp)")
        if whole and one:
            lines.append(f"| the call's Python: gradient - one compiled call (validation included) | "
                         f"{whole - one:.1f} us |")
        lines += [f"\nload {_load(res)}; {res['status']}\n"]
    if "parallel" in results:
        res = results["parallel"]
        lines += ["## Tasks in parallel or one task at a time (RL^2, S = 1000, n = 256)\n",
                  "| workers | median gradient | load |", "|---|---|---|"]
        lines += [f"| {r['workers']} | {_ms(_median(r['times']))} | {_load(res)} |" for r in res["rows"]]
        lines += [f"\n{res['status']}\n"]
    return "\n".join(lines) + "\n"


def machine_info() -> dict:
    import numba
    import numpy
    try:
        import jax
        jax_version = jax.__version__
    except ImportError:
        jax_version = "(not installed)"
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), git=git, cpu=cpu,
                cpu_count=os.cpu_count(), numba=numba.__version__, numba_threads=numba.config.NUMBA_NUM_THREADS,
                numpy=numpy.__version__, jax=jax_version, uptime=subprocess.run(
                    ["uptime"], capture_output=True, text=True).stdout.strip())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["table", "grid", "scaling", "overhead", "parallel"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per child process")
    ap.add_argument("--publish", action="store_true", help="write bench_results/many_tasks.{md,json}")
    ap.add_argument("--out", default=os.environ.get("FASTMETA_BENCH_OUT", os.path.join(tempfile.gettempdir(),
                                                                                         "fastmeta-bench")))
    ap.add_argument("--render", metavar="JSON", help="only re-render the markdown of an earlier run's json")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(render(saved["results"], saved["machine"]))
        return
    if args.worker:
        kind, *rest = args.worker
        sys.path.insert(0, str(ROOT))
        if kind == "table":
            worker_table(int(rest[0]), int(rest[1]), int(rest[2]))
        elif kind == "grid":
            worker_grid(int(rest[0]))
        elif kind == "scaling":
            worker_scaling(int(rest[0]), [int(x) for x in rest[1:]])
        elif kind == "overhead":
            worker_overhead(int(rest[0]))
        elif kind == "parallel":
            worker_parallel_tasks(int(rest[0]), int(rest[1]), int(rest[2]))
        return
    info = machine_info()
    results: dict = {}
    if "table" in args.parts:
        results["table"] = []
        for S, n in TABLE:
            res = run_child(["table", str(S), str(n), str(args.rounds)], args.timeout)
            results["table"].append(res)
            print(S, n, res["status"], file=sys.stderr, flush=True)
    if "grid" in args.parts:
        results["grid"] = run_child(["grid", "3"], args.timeout * 2)
    if "scaling" in args.parts:
        results["scaling"] = [run_child(["scaling", str(S), *map(str, SCALING_N)], args.timeout * 2)
                              for S in SCALING_S]
    if "overhead" in args.parts:
        results["overhead"] = run_child(["overhead", "2000"], args.timeout)
    if "parallel" in args.parts:
        results["parallel"] = run_child(["parallel", "1000", "256", "3"], args.timeout * 2)
    info["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = render(results, info)
    out_dir = ROOT / "bench_results" if args.publish else Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "many_tasks.md").write_text(text)
    (out_dir / "many_tasks.json").write_text(json.dumps(dict(machine=info, results=results), indent=1))
    print(text)
    print(f"written to {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
