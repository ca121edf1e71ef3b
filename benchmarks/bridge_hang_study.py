"""Does JAX's random CPU hang reach fastmeta's JAX bridge? Runs each case in fresh processes.

    PYTHONPATH=. python benchmarks/bridge_hang_study.py --runs 16            # scratch output
    PYTHONPATH=. python benchmarks/bridge_hang_study.py --runs 16 --publish  # bench_results/bridge_hangs.json

JAX 0.10.2's CPU runtime was seen to hang at random, with no CPU use, in
``block_until_ready`` on the jitted exact meta-objective written natively (value and
gradient of a vmap over 64 tasks of dense 64-state solves). Each run here is a child
process making ``--calls`` jitted value-and-gradient calls and printing a line after
each; a run that makes no progress and uses no CPU for ``--stall`` seconds is killed
and counted as a hang (a slow run on a loaded machine keeps using CPU). Cases:

* ``native``: the vmapped dense objective in JAX (the reported hang).
* ``native-no-eigen-mt``: the same with ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``.
* ``bridge``: an MLP energy in JAX (two tanh layers) on the same 64 tasks, through
  ``fastmeta.jax.meta_rl`` (``jax.pure_callback`` inside ``jax.custom_vjp``), jitted.
* ``bridge-vmap``: the bridge under ``jax.vmap`` over a batch of 4 energies.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
case, calls = sys.argv[1], int(sys.argv[2])
S, A, n, d, gamma = 64, 4, 64, 16, 0.9
rng = np.random.default_rng(0)
phi = rng.standard_normal((S, A, d)) / np.sqrt(d)
theta = 0.5 * rng.standard_normal(d)
if case.startswith("native"):
    P = rng.dirichlet(np.ones(S) * 0.1, size=(n, S, A))
    r = rng.normal(1.0, 1.0, size=(n, S, A))
    Phi, eye, zeta = jnp.asarray(phi), jnp.eye(S), jnp.full(S, 1.0 / S)

    def J(th, P3, r):
        logits = Phi @ th
        pi = jax.nn.softmax(logits, axis=1)
        V = (1 - gamma) * jnp.linalg.solve(eye - gamma * jnp.einsum("sa,sat->st", pi, P3), jnp.sum(pi * r, axis=1))
        Q = (1 - gamma) * r + gamma * jnp.einsum("sat,t->sa", P3, V)
        pi_i = jax.nn.softmax(logits + Q, axis=1)
        M_i = eye - gamma * jnp.einsum("sa,sat->st", pi_i, P3)
        return zeta @ ((1 - gamma) * jnp.linalg.solve(M_i, jnp.sum(pi_i * r, axis=1)))

    step = jax.jit(jax.value_and_grad(lambda th: jnp.mean(jax.vmap(J, (None, 0, 0))(th, jnp.asarray(P), jnp.asarray(r)))))
    x = jnp.asarray(theta)
else:
    import fastmeta, fastmeta.jax
    tasks, _ = fastmeta.tasks.random_mdps(n_tasks=n, n_states=S, n_actions=A, k=4, gamma=gamma, n_features=d, seed=0)
    L = fastmeta.jax.meta_rl(fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi)))
    X = jnp.asarray(phi.reshape(S * A, d))
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    params = [jax.random.normal(k[0], (d, 32)) / 4, jax.random.normal(k[1], (32, 32)) / 6,
              jax.random.normal(k[2], (32,)) / 6]

    def energy(p, X):
        return (jnp.tanh(jnp.tanh(X @ p[0]) @ p[1]) @ p[2]).reshape(S, A)

    if case == "bridge":
        step = jax.jit(jax.value_and_grad(lambda p: L(energy(p, X))))
    else:
        Xs = jnp.stack([X * (1.0 + 0.1 * i) for i in range(4)])
        step = jax.jit(jax.value_and_grad(lambda p: jnp.sum(jax.vmap(lambda X: L(energy(p, X)))(Xs))))
    x = params
for i in range(calls):
    t0 = time.perf_counter()
    value, grad = step(x)
    jax.block_until_ready(grad)
    print(i, f"{time.perf_counter() - t0:.4f}", flush=True)
"""

CASES = {
    "native": {},
    "native-no-eigen-mt": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"},
    "bridge": {},
    "bridge-vmap": {},
}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(case: str, calls: int, stall: float, limit: float) -> dict:
    """One child process; a hang is ``stall`` seconds with neither progress nor CPU use."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **CASES[case])
    proc = subprocess.Popen([sys.executable, "-c", CHILD, case, str(calls)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    done, times, start = 0, [], time.perf_counter()
    cpu = _cpu_seconds(proc.pid)
    while True:
        if not sel.select(timeout=stall):
            # On a loaded machine a slow child still uses CPU; a wedged one does not.
            now = _cpu_seconds(proc.pid)
            busy, cpu = now - cpu > 0.05, now
            if busy and time.perf_counter() - start < limit:
                continue
            proc.kill()
            proc.wait()
            return {"case": case, "status": "hang" if not busy else "too slow", "calls_done": done,
                    "seconds": time.perf_counter() - start}
        line = proc.stdout.readline()
        if not line:
            break
        done += 1
        times.append(float(line.split()[1]))
    proc.wait()
    status = "ok" if proc.returncode == 0 and done == calls else f"error {proc.returncode}: {proc.stderr.read()[-300:]}"
    return {"case": case, "status": status, "calls_done": done, "seconds": time.perf_counter() - start,
            "median_call": sorted(times)[len(times) // 2] if times else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--stall", type=float, default=20.0,
                        help="seconds without progress and without CPU use that count as a hang")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds after which a busy run is stopped")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--publish", action="store_true", help="write bench_results/bridge_hangs.json")
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    results = []
    for run in range(args.runs):  # cases interleaved, so load changes hit all of them alike
        for case in args.cases:
            res = one_run(case, args.calls, args.stall, args.limit)
            res["run"] = run
            res["load"] = os.getloadavg()[0]
            results.append(res)
            print(json.dumps(res), flush=True)
    summary = {case: {"runs": sum(r["case"] == case for r in results),
                      "hangs": sum(r["case"] == case and r["status"] == "hang" for r in results),
                      "too_slow": sum(r["case"] == case and r["status"] == "too slow" for r in results),
                      "errors": sum(r["case"] == case and r["status"].startswith("error") for r in results)}
               for case in args.cases}
    print(json.dumps(summary, indent=1))
    out = ROOT / "bench_results" / "bridge_hangs.json" if args.publish else Path("/tmp/fastmeta_bridge_hangs.json")
    machine = (f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
               f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} (each run's in 'runs')")
    out.write_text(json.dumps({"command": "benchmarks/bridge_hang_study.py " + " ".join(argv or sys.argv[1:]),
                               "started": started, "machine": machine, "calls": args.calls, "stall": args.stall,
                               "summary": summary, "runs": results}, indent=1))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
