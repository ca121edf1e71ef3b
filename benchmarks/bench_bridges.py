"""The JAX and PyTorch bridges: their overhead, and a user's training step against native code.

    PYTHONPATH=. python benchmarks/bench_bridges.py                # scratch: /tmp/fastmeta_bench_bridges.md
    PYTHONPATH=. python benchmarks/bench_bridges.py --publish      # bench_results/bridges.md

Three measurements, each in fresh child processes (one per framework; JAX's CPU runtime
can hang at random, so a child that overruns ``--timeout`` is reported as a hang):

* overhead: one fastmeta gradient on RL^2 random MDPs (S = 1000, n = 8 tasks, k = 4,
  A = 4, d = 16, gamma = 0.99, tau = eta = 1) called from NumPy
  (``MetaRL.value_and_grad_energy(f)``) and through the bridge (``jax.jit(jax.value_and_grad(L))(f)``;
  ``L(f).backward()`` in PyTorch), interleaved call by call in one process.
* training step: an MLP energy f(s, a) = MLP(phi(s, a)) (16 -> 64 -> 64 -> 1, tanh,
  float64) on the same family at several S; one step is network forward + meta-objective
  + backward to the network's weights. "bridge" uses fastmeta for the meta-objective;
  "native" writes it in the framework with dense kernels and dense solves
  (``jnp.linalg.solve`` under ``jax.jit``; ``torch.linalg.solve``, eager) as in
  ``benchmarks/baselines``, differentiated by the framework. The bridge runs once per fastmeta
  solver of ``--step-solvers`` ("auto", the user's default, and the others side by side), and
  fastmeta alone from NumPy at the same energy; all interleaved in one process.
* thread count: PyTorch's native step at the thread count that the start of Numba's pool
  leaves and at the user's, one child per Numba threading layer.

Every timed function runs once untimed first (numba cache load, jit tracing). Medians of
``--repeats`` interleaved rounds; the ratio column is the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_TASKS, N_ACTIONS, K, D, GAMMA, HIDDEN = 8, 4, 4, 16, 0.99, 64


def problem(n_states: int, solver: str = "auto"):
    import fastmeta
    tasks, phi = fastmeta.tasks.random_mdps(n_tasks=N_TASKS, n_states=n_states, n_actions=N_ACTIONS, k=K,
                                            gamma=GAMMA, n_features=D, seed=0)
    return tasks, phi, fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=1.0, eta=1.0, solver=solver)


def with_solvers(tasks, phi, meta, solvers: list[str]) -> dict:
    """``{label: MetaRL}``: ``meta`` (solver "auto") and the same problem with each other solver."""
    import fastmeta
    metas = {"auto": meta}
    for solver in solvers:
        if solver != "auto":
            metas[solver] = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=1.0, eta=1.0, solver=solver)
    return metas


def step_report(fns: dict, metas: dict, f_of_params, grads: dict, repeats: int, call=None) -> dict:
    """Interleave every step (and fastmeta alone, from NumPy, at the same energy); check the gradients.

    ``call(fn, f)`` runs fastmeta alone; the PyTorch child passes the bridge's own wrapper, which keeps
    PyTorch's thread count, so that the native step after it is not slowed by fastmeta's side effect.
    """
    f = np.asarray(f_of_params())
    call = call or (lambda fn, x: fn(x))
    for label, meta in metas.items():
        fns[f"fastmeta alone {label}"] = lambda meta=meta: call(meta.value_and_grad_energy, f)
    out = interleaved(fns, repeats)
    out["max_rel_grad_diff"] = max(max_rel_diff(g, grads["native"]) for k, g in grads.items() if k != "native")
    out["solver"] = {label: ", ".join(meta.solver_methods) for label, meta in metas.items()}
    return out


def mlp_init(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = (D, HIDDEN, HIDDEN, 1)
    params = []
    for m, n in zip(sizes[:-1], sizes[1:]):
        params += [rng.standard_normal((m, n)) / np.sqrt(m), np.zeros(n)]
    return params


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each function and median per-round ratio to the first one."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = next(iter(fns))
    return {name: {"median": statistics.median(ts),
                    "ratio": statistics.median(t / b for t, b in zip(ts, times[base]))}
            for name, ts in times.items()}


# ----------------------------------------------------------------------------- children
def child_overhead(framework: str, repeats: int) -> dict:
    """fastmeta from NumPy, through the bridge, and the bridge around a stub that returns at once.

    The stub isolates the bridge's own cost (conversions, callback, autograd) from the load
    noise of the gradient itself: on a busy machine that noise exceeds the overhead.
    """
    import fastmeta
    tasks, phi, meta = problem(1000)
    f = meta.model.energy(0.5 * np.random.default_rng(0).standard_normal(D))
    answer = meta.value_and_grad_energy(f)

    class Stub(fastmeta.MetaRL):
        def value_and_grad_energy(self, f):
            return answer[0], answer[1].copy()

    stub = Stub(tasks, meta.model)
    fns = {"numpy": lambda: meta.value_and_grad_energy(f)}
    if framework == "torch":
        import torch

        import fastmeta.torch
        ft = torch.tensor(f, requires_grad=True)

        def bridge(L):
            def run():
                ft.grad = None
                L(ft).backward()
            return run
        fns["bridge"] = bridge(fastmeta.torch.meta_rl(meta))
        fns["bridge around a stub"] = bridge(fastmeta.torch.meta_rl(stub))
    else:
        import jax
        jax.config.update("jax_enable_x64", True)

        import fastmeta.jax
        fj = jax.numpy.asarray(f)

        def bridge(L):
            vg = jax.jit(jax.value_and_grad(L))
            return lambda: jax.block_until_ready(vg(fj))
        fns["bridge"] = bridge(fastmeta.jax.meta_rl(meta))
        fns["bridge around a stub"] = bridge(fastmeta.jax.meta_rl(stub))
    return interleaved(fns, repeats)


def torch_step_parts(n_states: int):
    """(tasks, phi, meta, step) with ``step(objective)`` the PyTorch training step on ``objective(energy)``."""
    import torch
    tasks, phi, meta = problem(n_states)
    S, A = meta.n_states, meta.n_actions
    X = torch.from_numpy(phi.reshape(S * A, D))
    params = [torch.tensor(p, requires_grad=True) for p in mlp_init()]
    kernels = [torch.from_numpy(t.dense_P()) for t in tasks]
    rewards = [torch.from_numpy(t.r) for t in tasks]
    inits = [torch.from_numpy(t.init) for t in tasks]
    eye = torch.eye(S, dtype=torch.float64)

    def energy():
        h = torch.tanh(X @ params[0] + params[1])
        h = torch.tanh(h @ params[2] + params[3])
        return (h @ params[4] + params[5]).reshape(S, A)

    def native_L(f):  # what benchmarks/baselines/torch_rl.py writes, from the energy
        pi = torch.softmax(f, dim=1)
        total = 0.0
        for P3, r, zeta in zip(kernels, rewards, inits):
            V = (1 - GAMMA) * torch.linalg.solve(eye - GAMMA * torch.einsum("sa,sat->st", pi, P3), (pi * r).sum(1))
            Q = (1 - GAMMA) * r + GAMMA * torch.einsum("sat,t->sa", P3, V)
            pi_i = torch.softmax(f + Q, dim=1)
            V_i = (1 - GAMMA) * torch.linalg.solve(eye - GAMMA * torch.einsum("sa,sat->st", pi_i, P3),
                                                   (pi_i * r).sum(1))
            total = total + zeta @ V_i
        return total / len(kernels)

    def step(objective):
        def run():
            for p in params:
                p.grad = None
            objective(energy()).backward()
            return [p.grad.clone() for p in params]
        return run

    return tasks, phi, meta, step, native_L, lambda: energy().detach().numpy()


def child_step_torch(n_states: int, repeats: int, solvers: list[str]) -> dict:
    import fastmeta.torch
    from fastmeta.bridges.torch import call_keeping_torch_threads
    tasks, phi, meta, step, native_L, energy = torch_step_parts(n_states)
    metas = with_solvers(tasks, phi, meta, solvers)
    fns = {"native": step(native_L)}
    fns.update({f"bridge {label}": step(fastmeta.torch.meta_rl(m)) for label, m in metas.items()})
    grads = {name: [g.numpy() for g in fn()] for name, fn in fns.items()}
    return step_report(fns, metas, energy, grads, repeats, call_keeping_torch_threads)


def child_interplay(n_states: int, repeats: int) -> dict:
    """The native PyTorch step at the thread count the start of fastmeta's thread pool leaves, and at the user's.

    Numba's OpenMP layer sets the OpenMP thread count when its pool starts, and PyTorch reads the
    same setting. fastmeta now sets PyTorch's count back (at import, and after each bridge call);
    this child starts the pool with a direct NumPy-API call, which nothing guards, records the count
    it leaves, and times the native step at that count and at the user's, alternating.
    """
    import numba
    import torch
    _, _, meta, step, native_L, energy = torch_step_parts(n_states)
    native, f = step(native_L), energy()
    before = torch.get_num_threads()  # the user's setting (OMP_NUM_THREADS)
    meta.value_and_grad_energy(f)     # the first parallel kernel starts Numba's pool here
    after = torch.get_num_threads()
    counts = {"left by the pool start": after, "the user's": before}
    times = {case: [] for case in counts}
    for _ in range(repeats):
        for case, threads in counts.items():
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            native()
            times[case].append(time.perf_counter() - t0)
    torch.set_num_threads(before)
    out = {case: {"median": statistics.median(ts), "max": max(ts), "threads": counts[case]}
           for case, ts in times.items()}
    out["layer"] = numba.threading_layer()
    return out


def child_step_jax(n_states: int, repeats: int, solvers: list[str]) -> dict:
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import fastmeta.jax
    tasks, phi, meta = problem(n_states)
    metas = with_solvers(tasks, phi, meta, solvers)
    S, A = meta.n_states, meta.n_actions
    X = jnp.asarray(phi.reshape(S * A, D))
    params = [jnp.asarray(p) for p in mlp_init()]
    kernels = [jnp.asarray(t.dense_P()) for t in tasks]
    rewards = [jnp.asarray(t.r) for t in tasks]
    inits = [jnp.asarray(t.init) for t in tasks]
    eye = jnp.eye(S)

    def energy(p):
        h = jnp.tanh(X @ p[0] + p[1])
        h = jnp.tanh(h @ p[2] + p[3])
        return (h @ p[4] + p[5]).reshape(S, A)

    def native_L(f):  # what benchmarks/baselines/jax_rl.py writes, from the energy
        pi = jax.nn.softmax(f, axis=1)
        total = 0.0
        for P3, r, zeta in zip(kernels, rewards, inits):
            V = (1 - GAMMA) * jnp.linalg.solve(eye - GAMMA * jnp.einsum("sa,sat->st", pi, P3), jnp.sum(pi * r, 1))
            Q = (1 - GAMMA) * r + GAMMA * jnp.einsum("sat,t->sa", P3, V)
            pi_i = jax.nn.softmax(f + Q, axis=1)
            V_i = (1 - GAMMA) * jnp.linalg.solve(eye - GAMMA * jnp.einsum("sa,sat->st", pi_i, P3),
                                                 jnp.sum(pi_i * r, 1))
            total = total + zeta @ V_i
        return total / len(kernels)

    def step(objective):
        grad = jax.jit(jax.grad(lambda p: objective(energy(p))))
        return lambda: jax.block_until_ready(grad(params))

    fns = {"native": step(native_L)}
    fns.update({f"bridge {label}": step(fastmeta.jax.meta_rl(m)) for label, m in metas.items()})
    grads = {name: [np.asarray(g) for g in fn()] for name, fn in fns.items()}
    return step_report(fns, metas, lambda: energy(params), grads, repeats)


# ----------------------------------------------------------------------------- parent
def run_child(args: list[str], timeout: float, **env_vars: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_vars)
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:g} s (killed; JAX hangs look like this)"}
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def max_rel_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """max |a - b| / max |b| over all parameters (the last bias gets ~0 gradient: softmax ignores shifts)."""
    a = np.concatenate([np.ravel(x) for x in a])
    b = np.concatenate([np.ravel(x) for x in b])
    return float(np.abs(a - b).max() / np.abs(b).max())


def conditions() -> str:
    import numba

    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:
            return "absent"
    return (f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"numba {numba.__version__} (threads {numba.config.NUMBA_NUM_THREADS}, warm cache), "
            f"jax {version('jax')}, torch {version('torch')}; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
            f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def ms(x: float) -> str:
    return f"{1e3 * x:.1f} ms" if x >= 1e-3 else f"{1e6 * x:.0f} us"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--step-states", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--step-solvers", default="auto,dense,krylov",
                        help="fastmeta solvers timed in the training step, side by side (\"auto\" always)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--publish", action="store_true", help="write bench_results/bridges.md")
    parser.add_argument("--render", metavar="JSON", help="only render the tables from a saved run's .json")
    parser.add_argument("--notes", metavar="MD", help="a markdown file appended to the tables as notes")
    args = parser.parse_args(argv)
    if args.child:
        kind, framework, n, repeats = args.child[0], args.child[1], int(args.child[2]), int(args.child[3])
        if kind == "overhead":
            res = child_overhead(framework, repeats)
        elif kind == "interplay":
            res = child_interplay(n, repeats)
        else:
            solvers = args.child[4].split(",") if len(args.child) > 4 else ["auto"]
            res = (child_step_torch if framework == "torch" else child_step_jax)(n, repeats, solvers)
        print(json.dumps(res))
        return 0

    out = ROOT / "bench_results" / "bridges.md" if args.publish else Path("/tmp/fastmeta_bench_bridges.md")
    if args.render:  # tables again from a saved run, e.g. once the hang study has been published
        run = json.loads(Path(args.render).read_text())
    else:
        run = measure(args)
    if args.notes:
        run["notes"] = Path(args.notes).read_text().strip()
    out.with_suffix(".json").write_text(json.dumps(run, indent=1))
    text = render(run)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


def measure(args: argparse.Namespace) -> dict:
    """Run every child and return the results with the conditions they were measured in."""
    # PyTorch's OpenMP threads spin between parallel regions unless told otherwise (fastmeta sets
    # this for itself on import, too late if torch was imported first): both sides get it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # OpenBLAS's worker threads busy-wait, and PyTorch's intra-op pool fights for the cores too: on
    # a machine with more runnable threads than cores they made dense LU at S = 300 5-100x slower,
    # varying from run to run (fastmeta's side and PyTorch's alike). One BLAS thread and one
    # OpenMP thread per library give steadier figures for both sides.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    results = {"overhead": {}, "step": {}}
    for fw in ("torch", "jax"):
        results["overhead"][fw] = run_child(["overhead", fw, "1000", str(args.repeats)], args.timeout)
        print(fw, "overhead", results["overhead"][fw], flush=True)
    for n in args.step_states:
        for fw in ("torch", "jax"):
            results["step"][f"{fw}-{n}"] = run_child(["step", fw, str(n), str(args.step_repeats),
                                                      args.step_solvers], args.timeout)
            print(fw, n, results["step"][f"{fw}-{n}"], flush=True)
    results["interplay"] = {}
    for layer in ("omp", "workqueue"):
        res = run_child(["interplay", "torch", "300", str(args.step_repeats)], args.timeout,
                        NUMBA_THREADING_LAYER=layer)
        results["interplay"][layer] = res
        print("interplay", layer, res, flush=True)
    load_after = os.getloadavg()
    return {"started": started, "conditions": conditions(), "load_before": load_before, "load_after": load_after,
            "repeats": args.repeats, "step_repeats": args.step_repeats, "results": results}


def render(run: dict) -> str:
    """bench_results/bridges.md from a run's results (and the hang study's, when published)."""
    results, started = run["results"], run["started"]
    load_before, load_after = run["load_before"], run["load_after"]
    lines = ["# The JAX and PyTorch bridges: overhead and a training step", "",
             f"Measured {started} with `PYTHONPATH=. python benchmarks/bench_bridges.py --publish` "
             f"(repeats {run['repeats']} for the overhead, {run['step_repeats']} per training step).",
             f"Machine: {run['conditions']}.",
             f"Load average (1, 5, 15 min) before: {load_before[0]:.1f}, {load_before[1]:.1f}, {load_before[2]:.1f}; "
             f"after: {load_after[0]:.1f}, {load_after[1]:.1f}, {load_after[2]:.1f}. The machine is shared with "
             "other jobs: compare the ratios, measured side by side in one process, not the absolute times.", "",
             f"## Overhead of the bridge on one fastmeta gradient (RL^2 random MDPs, S = 1000, n = {N_TASKS}, "
             f"k = {K}, A = {N_ACTIONS}, d = {D})", "",
             "| framework | NumPy `value_and_grad_energy(f)` | through the bridge | overhead (median of per-call "
             "ratios) | the bridge's own cost (around a stub) | own cost / gradient |",
             "| --- | --- | --- | --- | --- | --- |"]
    for fw, res in results["overhead"].items():
        if "error" in res:
            lines.append(f"| {fw} | | | {res['error']} | | |")
        else:
            own = res["bridge around a stub"]
            lines.append(f"| {fw} | {ms(res['numpy']['median'])} | {ms(res['bridge']['median'])} | "
                         f"{100 * (res['bridge']['ratio'] - 1):+.1f}% | {ms(own['median'])} | "
                         f"{100 * own['ratio']:.2f}% |")
    lines += ["", "Target: at most +10%. The stub column times the bridge around a MetaRL whose "
              "`value_and_grad_energy` returns a stored answer at once: the bridge's own cost, which the "
              "load noise of the whole gradient (several percent either way here) would otherwise hide.", "",
              f"## Training step: MLP energy ({D} -> {HIDDEN} -> {HIDDEN} -> 1, tanh, float64), forward + "
              "meta-objective + backward", "",
              "Every row of one S and framework was timed interleaved in one process (the native step, the "
              "bridge with each fastmeta solver, and fastmeta alone from NumPy at the same energy).", "",
              "| S | framework | fastmeta solver (resolved) | fastmeta alone (NumPy) | bridge step | native dense step | "
              "native / bridge: of the medians (median of per-round ratios) | max rel. gradient difference |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, res in results["step"].items():
        fw, n = key.split("-")
        if "error" in res:
            lines.append(f"| {n} | {fw} | | | | | {res['error']} | |")
            continue
        native = res["native"]
        for label, resolved in res["solver"].items():
            bridge, alone = res[f"bridge {label}"], res[f"fastmeta alone {label}"]
            lines.append(f"| {n} | {fw} | {label} ({resolved}) | {ms(alone['median'])} | {ms(bridge['median'])} | "
                         f"{ms(native['median'])} | {native['median'] / bridge['median']:.1f}x "
                         f"({1 / bridge['ratio']:.1f}x) | {res['max_rel_grad_diff']:.1e} |")
    lines += ["", "Target: the bridge is faster (native / bridge > 1) at S >= 300 (with `solver=\"auto\"`, the "
              "user's default). The gradient column is the largest difference of any bridge's gradient from the "
              "native one. The bridge step minus fastmeta alone is the network (forward and backward) plus the "
              "bridge's own cost."]
    if results.get("interplay"):
        lines += ["", "## PyTorch's thread count after fastmeta's thread pool starts (S = 300)", "",
                  "Numba's OpenMP layer sets the OpenMP thread count when its pool starts, and PyTorch reads the "
                  "same setting. One process per Numba threading layer (`NUMBA_THREADING_LAYER`): the pool "
                  "started by a direct NumPy-API call (which nothing guards), then the native PyTorch step "
                  "timed at the PyTorch thread count that start left and at the user's (`OMP_NUM_THREADS`), "
                  "alternating. fastmeta now sets PyTorch's count back after starting its pool at import and "
                  "after every bridge call, so the native columns above ran at the user's count; before, "
                  "they ran at the other one.", "",
                  "| Numba layer | PyTorch threads left by the pool start: native step median (max) | "
                  "at the user's count |",
                  "| --- | --- | --- |"]
        for layer, res in results["interplay"].items():
            if "error" in res:
                lines.append(f"| {layer} | {res['error']} | |")
                continue
            cells = [f"{res[c]['threads']} threads: {ms(res[c]['median'])} ({ms(res[c]['max'])})"
                     for c in ("left by the pool start", "the user's")]
            lines.append(f"| {res['layer']} | " + " | ".join(cells) + " |")
    if run.get("notes"):
        lines += ["", "## Notes", "", run["notes"]]
    hangs = ROOT / "bench_results" / "bridge_hangs.json"
    if hangs.exists():
        study = json.loads(hangs.read_text())
        lines += ["", "## JAX hangs (`benchmarks/bridge_hang_study.py --publish`, `bench_results/bridge_hangs.json`)", "",
                  f"Runs of {study['calls']} jitted value-and-gradient calls, each in a fresh process; a hang is "
                  f"{study['stall']:g} s with neither progress nor CPU use.", "",
                  "| case | runs | hangs | too slow | errors |", "| --- | --- | --- | --- | --- |"]
        for case, s in study["summary"].items():
            lines.append(f"| {case} | {s['runs']} | {s['hangs']} | {s.get('too_slow', 0)} | {s['errors']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
